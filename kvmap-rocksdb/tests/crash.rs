//! Crash test: a child process (this binary re-invoked with
//! `KVMAP_CRASH_CHILD` set) writes and prints every acknowledgement; the
//! parent kills it with SIGKILL at a random moment, reopens the database
//! and checks that every acknowledged write is there and that revisions
//! never went backwards. `KVMAP_CRASH_TRIALS` sets the number of trials
//! (default 20).
//!
//! Even trials write with `sync` (fsync per write), odd ones with the
//! WAL-only default: a killed process loses neither, since the WAL is in
//! the OS page cache before a write is acknowledged. (Power loss is not
//! simulated here.)
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvmap_core::{Batch, Context, Key, KvStore, KvStoreExt};
use kvmap_rocksdb::{RocksConfig, RocksStore};
use rand::Rng;

fn config(path: &Path, sync: bool) -> RocksConfig {
    RocksConfig::new(path)
        .with_sync(sync)
        .with_block_cache_bytes(1 << 20)
        .with_changelog_max_entries(500)
}

/// Child: writes until killed. Protocol, one line each, flushed:
/// `ready`, `put <key> <revision>`, `del <key> <revision-before>`.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var("KVMAP_CRASH_CHILD") else {
        return;
    };
    let trial: u64 = std::env::var("KVMAP_CRASH_TRIAL")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RocksStore::open(config(Path::new(&path), trial.is_multiple_of(2))).unwrap();
        let ctx = Context::new();
        let mut out = std::io::stdout().lock();
        // The test harness may have printed "test crash_child ... "
        // without a newline: start on a fresh line.
        writeln!(out, "\nready").unwrap();
        out.flush().unwrap();
        for i in 0u64.. {
            let key = |j: u64| Key::new(format!("t{trial}/k{j}")).unwrap();
            match i % 5 {
                3 => {
                    let batch = Batch::new()
                        .put(key(i), format!("v{i}"))
                        .put(key(i + 1_000_000), format!("v{}", i + 1_000_000));
                    let res = store.apply(&ctx, batch).await.unwrap();
                    for (j, r) in [i, i + 1_000_000].iter().zip(res) {
                        let Ok(kvmap_core::BatchOutcome::Put(rev)) = r else {
                            panic!("batch failed: {r:?}")
                        };
                        writeln!(out, "put {} {rev}", key(*j)).unwrap();
                    }
                }
                4 => {
                    store.remove(&ctx, &key(i - 1)).await.unwrap();
                    writeln!(out, "del {} {}", key(i - 1), store.revision()).unwrap();
                }
                _ => {
                    let rev = store.set(&ctx, &key(i), format!("v{i}")).await.unwrap();
                    writeln!(out, "put {} {rev}", key(i)).unwrap();
                }
            }
            out.flush().unwrap();
        }
    });
}

fn value_of(key: &str) -> String {
    format!("v{}", key.rsplit_once("/k").map_or("", |(_, n)| n))
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let trials: u64 = std::env::var("KVMAP_CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = rand::rng();
    let mut present: BTreeMap<String, u64> = BTreeMap::new();
    let mut absent: BTreeSet<String> = BTreeSet::new();
    let mut floor = 0u64;
    let mut total_acks = 0usize;
    let started = Instant::now();
    for trial in 0..trials {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("KVMAP_CRASH_CHILD", dir.path())
            .env("KVMAP_CRASH_TRIAL", trial.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            // Only complete lines count: a line cut by the kill was not
            // an acknowledgement.
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.ends_with('\n') && tx.send(line.trim_end().to_owned()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        // Skip the test harness's own lines up to the child's "ready".
        while rx.recv_timeout(Duration::from_secs(60)).unwrap() != "ready" {}
        std::thread::sleep(Duration::from_millis(rng.random_range(5..80)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();

        let mut last = floor;
        // The key the child deletes next, if its put was acknowledged and
        // its delete was not: it may be there or not.
        let mut in_doubt: Option<String> = None;
        for line in rx.try_iter() {
            let mut parts = line.split(' ');
            let (Some(what), Some(key), Some(rev)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("trial {trial}: bad line {line:?}")
            };
            let rev: u64 = rev.parse().unwrap();
            assert!(
                rev >= last,
                "trial {trial}: revision went back: {rev} after {last}"
            );
            last = rev;
            match what {
                "put" => {
                    assert!(
                        rev > floor,
                        "trial {trial}: revision {rev} not after {floor}"
                    );
                    absent.remove(key);
                    present.insert(key.to_owned(), rev);
                    let n: u64 = key
                        .rsplit_once("/k")
                        .and_then(|(_, n)| n.parse().ok())
                        .unwrap();
                    if n % 5 == 3 && n < 1_000_000 {
                        in_doubt = Some(key.to_owned());
                    }
                }
                "del" => {
                    in_doubt = None;
                    present.remove(key);
                    absent.insert(key.to_owned());
                }
                _ => panic!("trial {trial}: bad line {line:?}"),
            }
            total_acks += 1;
        }
        if let Some(key) = in_doubt {
            present.remove(&key);
        }

        let store = RocksStore::open(config(dir.path(), false)).unwrap();
        assert!(
            store.revision() >= last,
            "trial {trial}: store revision {} behind acknowledged {last}",
            store.revision()
        );
        rt.block_on(async {
            let ctx = Context::new();
            for (key, rev) in &present {
                let e = store
                    .get(&ctx, &Key::new(key).unwrap())
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("trial {trial}: acknowledged {key} is lost"));
                assert_eq!(e.revision, *rev, "trial {trial}: {key}");
                assert_eq!(e.value, value_of(key), "trial {trial}: {key}");
            }
            for key in &absent {
                let got = store.get(&ctx, &Key::new(key).unwrap()).await.unwrap();
                assert!(got.is_none(), "trial {trial}: deleted {key} is back");
            }
        });
        floor = store.revision();
    }
    println!(
        "crash test: {trials} trials, {total_acks} acknowledged writes verified, {} keys, final revision {floor}, {:?}",
        present.len(),
        started.elapsed()
    );
}
