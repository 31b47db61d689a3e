//! Watch over a chain: follows the serving backend, resyncs on a switch.

use std::sync::Arc;

use futures::future::{select_all, BoxFuture};
use futures::{FutureExt, StreamExt};
use kvmap_core::{
    Context, Entry, Error, ErrorKind, KvStore, KvStoreExt, Op, Result, WatchEvent, WatchRequest,
    WatchStream,
};
use tokio::sync::watch as tokio_watch;

use super::{falls_through, Inner};
use crate::breaker::BreakerState;

/// The backend a watch should follow now: the first one that is not
/// open (the primary only while it serves), else the last resort.
fn route(inner: &Inner) -> usize {
    let first = usize::from(!inner.is_primary_active());
    (first..inner.backends.len())
        .find(|&i| {
            let s = inner.backends[i].breaker.state();
            if i == 0 {
                s == BreakerState::Closed
            } else {
                s != BreakerState::Open
            }
        })
        .unwrap_or(first.min(inner.backends.len().saturating_sub(1)))
}

pub(crate) async fn open(
    inner: Arc<Inner>,
    ctx: &Context,
    request: WatchRequest,
) -> Result<WatchStream> {
    let target = request.target.describe().to_owned();
    let scope = inner.scope(Op::Watch, Some(&target));
    ctx.check(&scope)?;
    request.validate().map_err(|e| {
        e.in_context(
            super::CHAIN_NAME,
            Op::Watch,
            Some(request.target.describe()),
        )
    })?;
    let mut state = State {
        breakers: inner
            .backends
            .iter()
            .map(|b| b.breaker.subscribe())
            .collect(),
        active: inner.active_tx.subscribe(),
        inner,
        ctx: ctx.clone(),
        request,
        current: 0,
        stream: None,
        done: false,
    };
    let start = route(&state.inner);
    let mut last_err = None;
    for i in start..state.inner.backends.len() {
        match state.inner.backends[i]
            .breaker
            .watch(ctx, state.request.clone())
            .await
        {
            Ok(s) => {
                state.current = i;
                state.stream = Some(s);
                break;
            }
            Err(e) if falls_through(&e) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    if state.stream.is_none() {
        return Err(last_err.unwrap_or_else(|| scope.error(ErrorKind::Unavailable)));
    }
    // Later switches start from the new backend's current state.
    state.request.start_revision = None;
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut st| async move { st.next().await.map(|item| (item, st)) },
    )))
}

struct State {
    inner: Arc<Inner>,
    ctx: Context,
    request: WatchRequest,
    current: usize,
    stream: Option<WatchStream>,
    breakers: Vec<tokio_watch::Receiver<BreakerState>>,
    active: tokio_watch::Receiver<bool>,
    done: bool,
}

#[allow(clippy::large_enum_variant)] // one short-lived value per poll
enum Wake {
    Item(Option<Result<WatchEvent>>),
    RouteChanged,
}

impl State {
    fn annotate(&self, ev: WatchEvent) -> WatchEvent {
        let label = self.inner.backends[self.current].label.clone();
        let mark = |mut e: Entry| {
            e.served_by = Some(label.clone());
            e
        };
        match ev {
            WatchEvent::Put { entry, prev } => WatchEvent::Put {
                entry: mark(entry),
                prev: prev.map(mark),
            },
            WatchEvent::Resync { entries, revision } => WatchEvent::Resync {
                entries: entries.into_iter().map(mark).collect(),
                revision,
            },
            other => other,
        }
    }

    async fn wake(&mut self) -> Wake {
        let Some(stream) = self.stream.as_mut() else {
            return Wake::Item(None);
        };
        let mut changes: Vec<BoxFuture<'_, ()>> = Vec::new();
        for rx in &mut self.breakers {
            changes.push(
                async move {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                .boxed(),
            );
        }
        let active = &mut self.active;
        changes.push(
            async move {
                if active.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            .boxed(),
        );
        tokio::select! {
            biased;
            item = stream.next() => Wake::Item(item),
            _ = select_all(changes) => Wake::RouteChanged,
        }
    }

    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        if self.done {
            return None;
        }
        loop {
            match self.wake().await {
                Wake::Item(Some(Ok(ev))) => return Some(Ok(self.annotate(ev))),
                Wake::Item(Some(Err(e))) if falls_through(&e) => {
                    // The serving backend failed: move on.
                    match self.switch(self.current + 1, Some(e)).await {
                        Ok(ev) => return Some(Ok(ev)),
                        Err(e) => return self.end(e),
                    }
                }
                Wake::Item(Some(Err(e))) => return self.end(e),
                Wake::Item(None) => {
                    self.done = true;
                    return None;
                }
                Wake::RouteChanged => {
                    let want = route(&self.inner);
                    if want != self.current {
                        match self.switch(want, None).await {
                            Ok(ev) => return Some(Ok(ev)),
                            Err(e) => return self.end(e),
                        }
                    }
                }
            }
        }
    }

    fn end(&mut self, e: Error) -> Option<Result<WatchEvent>> {
        self.done = true;
        self.stream = None;
        Some(Err(e))
    }

    /// Opens the watch on the first usable backend from `from` on (wrapping
    /// to the primary side if needed) and returns the resync of its state.
    async fn switch(&mut self, from: usize, cause: Option<Error>) -> Result<WatchEvent> {
        let n = self.inner.backends.len();
        let mut last = cause;
        let order: Vec<usize> = (from..n).chain(0..from.min(n)).collect();
        for i in order {
            if i == self.current && last.is_some() {
                continue;
            }
            if i == 0 && !self.inner.is_primary_active() {
                continue;
            }
            let b = self.inner.backends[i].breaker.clone();
            let opened = b.watch(&self.ctx, self.request.clone()).await;
            let stream = match opened {
                Ok(s) => s,
                Err(e) if falls_through(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let range = self.request.target.as_range();
            let entries = match b
                .list_all(&self.ctx, kvmap_core::ListRequest::over(range), usize::MAX)
                .await
            {
                Ok(entries) => entries,
                Err(e) if falls_through(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::info!(from = %self.inner.backends[self.current].label, to = %self.inner.backends[i].label, "watch switches backend, resyncing");
            self.current = i;
            self.stream = Some(stream);
            let revision = entries.iter().map(|e| e.revision).max().unwrap_or(0);
            return Ok(self.annotate(WatchEvent::Resync { entries, revision }));
        }
        Err(last.unwrap_or_else(|| {
            self.inner
                .scope(Op::Watch, Some(self.request.target.describe()))
                .error(ErrorKind::Unavailable)
                .with_detail("no backend can serve the watch")
        }))
    }
}
