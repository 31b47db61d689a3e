//! # kvmap-consul
//!
//! The Consul KV backend of kvmap. **Not implemented yet**: this crate is
//! a placeholder in the workspace so the facade's feature layout is fixed.
//! The test images and a Consul harness (dev agent, 3-server cluster, ACL
//! agent) already exist in `integration-tests`.
#![forbid(unsafe_code)]
