//! The shared conformance suite every backend runs (feature `conformance`).
//!
//! Each case is a plain async function over a store. A backend runs the
//! whole suite from a test binary with `harness = false`:
//!
//! ```no_run
//! // tests/conformance.rs, with `[[test]] name = "conformance" harness = false`
//! use std::sync::Arc;
//! use kvmap_core::{conformance::Suite, KvStore, MemoryStore};
//!
//! fn main() -> std::process::ExitCode {
//!     Suite::new("memory").run(|| async {
//!         Ok(Arc::new(MemoryStore::new()) as Arc<dyn KvStore>)
//!     })
//! }
//! ```
//!
//! Every case becomes its own named test, `conformance::<backend>::<case>`,
//! so a failure names both. Each case runs in its own namespace under a
//! per-run random prefix, so runs against a shared server never collide.
//!
//! Capability gating: a case for a capability the store declares checks
//! the behaviour; for an undeclared one it checks the typed
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported). A case that
//! cannot apply is reported as ignored with its reason.

mod basic;
mod batch;
mod cas;
mod context;
mod keys;
mod list;
mod lock;
mod ttl;
mod util;
mod watch;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::capability::Capabilities;
use crate::error::Result;
use crate::store::KvStore;

pub use util::Failure;

/// What a case returns: `Ok(None)` passed, `Ok(Some(reason))` skipped,
/// `Err` failed.
pub type CaseResult = std::result::Result<Option<String>, Failure>;

/// Everything a case gets.
#[derive(Clone)]
pub struct Fixture {
    /// The store under test, scoped to this case's namespace.
    pub store: Arc<dyn KvStore>,
    /// The unscoped store (for namespace-isolation cases).
    pub raw: Arc<dyn KvStore>,
    /// This case's namespace prefix on the raw store.
    pub prefix: String,
    /// The store's declared capabilities (of the scoped store).
    pub caps: Capabilities,
    /// Timing knobs.
    pub options: SuiteOptions,
}

/// Timing knobs of the suite, for backends whose TTL granularity or
/// event latency is coarser than the defaults.
#[derive(Debug, Clone, Copy)]
pub struct SuiteOptions {
    /// The TTL the TTL cases write with.
    pub ttl: Duration,
    /// How long after the TTL an expired entry may still be visible
    /// (zero for stores that hide it at once) and its expiry event may
    /// take to arrive.
    pub expiry_grace: Duration,
    /// How long to wait for an expected watch event.
    pub event_timeout: Duration,
    /// The per-watcher buffer of the store under test, if bounded and
    /// small enough to overflow in a test (enables the slow-consumer case).
    pub watch_buffer: Option<usize>,
    /// After how many changes a past revision is guaranteed compacted
    /// (enables the `Compacted` case).
    pub history_limit: Option<usize>,
    /// The TTL the lock cases lease with (at least the backend's minimum).
    pub lock_ttl: Duration,
    /// How long after its TTL an unrenewed lease may still block another
    /// holder (the backend's documented slack, e.g. Consul's session
    /// invalidation).
    pub lock_grace: Duration,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_millis(700),
            expiry_grace: Duration::from_secs(3),
            event_timeout: Duration::from_secs(10),
            watch_buffer: None,
            history_limit: None,
            lock_ttl: Duration::from_secs(1),
            lock_grace: Duration::from_secs(2),
        }
    }
}

type CaseFn = Arc<dyn Fn(Fixture) -> BoxFuture<'static, CaseResult> + Send + Sync>;

/// One named case.
#[derive(Clone)]
pub struct Case {
    /// The case name (without backend).
    pub name: &'static str,
    run: CaseFn,
}

pub(crate) fn case<F, Fut>(name: &'static str, f: F) -> Case
where
    F: Fn(Fixture) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CaseResult> + Send + 'static,
{
    Case {
        name,
        run: Arc::new(move |fx| Box::pin(f(fx))),
    }
}

/// Every case of the suite.
pub fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(basic::cases());
    all.extend(keys::cases());
    all.extend(cas::cases());
    all.extend(ttl::cases());
    all.extend(list::cases());
    all.extend(batch::cases());
    all.extend(watch::cases());
    all.extend(context::cases());
    all.extend(lock::cases());
    all
}

type Factory = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn KvStore>>> + Send + Sync>;

/// The suite runner for one backend.
pub struct Suite {
    backend: String,
    options: SuiteOptions,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Suite {
    /// A suite for `backend` (the middle part of every test name, e.g.
    /// `memory`, `redis::cluster`).
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            options: SuiteOptions::default(),
            runtime: None,
        }
    }

    /// Sets the timing knobs.
    pub fn with_options(mut self, options: SuiteOptions) -> Self {
        self.options = options;
        self
    }

    /// Uses this runtime (e.g. one that already started the servers).
    pub fn with_runtime(mut self, runtime: tokio::runtime::Runtime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Runs every case against stores made by `factory` (called once per
    /// case, on the suite's runtime) and returns the process exit code.
    /// Reads the usual test-harness arguments (filters, `--list`, ...).
    pub fn run<F, Fut>(self, factory: F) -> ExitCode
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn KvStore>>> + Send + 'static,
    {
        let factory: Factory = Arc::new(move || Box::pin(factory()));
        self.run_trials(factory, Arguments::from_args())
    }

    fn run_trials(self, factory: Factory, args: Arguments) -> ExitCode {
        let runtime = match self.runtime {
            Some(rt) => rt,
            None => match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("conformance: cannot build a tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let runtime = Arc::new(runtime);
        let run_id = util::run_id();
        let trials = cases()
            .into_iter()
            .map(|c| {
                let name = format!("conformance::{}::{}", self.backend, c.name);
                let prefix = format!("kvmap-conformance/{run_id}/{}/", c.name);
                let rt = runtime.clone();
                let factory = factory.clone();
                let options = self.options;
                Trial::ignorable_test(name, move || {
                    rt.block_on(run_case(c, factory, prefix, options))
                })
            })
            .collect();
        let conclusion = libtest_mimic::run(&args, trials);
        conclusion.exit_code()
    }
}

async fn run_case(
    case: Case,
    factory: Factory,
    prefix: String,
    options: SuiteOptions,
) -> std::result::Result<Completion, Failed> {
    let raw = factory()
        .await
        .map_err(|e| Failed::from(format!("factory failed: {e}")))?;
    let store: Arc<dyn KvStore> = Arc::new(
        crate::Namespaced::new(raw.clone(), &prefix)
            .map_err(|e| Failed::from(format!("namespace: {e}")))?,
    );
    let fx = Fixture {
        caps: store.capabilities(),
        store,
        raw,
        prefix,
        options,
    };
    match (case.run)(fx).await {
        Ok(None) => Ok(Completion::Completed),
        Ok(Some(reason)) => {
            eprintln!("skipped: {}: {reason}", case.name);
            Ok(Completion::ignored_with(reason))
        }
        Err(f) => Err(Failed::from(f.to_string())),
    }
}
