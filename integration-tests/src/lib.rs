//! Integration-test harness for kvmap: Docker topologies started on demand
//! per test with [testcontainers](https://docs.rs/testcontainers), and fault
//! injection helpers.
//!
//! Every topology runs with host networking on unique loopback ports, so the
//! addresses a server announces (e.g. Redis Cluster's `127.0.0.1:PORT`) are
//! reachable from the test process, and parallel tests never collide. Each
//! topology is a guard: dropping it (also while a test panics) removes its
//! containers.
//!
//! | topology | constructor |
//! | --- | --- |
//! | single Redis | [`RedisStandalone::start`] |
//! | Redis Cluster, 3 masters + 3 replicas | [`RedisCluster::start`] |
//! | the same cluster, TLS only (clients, bus, replication) | [`RedisCluster::start_with`] with [`RedisClusterOptions::tls`] |
//! | the same cluster with ACL users | [`RedisCluster::start_with`] with ACL lines in [`RedisClusterOptions::extra_args`] |
//! | Redis with ACL users | [`RedisAcl::start`] |
//! | Redis with TLS only | [`RedisTls::start`] |
//! | Consul dev agent | [`ConsulDev::start`] |
//! | Consul 3-server cluster | [`ConsulCluster::start`] |
//! | Consul with ACLs (deny by default) | [`ConsulAcl::start`] |
//!
//! Images come from `KVMAP_REDIS_IMAGE` / `KVMAP_CONSUL_IMAGE`, defaulting to
//! the local images built offline by `scripts/build-images.sh`.
//!
//! Tests start with [`docker_available_or_skip`].

pub mod consul;
pub mod docker;
pub mod fault;
pub mod history;
pub mod redis_cluster;
pub mod redis_single;
pub mod tls;
pub mod wait;

pub use consul::{ConsulAcl, ConsulCluster, ConsulDev, ConsulOptions, ConsulPorts};
pub use docker::{
    consul_image, docker_available_or_skip, free_port, redis_image, ImageRef, CONSUL_IMAGE_ENV,
    REDIS_IMAGE_ENV, REQUIRE_DOCKER_ENV,
};
pub use fault::Node;
pub use redis_cluster::{key_slot, ClusterNode, RedisCluster, RedisClusterOptions, Role};
pub use redis_single::{RedisAcl, RedisOptions, RedisStandalone, RedisTls};
pub use tls::{install_crypto_provider, wrong_ca_pem, TlsMaterial};
