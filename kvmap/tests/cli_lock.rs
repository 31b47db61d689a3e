//! `kvmap lock KEY -- COMMAND` end to end: on RocksDB (one process), and
//! across processes on a real `redis-server` child: contention, hand-over,
//! and a holder paused (SIGSTOP) beyond its TTL whose lease is lost and
//! whose fencing token a fenced resource rejects.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests

#[allow(dead_code)]
#[path = "../../kvmap-fallback/tests/common/redis.rs"]
mod redis;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvmap::{Context, Fence, FencingToken, Key, LockOptions};

fn kvmap(url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmap"));
    c.arg("--url").arg(url).args(args);
    c
}

fn run(url: &str, args: &[&str]) -> Output {
    kvmap(url, args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn token_of(o: &Output) -> u64 {
    stdout(o)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no token in {o:?}"))
}

#[test]
fn runs_the_command_with_the_token_and_passes_its_status_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rocksdb:{}", dir.path().join("db").display());
    let print = [
        "lock",
        "jobs/a",
        "--",
        "sh",
        "-c",
        "echo $KVMAP_FENCING_TOKEN",
    ];
    let first = run(&url, &print);
    assert!(first.status.success(), "{first:?}");
    // Tokens keep increasing across invocations (reopen of the database).
    let second = run(&url, &print);
    assert!(token_of(&second) > token_of(&first), "{first:?} {second:?}");

    let o = run(
        &url,
        &[
            "lock",
            "jobs/a",
            "--",
            "sh",
            "-c",
            "test \"$KVMAP_LOCK_KEY\" = jobs/a && exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{o:?}");

    // Bad input: a clear error, status 6 (2 for usage errors), and the
    // command never runs.
    let ran = dir.path().join("ran");
    let ran = ran.to_str().unwrap();
    let o = run(&url, &["lock", "jobs/a", "--ttl", "0s", "--", "touch", ran]);
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("lock ttl"),
        "{o:?}"
    );
    assert!(!Path::new(ran).exists());
    let o = run(&url, &["lock", "jobs/a"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = run(&url, &["lock", "jobs/a", "--", "/nonexistent/program"]);
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot start"),
        "{o:?}"
    );
}

/// Waits until `path` holds a line, returns it.
fn wait_line(path: &Path, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s.trim().to_owned();
            }
        }
        assert!(
            start.elapsed() < within,
            "{} not written within {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn holder(url: &str, ttl: &str, started: &Path, sleep: &str) -> Child {
    let script = format!(
        "echo $KVMAP_FENCING_TOKEN > {}; sleep {sleep}",
        started.display()
    );
    kvmap(
        url,
        &[
            "lock",
            "jobs/shared",
            "--ttl",
            ttl,
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn excludes_other_processes_and_hands_over_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = redis::server_or_skip(dir.path()) else {
        return;
    };
    let url = server.url();
    let started = dir.path().join("started");
    let mut first = holder(&url, "5s", &started, "2");
    let t1: u64 = wait_line(&started, Duration::from_secs(20))
        .parse()
        .unwrap();

    // A try-lock while it is held: status 75, the command never runs.
    let ran = dir.path().join("ran");
    let o = run(
        &url,
        &[
            "lock",
            "jobs/shared",
            "--wait",
            "0s",
            "--",
            "touch",
            ran.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(75), "{o:?}");
    assert!(!ran.exists());

    // A waiter gets it once the first command has ended, with a higher token.
    let o = run(
        &url,
        &[
            "lock",
            "jobs/shared",
            "--wait",
            "30s",
            "--",
            "sh",
            "-c",
            "echo $KVMAP_FENCING_TOKEN",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert!(token_of(&o) > t1, "{o:?} after {t1}");
    assert!(first.wait().unwrap().success());
}

#[test]
fn a_paused_holder_loses_the_lock_and_its_token_is_fenced_off_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = redis::server_or_skip(dir.path()) else {
        return;
    };
    let url = server.url();
    let started = dir.path().join("started");
    // A 1 s lease; the command would run for a minute.
    let mut stale = holder(&url, "1s", &started, "60");
    let stale_token = FencingToken::new(
        wait_line(&started, Duration::from_secs(20))
            .parse()
            .unwrap(),
    );
    let fence = Fence::new();
    assert!(fence.admit(stale_token));

    // The holder process is paused beyond its TTL.
    signal(&stale, "-STOP");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let new_token = rt.block_on(async {
        let store = kvmap::open(&url).await.unwrap();
        let key = Key::new("jobs/shared").unwrap();
        let ctx = Context::new().with_timeout(Duration::from_secs(20));
        let paused = Instant::now();
        let guard = store
            .lock(&ctx, &key, LockOptions::new(Duration::from_secs(5)))
            .await
            .unwrap();
        eprintln!(
            "next holder acquired {:?} after the pause (ttl 1s)",
            paused.elapsed()
        );
        let t = guard.token();
        // The successor writes to the fenced resource.
        assert!(fence.admit(t));
        // Resumed, the stale holder notices at once and ends its command.
        signal(&stale, "-CONT");
        let resumed = Instant::now();
        let status = tokio::task::spawn_blocking(move || {
            let s = stale.wait().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(&mut stale.stderr.take().unwrap(), &mut err).unwrap();
            (s, err)
        })
        .await
        .unwrap();
        eprintln!("stale holder ended {:?} after resuming", resumed.elapsed());
        assert_eq!(status.0.code(), Some(76), "stale holder: {status:?}");
        assert!(status.1.contains("lost"), "{}", status.1);
        // The new holder still holds the lock.
        assert!(!guard.is_lost());
        guard.release().await.unwrap();
        t
    });
    assert!(new_token > stale_token);
    // Any write the stale holder still makes with its token is refused.
    assert!(!fence.admit(stale_token));
    assert_eq!(fence.highest(), Some(new_token));
}
