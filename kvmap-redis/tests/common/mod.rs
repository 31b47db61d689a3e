//! Shared setup of the real-server test binaries.
#![allow(dead_code, unreachable_pub)]

use std::process::ExitCode;

/// A multi-thread runtime for a `harness = false` test binary.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `Some(exit code)` when the test binary must stop before starting servers:
/// docker is missing (skipped, unless `KVMAP_REQUIRE_DOCKER=1`), or only
/// `--list` was asked for.
pub fn skip_without_docker(rt: &tokio::runtime::Runtime) -> Option<ExitCode> {
    if std::env::args().any(|a| a == "--list") {
        return None;
    }
    if rt.block_on(integration_tests::docker_available_or_skip()) {
        None
    } else {
        Some(ExitCode::SUCCESS)
    }
}
