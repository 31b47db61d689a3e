//! The `kvmap` binary end to end on an embedded RocksDB database.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests

use std::process::{Command, Output};

fn kvmap(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvmap"))
        .arg("--url")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn put_get_list_delete_persist_across_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    let o = kvmap(&url, &["put", "users/ada", "hello"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).starts_with("revision "), "{o:?}");

    let o = kvmap(&url, &["get", "users/ada"]);
    assert_eq!(stdout(&o).trim(), "hello");

    kvmap(&url, &["put", "users/bob", "hi"]);
    let o = kvmap(&url, &["list", "users/", "--keys-only"]);
    assert_eq!(stdout(&o), "users/ada\nusers/bob\n");

    let o = kvmap(&url, &["put", "users/ada", "again", "--create"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("key already exists"), "{err}");

    let o = kvmap(&url, &["delete", "users/ada"]);
    assert_eq!(stdout(&o).trim(), "deleted");
    let o = kvmap(&url, &["get", "users/ada"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
}

#[test]
fn watch_replays_from_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    kvmap(&url, &["put", "w/a", "1"]);
    kvmap(&url, &["put", "w/b", "2"]);
    let o = kvmap(
        &url,
        &["watch", "w/", "--from-revision", "1", "--count", "2"],
    );
    let out = stdout(&o);
    assert!(
        out.contains("put     w/a") && out.contains("put     w/b"),
        "{out}"
    );
}

#[test]
fn info_shows_capabilities() {
    let o = kvmap("memory:", &["info"]);
    let out = stdout(&o);
    assert!(out.contains("backend: memory"), "{out}");
    assert!(out.contains("compare-and-swap"), "{out}");
}

#[test]
fn demo_runs_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    let o = kvmap(&url, &["demo"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("revision conflict"), "{out}");
    assert!(out.contains("expired "), "{out}");
    assert!(out.contains("done: 8 events"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let o = kvmap("nosuch://x", &["info"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: kvmap: open: invalid argument"),
        "{err}"
    );

    let o = kvmap("memory:", &["get", "/leading-slash"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("invalid key"), "{err}");
}

#[test]
fn locked_database_is_reported() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    kvmap(&url, &["put", "x/a", "1"]);
    // A watcher replaying from revision 1 prints once it holds the database.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_kvmap"))
        .args(["--url", &url, "watch", "x/", "--from-revision", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(watcher.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("x/a"), "{first}");
    let o = kvmap(&url, &["get", "x/a"]);
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rocksdb: open") && err.contains("locked"),
        "{err}"
    );
}
