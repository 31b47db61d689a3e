//! The linearizability checker: a Wing–Gong / Lowe search with
//! memoization (as in Porcupine), per key. See the [parent module](super)
//! for the model and why it is hand-written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use super::{Command, Operation, Outcome, PutCond, Refusal, Revision, ValueId};

/// The value written by unknown-outcome writes whose value no read saw:
/// they are interchangeable, so they share this stand-in.
const UNOBSERVED: ValueId = ValueId::MAX;

/// The model: one register, absent or holding a value with its revision
/// (`None`: written by an unknown-outcome write and not read since, so the
/// revision is not known and matches any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegisterState(pub Option<(ValueId, Option<Revision>)>);

impl fmt::Display for RegisterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("absent"),
            Some((UNOBSERVED, _)) => f.write_str("an unobserved value"),
            Some((v, Some(r))) => write!(f, "v{v}@{r}"),
            Some((v, None)) => write!(f, "v{v}@?"),
        }
    }
}

/// Does the state's revision match `want`? `None`: unknown revision.
fn rev_matches(state: RegisterState, want: Revision) -> Option<bool> {
    match state.0 {
        None => Some(false),
        Some((_, Some(r))) => Some(r == want),
        Some((_, None)) => None,
    }
}

/// Whether a put's condition holds in `state` (`None`: cannot tell).
fn put_cond(state: RegisterState, cond: PutCond) -> Option<bool> {
    match cond {
        PutCond::Overwrite => Some(true),
        PutCond::Create => Some(state.0.is_none()),
        PutCond::IfRevision(r) => rev_matches(state, r),
    }
}

/// Whether a delete's condition holds in `state` (`None`: cannot tell).
fn delete_cond(state: RegisterState, if_revision: Option<Revision>) -> Option<bool> {
    match if_revision {
        None => Some(true),
        Some(r) => rev_matches(state, r),
    }
}

/// The state after a refusal that reported `current`, if consistent.
fn conflict_state(
    state: RegisterState,
    cond_holds: Option<bool>,
    current: Option<Revision>,
) -> Option<RegisterState> {
    if cond_holds == Some(true) {
        return None;
    }
    match (state.0, current) {
        (None, None) => Some(state),
        (Some((v, Some(r))), Some(c)) if r == c => Some(RegisterState(Some((v, Some(r))))),
        // Unknown revision: the refusal tells it.
        (Some((v, None)), Some(c)) => Some(RegisterState(Some((v, Some(c))))),
        _ => None,
    }
}

/// One step of the model: the state after `command` took effect in
/// `state` with `outcome`, or `None` if that is impossible (or, for an
/// unknown outcome, if it would change nothing: linearizing it later is
/// the same).
fn step(state: RegisterState, command: Command, outcome: Outcome) -> Option<RegisterState> {
    match (command, outcome) {
        (Command::Get, Outcome::Read(None)) => state.0.is_none().then_some(state),
        (Command::Get, Outcome::Read(Some((v, r)))) => match state.0 {
            Some((sv, Some(sr))) if sv == v && sr == r => Some(state),
            Some((sv, None)) if sv == v => Some(RegisterState(Some((v, Some(r))))),
            _ => None,
        },
        (Command::Get, Outcome::Unknown) => None,
        (Command::Put { value, cond }, Outcome::Written(r)) => {
            (put_cond(state, cond) != Some(false)).then_some(RegisterState(Some((value, Some(r)))))
        }
        (Command::Put { value, cond }, Outcome::Unknown) => {
            let next = RegisterState(Some((value, None)));
            (put_cond(state, cond) != Some(false) && next != state).then_some(next)
        }
        (Command::Put { cond, .. }, Outcome::Refused(Refusal::AlreadyExists)) => {
            (cond == PutCond::Create && state.0.is_some()).then_some(state)
        }
        (Command::Put { cond, .. }, Outcome::Refused(Refusal::Conflict { current })) => {
            match cond {
                PutCond::IfRevision(_) => conflict_state(state, put_cond(state, cond), current),
                _ => None,
            }
        }
        (Command::Delete { if_revision }, Outcome::Deleted(existed)) => {
            (delete_cond(state, if_revision) != Some(false) && existed == state.0.is_some())
                .then_some(RegisterState(None))
        }
        (Command::Delete { if_revision }, Outcome::Unknown) => {
            (delete_cond(state, if_revision) != Some(false) && state.0.is_some())
                .then_some(RegisterState(None))
        }
        (Command::Delete { if_revision }, Outcome::Refused(Refusal::Conflict { current })) => {
            if_revision?;
            conflict_state(state, delete_cond(state, if_revision), current)
        }
        _ => None,
    }
}

/// Limits of the search.
#[derive(Debug, Clone, Copy)]
pub struct CheckConfig {
    /// Most (linearized set, state) pairs explored per key before giving
    /// up with [`Verdict::Inconclusive`].
    pub max_states: usize,
    /// The state of every key before the history (normally absent).
    pub initial: RegisterState,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            max_states: 1_000_000,
            initial: RegisterState(None),
        }
    }
}

/// Why a key's history is not linearizable: where the deepest attempt
/// got stuck.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Most operations any attempt linearized.
    pub linearized: usize,
    /// The operation that attempt could not linearize before its return.
    pub blocked: Operation,
    /// The model state at that point.
    pub state: RegisterState,
    /// The operations overlapping the blocked one (at most 16), in invoke
    /// order.
    pub concurrent: Vec<Operation>,
    /// The last (at most 4) operations that returned before the blocked
    /// one was invoked, in return order.
    pub preceding: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: not linearizable; the deepest attempt linearized {} ops, state {}, then could not place:",
            self.key, self.linearized, self.state
        )?;
        writeln!(f, "    {}", self.blocked)?;
        writeln!(f, "  last operations before it:")?;
        for op in &self.preceding {
            writeln!(f, "    {op}")?;
        }
        writeln!(f, "  overlapping operations:")?;
        for op in &self.concurrent {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// The result of checking one key.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    Violation(Box<Violation>),
    /// The state budget ran out first.
    Inconclusive {
        /// States explored.
        states: usize,
    },
}

impl Verdict {
    /// Whether the verdict is a violation.
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::Violation(_))
    }
}

/// The figures and verdict of one key's history.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    /// The key.
    pub key: String,
    /// Operations checked (dropped ones are not in the history).
    pub ops: usize,
    /// Of which with an unknown outcome.
    pub unknown: usize,
    /// (Linearized set, state) pairs explored.
    pub states: usize,
    /// Time the search took.
    pub elapsed: Duration,
    /// The verdict.
    pub verdict: Verdict,
}

/// Checks every key of `ops` on its own (linearizability is local) and
/// returns one [`KeyCheck`] per key, in key order.
pub fn check_history(ops: &[Operation], config: &CheckConfig) -> Vec<KeyCheck> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops, config))
        .collect()
}

/// The history without reads and refused writes: only the operations that
/// changed (or may have changed) the key. A lost or reordered write still
/// shows here (a compare-and-swap succeeds against an overwritten
/// revision, a delete reports a key that should be gone); a stale read
/// does not.
pub fn effects_only(ops: &[Operation]) -> Vec<Operation> {
    ops.iter()
        .filter(|op| {
            op.command.is_write()
                && matches!(
                    op.outcome,
                    Outcome::Written(_) | Outcome::Deleted(_) | Outcome::Unknown
                )
        })
        .cloned()
        .collect()
}

/// A growable bitset of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64).max(1)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

const NIL: usize = usize::MAX;

/// Checks one key's history (all `ops` must be of that key).
pub fn check_key(key: &str, ops: &[Operation], config: &CheckConfig) -> KeyCheck {
    let started = Instant::now();
    let n = ops.len();
    let unknown = ops.iter().filter(|o| o.is_unknown()).count();

    // Values some read saw; unknown writes of other values are
    // interchangeable and share the stand-in value.
    let observed: HashSet<ValueId> = ops
        .iter()
        .filter_map(|o| match o.outcome {
            Outcome::Read(Some((v, _))) => Some(v),
            _ => None,
        })
        .collect();
    let commands: Vec<Command> = ops
        .iter()
        .map(|o| match (o.command, o.outcome) {
            (Command::Put { value, cond }, Outcome::Unknown) if !observed.contains(&value) => {
                Command::Put {
                    value: UNOBSERVED,
                    cond,
                }
            }
            (c, _) => c,
        })
        .collect();
    // Within a group of identical unknown commands, the earliest-invoked
    // not yet linearized one is tried first: `group_prev[i]` must be
    // linearized before `i`.
    let mut group_prev = vec![NIL; n];
    {
        let mut unknown_idx: Vec<usize> = (0..n).filter(|&i| ops[i].is_unknown()).collect();
        unknown_idx.sort_by_key(|&i| (ops[i].invoke, i));
        let mut last: HashMap<Command, usize> = HashMap::new();
        for i in unknown_idx {
            if let Some(p) = last.insert(commands[i], i) {
                group_prev[i] = p;
            }
        }
    }

    // An unknown write whose value a read saw took effect before that
    // read, so before the earliest return of such a read: that is its
    // return (the same constraint, but a finite window for the search).
    let mut first_seen: HashMap<ValueId, Duration> = HashMap::new();
    for o in ops {
        if let (Outcome::Read(Some((v, _))), Some(r)) = (o.outcome, o.ret) {
            let t = first_seen.entry(v).or_insert(r);
            *t = (*t).min(r);
        }
    }
    let ret: Vec<Option<Duration>> = ops
        .iter()
        .map(|o| match (o.command, o.ret) {
            (_, Some(r)) => Some(r),
            (Command::Put { value, .. }, None) => first_seen.get(&value).copied(),
            (_, None) => None,
        })
        .collect();

    // Events: entry 0 is the head; 1 + 2i is the call of op i, 2 + 2i its
    // return. Returns of unknown ops are at infinity.
    let mut events: Vec<(Duration, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, 0, 1 + 2 * i));
        events.push((ret[i].unwrap_or(Duration::MAX), 1, 2 + 2 * i));
    }
    // At equal times calls come first: such operations count as concurrent.
    events.sort();
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = 0usize;
    for &(_, _, e) in &events {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    let is_call = |e: usize| e % 2 == 1;
    let op_of = |e: usize| (e - 1) / 2;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for e in [call, call + 1] {
            next[prev[e]] = next[e];
            if next[e] != NIL {
                prev[next[e]] = prev[e];
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for e in [call + 1, call] {
            next[prev[e]] = e;
            if next[e] != NIL {
                prev[next[e]] = e;
            }
        }
    };

    let mut linearized = Bits::new(n);
    let mut depth = 0usize;
    let mut state = config.initial;
    let mut stack: Vec<(usize, RegisterState)> = Vec::new();
    let mut cache: HashSet<(Bits, RegisterState)> = HashSet::new();
    let mut best: Option<(usize, usize, RegisterState)> = None;
    let mut entry = next[0];
    let verdict = loop {
        if entry == NIL {
            break Verdict::Linearizable;
        }
        if is_call(entry) {
            let i = op_of(entry);
            let ready = group_prev[i] == NIL || linearized.get(group_prev[i]);
            if let Some(ns) = ready
                .then(|| step(state, commands[i], ops[i].outcome))
                .flatten()
            {
                let mut bits = linearized.clone();
                bits.set(i);
                if !cache.contains(&(bits.clone(), ns)) {
                    if cache.len() >= config.max_states {
                        break Verdict::Inconclusive {
                            states: cache.len(),
                        };
                    }
                    cache.insert((bits.clone(), ns));
                    stack.push((entry, state));
                    state = ns;
                    linearized = bits;
                    depth += 1;
                    lift(&mut next, &mut prev, entry);
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            let i = op_of(entry);
            if ret[i].is_none() {
                // Only calls precede it and every finite op is linearized:
                // the unknown rest takes effect at infinity.
                break Verdict::Linearizable;
            }
            if best.is_none_or(|(d, _, _)| depth > d) {
                best = Some((depth, i, state));
            }
            let Some((call, s)) = stack.pop() else {
                let (d, blocked, st) = best.unwrap_or((0, i, state));
                break Verdict::Violation(Box::new(violation(key, ops, d, blocked, st)));
            };
            state = s;
            linearized.clear(op_of(call));
            depth -= 1;
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    };
    KeyCheck {
        key: key.to_owned(),
        ops: n,
        unknown,
        states: cache.len(),
        elapsed: started.elapsed(),
        verdict,
    }
}

fn violation(
    key: &str,
    ops: &[Operation],
    linearized: usize,
    blocked: usize,
    state: RegisterState,
) -> Violation {
    let b = &ops[blocked];
    let b_ret = b.ret.unwrap_or(Duration::MAX);
    let mut concurrent: Vec<Operation> = ops
        .iter()
        .enumerate()
        .filter(|(i, o)| {
            *i != blocked && o.invoke <= b_ret && o.ret.unwrap_or(Duration::MAX) >= b.invoke
        })
        .map(|(_, o)| o.clone())
        .collect();
    concurrent.sort_by_key(|o| o.invoke);
    concurrent.truncate(16);
    let mut preceding: Vec<Operation> = ops
        .iter()
        .filter(|o| o.ret.is_some_and(|r| r < b.invoke))
        .cloned()
        .collect();
    preceding.sort_by_key(|o| o.ret);
    let preceding = preceding.split_off(preceding.len().saturating_sub(4));
    Violation {
        key: key.to_owned(),
        linearized,
        blocked: b.clone(),
        state,
        concurrent,
        preceding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small history builder: times in milliseconds.
    struct H(Vec<Operation>);

    impl H {
        fn new() -> Self {
            Self(Vec::new())
        }
        fn op(mut self, client: usize, command: Command, outcome: Outcome, t: (u64, u64)) -> Self {
            self.0.push(Operation {
                client,
                key: "k".into(),
                command,
                outcome,
                invoke: Duration::from_millis(t.0),
                ret: (!matches!(outcome, Outcome::Unknown)).then(|| Duration::from_millis(t.1)),
            });
            self
        }
        fn put(self, c: usize, v: ValueId, r: Revision, t: (u64, u64)) -> Self {
            self.op(
                c,
                Command::Put {
                    value: v,
                    cond: PutCond::Overwrite,
                },
                Outcome::Written(r),
                t,
            )
        }
        fn put_unknown(self, c: usize, v: ValueId, t0: u64) -> Self {
            self.op(
                c,
                Command::Put {
                    value: v,
                    cond: PutCond::Overwrite,
                },
                Outcome::Unknown,
                (t0, 0),
            )
        }
        fn cas(self, c: usize, v: ValueId, from: Revision, out: Outcome, t: (u64, u64)) -> Self {
            self.op(
                c,
                Command::Put {
                    value: v,
                    cond: PutCond::IfRevision(from),
                },
                out,
                t,
            )
        }
        fn get(self, c: usize, seen: Option<(ValueId, Revision)>, t: (u64, u64)) -> Self {
            self.op(c, Command::Get, Outcome::Read(seen), t)
        }
        fn del(self, c: usize, existed: bool, t: (u64, u64)) -> Self {
            self.op(
                c,
                Command::Delete { if_revision: None },
                Outcome::Deleted(existed),
                t,
            )
        }
        fn check(&self) -> KeyCheck {
            check_key("k", &self.0, &CheckConfig::default())
        }
    }

    fn ok(h: H) {
        let c = h.check();
        assert!(
            matches!(c.verdict, Verdict::Linearizable),
            "expected linearizable: {:?}",
            c.verdict
        );
    }

    fn bad(h: H) -> Violation {
        match h.check().verdict {
            Verdict::Violation(v) => *v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        ok(H::new()
            .get(0, None, (0, 1))
            .put(0, 1, 10, (2, 3))
            .get(1, Some((1, 10)), (4, 5))
            .cas(1, 2, 10, Outcome::Written(11), (6, 7))
            .get(0, Some((2, 11)), (8, 9))
            .del(0, true, (10, 11))
            .get(1, None, (12, 13))
            .del(1, false, (14, 15)));
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_found() {
        let v =
            bad(H::new()
                .put(0, 1, 10, (0, 1))
                .put(0, 2, 11, (2, 3))
                .get(1, Some((1, 10)), (4, 5)));
        assert_eq!(v.blocked.command, Command::Get);
        assert!(v.to_string().contains("not linearizable"));
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        ok(H::new()
            .put(0, 1, 10, (0, 1))
            .put(0, 2, 11, (2, 10))
            .get(1, Some((1, 10)), (3, 4))
            .get(2, Some((2, 11)), (5, 6))
            .get(1, Some((2, 11)), (7, 8)));
        // ...but not go back once the new value was seen.
        bad(H::new()
            .put(0, 1, 10, (0, 1))
            .put(0, 2, 11, (2, 10))
            .get(2, Some((2, 11)), (3, 4))
            .get(1, Some((1, 10)), (5, 6)));
    }

    #[test]
    fn lost_cas_is_found() {
        // Two CAS from the same revision both succeed: one must have lost.
        bad(H::new()
            .put(0, 1, 10, (0, 1))
            .cas(1, 2, 10, Outcome::Written(11), (2, 5))
            .cas(2, 3, 10, Outcome::Written(12), (3, 6)));
        // A CAS acknowledged, then a read shows the old value.
        bad(H::new()
            .put(0, 1, 10, (0, 1))
            .cas(1, 2, 10, Outcome::Written(11), (2, 3))
            .get(2, Some((1, 10)), (4, 5)));
    }

    #[test]
    fn conflict_must_report_the_current_revision() {
        ok(H::new().put(0, 1, 10, (0, 1)).cas(
            1,
            2,
            9,
            Outcome::Refused(Refusal::Conflict { current: Some(10) }),
            (2, 3),
        ));
        // A refused CAS whose expected revision was current: wrong.
        bad(H::new().put(0, 1, 10, (0, 1)).cas(
            1,
            2,
            10,
            Outcome::Refused(Refusal::Conflict { current: Some(11) }),
            (2, 3),
        ));
        // Conflict reporting an absent key while it is present.
        bad(H::new().put(0, 1, 10, (0, 1)).cas(
            1,
            2,
            9,
            Outcome::Refused(Refusal::Conflict { current: None }),
            (2, 3),
        ));
    }

    #[test]
    fn delete_must_report_existence() {
        bad(H::new().del(0, true, (0, 1)));
        bad(H::new().put(0, 1, 10, (0, 1)).del(0, false, (2, 3)));
        ok(H::new()
            .put(0, 1, 10, (0, 1))
            .del(0, true, (2, 5))
            .del(1, false, (3, 6)));
    }

    #[test]
    fn create_only() {
        let create = |v| Command::Put {
            value: v,
            cond: PutCond::Create,
        };
        ok(H::new().op(0, create(1), Outcome::Written(10), (0, 1)).op(
            1,
            create(2),
            Outcome::Refused(Refusal::AlreadyExists),
            (2, 3),
        ));
        bad(H::new().op(0, create(1), Outcome::Written(10), (0, 1)).op(
            1,
            create(2),
            Outcome::Written(11),
            (2, 3),
        ));
        bad(H::new().op(
            1,
            create(2),
            Outcome::Refused(Refusal::AlreadyExists),
            (0, 1),
        ));
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        // Took effect long after its invoke (seen late) ...
        ok(H::new()
            .put(0, 1, 10, (0, 1))
            .put_unknown(1, 2, 2)
            .get(0, Some((1, 10)), (10, 11))
            .get(0, Some((2, 20)), (20, 21)));
        // ... or never.
        ok(H::new()
            .put(0, 1, 10, (0, 1))
            .put_unknown(1, 2, 2)
            .get(0, Some((1, 10)), (30, 31)));
        // Once seen, it cannot be unseen.
        bad(H::new()
            .put(0, 1, 10, (0, 1))
            .put_unknown(1, 2, 2)
            .get(0, Some((2, 20)), (10, 11))
            .get(0, Some((1, 10)), (20, 21)));
        // Not before its invoke.
        bad(H::new()
            .put(0, 1, 10, (0, 1))
            .get(0, Some((2, 20)), (2, 3))
            .put_unknown(1, 2, 5));
    }

    #[test]
    fn unknown_write_explains_existence_and_unknown_revision_matches() {
        // An unobserved unknown write makes the key exist for a create.
        ok(H::new().put_unknown(1, 2, 0).op(
            0,
            Command::Put {
                value: 3,
                cond: PutCond::Create,
            },
            Outcome::Refused(Refusal::AlreadyExists),
            (5, 6),
        ));
        // A conflict tells the unknown write's revision; a later read must
        // agree with it.
        ok(H::new()
            .put_unknown(1, 2, 0)
            .cas(
                0,
                3,
                9,
                Outcome::Refused(Refusal::Conflict { current: Some(15) }),
                (5, 6),
            )
            .get(0, Some((2, 15)), (7, 8)));
        bad(H::new()
            .put_unknown(1, 2, 0)
            .get(0, Some((2, 15)), (5, 6))
            .cas(
                0,
                3,
                9,
                Outcome::Refused(Refusal::Conflict { current: Some(16) }),
                (7, 8),
            ));
    }

    #[test]
    fn many_unknown_writes_stay_cheap() {
        // 60 unobserved unknown writes interleaved with 200 known ops.
        let mut h = H::new();
        let mut t = 0;
        for i in 0..200u64 {
            if i % 3 == 0 && i < 180 {
                h = h.put_unknown(1 + (i as usize % 3), 1000 + i, t);
            }
            h = h.put(0, i + 1, i + 1, (t, t + 1));
            t += 2;
        }
        let c = h.check();
        assert!(
            matches!(c.verdict, Verdict::Linearizable),
            "{:?}",
            c.verdict
        );
        assert_eq!(c.unknown, 60);
        assert!(c.states < 100_000, "{} states", c.states);
    }

    #[test]
    fn many_observed_unknown_writes_stay_cheap() {
        // 80 unknown writes (every one read once, much later than its
        // invoke) among known writes and reads: each read bounds its write.
        let mut h = H::new();
        let mut t = 0;
        for i in 0..80u64 {
            h = h
                .put_unknown(1 + (i as usize % 3), 1000 + i, t)
                .get(0, Some((1000 + i, 5000 + i)), (t + 5, t + 6))
                .put(0, i + 1, i + 1, (t + 7, t + 8));
            t += 10;
        }
        let c = h.check();
        assert!(
            matches!(c.verdict, Verdict::Linearizable),
            "{:?}",
            c.verdict
        );
        assert_eq!(c.unknown, 80);
        assert!(c.states < 100_000, "{} states", c.states);
        // Reading one of them again after a later write was seen: caught.
        let h = h.get(0, Some((1000, 5000)), (t, t + 1));
        assert!(h.check().verdict.is_violation());
    }

    #[test]
    fn budget_gives_inconclusive_not_violation() {
        let mut h = H::new();
        for i in 0..30u64 {
            h = h.put(i as usize, i + 1, i + 1, (0, 100));
        }
        h = h.get(99, Some((1, 1)), (101, 102));
        let c = check_key(
            "k",
            &h.0,
            &CheckConfig {
                max_states: 50,
                ..CheckConfig::default()
            },
        );
        assert!(
            matches!(c.verdict, Verdict::Inconclusive { .. }),
            "{:?}",
            c.verdict
        );
    }

    #[test]
    fn effects_only_keeps_lost_writes_drops_stale_reads() {
        let stale =
            H::new()
                .put(0, 1, 10, (0, 1))
                .put(0, 2, 11, (2, 3))
                .get(1, Some((1, 10)), (4, 5));
        assert!(
            check_key("k", &effects_only(&stale.0), &CheckConfig::default())
                .verdict
                .is_matches_linearizable()
        );
        let lost = H::new().put(0, 1, 10, (0, 1)).put(0, 2, 11, (2, 3)).cas(
            1,
            3,
            10,
            Outcome::Written(12),
            (4, 5),
        );
        assert!(
            check_key("k", &effects_only(&lost.0), &CheckConfig::default())
                .verdict
                .is_violation()
        );
    }

    impl Verdict {
        fn is_matches_linearizable(&self) -> bool {
            matches!(self, Verdict::Linearizable)
        }
    }

    #[test]
    fn keys_are_checked_separately() {
        let mut ops = H::new()
            .put(0, 1, 10, (0, 1))
            .get(1, Some((1, 10)), (2, 3))
            .0;
        let mut other = ops.clone();
        for o in &mut other {
            o.key = "j".into();
        }
        ops.extend(other);
        let checks = check_history(&ops, &CheckConfig::default());
        assert_eq!(checks.len(), 2);
        assert!(checks
            .iter()
            .all(|c| matches!(c.verdict, Verdict::Linearizable)));
    }
}
