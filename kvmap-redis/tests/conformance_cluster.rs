//! The whole conformance suite (`conformance::redis::cluster::*`) on one
//! 3-master/3-replica Redis Cluster started once for this binary.

mod common;

fn main() -> std::process::ExitCode {
    common::cluster_suite("redis::cluster", false)
}
