//! Watch.
use kvmap_core::{Context, Result, WatchRequest, WatchStream};
use crate::store::RedisStore;
pub(crate) async fn watch(_s: &RedisStore, _ctx: &Context, _r: WatchRequest) -> Result<WatchStream> {
    Err(kvmap_core::ErrorKind::Unsupported { capability: kvmap_core::Capability::Watch }.into())
}
