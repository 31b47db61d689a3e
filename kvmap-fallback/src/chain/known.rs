//! What the chain last saw of keys on the primary: the base revisions of
//! outbox writes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use kvmap_core::{Key, Revision};

use crate::outbox::Known;

/// A bounded map key → last primary state, oldest forgotten first, plus
/// the keys whose replay conflicted (their later outbox writes conflict
/// too, so nothing is applied on top of someone else's change).
#[derive(Debug)]
pub(crate) struct KnownTable {
    capacity: usize,
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<Key, Known>,
    order: VecDeque<Key>,
    conflicted: HashMap<Key, ()>,
}

impl KnownTable {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a state seen on the primary (`None`: absent).
    pub(crate) fn observe(&self, key: &Key, revision: Option<Revision>) {
        if self.capacity == 0 {
            return;
        }
        let v = revision.map_or(Known::Absent, Known::Revision);
        let mut s = self.lock();
        if let Some(slot) = s.map.get_mut(key) {
            *slot = v;
            return;
        }
        s.map.insert(key.clone(), v);
        s.order.push_back(key.clone());
        while s.order.len() > self.capacity {
            if let Some(old) = s.order.pop_front() {
                s.map.remove(&old);
            }
        }
    }

    /// Restores bookkeeping recovered from the outbox database.
    pub(crate) fn restore(&self, key: Key, v: Known) {
        match v {
            Known::Conflicted => {
                self.lock().conflicted.insert(key, ());
            }
            Known::Absent => self.observe(&key, None),
            Known::Revision(r) => self.observe(&key, Some(r)),
        }
    }

    /// The state a replay builds on: a conflict mark first, else the
    /// last state seen.
    pub(crate) fn get(&self, key: &Key) -> Option<Known> {
        let s = self.lock();
        if s.conflicted.contains_key(key) {
            return Some(Known::Conflicted);
        }
        s.map.get(key).copied()
    }

    /// The last state seen on the primary, ignoring conflict marks.
    pub(crate) fn get_seen(&self, key: &Key) -> Option<Known> {
        self.lock().map.get(key).copied()
    }

    pub(crate) fn mark_conflicted(&self, key: &Key) {
        self.lock().conflicted.insert(key.clone(), ());
    }

    /// Forgets the conflict marks once the outbox drained.
    pub(crate) fn clear_conflicts(&self) {
        self.lock().conflicted.clear();
    }
}
