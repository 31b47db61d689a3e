//! The whole conformance suite (`conformance::redis::standalone::*`) on one
//! standalone Redis started once for this binary.

mod common;

use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::KvStore;
use kvmap_redis::{RedisConfig, RedisStore};

fn main() -> std::process::ExitCode {
    // The servers live on their own runtime, so they can be dropped (and
    // their containers removed) after the suite consumed its runtime.
    let infra = common::runtime();
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let server = infra
        .block_on(integration_tests::RedisStandalone::start())
        .expect("start redis standalone");
    let url = server.url();
    let code = Suite::new("redis::standalone")
        .with_runtime(common::runtime())
        .with_options(SuiteOptions {
            watch_buffer: Some(common::WATCH_BUFFER),
            ..SuiteOptions::default()
        })
        .run(move || {
            let url = url.clone();
            async move {
                let store = RedisStore::connect(
                    RedisConfig::standalone(url).with_watch_buffer(common::WATCH_BUFFER),
                )
                .await?;
                Ok(Arc::new(store) as Arc<dyn KvStore>)
            }
        });
    infra.block_on(async move { drop(server) });
    code
}
