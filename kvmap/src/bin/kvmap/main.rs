//! `kvmap`: read, write, list and watch any kvmap store from the shell.

mod commands;
mod demo;
mod exit;
mod lock;
mod output;
mod tour;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Read, write, list and watch a kvmap store.
#[derive(Parser, Debug)]
#[command(name = "kvmap", version, about, after_help = exit::after_help())]
struct Cli {
    /// The store to open. Repeat it to build a fallback chain: the first
    /// is the primary, the others its fallbacks in order.
    #[arg(
        long,
        env = "KVMAP_URL",
        default_value = "rocksdb:./kvmap-data",
        global = true
    )]
    url: Vec<String>,
    /// The write policy of a chain (several --url): reject, write-through
    /// or outbox (needs --outbox).
    #[arg(long, default_value = "write-through", global = true)]
    write_policy: String,
    /// The outbox directory of a chain with the outbox write policy.
    #[arg(long, global = true)]
    outbox: Option<std::path::PathBuf>,
    /// How results are printed: text, or json (one document per result,
    /// JSON lines for list and watch; errors stay text on stderr).
    #[arg(long, value_enum, default_value_t = output::Format::Text, global = true)]
    output: output::Format,
    /// Per-call timeout (e.g. 500ms, 5s).
    #[arg(long, value_parser = parse_duration, default_value = "10s", global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The fallback demo: a real redis-server primary with an embedded
    /// RocksDB fallback and outbox, faults injected on a schedule, breakers,
    /// /metrics, a timeline picture and a checked summary.
    Demo(demo::DemoArgs),
    /// Walk through the whole contract on one store: writes,
    /// compare-and-swap, TTL, list and watch.
    Tour,
    /// Print a key's value (and revision with --verbose); exit status 3
    /// and nothing on stdout if the key is absent.
    Get {
        /// The key.
        key: String,
        /// Also print revision, create revision and expiry.
        #[arg(short, long, conflicts_with = "raw")]
        verbose: bool,
        /// Write the value's bytes exactly as stored (no newline, no
        /// UTF-8 conversion), e.g. for binary values.
        #[arg(long)]
        raw: bool,
    },
    /// Write a value; prints the new revision.
    Put {
        /// The key.
        key: String,
        /// The value (or use --value-file).
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value's bytes from this file (`-`: standard input);
        /// binary-safe.
        #[arg(long, conflicts_with = "value")]
        value_file: Option<std::path::PathBuf>,
        /// Expire after this long (e.g. 30s).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Fail if the key exists.
        #[arg(long, conflicts_with = "if_revision")]
        create: bool,
        /// Write only if the key's revision is this one.
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Delete a key; exit status 3 if it was absent.
    Delete {
        /// The key.
        key: String,
        /// Delete only if the key's revision is this one.
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// List keys under a prefix, in order.
    List {
        /// The prefix (empty: everything).
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many entries; when more follow, stderr says so.
        #[arg(long, default_value_t = 100, conflicts_with = "all")]
        limit: usize,
        /// Every entry under the prefix, page by page.
        #[arg(long)]
        all: bool,
        /// Keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Stream changes under a prefix until interrupted.
    Watch {
        /// The prefix (empty: everything).
        #[arg(default_value = "")]
        prefix: String,
        /// Replay changes from this revision.
        #[arg(long)]
        from_revision: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Show the store's capabilities and limits.
    Info,
    /// Run a command while holding a lock on KEY.
    ///
    /// The command gets the lock's fencing token in KVMAP_FENCING_TOKEN
    /// (and the key in KVMAP_LOCK_KEY); pass it along with every write to
    /// a shared resource so the resource can reject a stale holder. The
    /// lease is renewed in the background; if it is lost, the command gets
    /// SIGTERM (SIGKILL after --kill-grace).
    ///
    /// Exit status: the command's own; 75 if the lock could not be taken
    /// (held by another holder when --wait ran out); 76 if the lease was
    /// lost while the command ran (the command was terminated); other
    /// errors as in the table of `kvmap --help`.
    #[command(
        after_help = "example: kvmap --url redis://127.0.0.1:6379 lock jobs/migrate --ttl 15s -- ./migrate.sh"
    )]
    Lock(lock::LockArgs),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Demo(args) => return demo::run(args).await,
        Command::Lock(args) => {
            return lock::run(&cli.url, &cli.write_policy, cli.outbox.as_deref(), args).await
        }
        _ => cli,
    };
    // Read-only commands never create a RocksDB database.
    let read_only = matches!(
        cli.command,
        Command::Get { .. } | Command::List { .. } | Command::Watch { .. } | Command::Info
    );
    let urls: Vec<String> = if read_only {
        cli.url.iter().map(|u| commands::never_create(u)).collect()
    } else {
        cli.url.clone()
    };
    let result = match commands::open(&urls, &cli.write_policy, cli.outbox.as_deref()).await {
        Ok(store) => commands::run(store, cli.command, cli.timeout, cli.output).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(commands::Outcome::Done) => ExitCode::SUCCESS,
        Ok(commands::Outcome::Absent) => ExitCode::from(exit::NOT_FOUND),
        Err(e) => exit::report(&e),
    }
}
