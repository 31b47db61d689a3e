//! # kvmap-fallback
//!
//! Per-backend circuit breakers, an ordered fallback chain and a near cache
//! over kvmap stores. **Not implemented yet**: this crate is a placeholder
//! in the workspace. The error taxonomy it will rely on is in place:
//! [`kvmap_core::Error::is_infrastructure`] says which errors a breaker
//! counts, and [`kvmap_core::Entry::served_by`] says which store answered.
#![forbid(unsafe_code)]
