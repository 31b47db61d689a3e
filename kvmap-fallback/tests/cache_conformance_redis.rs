//! The conformance suite on a `NearCache` over a real `redis-server`
//! child process (`conformance::near_cache::redis::*`). Skipped with a
//! message when `redis-server` is not installed (`KVMAP_REQUIRE_REDIS=1`
//! makes that a failure).

#[path = "cache_common.rs"]
mod cache_common;
#[allow(dead_code)] // the fault helpers are for other tests
#[path = "common/redis.rs"]
mod redis_server;

use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_redis::{RedisConfig, RedisStore};

const WATCH_BUFFER: usize = 32;

fn main() -> std::process::ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("conformance: cannot create a temporary directory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let Some(server) = redis_server::server_or_skip(dir.path()) else {
        return std::process::ExitCode::SUCCESS;
    };
    let url = server.url();
    let code = Suite::new("near_cache::redis")
        .with_options(SuiteOptions {
            watch_buffer: Some(WATCH_BUFFER),
            ..SuiteOptions::default()
        })
        .run(move || {
            let url = url.clone();
            async move {
                let store = RedisStore::connect(
                    RedisConfig::standalone(url).with_watch_buffer(WATCH_BUFFER),
                )
                .await?;
                cache_common::cache_over(Arc::new(store)).await
            }
        });
    drop(server);
    code
}
