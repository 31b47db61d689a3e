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
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("key already exists"), "{err}");

    let o = kvmap(&url, &["delete", "users/ada"]);
    assert_eq!(stdout(&o).trim(), "deleted");
    let o = kvmap(&url, &["get", "users/ada"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(stdout(&o), "");
    let o = kvmap(&url, &["delete", "users/ada"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(stdout(&o), "");
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn exit_status_by_error_class() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());

    // 3: not found, nothing on stdout (in a database that exists).
    assert_eq!(code(&kvmap(&url, &["put", "other", "x"])), Some(0));
    let o = kvmap(&url, &["get", "missing"]);
    assert_eq!(code(&o), Some(3), "{o:?}");
    assert_eq!(stdout(&o), "");

    // 4: precondition failed (create on an existing key, stale revision).
    let o = kvmap(&url, &["put", "k", "1"]);
    assert_eq!(code(&o), Some(0), "{o:?}");
    let rev: u64 = stdout(&o)
        .trim()
        .trim_start_matches("revision ")
        .parse()
        .unwrap();
    let o = kvmap(&url, &["put", "k", "2", "--create"]);
    assert_eq!(code(&o), Some(4), "{o:?}");
    let o = kvmap(&url, &["put", "k", "2", "--if-revision", &rev.to_string()]);
    assert_eq!(code(&o), Some(0), "{o:?}");
    let o = kvmap(&url, &["put", "k", "3", "--if-revision", &rev.to_string()]);
    assert_eq!(code(&o), Some(4), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("revision conflict"),
        "{o:?}"
    );
    let o = kvmap(&url, &["delete", "k", "--if-revision", &rev.to_string()]);
    assert_eq!(code(&o), Some(4), "{o:?}");
    let o = kvmap(&url, &["get", "k"]);
    assert_eq!(stdout(&o).trim(), "2");

    // 6: bad input (a key with a leading "/", an unknown url scheme).
    let o = kvmap(&url, &["get", "/leading-slash"]);
    assert_eq!(code(&o), Some(6), "{o:?}");
    let o = kvmap(&url, &["put", "/leading-slash", "v"]);
    assert_eq!(code(&o), Some(6), "{o:?}");
    let o = kvmap("nosuch://x", &["info"]);
    assert_eq!(code(&o), Some(6), "{o:?}");

    // 2: usage (clap's own).
    let o = kvmap(&url, &["put", "k"]);
    assert_eq!(code(&o), Some(2), "{o:?}");
}

#[test]
fn unreachable_store_exits_5() {
    let o = kvmap("redis://127.0.0.1:1", &["--timeout", "500ms", "get", "k"]);
    assert_eq!(code(&o), Some(5), "{o:?}");
    assert_eq!(stdout(&o), "");
    let o = kvmap(
        "redis://127.0.0.1:1",
        &["--timeout", "500ms", "put", "k", "v"],
    );
    assert_eq!(code(&o), Some(5), "{o:?}");
}

#[test]
fn help_lists_the_exit_statuses() {
    let o = Command::new(env!("CARGO_BIN_EXE_kvmap"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    // The url forms are still there.
    assert!(out.contains("redis+cluster://"), "{out}");
    assert!(out.contains("exit status:"), "{out}");
    for line in [
        "0  success",
        "1  other error",
        "2  usage error",
        "3  not found",
        "4  precondition failed",
        "5  unavailable or timed out",
        "6  bad input",
        "7  unauthenticated or permission denied",
        "8  unsupported",
        "9  invalid data on the server",
        "75 lock held past --wait",
        "76 lease lost",
    ] {
        assert!(out.contains(line), "{line:?} missing in\n{out}");
    }
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
fn tour_runs_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    let o = kvmap(&url, &["tour"]);
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
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rocksdb: open") && err.contains("locked"),
        "{err}"
    );
}

/// The fallback demo on a short schedule, as CI runs it: a real
/// redis-server child when installed (else the simulated primary, which
/// the first line names), faults injected, and its checked summary.
#[test]
fn fallback_demo_summary_passes() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kvmap"))
        .args(["demo", "--duration", "8s", "--plain", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}\n{err}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("kvmap demo: "), "{first}");
    if !first.contains("redis-server") {
        eprintln!("note: no redis-server; the demo ran on its simulated primary");
    }
    assert!(out.contains("summary: ok"), "{out}");
    assert!(out.contains("conflicts reported: 1"), "{out}");
    assert!(dir.path().join("timeline.svg").is_file());
    assert!(!out.contains('\x1b'), "ansi escapes in --plain output");
}

/// The demo's stand-in primary (what it uses when no redis-server can be
/// found): a second RocksDB behind a fault-injection layer.
#[test]
fn fallback_demo_on_the_simulated_primary() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kvmap"))
        .args([
            "demo",
            "--duration",
            "6s",
            "--plain",
            "--simulated-primary",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.lines()
            .next()
            .unwrap_or_default()
            .contains("fault-injection layer"),
        "{out}"
    );
    assert!(out.contains("summary: ok"), "{out}");
}

#[test]
fn a_chain_from_repeated_urls() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!("rocksdb:{}", dir.path().join("a").display());
    let b = format!("rocksdb:{}", dir.path().join("b").display());
    let o = Command::new(env!("CARGO_BIN_EXE_kvmap"))
        .args(["--url", &a, "--url", &b, "put", "k", "v"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // Write-through: the value is on the second store too.
    let o = kvmap(&b, &["get", "k"]);
    assert_eq!(stdout(&o).trim(), "v");
}

#[test]
fn binary_values_from_a_file_or_stdin_and_raw_output() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, b'\n']).collect();
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &bytes).unwrap();
    let o = kvmap(
        &url,
        &["put", "bin", "--value-file", file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{o:?}");
    let o = kvmap(&url, &["get", "bin", "--raw"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, bytes);

    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmap"))
        .args(["--url", &url, "put", "stdin", "--value-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes[..10]).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let o = kvmap(&url, &["get", "stdin", "--raw"]);
    assert_eq!(o.stdout, &bytes[..10]);

    // Neither a value nor a file: a usage error; a missing file: bad input.
    assert_eq!(kvmap(&url, &["put", "k"]).status.code(), Some(2));
    let o = kvmap(&url, &["put", "k", "--value-file", "/nonexistent/file"]);
    assert_eq!(o.status.code(), Some(6), "{o:?}");
}

#[test]
fn list_says_when_it_stopped_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    for i in 0..5 {
        kvmap(&url, &["put", &format!("l/{i}"), "v"]);
    }
    let o = kvmap(&url, &["list", "l/", "--limit", "3", "--keys-only"]);
    assert_eq!(stdout(&o), "l/0\nl/1\nl/2\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("more entries follow"),
        "{o:?}"
    );
    // Exactly at the limit: no notice.
    let o = kvmap(&url, &["list", "l/", "--limit", "5", "--keys-only"]);
    assert_eq!(stdout(&o).lines().count(), 5);
    assert!(o.stderr.is_empty(), "{o:?}");
    let o = kvmap(&url, &["list", "l/", "--all", "--keys-only"]);
    assert_eq!(stdout(&o).lines().count(), 5);
    assert!(o.stderr.is_empty(), "{o:?}");
}

#[test]
fn read_only_commands_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let url = format!("rocksdb:{}", path.display());
    for args in [
        &["get", "k"][..],
        &["list", ""],
        &["info"],
        &["watch", "", "--count", "1"],
    ] {
        let o = kvmap(&url, args);
        assert_eq!(o.status.code(), Some(6), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("does not exist"),
            "{o:?}"
        );
        assert!(!path.exists(), "{args:?} created the database");
    }
    // A write creates it; then reads work.
    assert!(kvmap(&url, &["put", "k", "v"]).status.success());
    assert_eq!(stdout(&kvmap(&url, &["get", "k"])).trim(), "v");
}

#[test]
fn json_output_for_every_command() {
    use serde_json::Value;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    let json = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let o = kvmap(&url, &all);
        assert!(o.status.success(), "{args:?}: {o:?}");
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    };
    let put = json(&["put", "j/a", "hello", "--ttl", "1h"]);
    let rev = put[0]["revision"].as_u64().unwrap();
    let got = &json(&["get", "j/a"])[0];
    assert_eq!(got["key"], "j/a");
    assert_eq!(got["value"], "hello");
    assert_eq!(got["revision"].as_u64(), Some(rev));
    assert!(got["expires_at_unix_ms"].as_u64().is_some(), "{got}");

    let file = dir.path().join("bin");
    std::fs::write(&file, [0xff, 0x00, 0x01]).unwrap();
    json(&["put", "j/b", "--value-file", file.to_str().unwrap()]);
    assert_eq!(json(&["get", "j/b"])[0]["value_base64"], "/wAB");

    let listed = json(&["list", "j/", "--keys-only"]);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1]["key"], "j/b");
    assert!(listed[1].get("value").is_none() && listed[1].get("value_base64").is_none());

    let events = json(&["watch", "j/", "--from-revision", "1", "--count", "1"]);
    assert_eq!(events[0]["event"], "put");
    assert_eq!(events[0]["entry"]["key"], "j/a");

    let info = &json(&["info"])[0];
    assert_eq!(info["backend"], "rocksdb");
    assert_eq!(info["capabilities"]["lock"], "native");
    assert_eq!(json(&["delete", "j/a"])[0]["deleted"], true);
}
