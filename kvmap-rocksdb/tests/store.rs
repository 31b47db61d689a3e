//! RocksDB-specific behaviour beyond the shared conformance suite:
//! persistence across reopen, change-log retention, expiry through the
//! reaper and the compaction filter, concurrent compare-and-swap.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvmap_core::{
    Batch, Context, ErrorKind, Key, KvStore, KvStoreExt, ListRequest, WatchEvent, WatchRequest,
};
use kvmap_rocksdb::{RocksConfig, RocksStore};

fn k(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn config(path: &std::path::Path) -> RocksConfig {
    RocksConfig::new(path).with_block_cache_bytes(1 << 20)
}

async fn next(stream: &mut kvmap_core::WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no event within 10s")
        .expect("stream ended")
        .expect("stream error")
}

#[tokio::test]
async fn data_revision_and_history_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context::new();
    let (r1, r2) = {
        let s = RocksStore::open(config(dir.path())).unwrap();
        let r1 = s.set(&ctx, &k("a"), "1").await.unwrap();
        let r2 = s.set(&ctx, &k("a"), "2").await.unwrap();
        s.set(&ctx, &k("b"), "x").await.unwrap();
        assert!(s.remove(&ctx, &k("b")).await.unwrap());
        (r1, r2)
    };
    let s = RocksStore::open(config(dir.path())).unwrap();
    assert_eq!(s.revision(), 4);
    let e = s.get(&ctx, &k("a")).await.unwrap().unwrap();
    assert_eq!(
        (e.value.as_ref(), e.revision, e.create_revision),
        (&b"2"[..], r2, r1)
    );
    assert_eq!(s.set(&ctx, &k("c"), "y").await.unwrap(), 5);

    // Resume from the persisted change log, with previous values.
    let mut w = s
        .watch(
            &ctx,
            WatchRequest::prefix("").from_revision(2).with_prev_value(),
        )
        .await
        .unwrap();
    match next(&mut w).await {
        WatchEvent::Put { entry, prev } => {
            assert_eq!((entry.revision, entry.value.as_ref()), (2, &b"2"[..]));
            assert_eq!(prev.unwrap().value, "1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut w).await.revision(), 3);
    match next(&mut w).await {
        WatchEvent::Delete {
            key,
            revision,
            prev,
        } => {
            assert_eq!((key.as_str(), revision), ("b", 4));
            assert_eq!(prev.unwrap().value, "x");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut w).await.revision(), 5);
    // Live events follow the replay.
    s.set(&ctx, &k("d"), "z").await.unwrap();
    assert_eq!(next(&mut w).await.revision(), 6);
}

#[tokio::test]
async fn retention_by_count_reports_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(config(dir.path()).with_changelog_max_entries(10)).unwrap();
    let ctx = Context::new();
    for i in 0..40 {
        s.set(&ctx, &k("a"), format!("{i}")).await.unwrap();
    }
    let e = match s
        .watch(&ctx, WatchRequest::key(k("a")).from_revision(1))
        .await
    {
        Ok(_) => panic!("expected compacted"),
        Err(e) => e,
    };
    let ErrorKind::Compacted { oldest } = e.kind() else {
        panic!("{e}")
    };
    // At least the last 10 changes are kept, at most 10 + 10%.
    assert!((29..=31).contains(&oldest), "oldest {oldest}");
    let mut w = s
        .watch(&ctx, WatchRequest::key(k("a")).from_revision(oldest))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.revision(), oldest);
    // The floor survives a reopen.
    drop(w);
    drop(s);
    let s = RocksStore::open(config(dir.path()).with_changelog_max_entries(10)).unwrap();
    let e = s
        .watch(&ctx, WatchRequest::key(k("a")).from_revision(oldest - 1))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Compacted { oldest });
}

#[tokio::test]
async fn retention_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(
        config(dir.path()).with_changelog_max_age(Some(Duration::from_millis(100))),
    )
    .unwrap();
    let ctx = Context::new();
    s.set(&ctx, &k("a"), "1").await.unwrap();
    s.set(&ctx, &k("a"), "2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r3 = s.set(&ctx, &k("a"), "3").await.unwrap();
    s.trim_changelog().unwrap();
    let e = s
        .watch(&ctx, WatchRequest::key(k("a")).from_revision(1))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Compacted { oldest: r3 });
}

#[tokio::test]
async fn expiry_is_reaped_with_an_event_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = Context::new();
    {
        let s = RocksStore::open(config(dir.path())).unwrap();
        s.set_with_ttl(&ctx, &k("gone"), "v", Duration::from_millis(200))
            .await
            .unwrap();
        s.set_with_ttl(&ctx, &k("later"), "v", Duration::from_millis(300))
            .await
            .unwrap();
        let e = s.get(&ctx, &k("gone")).await.unwrap().unwrap();
        assert!(e.expires_at.is_some());
    }
    // Closed while the TTLs run out: the reaper of the next open emits the
    // events.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = RocksStore::open(config(dir.path())).unwrap();
    let mut w = s
        .watch(&ctx, WatchRequest::prefix("").from_revision(1))
        .await
        .unwrap();
    let mut expired = Vec::new();
    while expired.len() < 2 {
        if let WatchEvent::Expired { key, revision, .. } = next(&mut w).await {
            assert!(revision > 2);
            expired.push(key.as_str().to_owned());
        }
    }
    expired.sort();
    assert_eq!(expired, ["gone", "later"]);
    assert!(s.get(&ctx, &k("gone")).await.unwrap().is_none());
}

#[tokio::test]
async fn write_to_expired_key_reaps_it_first_and_compaction_keeps_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(config(dir.path())).unwrap();
    let ctx = Context::new();
    let mut w = s.watch(&ctx, WatchRequest::key(k("a"))).await.unwrap();
    s.set_with_ttl(&ctx, &k("a"), "1", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Invisible at once, before any reaping.
    assert!(s.get(&ctx, &k("a")).await.unwrap().is_none());
    assert!(s
        .list(&ctx, &ListRequest::prefix(""))
        .await
        .unwrap()
        .entries
        .is_empty());
    // Compaction never drops an entry whose expiry event is not written.
    s.compact().unwrap();
    let r = s.create(&ctx, &k("a"), "2").await.unwrap();
    assert_eq!(next(&mut w).await.revision(), 1);
    let mut saw_expired = false;
    loop {
        match next(&mut w).await {
            WatchEvent::Expired { revision, .. } => {
                assert!(revision < r);
                saw_expired = true;
            }
            WatchEvent::Put { entry, .. } => {
                assert_eq!(entry.revision, r);
                assert_eq!(entry.create_revision, r);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(RocksStore::open(config(dir.path())).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let ctx = Context::new();
                for _ in 0..25 {
                    s.update_with(&ctx, &k("n"), 1000, |cur| {
                        let n: u64 = cur
                            .map(|b| std::str::from_utf8(b).unwrap().parse().unwrap())
                            .unwrap_or(0);
                        (n + 1).to_string().into()
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let e = s.get(&Context::new(), &k("n")).await.unwrap().unwrap();
    assert_eq!(e.value, "200");
}

#[tokio::test]
async fn sync_store_and_get_many_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(config(dir.path()).with_sync(true).with_offload_reads(true)).unwrap();
    let ctx = Context::new();
    let out = s
        .apply(
            &ctx,
            Batch::new()
                .put(k("a"), "1")
                .put(k("b"), "2")
                .delete(k("a"))
                .put(k("a"), "3"),
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 4);
    let got = s.get_many(&ctx, &[k("a"), k("b"), k("c")]).await.unwrap();
    let vals: Vec<Option<String>> = got
        .into_iter()
        .map(|r| {
            r.unwrap()
                .map(|e| String::from_utf8(e.value.to_vec()).unwrap())
        })
        .collect();
    assert_eq!(vals, [Some("3".into()), Some("2".into()), None]);
    let a = s.get(&ctx, &k("a")).await.unwrap().unwrap();
    assert_eq!((a.revision, a.create_revision), (4, 4));
}

/// Nothing more arrives for a moment.
async fn assert_quiet(stream: &mut kvmap_core::WatchStream) {
    let more = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(more.is_err(), "unexpected item {more:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_replays_a_long_change_log_in_chunks_filtered_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(config(dir.path())).unwrap();
    let ctx = Context::new();
    // 3000 changes, one in three under the watched prefix: the replay
    // spans several history chunks, some of them scanning mostly other keys.
    for i in 0..3000u64 {
        let key = if i % 3 == 0 {
            format!("want/{i:04}")
        } else {
            format!("other/{i:04}")
        };
        assert_eq!(s.set(&ctx, &k(&key), i.to_string()).await.unwrap(), i + 1);
    }
    let mut w = s
        .watch(&ctx, WatchRequest::prefix("want/").from_revision(1))
        .await
        .unwrap();
    // Committed after the watch is registered: seen by a later history
    // chunk and by the live feed, delivered once.
    let during = s.set(&ctx, &k("want/during"), "d").await.unwrap();
    s.set(&ctx, &k("other/during"), "d").await.unwrap();
    for i in (0..3000u64).step_by(3) {
        match next(&mut w).await {
            WatchEvent::Put { entry, prev } => {
                assert_eq!(entry.key.as_str(), format!("want/{i:04}"));
                assert_eq!(entry.revision, i + 1);
                assert_eq!(entry.value, i.to_string());
                assert!(prev.is_none());
            }
            other => panic!("{other:?}"),
        }
    }
    let ev = next(&mut w).await;
    assert_eq!(
        (ev.key().map(Key::as_str), ev.revision()),
        (Some("want/during"), during)
    );
    s.set(&ctx, &k("other/live"), "l").await.unwrap();
    let live = s.set(&ctx, &k("want/live"), "l").await.unwrap();
    let ev = next(&mut w).await;
    assert_eq!(
        (ev.key().map(Key::as_str), ev.revision()),
        (Some("want/live"), live)
    );
    assert_quiet(&mut w).await;

    // A watch of one key over the same log.
    let mut one = s
        .watch(&ctx, WatchRequest::key(k("want/0300")).from_revision(1))
        .await
        .unwrap();
    assert_eq!(next(&mut one).await.revision(), 301);
    assert_quiet(&mut one).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn change_log_trimmed_during_replay_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    // The live buffer (1024 events) overflows during the replay as well:
    // one resync covers both.
    let s = RocksStore::open(config(dir.path()).with_changelog_max_entries(1000)).unwrap();
    let ctx = Context::new();
    for i in 0..1000u64 {
        s.set(&ctx, &k(&format!("k/{:03}", i % 100)), i.to_string())
            .await
            .unwrap();
    }
    let mut w = s
        .watch(&ctx, WatchRequest::prefix("k/").from_revision(1))
        .await
        .unwrap();
    // The first chunk is already read; then the log moves past the replay.
    for rev in 1..=kvmap_core::backend::HISTORY_CHUNK_EVENTS as u64 {
        assert_eq!(next(&mut w).await.revision(), rev);
    }
    for i in 0..3000u64 {
        s.set(&ctx, &k(&format!("k/{:03}", i % 100)), format!("new{i}"))
            .await
            .unwrap();
    }
    match next(&mut w).await {
        WatchEvent::Resync { entries, revision } => {
            assert_eq!(revision, 4000);
            assert_eq!(entries.len(), 100);
            assert!(entries.iter().all(|e| e.value.starts_with(b"new")));
        }
        other => panic!("{other:?}"),
    }
    let live = s.set(&ctx, &k("k/live"), "l").await.unwrap();
    assert_eq!(next(&mut w).await.revision(), live);
    assert_quiet(&mut w).await;
}
