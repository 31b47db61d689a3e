//! `kvmap lock KEY -- COMMAND`: runs a command while holding a lock.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use kvmap::{Context, ErrorKind, Key, LockOptions};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

/// Exit status when the lock could not be taken.
pub(crate) const EXIT_BUSY: u8 = 75;
/// Exit status when the lease was lost while the command ran.
pub(crate) const EXIT_LOST: u8 = 76;

/// Arguments of `kvmap lock`.
#[derive(clap::Args, Debug)]
pub(crate) struct LockArgs {
    /// The key to lock.
    key: String,
    /// The lease's time to live; renewed every third of it while the
    /// command runs.
    #[arg(long, value_parser = crate::parse_duration, default_value = "15s")]
    ttl: Duration,
    /// Wait at most this long for a held lock (0: try once). Without it,
    /// waits until the lock is free or the process is interrupted.
    #[arg(long, value_parser = crate::parse_duration)]
    wait: Option<Duration>,
    /// After SIGTERM to a command whose lease is lost, SIGKILL it after
    /// this long.
    #[arg(long, value_parser = crate::parse_duration, default_value = "5s")]
    kill_grace: Duration,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs `kvmap lock`.
pub(crate) async fn run(
    urls: &[String],
    policy: &str,
    outbox: Option<&Path>,
    args: LockArgs,
) -> ExitCode {
    match hold(urls, policy, outbox, args).await {
        Ok(code) => code,
        // `Locked` exits 75 (`EXIT_BUSY`); the rest by the table of `kvmap --help`.
        Err(e) => crate::exit::report(&e),
    }
}

async fn hold(
    urls: &[String],
    policy: &str,
    outbox: Option<&Path>,
    args: LockArgs,
) -> kvmap::Result<ExitCode> {
    let key = Key::new(args.key)?;
    let Some((program, rest)) = args.command.split_first() else {
        return Err(kvmap::Error::new(ErrorKind::InvalidArgument)
            .with_op(kvmap::Op::Lock)
            .with_detail("no command given after --"));
    };
    let store = crate::commands::open(urls, policy, outbox).await?;
    let mut options = LockOptions::new(args.ttl);
    options.wait = args.wait;
    // Interrupting the wait (Ctrl-C) cancels it cleanly.
    let cancel = kvmap::CancellationToken::new();
    let ctx = Context::new().with_cancel(cancel.clone());
    let waiting = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let guard = store.lock(&ctx, &key, options).await;
    waiting.abort();
    let guard = guard?;
    let token = guard.token();
    let spawned = Command::new(program)
        .args(rest)
        .env("KVMAP_FENCING_TOKEN", token.to_string())
        .env("KVMAP_LOCK_KEY", key.as_str())
        .kill_on_drop(true)
        // Its own process group, so that a lost lease ends the whole
        // command (a shell's children too), not just its first process.
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.release().await;
            return Err(kvmap::Error::new(ErrorKind::InvalidArgument)
                .with_backend(store.name().to_owned())
                .with_op(kvmap::Op::Lock)
                .with_key(key.as_str())
                .with_detail(format!("cannot start {program:?}: {e}")));
        }
    };
    let group = group_of(&child);
    // SIGTERM and SIGINT to kvmap go on to the command's process group;
    // kvmap releases the lock when the command has ended.
    let signal = |kind: tokio::signal::unix::SignalKind| {
        tokio::signal::unix::signal(kind).map_err(|e| {
            kvmap::Error::new(ErrorKind::Internal)
                .with_op(kvmap::Op::Lock)
                .with_detail(format!("cannot handle signals: {e}"))
        })
    };
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            status = child.wait() => {
                let released = guard.release().await;
                let status = status.map_err(|e| {
                    kvmap::Error::new(ErrorKind::Internal)
                        .with_op(kvmap::Op::Lock)
                        .with_detail(format!("waiting for {program:?}: {e}"))
                })?;
                if let Err(e) = released {
                    eprintln!("warning: {e} (the lease expires by its ttl)");
                }
                return Ok(exit_code(status));
            }
            Some(()) = sigterm.recv() => signal_group(group, Signal::SIGTERM),
            Some(()) = sigint.recv() => signal_group(group, Signal::SIGINT),
            () = guard.lost() => {
                let why = guard.lost_reason().unwrap_or_else(|| "unknown".into());
                eprintln!("error: lock on {key} lost ({why}); terminating {program:?}");
                terminate(&mut child, group, args.kill_grace).await;
                return Ok(ExitCode::from(EXIT_LOST));
            }
        }
    }
}

/// The command's process group id (its pid: it leads its own group).
fn group_of(child: &tokio::process::Child) -> Option<Pid> {
    child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
}

/// Sends `sig` to the command's process group.
fn signal_group(group: Option<Pid>, sig: Signal) {
    if let Some(g) = group {
        let _ = killpg(g, sig);
    }
}

/// SIGTERM to the command's process group, then SIGKILL after `grace`
/// (also to what the command left behind in its group).
async fn terminate(child: &mut tokio::process::Child, group: Option<Pid>, grace: Duration) {
    signal_group(group, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    signal_group(group, Signal::SIGKILL);
}

/// The command's exit status as ours (128 + signal for a killed command).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}
