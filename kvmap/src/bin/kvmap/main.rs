//! `kvmap`: read, write, list and watch any kvmap store from the shell.

mod commands;
mod demo;
mod tour;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Read, write, list and watch a kvmap store.
#[derive(Parser, Debug)]
#[command(name = "kvmap", version, about, after_help = kvmap::URL_FORMS)]
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
    /// Print a key's value (and revision with --verbose).
    Get {
        /// The key.
        key: String,
        /// Also print revision, create revision and expiry.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Write a value; prints the new revision.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
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
    /// Delete a key.
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
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Demo(args) = cli.command {
        return demo::run(args).await;
    }
    let result = match commands::open(&cli.url, &cli.write_policy, cli.outbox.as_deref()).await {
        Ok(store) => commands::run(store, cli.command, cli.timeout).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
