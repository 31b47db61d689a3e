//! The whole conformance suite (`conformance::redis::cluster_tls::*`) on a
//! TLS-only 3-master/3-replica Redis Cluster (clients, cluster bus and
//! replication over TLS), the store trusting the cluster's generated CA.

mod common;

fn main() -> std::process::ExitCode {
    common::cluster_suite("redis::cluster_tls", true)
}
