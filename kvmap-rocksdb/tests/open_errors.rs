//! Bad input at open and at write time: typed errors, and nothing touched.
//!
//! Two tests re-invoke this binary as a child process (selected by an
//! environment variable; without it those "child" tests return at once).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kvmap_core::{Batch, Context, ErrorKind, Key, KvStore, KvStoreExt, Limits};
use kvmap_rocksdb::{RocksConfig, RocksStore};

fn open(path: &Path) -> kvmap_core::Result<RocksStore> {
    RocksStore::open(RocksConfig::new(path).with_block_cache_bytes(1 << 20))
}

fn kind_of(r: kvmap_core::Result<RocksStore>) -> kvmap_core::Error {
    match r {
        Ok(_) => panic!("open succeeded, expected an error"),
        Err(e) => e,
    }
}

/// Every file under `dir` with its contents, to prove nothing changed.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(tree(&p));
            } else {
                out.push((
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn path_that_is_a_file_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db");
    std::fs::write(&file, b"not a database").unwrap();
    let e = kind_of(open(&file));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().starts_with("rocksdb: open: "), "{e}");
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a database");
}

#[test]
fn missing_database_without_create_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent");
    let e = kind_of(RocksStore::open(
        RocksConfig::new(&path).with_create_if_missing(false),
    ));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(!path.exists());
}

#[test]
fn bad_settings_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let e = kind_of(RocksStore::open(
        RocksConfig::new(&path).with_changelog_max_entries(0),
    ));
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(!path.exists());
}

#[test]
fn second_handle_in_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).unwrap();
    let e = kind_of(open(dir.path()));
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string()
            .contains("database is locked by another process"),
        "{e}"
    );
    // The first handle is unharmed, and the path opens again once it is
    // dropped.
    assert_eq!(first.revision(), 0);
    drop(first);
    open(dir.path()).unwrap();
}

/// Child: holds the database open until killed.
#[test]
fn lock_holder_child() {
    let Ok(path) = std::env::var("KVMAP_LOCK_CHILD") else {
        return;
    };
    let _store = open(Path::new(&path)).unwrap();
    // On a fresh line: the harness may have printed "test ... " already.
    println!("\nready");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn database_held_by_another_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVMAP_LOCK_CHILD", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l == "ready")),
        "child never got ready"
    );
    let e = kind_of(open(dir.path()));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string()
            .contains("database is locked by another process"),
        "{e}"
    );
    assert!(e.is_transient());
    // Once the holder is gone the database opens.
    open(dir.path()).unwrap();
}

fn corrupt_file(dir: &Path, prefix: &str) {
    let rd = std::fs::read_dir(dir).unwrap();
    let mut hit = false;
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            std::fs::write(e.path(), b"\x00garbage\xff[[[\n=== not rocksdb ===").unwrap();
            hit = true;
        }
    }
    assert!(hit, "no {prefix} file");
}

#[test]
fn corrupted_options_file_is_invalid_data() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).unwrap());
    corrupt_file(dir.path(), "OPTIONS-");
    let before = tree(dir.path());
    let e = kind_of(open(dir.path()));
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("OPTIONS"), "{e}");
    assert_eq!(tree(dir.path()), before, "open touched the files");
}

#[test]
fn corrupted_current_file_is_invalid_data() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).unwrap());
    corrupt_file(dir.path(), "CURRENT");
    let before = tree(dir.path());
    let e = kind_of(open(dir.path()));
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert_eq!(tree(dir.path()), before, "open touched the files");
}

#[test]
fn foreign_rocksdb_database_is_invalid_data_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, dir.path()).unwrap();
        db.put(b"x", b"y").unwrap();
    }
    let before = tree(dir.path());
    let e = kind_of(open(dir.path()));
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("not a kvmap database"), "{e}");
    assert_eq!(tree(dir.path()), before, "open touched the files");
}

/// Child: tries to open the database as an unprivileged user and prints
/// the outcome.
#[test]
fn unprivileged_open_child() {
    let Ok(path) = std::env::var("KVMAP_PERM_CHILD") else {
        return;
    };
    match open(Path::new(&path)) {
        Ok(_) => println!("result ok"),
        Err(e) => println!("result {:?} {e}", e.kind()),
    }
}

#[test]
fn directory_without_permission_is_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    use std::os::unix::fs::PermissionsExt;
    if !is_root {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o500)).unwrap();
        let e = kind_of(open(&db));
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        return;
    }
    // Root ignores permission bits, so run the open in a copy of this
    // binary as user `nobody` (setpriv), on a directory it may enter but
    // not write.
    let exe = dir.path().join("child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    for p in [dir.path(), &exe] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", "unprivileged_open_child", "--nocapture"])
        .env("KVMAP_PERM_CHILD", &db)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => {
            println!("skipped: running as root and cannot drop privileges with setpriv: {other:?}");
            return;
        }
    };
    let line = out
        .lines()
        .find(|l| l.starts_with("result "))
        .unwrap_or_else(|| panic!("no result from the child: {out}"));
    assert!(line.starts_with("result PermissionDenied"), "{line}");
    assert!(line.contains("rocksdb: open"), "{line}");
    assert_eq!(
        std::fs::read_dir(&db).unwrap().count(),
        0,
        "open created files"
    );
}

#[tokio::test]
async fn bad_writes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_key_bytes: 16,
        max_value_bytes: 8,
        max_batch_ops: 4,
    };
    let store = RocksStore::open(RocksConfig::new(dir.path()).with_limits(limits)).unwrap();
    let ctx = Context::new();
    let k = Key::new("k").unwrap();
    store.set(&ctx, &k, "v").await.unwrap();
    let rev = store.revision();

    let e = store.set(&ctx, &k, "far too long").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ValueTooLarge { size: 12, max: 8 });
    let long = Key::new("x".repeat(17)).unwrap();
    let e = store.set(&ctx, &long, "v").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey);
    let e = store
        .set_with_ttl(&ctx, &k, "v", Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // A batch with one bad operation is rejected whole, before any I/O.
    let batch = Batch::new()
        .put(Key::new("a").unwrap(), "1")
        .put(long.clone(), "2");
    assert_eq!(
        store.apply(&ctx, batch).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    // A failed condition in a batch writes nothing either.
    let batch = Batch::new().put(Key::new("a").unwrap(), "1").put_with(
        k.clone(),
        "2",
        kvmap_core::PutOptions::create(),
    );
    let e = store.apply(&ctx, batch).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(e.key(), Some("k"));
    assert_eq!(store.revision(), rev);
    assert_eq!(store.get(&ctx, &k).await.unwrap().unwrap().value, "v");
    assert!(store
        .get(&ctx, &Key::new("a").unwrap())
        .await
        .unwrap()
        .is_none());
}

/// A process killed while creating the database leaves a temporary
/// options file behind; RocksDB ignores it, and so must the OPTIONS check
/// (found by the checked histories, whose writer child is SIGKILLed at
/// random moments, the first open included).
#[test]
fn a_leftover_temporary_options_file_does_not_block_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("OPTIONS-000005.dbtmp"), b"half written").unwrap();
    let store = open(dir.path()).unwrap();
    drop(store);
    // And after a complete open the real OPTIONS file is checked as before.
    open(dir.path()).unwrap();
}
