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
//!
//! The suite has 100 cases, all of backend behaviour (the rules `Key`
//! enforces and the `Namespaced` view are unit tests of this crate).
//! Some run only where the test binary says the backend promises more:
//! strict invisibility at expiry with [`SuiteOptions::expiry_grace`] zero,
//! revisions across a reopen with a hook given to [`Suite::with_reopen`]
//! (for durable stores).

mod basic;
mod batch;
mod cas;
mod context;
mod contract;
mod keys;
mod list;
mod lock;
mod resources;
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
    /// The unscoped store (shared with other cases: write only under `prefix`).
    pub raw: Arc<dyn KvStore>,
    /// This case's namespace prefix on the raw store.
    pub prefix: String,
    /// The store's declared capabilities (of the scoped store).
    pub caps: Capabilities,
    /// Timing knobs.
    pub options: SuiteOptions,
    /// The suite's reopen hook, for durable backends (see
    /// [`Suite::with_reopen`]); use it through [`Fixture::reopen`].
    pub reopen_hook: Option<Reopen>,
    /// The suite's factory, for cases that need a store of their own.
    pub(crate) factory: Option<Factory>,
}

impl Fixture {
    /// Closes the store and opens it again through the suite's reopen
    /// hook: consumes the fixture (so the case holds no other handle of
    /// the store) and returns one over the reopened store, in the same
    /// namespace. `Ok(None)` when the suite has no hook.
    ///
    /// # Errors
    /// A [`Failure`] if the hook or the namespace fails.
    pub async fn reopen(self) -> std::result::Result<Option<Fixture>, Failure> {
        let Fixture {
            store,
            raw,
            prefix,
            options,
            reopen_hook,
            factory,
            ..
        } = self;
        let Some(hook) = reopen_hook else {
            return Ok(None);
        };
        drop(store);
        let raw = hook(raw)
            .await
            .map_err(|e| Failure::from(format!("reopen hook failed: {e}")))?;
        let store: Arc<dyn KvStore> = Arc::new(
            crate::Namespaced::new(raw.clone(), &prefix)
                .map_err(|e| Failure::from(format!("namespace after reopen: {e}")))?,
        );
        Ok(Some(Fixture {
            caps: store.capabilities(),
            store,
            raw,
            prefix,
            options,
            reopen_hook: Some(hook),
            factory,
        }))
    }
}

/// A reopen hook: gets the raw (unscoped) store of a case, which is then
/// its only handle, closes it and returns the same durable store opened
/// again (same data).
pub type Reopen =
    Arc<dyn Fn(Arc<dyn KvStore>) -> BoxFuture<'static, Result<Arc<dyn KvStore>>> + Send + Sync>;

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
    /// Whether `Expired` events carry the entry before when the watch
    /// asked for previous values (default `true`). `false` for a backend
    /// that documents it cannot (e.g. one whose server drops the value
    /// before it notifies and whose watch did not keep it); the suite then
    /// checks that `prev` is consistently absent instead.
    pub expired_prev: bool,
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
            expired_prev: true,
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
    all.extend(contract::cases());
    all.extend(resources::cases());
    all
}

type Factory = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn KvStore>>> + Send + Sync>;

/// The suite runner for one backend.
pub struct Suite {
    backend: String,
    options: SuiteOptions,
    runtime: Option<tokio::runtime::Runtime>,
    reopen: Option<Reopen>,
}

impl Suite {
    /// A suite for `backend` (the middle part of every test name, e.g.
    /// `memory`, `redis::cluster`).
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            options: SuiteOptions::default(),
            runtime: None,
            reopen: None,
        }
    }

    /// Enables the durability cases with a hook that closes a case's
    /// store and opens the same durable store again: `hook` gets the
    /// case's raw store (made by the factory, or by an earlier reopen),
    /// by then its only handle, and returns the reopened one. Without a
    /// hook those cases are skipped.
    ///
    /// The hook has to find the store's location from the handle, e.g.
    /// from a map the factory fills, keyed by the store's address.
    pub fn with_reopen<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Arc<dyn KvStore>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn KvStore>>> + Send + 'static,
    {
        self.reopen = Some(Arc::new(move |store| Box::pin(hook(store))));
        self
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
                let reopen = self.reopen.clone();
                Trial::ignorable_test(name, move || {
                    rt.block_on(run_case(c, factory, prefix, options, reopen))
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
    reopen: Option<Reopen>,
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
        reopen_hook: reopen,
        factory: Some(factory),
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
