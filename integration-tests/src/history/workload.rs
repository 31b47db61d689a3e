//! The workload that records histories: concurrent clients running get /
//! put / create / compare-and-swap / delete on a few keys of any
//! [`KvStore`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmap_core::{Context, DeleteOptions, Error, ErrorKind, Key, KvStore, PutOptions, RetryClass};
use rand::Rng;
use tokio::sync::RwLock;

use super::{Command, Operation, Outcome, PutCond, Refusal, Revision, ValueId};

/// The value id recorded for a read of bytes the workload never wrote.
pub const FOREIGN_VALUE: ValueId = ValueId::MAX - 1;

/// Records operations with invoke and return times on one monotonic clock.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// The time since the recorder started.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records an operation.
    pub fn record(&self, op: Operation) {
        self.ops.lock().expect("recorder lock poisoned").push(op);
    }

    /// The operations recorded so far.
    pub fn take(&self) -> Vec<Operation> {
        std::mem::take(&mut *self.ops.lock().expect("recorder lock poisoned"))
    }
}

/// The store the clients use, replaceable mid-run (a reopen fault): each
/// operation holds a read lock for its duration, so [`StoreSlot::reopen`]
/// waits for the operations in flight, drops the store, and opens the next
/// one while new operations wait.
#[derive(Debug)]
pub struct StoreSlot(RwLock<Option<Arc<dyn KvStore>>>);

impl StoreSlot {
    /// A slot holding `store`.
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        Self(RwLock::new(Some(store)))
    }

    /// Drops the current store (the slot must hold the only reference for
    /// that to close it), then puts the one `open` returns.
    ///
    /// # Errors
    /// The error of `open`; the slot is then empty and operations fail
    /// (and are dropped from the history) until the next reopen.
    pub async fn reopen<F, Fut>(&self, open: F) -> anyhow::Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Arc<dyn KvStore>>>,
    {
        let mut slot = self.0.write().await;
        drop(slot.take());
        *slot = Some(open().await?);
        Ok(())
    }
}

/// Which keys a history uses: called with the history's number.
pub type KeyNames = Arc<dyn Fn(usize) -> Vec<String> + Send + Sync>;

/// Settings of [`run`].
#[derive(Clone)]
pub struct WorkloadConfig {
    /// Concurrent clients.
    pub clients: usize,
    /// The keys of history `n` (each key's operations are one history).
    pub keys: KeyNames,
    /// Operations per key before the clients move to the next history's
    /// keys (bounds the checker's work; a few more may be in flight).
    pub ops_per_key: usize,
    /// Most histories (rounds of keys) to run.
    pub max_rounds: usize,
    /// Client-side timeout of one operation: a write still running then
    /// has an unknown outcome.
    pub op_timeout: Duration,
    /// Each client sleeps a random time up to this between operations.
    pub think: Duration,
    /// Each client sleeps this long after an error.
    pub error_pause: Duration,
}

impl std::fmt::Debug for WorkloadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadConfig")
            .field("clients", &self.clients)
            .field("ops_per_key", &self.ops_per_key)
            .field("max_rounds", &self.max_rounds)
            .field("op_timeout", &self.op_timeout)
            .field("think", &self.think)
            .field("error_pause", &self.error_pause)
            .finish_non_exhaustive()
    }
}

impl WorkloadConfig {
    /// `keys` keys per history named `{prefix}/h{n}/k{j}`, 4 clients, 200
    /// operations per key, one history, 2 s op timeout, no think time.
    pub fn new(prefix: &str, keys: usize) -> Self {
        let prefix = prefix.to_owned();
        Self {
            clients: 4,
            keys: Arc::new(move |n| (0..keys).map(|j| format!("{prefix}/h{n}/k{j}")).collect()),
            ops_per_key: 200,
            max_rounds: 1,
            op_timeout: Duration::from_secs(2),
            think: Duration::ZERO,
            error_pause: Duration::from_millis(20),
        }
    }
}

/// What a run did, beyond the history.
#[derive(Debug, Default, Clone)]
pub struct WorkloadStats {
    /// Histories (rounds of keys) started.
    pub rounds: usize,
    /// Operations recorded (including unknown-outcome ones).
    pub recorded: usize,
    /// Recorded operations with an unknown outcome.
    pub unknown: usize,
    /// Operations dropped (failed with nothing done, or reads that failed).
    pub dropped: usize,
    /// Errors by `op kind retry-class`, for the report.
    pub errors: BTreeMap<String, usize>,
}

struct Rounds {
    round: usize,
    keys: Vec<String>,
    counts: Vec<usize>,
}

/// How one call ended, before it becomes an [`Outcome`].
#[derive(Clone, Copy)]
enum Classified {
    Outcome(Outcome),
    Dropped,
}

/// Whether an error of a write promises that nothing was written.
fn nothing_happened(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::InvalidKey
        | ErrorKind::InvalidArgument
        | ErrorKind::ValueTooLarge { .. }
        | ErrorKind::Unsupported { .. } => true,
        ErrorKind::Timeout | ErrorKind::DeadlineExceeded | ErrorKind::Cancelled => false,
        _ => e.retry_class() == RetryClass::Safe,
    }
}

fn classify_error(command: Command, e: &Error) -> Classified {
    if !command.is_write() {
        return Classified::Dropped;
    }
    match (command, e.kind()) {
        (Command::Put { .. }, ErrorKind::AlreadyExists) => {
            Classified::Outcome(Outcome::Refused(Refusal::AlreadyExists))
        }
        (_, ErrorKind::Conflict { current }) => {
            Classified::Outcome(Outcome::Refused(Refusal::Conflict { current }))
        }
        _ if nothing_happened(e) => Classified::Dropped,
        _ => Classified::Outcome(Outcome::Unknown),
    }
}

fn parse_value(bytes: &[u8]) -> ValueId {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(FOREIGN_VALUE)
}

async fn execute(
    store: &dyn KvStore,
    ctx: &Context,
    key: &Key,
    command: Command,
) -> Result<Outcome, Error> {
    match command {
        Command::Get => Ok(Outcome::Read(
            store
                .get(ctx, key)
                .await?
                .map(|e| (parse_value(&e.value), e.revision)),
        )),
        Command::Put { value, cond } => {
            let options = match cond {
                PutCond::Overwrite => PutOptions::overwrite(),
                PutCond::Create => PutOptions::create(),
                PutCond::IfRevision(r) => PutOptions::update(r),
            };
            let bytes = kvmap_core::Bytes::from(format!("v{value}"));
            Ok(Outcome::Written(store.put(ctx, key, bytes, options).await?))
        }
        Command::Delete { if_revision } => {
            let options = match if_revision {
                Some(r) => DeleteOptions::if_revision(r),
                None => DeleteOptions::default(),
            };
            Ok(Outcome::Deleted(store.delete(ctx, key, options).await?))
        }
    }
}

fn error_label(command: Command, e: &Error) -> String {
    let op = match command {
        Command::Get => "get",
        Command::Put { .. } => "put",
        Command::Delete { .. } => "delete",
    };
    let mut kind = format!("{:?}", e.kind());
    if let Some(i) = kind.find([' ', '{', '(']) {
        kind.truncate(i);
    }
    format!("{op} {kind} {:?}", e.retry_class())
}

/// Runs the workload until `max_rounds` histories are done or `stop` is
/// set, and returns every recorded operation with the run's figures.
///
/// # Panics
/// If a key name is not a valid kvmap key.
pub async fn run(
    slot: Arc<StoreSlot>,
    config: WorkloadConfig,
    stop: Arc<AtomicBool>,
) -> (Vec<Operation>, WorkloadStats) {
    let recorder = Arc::new(Recorder::new());
    let first = (config.keys)(0);
    let rounds = Arc::new(Mutex::new(Rounds {
        round: 0,
        counts: vec![0; first.len()],
        keys: first,
    }));
    let next_value = Arc::new(AtomicU64::new(1));
    let stats = Arc::new(Mutex::new(WorkloadStats {
        rounds: 1,
        ..WorkloadStats::default()
    }));
    let mut tasks = Vec::new();
    for client in 0..config.clients {
        let (slot, config, stop, recorder, rounds, next_value, stats) = (
            slot.clone(),
            config.clone(),
            stop.clone(),
            recorder.clone(),
            rounds.clone(),
            next_value.clone(),
            stats.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let ctx = Context::new();
            let mut seen: HashMap<String, Option<Revision>> = HashMap::new();
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = {
                    let mut r = rounds.lock().expect("rounds lock poisoned");
                    if r.counts.iter().all(|&c| c >= config.ops_per_key) {
                        r.round += 1;
                        if r.round >= config.max_rounds {
                            break;
                        }
                        r.keys = (config.keys)(r.round);
                        r.counts = vec![0; r.keys.len()];
                        stats.lock().expect("stats lock poisoned").rounds += 1;
                    }
                    if r.round >= config.max_rounds {
                        break;
                    }
                    let open: Vec<usize> = (0..r.keys.len())
                        .filter(|&j| r.counts[j] < config.ops_per_key)
                        .collect();
                    let j = open[rand::rng().random_range(0..open.len())];
                    r.counts[j] += 1;
                    r.keys[j].clone()
                };
                let known = seen.get(&key).copied().flatten();
                let command = {
                    let mut rng = rand::rng();
                    let roll = rng.random_range(0..100);
                    let value = next_value.fetch_add(1, Ordering::Relaxed);
                    match (roll, known) {
                        (0..35, _) => Command::Get,
                        (35..55, _) => Command::Put {
                            value,
                            cond: PutCond::Overwrite,
                        },
                        (55..80, Some(r)) => Command::Put {
                            value,
                            cond: PutCond::IfRevision(r),
                        },
                        (55..80, None) => Command::Get,
                        (80..85, _) => Command::Put {
                            value,
                            cond: PutCond::Create,
                        },
                        (85..95, _) => Command::Delete { if_revision: None },
                        (_, Some(r)) => Command::Delete {
                            if_revision: Some(r),
                        },
                        (_, None) => Command::Get,
                    }
                };
                let k = Key::new(&key).expect("workload key names are valid keys");
                let invoke = recorder.now();
                let result = tokio::time::timeout(config.op_timeout, async {
                    let guard = slot.0.read().await;
                    match guard.as_ref() {
                        Some(store) => execute(store.as_ref(), &ctx, &k, command).await,
                        None => Err(Error::new(ErrorKind::Unavailable)
                            .with_detail("store closed")
                            .with_retry(RetryClass::Safe)),
                    }
                })
                .await;
                let ret = recorder.now();
                let classified = match &result {
                    Ok(Ok(outcome)) => Classified::Outcome(*outcome),
                    Ok(Err(e)) => {
                        *stats
                            .lock()
                            .expect("stats lock poisoned")
                            .errors
                            .entry(error_label(command, e))
                            .or_default() += 1;
                        classify_error(command, e)
                    }
                    Err(_elapsed) => {
                        *stats
                            .lock()
                            .expect("stats lock poisoned")
                            .errors
                            .entry("client timeout".into())
                            .or_default() += 1;
                        if command.is_write() {
                            Classified::Outcome(Outcome::Unknown)
                        } else {
                            Classified::Dropped
                        }
                    }
                };
                match classified {
                    Classified::Dropped => {
                        stats.lock().expect("stats lock poisoned").dropped += 1;
                    }
                    Classified::Outcome(outcome) => {
                        match outcome {
                            Outcome::Read(r) => {
                                seen.insert(key.clone(), r.map(|(_, rev)| rev));
                            }
                            Outcome::Written(r) => {
                                seen.insert(key.clone(), Some(r));
                            }
                            Outcome::Deleted(_) => {
                                seen.insert(key.clone(), None);
                            }
                            Outcome::Refused(Refusal::Conflict { current }) => {
                                seen.insert(key.clone(), current);
                            }
                            Outcome::Refused(Refusal::AlreadyExists) | Outcome::Unknown => {}
                        }
                        {
                            let mut s = stats.lock().expect("stats lock poisoned");
                            s.recorded += 1;
                            if outcome == Outcome::Unknown {
                                s.unknown += 1;
                            }
                        }
                        recorder.record(Operation {
                            client,
                            key,
                            command,
                            outcome,
                            invoke,
                            ret: (outcome != Outcome::Unknown).then_some(ret),
                        });
                    }
                }
                if result.as_ref().is_ok_and(|r| r.is_ok())
                    || matches!(classified, Classified::Outcome(Outcome::Refused(_)))
                {
                    if !config.think.is_zero() {
                        let t = rand::rng().random_range(Duration::ZERO..=config.think);
                        tokio::time::sleep(t).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                } else {
                    tokio::time::sleep(config.error_pause).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("workload client panicked");
    }
    let stats = stats.lock().expect("stats lock poisoned").clone();
    (recorder.take(), stats)
}
