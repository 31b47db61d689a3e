//! The writer thread: every put, delete and batch of a store runs on one
//! dedicated OS thread fed by a channel, never on an async worker, with
//! group commit.
//!
//! A caller hands its write (a closure that stages it into a [`Txn`]) to
//! the thread and awaits the answer. The thread takes every write queued
//! at that moment (at most [`MAX_GROUP`]), stages them one after the other
//! into one transaction, each from its own [`Savepoint`](crate::txn::Savepoint)
//! so that a failed condition only drops that write, and writes the lot as
//! one RocksDB batch: with synced writes, one WAL `fsync` acknowledges the
//! whole group. While that `fsync` runs, new writes queue up and form the
//! next group, so the group size follows the load without any added wait.
//!
//! Deadlines and cancellation: a write still queued when its caller gives
//! up is never staged (the caller's error says nothing was written,
//! [`RetryClass::Safe`]); the thread also skips writes whose deadline has
//! passed when their turn comes. A write already staged when its caller
//! gives up may still commit, so that caller's error is
//! [`RetryClass::OutcomeUnknown`].
//!
//! Hand-written: no crate does group commit over a RocksDB transaction
//! with per-write conditions; it is a standard channel and a loop.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvmap_core::{Error, ErrorKind, Op, Result, RetryClass};
use tokio::sync::oneshot;

use crate::db::Inner;
use crate::error::{internal, NAME};
use crate::reaper::Control;
use crate::txn::Txn;

/// The most writes committed together.
pub(crate) const MAX_GROUP: usize = 256;

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// The caller's side of a queued write: lets it give up while the write
/// is still queued.
#[derive(Debug, Clone)]
pub(crate) struct Ticket(Arc<AtomicU8>);

impl Ticket {
    /// Withdraws the write if the writer thread has not taken it yet;
    /// `true` means it will never be written.
    pub(crate) fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Takes the write for staging; `false` if its caller gave up.
    fn take(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A queued write, type-erased.
trait Job: Send {
    /// Stages the write into `txn`; `false` if nothing of it may be kept
    /// (its condition failed, its caller gave up or its deadline passed).
    fn stage(&mut self, txn: &mut Txn<'_>) -> bool;
    /// Answers the caller: the staged result, or the commit's error.
    fn finish(self: Box<Self>, commit: &Result<()>);
}

struct Task<T, F> {
    op: Op,
    ticket: Ticket,
    deadline: Option<Instant>,
    work: Option<F>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Task<T, F>
where
    T: Send,
    F: FnOnce(&mut Txn<'_>) -> Result<T> + Send,
{
    fn stage(&mut self, txn: &mut Txn<'_>) -> bool {
        if !self.ticket.take() {
            return false;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.out = Some(Err(Error::new(ErrorKind::DeadlineExceeded)
                .with_backend(NAME)
                .with_op(self.op)
                .with_detail("the deadline passed while the write was queued; nothing was written")
                .with_retry(RetryClass::Safe)));
            return false;
        }
        let Some(work) = self.work.take() else {
            return false;
        };
        txn.set_op(self.op);
        let out = work(txn);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, commit: &Result<()>) {
        let out = match (self.out, commit) {
            // Abandoned: nobody waits.
            (None, _) => return,
            (Some(Ok(v)), Ok(())) => Ok(v),
            (Some(Ok(_)), Err(e)) => Err(e.clone().with_op(self.op)),
            (Some(Err(e)), _) => Err(e),
        };
        // An error only means the caller stopped waiting.
        let _ = self.reply.send(out);
    }
}

/// The sending side of a store's writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread of `inner`; it stops once every [`Writer`]
    /// is dropped and the queue is empty.
    pub(crate) fn spawn(
        inner: Arc<Inner>,
        control: Arc<Control>,
    ) -> Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("kvmap-rocksdb-writer".into())
            .spawn(move || run(&inner, &control, &rx))
            .map_err(|e| internal(Op::Open, "cannot start the writer thread").with_source(e))?;
        Ok((Self { tx }, thread))
    }

    /// Queues a write. `deadline`: the caller's, past which the thread
    /// does not start it.
    ///
    /// # Errors
    /// `Unavailable` ([`RetryClass::Safe`]) if the writer thread is gone.
    pub(crate) fn submit<T, F>(
        &self,
        op: Op,
        deadline: Option<Instant>,
        work: F,
    ) -> Result<(Ticket, oneshot::Receiver<Result<T>>)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let ticket = Ticket(Arc::new(AtomicU8::new(QUEUED)));
        let task = Task {
            op,
            ticket: ticket.clone(),
            deadline,
            work: Some(work),
            out: None,
            reply,
        };
        self.tx.send(Box::new(task)).map_err(|_| stopped(op))?;
        Ok((ticket, rx))
    }
}

/// The error of a write the writer thread will never run.
pub(crate) fn stopped(op: Op) -> Error {
    Error::new(ErrorKind::Unavailable)
        .with_backend(NAME)
        .with_op(op)
        .with_detail("the store's writer thread has stopped; nothing was written")
        .with_retry(RetryClass::Safe)
}

fn run(inner: &Inner, control: &Control, rx: &Receiver<Box<dyn Job>>) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(inner, control, &mut group);
    }
}

/// Stages every write of `group` into one transaction and commits it.
fn commit_group(inner: &Inner, control: &Control, group: &mut Vec<Box<dyn Job>>) {
    let mut txn = Txn::begin(inner, Op::Apply);
    let mut staged = 0u64;
    for job in group.iter_mut() {
        let sp = txn.savepoint();
        if job.stage(&mut txn) {
            staged += 1;
        } else {
            txn.rollback(sp);
        }
    }
    let commit = match txn.commit() {
        Ok(expires) => {
            if staged > 0 {
                inner.commits.fetch_add(1, Ordering::Relaxed);
                inner.grouped_writes.fetch_add(staged, Ordering::Relaxed);
            }
            if let Some(e) = expires {
                control.expiry_written(e);
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    for job in group.drain(..) {
        job.finish(&commit);
    }
}
