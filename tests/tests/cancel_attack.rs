//! An adversarial, oracle-checked attack on cancellation: writes whose caller stops waiting
//! for them (their futures dropped) at random points, on every write path a user reaches,
//! from the store's table writes to the model layer.
//!
//! The rule under attack (README, "Limits"): **a write whose caller stops waiting for it is
//! either never made or made before any write the process starts after the drop.** (Before
//! it held, a dropped insert could land after the same task's later delete, which found
//! nothing, and the row came back.)
//!
//! How: 32 tasks on a `multi_thread` runtime with 2 workers, so that small writes hand off to
//! the commit lock's holder (embedded) or group (PostgreSQL), large ones run on blocking
//! threads or in chunks. About 60% of the writes are run to be dropped (unless done first):
//! by a `tokio::time::timeout` of 0-3 ms, or after 1 to 6 polls of the future (a random point
//! of its state machine).
//!
//! The oracle was checked against the bug it is for: with each "dropped" write spawned to go
//! on instead (so that it may land after the task's later writes), both storms fail in every
//! task within a second.
//!
//! The oracle, per task (each task owns its rows: only its own writes touch them): the set of
//! *worlds* its rows may be in (every state the task's writes so far may have left). A
//! dropped write adds its outcomes on every world (it may or may not have been made; a large
//! insert also each prefix of its chunks of 4,096); an acknowledged one must have an outcome
//! (the `{old_val, new_val}` of every row it changed, its errors) that it has on some world,
//! and the worlds are then exactly what it left there. Every few writes a probe (a write that
//! reads and deletes all of the task's rows, acknowledged) must find one of the worlds; at the
//! end, after `db.sync()`, the stored rows of each task must be one of its worlds, and no
//! cascade left an orphan. No write may hang (30 s), panic, or fail with an error a valid
//! write does not have.
//!
//! - `dropped_table_writes_never_land_after_later_writes`: `insert` with each conflict
//!   policy, small and large `insert_many` (70 documents: a blocking thread; 5,001: two
//!   chunks), `get(k).update / replace / delete`, `Patch::with`, `replace_with`,
//!   `filter(..).update / delete`, `db.batch()` with `require_empty` + `update_where` and with
//!   `require_exists`.
//! - `dropped_model_writes_never_land_after_later_writes`: `create`, `save`, `update`,
//!   `delete` (a `has_many` with `on_delete = "cascade"` and a `has_and_belongs_to_many`),
//!   has_many `create` / `add` / `remove`, many-to-many `relate` / `add` / `remove`, and
//!   `Transaction` commits.
//! - `a_dropped_large_insert_stops_at_a_chunk_before_a_later_delete`: inserts of 9,000
//!   documents (three chunks) dropped at random, each followed by a delete of everything the
//!   task has: nothing may be left after it, and what it deletes is whole chunks.
//! - `a_model_delete_after_a_dropped_create_never_sees_it_come_back`: `Model::create`
//!   dropped, then `Model::delete` of the same key (which reads the row before it writes),
//!   then a raw delete: the row may not come back after the model's delete said it was gone.
//!   It failed on both backends: a write dropped on its way (embedded: a hand-off the lock's
//!   holder took and commits next; PostgreSQL: a group in flight) is not yet shown by a read
//!   made after the drop, and `Model::delete` answered `NotFound` from its read. Now a row
//!   absent when read is confirmed absent by a commit (a check alone). Plain reads are not
//!   ordered after such a write (README, "Limits"): a write is.
//!
//! The seed is printed; set `CANCEL_ATTACK_SEED` to replay one (the interleaving varies).

#[path = "common/mod.rs"]
mod common;

use common::Rng;

use remodel::model::{create_schema, Id, ModelError, Transaction};
use remodel::{field, Conflict, Database, Error, IndexSpec, Model, Patch, WriteResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A write not done in this long is a hang (they take milliseconds).
const HANG: Duration = Duration::from_secs(30);
const TASKS: u64 = 32;
/// At most this many worlds before a write is dropped (past it, writes run to their end).
const MAX_WORLDS: usize = 64;
/// Chunks of large inserts (the embedded store's and PostgreSQL's alike).
const CHUNK: usize = 4096;

// ---------------------------------------------------------------------------------------
// Models: tables of their own (`ca_*`).

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "ca_parents")]
#[remodel(has_many(Kid, on_delete = "cascade"))]
#[remodel(has_and_belongs_to_many(Tag, join_table = "ca_links"))]
struct Parent {
    id: Option<Id>,
    #[remodel(index)]
    by: u64,
    seq: u64,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "ca_kids")]
#[remodel(belongs_to(Parent))]
struct Kid {
    id: Option<Id>,
    #[remodel(index)]
    by: u64,
    seq: u64,
    parent_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "ca_tags")]
#[remodel(has_and_belongs_to_many(Parent, join_table = "ca_links"))]
struct Tag {
    id: Option<Id>,
    #[remodel(index)]
    by: u64,
    seq: u64,
}

// ---------------------------------------------------------------------------------------
// Helpers.

async fn db() -> Database {
    let db = common::db().await.expect("a database");
    create_schema(&db).await.expect("the schema");
    db
}

fn on_pg() -> bool {
    remodel::postgres::suites_on_postgres()
}

fn seed() -> u64 {
    common::seed("CANCEL_ATTACK_SEED")
}

/// How a write is run: to its end, or dropped at a random point.
#[derive(Clone, Copy, Debug)]
enum Cancel {
    None,
    /// A `tokio::time::timeout` of this long.
    After(Duration),
    /// Dropped once it has returned `Pending` this many times.
    AfterPolls(u32),
}

impl Cancel {
    fn pick(rng: &mut Rng) -> Cancel {
        if rng.chance(40) {
            Cancel::None
        } else if rng.chance(50) {
            Cancel::After(Duration::from_millis(rng.below(4)))
        } else {
            Cancel::AfterPolls(1 + rng.below(6) as u32)
        }
    }
}

/// A future dropped after it returned `Pending` `left` times (`None` then).
struct DropAfterPolls<F: Future> {
    fut: Pin<Box<F>>,
    left: u32,
}

impl<F: Future> Future for DropAfterPolls<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

enum Ran<T> {
    Done(T),
    Dropped,
    Hung,
}

async fn run<F: Future>(fut: F, cancel: Cancel) -> Ran<F::Output> {
    match cancel {
        Cancel::None => match tokio::time::timeout(HANG, fut).await {
            Ok(v) => Ran::Done(v),
            Err(_) => Ran::Hung,
        },
        Cancel::After(d) => match tokio::time::timeout(d, fut).await {
            Ok(v) => Ran::Done(v),
            Err(_) => Ran::Dropped,
        },
        Cancel::AfterPolls(n) => {
            let fut = DropAfterPolls {
                fut: Box::pin(fut),
                left: n,
            };
            match tokio::time::timeout(HANG, fut).await {
                Ok(Some(v)) => Ran::Done(v),
                Ok(None) => Ran::Dropped,
                Err(_) => Ran::Hung,
            }
        }
    }
}

/// `v` as text with every object's fields sorted (serde_json keeps insertion order here).
fn canon(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            v => v.clone(),
        }
    }
    sorted(v).to_string()
}

/// What a task saw go wrong, with the last writes it made.
struct Report {
    failures: Vec<String>,
    acked: u64,
    dropped: u64,
}

/// The last writes of a task, for the messages of failed checks.
#[derive(Default)]
struct History(VecDeque<String>);
impl History {
    fn push(&mut self, s: String) {
        if self.0.len() == 12 {
            self.0.pop_front();
        }
        self.0.push_back(s);
    }
    fn text(&self) -> String {
        self.0
            .iter()
            .map(|s| format!("\n      {s}"))
            .collect::<String>()
    }
}

fn assert_no_failures(seed: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "CANCEL_ATTACK_SEED={seed}: {} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(8)
            .map(|f| format!("  - {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Joins the tasks, each within [`HANG`]: a hang or a panic is a failure.
async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<Report>>,
    failures: &mut Vec<String>,
) -> (u64, u64) {
    let (mut acked, mut dropped) = (0, 0);
    for (i, t) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(HANG, t).await {
            Ok(Ok(r)) => {
                acked += r.acked;
                dropped += r.dropped;
                failures.extend(r.failures);
            }
            Ok(Err(e)) => failures.push(format!("task {i} panicked: {e}")),
            Err(_) => failures.push(format!("task {i} hung: not done 30 s after the stop")),
        }
    }
    (acked, dropped)
}

/// The possible worlds after a write that was dropped: the write may have been made (with
/// any of its outcomes, or only some of its chunks) or not.
fn widen<W: Ord + Clone>(worlds: &BTreeSet<W>, made: impl Fn(&W) -> Vec<W>) -> BTreeSet<W> {
    let mut out = worlds.clone();
    for w in worlds {
        out.extend(made(w));
    }
    out
}

/// The worlds an acknowledged write with outcome `actual` may have left, or a message when
/// it has that outcome on no world.
fn narrow<W: Ord + Clone + std::fmt::Debug, O: PartialEq + std::fmt::Debug>(
    worlds: &BTreeSet<W>,
    actual: &O,
    apply: impl Fn(&W) -> Vec<(O, W)>,
) -> Result<BTreeSet<W>, String> {
    let mut out = BTreeSet::new();
    let mut possible = Vec::new();
    for w in worlds {
        for (o, after) in apply(w) {
            if o == *actual {
                out.insert(after);
            } else if possible.len() < 4 {
                possible.push(format!("{o:?} on {w:?}"));
            }
        }
    }
    if out.is_empty() {
        return Err(format!(
            "outcome {actual:?} is possible on none of the {} worlds; e.g. {}",
            worlds.len(),
            possible.join("; ")
        ));
    }
    Ok(out)
}

fn not_in<W: Ord + std::fmt::Debug>(found: &W, worlds: &BTreeSet<W>) -> String {
    format!(
        "found {found:?}, which is none of the {} possible worlds, e.g. {:?}",
        worlds.len(),
        worlds.iter().take(3).collect::<Vec<_>>()
    )
}

// ---------------------------------------------------------------------------------------
// 1. Table writes.

const DOCS: &str = "ca_docs";
const OWN_KEYS: u64 = 4;

/// The rows of one task in `ca_docs`: its keys `t<task>k<j>` (canonical document text) and,
/// per large insert, how many of its filler rows `t<task>f<n>_<i>` are there.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct DocWorld {
    keys: BTreeMap<String, String>,
    fillers: BTreeMap<u64, u64>,
}

#[derive(Clone, Debug)]
enum TOp {
    Insert {
        key: String,
        conflict: Conflict,
    },
    /// `Conflict::Replace`: `keys[0]`, then the fillers, then the other keys.
    InsertMany {
        keys: Vec<String>,
        fillers: u64,
    },
    Update {
        key: String,
    },
    Replace {
        key: String,
    },
    Delete {
        key: String,
    },
    PatchWith {
        key: String,
    },
    ReplaceWith {
        key: String,
    },
    /// `filter(..).update(..)` of the task's keys.
    FilterUpdate,
    /// `filter(..).delete()` of the task's keys whose `seq` is below.
    FilterDelete {
        below: u64,
    },
    /// `require_empty(key)`, `insert(key)`, `update_where(the task's keys)`.
    BatchInsertIfAbsent {
        key: String,
    },
    /// `require_exists(key)`, `delete(other)`, `update(key, Patch::with)`.
    BatchRequireExists {
        key: String,
        other: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NotFound,
    Precondition,
}

/// What a table write did, as far as the oracle tells: the changes to the task's keys (sorted,
/// documents as canonical text; no change where nothing changed), filler rows inserted,
/// per-document errors; or the error that refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TOut {
    Done {
        changes: Vec<(String, Option<String>, Option<String>)>,
        fillers: u64,
        errors: u64,
    },
    Refused(Kind),
}

fn own_key(task: u64, j: u64) -> String {
    format!("t{task}k{j}")
}

fn doc(key: &str, task: u64, n: u64) -> Value {
    json!({"id": key, "by": task, "seq": n})
}

fn filler(task: u64, n: u64, i: u64) -> Value {
    json!({"id": format!("t{task}f{n}_{i}"), "by": task})
}

/// `old` (canonical text) with `patch`'s fields set.
fn merged(old: &str, patch: &Value) -> String {
    let mut d: Value = serde_json::from_str(old).expect("a canonical document");
    for (k, v) in patch.as_object().expect("an object") {
        d[k] = v.clone();
    }
    canon(&d)
}

fn seq_of(doc: &str) -> Value {
    let d: Value = serde_json::from_str(doc).expect("a canonical document");
    d["seq"].clone()
}

/// The documents of an `InsertMany`, in order (`None`: the next filler).
fn many_order(keys: &[String], fillers: u64) -> Vec<Option<&String>> {
    let mut order = vec![Some(&keys[0])];
    order.extend((0..fillers).map(|_| None));
    order.extend(keys[1..].iter().map(Some));
    order
}

/// Applies writes to a world, collecting the outcome.
struct TStep {
    w: DocWorld,
    changes: Vec<(String, Option<String>, Option<String>)>,
    fillers: u64,
    errors: u64,
}

impl TStep {
    fn new(w: &DocWorld) -> TStep {
        TStep {
            w: w.clone(),
            changes: Vec::new(),
            fillers: 0,
            errors: 0,
        }
    }
    fn put(&mut self, key: &str, new: Option<String>) {
        let old = match &new {
            Some(d) => self.w.keys.insert(key.to_string(), d.clone()),
            None => self.w.keys.remove(key),
        };
        if old != new {
            self.changes.push((key.to_string(), old, new));
        }
    }
    fn done(mut self) -> (TOut, DocWorld) {
        self.changes.sort();
        (
            TOut::Done {
                changes: self.changes,
                fillers: self.fillers,
                errors: self.errors,
            },
            self.w,
        )
    }
}

/// What `op` (write number `n` of `task`) does on `w`: its outcomes and the worlds they
/// leave, and the worlds a dropped one may leave on its way (a prefix of its chunks).
fn apply_t(task: u64, op: &TOp, n: u64, w: &DocWorld) -> (Vec<(TOut, DocWorld)>, Vec<DocWorld>) {
    let mut s = TStep::new(w);
    let mut partial = Vec::new();
    let stored = |key: &str| w.keys.get(key).cloned();
    match op {
        TOp::Insert { key, conflict } => {
            let new = canon(&doc(key, task, n));
            match (stored(key), conflict) {
                (None, _) => s.put(key, Some(new)),
                (Some(_), Conflict::Error) => s.errors += 1,
                (Some(_), Conflict::Replace) => s.put(key, Some(new)),
                (Some(old), _) => s.put(key, Some(merged(&old, &doc(key, task, n)))),
            }
        }
        TOp::InsertMany { keys, fillers } => {
            let order = many_order(keys, *fillers);
            let len = order.len();
            for (i, d) in order.into_iter().enumerate() {
                match d {
                    Some(key) => s.put(key, Some(canon(&doc(key, task, n)))),
                    None => {
                        s.fillers += 1;
                        *s.w.fillers.entry(n).or_default() += 1;
                    }
                }
                if (i + 1) % CHUNK == 0 && i + 1 < len {
                    partial.push(s.w.clone());
                }
            }
        }
        TOp::Update { key } => {
            if let Some(old) = stored(key) {
                s.put(key, Some(merged(&old, &json!({"seq": n}))));
            }
        }
        TOp::Replace { key } => {
            if stored(key).is_some() {
                s.put(key, Some(canon(&doc(key, task, n))));
            }
        }
        TOp::Delete { key } => s.put(key, None),
        TOp::PatchWith { key } => {
            if let Some(old) = stored(key) {
                let patch = json!({"seq": n, "prev": seq_of(&old)});
                s.put(key, Some(merged(&old, &patch)));
            }
        }
        TOp::ReplaceWith { key } => {
            if let Some(old) = stored(key) {
                s.put(key, Some(merged(&old, &json!({"seq": n, "rw": true}))));
            }
        }
        TOp::FilterUpdate => {
            for (key, old) in &w.keys {
                s.put(key, Some(merged(old, &json!({"seq": n}))));
            }
        }
        TOp::FilterDelete { below } => {
            for (key, old) in &w.keys {
                if seq_of(old).as_u64().is_some_and(|q| q < *below) {
                    s.put(key, None);
                }
            }
        }
        TOp::BatchInsertIfAbsent { key } => {
            if stored(key).is_some() {
                return (vec![(TOut::Refused(Kind::Precondition), w.clone())], vec![]);
            }
            // update_where selects the rows as they were before the batch.
            for (k, old) in &w.keys {
                s.put(k, Some(merged(old, &json!({"seq": n}))));
            }
            s.put(key, Some(canon(&doc(key, task, n))));
        }
        TOp::BatchRequireExists { key, other } => {
            let Some(old) = stored(key) else {
                return (vec![(TOut::Refused(Kind::NotFound), w.clone())], vec![]);
            };
            s.put(other, None);
            let patch = json!({"seq": n, "prev": seq_of(&old)});
            s.put(key, Some(merged(&old, &patch)));
        }
    }
    (vec![s.done()], partial)
}

type WriteFuture = Pin<Box<dyn Future<Output = remodel::Result<WriteResult>> + Send>>;

/// The write of `op`, ready to run (every one returns its changes).
fn t_write(db: &Database, task: u64, op: &TOp, n: u64) -> WriteFuture {
    let t = db.table(DOCS);
    let owned = || {
        t.get_all([task])
            .index("by")
            .filter(field("id").starts_with(format!("t{task}k")))
    };
    match op.clone() {
        TOp::Insert { key, conflict } => Box::pin(
            t.insert(doc(&key, task, n))
                .conflict(conflict)
                .return_changes(true)
                .into_future(),
        ),
        TOp::InsertMany { keys, fillers } => {
            let mut i = 0;
            let docs: Vec<Value> = many_order(&keys, fillers)
                .into_iter()
                .map(|d| match d {
                    Some(key) => doc(key, task, n),
                    None => {
                        i += 1;
                        filler(task, n, i)
                    }
                })
                .collect();
            Box::pin(
                t.insert_many(docs)
                    .conflict(Conflict::Replace)
                    .return_changes(true)
                    .into_future(),
            )
        }
        TOp::Update { key } => Box::pin(
            t.get(key.as_str())
                .update(json!({"seq": n}))
                .return_changes(true)
                .into_future(),
        ),
        TOp::Replace { key } => Box::pin(
            t.get(key.as_str())
                .replace(doc(&key, task, n))
                .return_changes(true)
                .into_future(),
        ),
        TOp::Delete { key } => Box::pin(
            t.get(key.as_str())
                .delete()
                .return_changes(true)
                .into_future(),
        ),
        TOp::PatchWith { key } => Box::pin(
            t.get(key.as_str())
                .update(Patch::with(move |d| {
                    Ok(json!({"seq": n, "prev": d["seq"].clone()}))
                }))
                .return_changes(true)
                .into_future(),
        ),
        TOp::ReplaceWith { key } => Box::pin(
            t.get(key.as_str())
                .replace_with(move |d| {
                    let mut d = d.clone();
                    d["seq"] = json!(n);
                    d["rw"] = json!(true);
                    Ok(d)
                })
                .return_changes(true)
                .into_future(),
        ),
        TOp::FilterUpdate => Box::pin(
            owned()
                .update(json!({"seq": n}))
                .return_changes(true)
                .into_future(),
        ),
        TOp::FilterDelete { below } => Box::pin(
            owned()
                .filter(field("seq").lt(below))
                .delete()
                .return_changes(true)
                .into_future(),
        ),
        TOp::BatchInsertIfAbsent { key } => Box::pin(
            db.batch()
                .require_empty(&t.get_all([key.as_str()]), "the key is taken")
                .insert(DOCS, doc(&key, task, n))
                .update_where(&owned(), json!({"seq": n}))
                .return_changes(true)
                .into_future(),
        ),
        TOp::BatchRequireExists { key, other } => Box::pin(
            db.batch()
                .require_exists(DOCS, key.as_str())
                .delete(DOCS, other.as_str())
                .update(
                    DOCS,
                    key.as_str(),
                    Patch::with(move |d| Ok(json!({"seq": n, "prev": d["seq"].clone()}))),
                )
                .return_changes(true)
                .into_future(),
        ),
    }
}

fn pick_t(rng: &mut Rng, task: u64) -> TOp {
    let key = own_key(task, rng.below(OWN_KEYS));
    let other = loop {
        let k = own_key(task, rng.below(OWN_KEYS));
        if k != key {
            break k;
        }
    };
    match rng.below(100) {
        0..=13 => TOp::Insert {
            key,
            conflict: match rng.below(3) {
                0 => Conflict::Error,
                1 => Conflict::Replace,
                _ => Conflict::Update,
            },
        },
        14..=33 => {
            let mut keys = vec![key];
            if rng.chance(50) {
                keys.push(other);
            }
            let fillers = match rng.below(100) {
                // Two chunks (rarely: they take a while).
                0..=2 => 5_000,
                3..=59 => 70,
                _ => 0,
            };
            TOp::InsertMany { keys, fillers }
        }
        34..=41 => TOp::Update { key },
        42..=49 => TOp::Replace { key },
        50..=59 => TOp::Delete { key },
        60..=67 => TOp::PatchWith { key },
        68..=74 => TOp::ReplaceWith { key },
        75..=80 => TOp::FilterUpdate,
        81..=86 => TOp::FilterDelete {
            below: rng.below(1_000),
        },
        87..=93 => TOp::BatchInsertIfAbsent { key },
        _ => TOp::BatchRequireExists { key, other },
    }
}

/// The outcome of an acknowledged table write (or a message when it is not one of `task`).
fn t_outcome(task: u64, r: remodel::Result<WriteResult>) -> Result<TOut, String> {
    let r = match r {
        Ok(r) => r,
        Err(Error::NotFound { .. }) => return Ok(TOut::Refused(Kind::NotFound)),
        Err(Error::Precondition(_)) => return Ok(TOut::Refused(Kind::Precondition)),
        Err(e) => return Err(format!("an error of a valid write: {e} ({e:?})")),
    };
    let (own, fill) = (format!("t{task}k"), format!("t{task}f"));
    let mut changes = Vec::new();
    let mut fillers = 0;
    for c in &r.changes {
        let id = c
            .new_val
            .as_ref()
            .or(c.old_val.as_ref())
            .and_then(|d| d["id"].as_str())
            .ok_or_else(|| format!("a change without an id: {c:?}"))?;
        if id.starts_with(&fill) {
            if c.old_val.is_some() || c.new_val.is_none() {
                return Err(format!("a filler row was not inserted but changed: {c:?}"));
            }
            fillers += 1;
        } else if id.starts_with(&own) {
            let (old, new) = (c.old_val.as_ref().map(canon), c.new_val.as_ref().map(canon));
            if old != new {
                changes.push((id.to_string(), old, new));
            }
        } else {
            return Err(format!("a write of task {task} changed another row: {c:?}"));
        }
    }
    changes.sort();
    Ok(TOut::Done {
        changes,
        fillers,
        errors: r.errors,
    })
}

/// The world that `task`'s documents make.
fn doc_world<'a>(task: u64, docs: impl Iterator<Item = &'a Value>) -> Result<DocWorld, String> {
    let (own, fill) = (format!("t{task}k"), format!("t{task}f"));
    let mut w = DocWorld::default();
    for d in docs {
        let id = d["id"]
            .as_str()
            .ok_or_else(|| format!("a row without an id: {d}"))?;
        if d["by"] != json!(task) {
            return Err(format!("a row of task {task} written by another: {d}"));
        }
        if let Some(rest) = id.strip_prefix(&fill) {
            let n = rest
                .split('_')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("a bad filler id: {d}"))?;
            *w.fillers.entry(n).or_default() += 1;
        } else if id.starts_with(&own) {
            w.keys.insert(id.to_string(), canon(d));
        } else {
            return Err(format!("a row of task {task} with another's id: {d}"));
        }
    }
    Ok(w)
}

async fn table_task(db: Database, task: u64, seed: u64, stop: Arc<AtomicBool>) -> Report {
    let mut rng = Rng::for_task(seed, task);
    let mut worlds = BTreeSet::from([DocWorld::default()]);
    let mut report = Report {
        failures: Vec::new(),
        acked: 0,
        dropped: 0,
    };
    let mut history = History::default();
    let mut n = 0u64;
    let label = |n: u64| format!("CANCEL_ATTACK_SEED={seed} task {task} write #{n}");
    'rounds: while !stop.load(Ordering::Relaxed) {
        for _ in 0..3 + rng.below(8) {
            n += 1;
            let op = pick_t(&mut rng, task);
            let cancel = match worlds.len() > MAX_WORLDS {
                true => Cancel::None,
                false => Cancel::pick(&mut rng),
            };
            let ran = run(t_write(&db, task, &op, n), cancel).await;
            let actual = match ran {
                Ran::Hung => {
                    report.failures.push(format!(
                        "{}: {op:?} hung for 30 s{}",
                        label(n),
                        history.text()
                    ));
                    break 'rounds;
                }
                Ran::Dropped => {
                    report.dropped += 1;
                    history.push(format!("#{n} {op:?} ({cancel:?}): dropped"));
                    worlds = widen(&worlds, |w| {
                        let (outcomes, mut partial) = apply_t(task, &op, n, w);
                        partial.extend(outcomes.into_iter().map(|(_, w)| w));
                        partial
                    });
                    continue;
                }
                Ran::Done(r) => t_outcome(task, r),
            };
            report.acked += 1;
            let actual = match actual {
                Ok(a) => a,
                Err(e) => {
                    report
                        .failures
                        .push(format!("{}: {op:?}: {e}{}", label(n), history.text()));
                    break 'rounds;
                }
            };
            history.push(format!("#{n} {op:?} ({cancel:?}): {actual:?}"));
            match narrow(&worlds, &actual, |w| apply_t(task, &op, n, w).0) {
                Ok(w) => worlds = w,
                Err(e) => {
                    report.failures.push(format!(
                        "{}: {op:?} ({cancel:?}): {e}{}",
                        label(n),
                        history.text()
                    ));
                    break 'rounds;
                }
            }
        }
        // The probe: a write after every drop, so what it finds is settled.
        let probe = db
            .table(DOCS)
            .get_all([task])
            .index("by")
            .delete()
            .return_changes(true)
            .into_future();
        let found = match run(probe, Cancel::None).await {
            Ran::Done(Ok(r)) => {
                doc_world(task, r.changes.iter().filter_map(|c| c.old_val.as_ref()))
            }
            Ran::Done(Err(e)) => Err(format!("the probe failed: {e} ({e:?})")),
            _ => Err("the probe hung for 30 s".to_string()),
        };
        match found {
            Ok(found) if worlds.contains(&found) => {
                history.push(format!("probe after #{n}: found {found:?}"));
                worlds = BTreeSet::from([DocWorld::default()]);
            }
            Ok(found) => {
                report.failures.push(format!(
                    "{}: the probe {}{}",
                    label(n),
                    not_in(&found, &worlds),
                    history.text()
                ));
                break 'rounds;
            }
            Err(e) => {
                report
                    .failures
                    .push(format!("{}: {e}{}", label(n), history.text()));
                break 'rounds;
            }
        }
    }
    if report.failures.is_empty() {
        // The end: what is stored after every task stopped is checked by the test.
        FINAL_DOCS
            .lock()
            .unwrap()
            .insert(task, (worlds, history.text()));
    }
    report
}

type FinalWorlds<W> = std::sync::Mutex<BTreeMap<u64, (BTreeSet<W>, String)>>;

/// The end of a storm: each task's stored rows (`by_task`, read after every task stopped)
/// must be one of the worlds it ended with.
fn check_finals<W: Ord + std::fmt::Debug>(
    finals: &BTreeMap<u64, (BTreeSet<W>, String)>,
    mut by_task: BTreeMap<u64, Vec<Value>>,
    world_of: impl Fn(u64, &[Value]) -> Result<W, String>,
    failures: &mut Vec<String>,
) {
    for (task, (worlds, history)) in finals {
        let rows = by_task.remove(task).unwrap_or_default();
        match world_of(*task, &rows) {
            Ok(found) if worlds.contains(&found) => {}
            Ok(found) => failures.push(format!(
                "task {task} at the end: {}{history}",
                not_in(&found, worlds)
            )),
            Err(e) => failures.push(format!("task {task} at the end: {e}")),
        }
    }
}
static FINAL_DOCS: FinalWorlds<DocWorld> = std::sync::Mutex::new(BTreeMap::new());

/// Lets writes dropped on their way land (they may, until a later write), then catches up.
async fn settle(db: &Database) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(HANG, db.sync())
        .await
        .expect("sync hung")
        .expect("sync");
}

/// Table writes of every kind, dropped at random points: a dropped write is either never
/// made or made before the task's next write (which finds it, or not, as the oracle allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_table_writes_never_land_after_later_writes() {
    let seed = seed();
    let db = db().await;
    db.ensure_table(DOCS).await.unwrap();
    db.table(DOCS)
        .ensure_index("by", IndexSpec::field("by"))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(table_task(db.clone(), task, seed, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(if on_pg() { 5 } else { 4 })).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let (acked, dropped) = join_all(tasks, &mut failures).await;
    settle(&db).await;
    let rows = db.table(DOCS).run().await.expect("read back");
    let finals = std::mem::take(&mut *FINAL_DOCS.lock().unwrap());
    let mut by_task: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for row in rows {
        match row["by"].as_u64() {
            Some(t) if t < TASKS => by_task.entry(t).or_default().push(row),
            _ => failures.push(format!("a row of no task: {row}")),
        }
    }
    check_finals(
        &finals,
        by_task,
        |t, rows| doc_world(t, rows.iter()),
        &mut failures,
    );
    println!("{acked} table writes acknowledged, {dropped} dropped");
    assert!(
        dropped > 100,
        "too few writes were dropped to test ({dropped})"
    );
    assert_no_failures(seed, &failures);
    live(&db).await;
}

/// After a storm, writes still complete at once: a single one and 64 concurrent ones.
async fn live(db: &Database) {
    let t = db.table(DOCS);
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        t.insert(json!({"id": "live", "by": 999})).into_future(),
    )
    .await
    .expect("a write after the storm hung")
    .expect("a write after the storm");
    let writes: Vec<_> = (0..64)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                t.insert(json!({"id": format!("live{i}"), "by": 999}))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for w in writes {
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("a write after the storm hung")
            .expect("a write task")
            .expect("a write after the storm");
    }
    println!("65 writes after the storm in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2. Model writes.

const PARENTS: u8 = 2;
const KIDS: u8 = 4;
const TAGS: u8 = 2;

/// The rows of one task: parents (by index: seq), kids (seq, parent), tags (seq), links
/// (parent, tag).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct MWorld {
    parents: BTreeMap<u8, u64>,
    kids: BTreeMap<u8, (u64, Option<u8>)>,
    tags: BTreeMap<u8, u64>,
    links: BTreeSet<(u8, u8)>,
}

impl MWorld {
    /// A parent deleted with its relations: kids cascaded, links removed.
    fn delete_parent(&mut self, p: u8) {
        self.parents.remove(&p);
        self.kids.retain(|_, (_, parent)| *parent != Some(p));
        self.links.retain(|(lp, _)| *lp != p);
    }
    fn delete_tag(&mut self, g: u8) {
        self.tags.remove(&g);
        self.links.retain(|(_, lg)| *lg != g);
    }
}

#[derive(Clone, Copy, Debug)]
enum MOp {
    ParentCreate(u8),
    ParentSave(u8),
    ParentUpdate(u8),
    ParentDelete(u8),
    /// `parent.kids(&db).create(kid)`.
    KidCreate(u8, u8),
    /// `parent.kids(&db).add(&mut [stored kid])`.
    KidAdd(u8, u8),
    /// `parent.kids(&db).remove(&mut [kid])`.
    KidRemove(u8, u8),
    KidUpdate(u8),
    KidDelete(u8),
    TagCreate(u8),
    TagDelete(u8),
    /// `parent.tags(&db).relate(&[tag])`.
    Relate(u8, u8),
    /// `parent.tags(&db).remove(&mut [tag])`.
    Unrelate(u8, u8),
    /// `parent.tags(&db).add(&mut [stored tag])`.
    TagAdd(u8, u8),
    /// A transaction: create a parent, create a kid of it, relate it to a tag.
    TxCreate(u8, u8, u8),
    /// A transaction: update a parent, delete a kid.
    TxUpdateDeleteKid(u8, u8),
    /// A transaction: update a parent, then delete it (cascade).
    TxUpdateDelete(u8),
    /// A transaction: save a parent, add a stored kid to it.
    TxSaveAdd(u8, u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MOut {
    Ok,
    Count(u64),
    NotFound,
    KeyConflict,
}

fn pkey(task: u64, j: u8) -> Id {
    Id::from(format!("t{task}p{j}"))
}
fn kkey(task: u64, j: u8) -> Id {
    Id::from(format!("t{task}k{j}"))
}
fn gkey(task: u64, j: u8) -> Id {
    Id::from(format!("t{task}g{j}"))
}

fn parent(task: u64, j: u8, seq: u64) -> Parent {
    Parent {
        id: Some(pkey(task, j)),
        by: task,
        seq,
    }
}
fn kid(task: u64, j: u8, seq: u64, parent: Option<u8>) -> Kid {
    Kid {
        id: Some(kkey(task, j)),
        by: task,
        seq,
        parent_id: parent.map(|p| pkey(task, p)),
    }
}
fn tag(task: u64, j: u8, seq: u64) -> Tag {
    Tag {
        id: Some(gkey(task, j)),
        by: task,
        seq,
    }
}

/// What `op` (write number `n`) does on `w`: its outcomes (more than one where the order of
/// its checks is not documented) and the worlds they leave.
fn apply_m(op: MOp, n: u64, w: &MWorld) -> Vec<(MOut, MWorld)> {
    let mut a = w.clone();
    let refused = |errs: Vec<MOut>| -> Vec<(MOut, MWorld)> {
        errs.into_iter().map(|e| (e, w.clone())).collect()
    };
    match op {
        MOp::ParentCreate(p) => {
            if w.parents.contains_key(&p) {
                return refused(vec![MOut::KeyConflict]);
            }
            a.parents.insert(p, n);
        }
        MOp::ParentSave(p) => {
            a.parents.insert(p, n);
        }
        MOp::ParentUpdate(p) => {
            if !w.parents.contains_key(&p) {
                return refused(vec![MOut::NotFound]);
            }
            a.parents.insert(p, n);
        }
        MOp::ParentDelete(p) | MOp::TxUpdateDelete(p) => {
            if !w.parents.contains_key(&p) {
                return refused(vec![MOut::NotFound]);
            }
            a.delete_parent(p);
        }
        MOp::KidCreate(k, p) => {
            let mut errs = Vec::new();
            if !w.parents.contains_key(&p) {
                errs.push(MOut::NotFound);
            }
            if w.kids.contains_key(&k) {
                errs.push(MOut::KeyConflict);
            }
            if !errs.is_empty() {
                return refused(errs);
            }
            a.kids.insert(k, (n, Some(p)));
        }
        MOp::KidAdd(k, p) => {
            if !w.parents.contains_key(&p) || !w.kids.contains_key(&k) {
                return refused(vec![MOut::NotFound]);
            }
            a.kids.insert(k, (n, Some(p)));
        }
        MOp::KidRemove(k, p) => {
            return match w.kids.get(&k) {
                Some(&(seq, Some(of))) if of == p => {
                    a.kids.insert(k, (seq, None));
                    vec![(MOut::Count(1), a)]
                }
                _ => vec![(MOut::Count(0), a)],
            };
        }
        MOp::KidUpdate(k) => match w.kids.get(&k) {
            None => return refused(vec![MOut::NotFound]),
            Some(&(_, p)) => {
                a.kids.insert(k, (n, p));
            }
        },
        MOp::KidDelete(k) => {
            if a.kids.remove(&k).is_none() {
                return refused(vec![MOut::NotFound]);
            }
        }
        MOp::TagCreate(g) => {
            if w.tags.contains_key(&g) {
                return refused(vec![MOut::KeyConflict]);
            }
            a.tags.insert(g, n);
        }
        MOp::TagDelete(g) => {
            if !w.tags.contains_key(&g) {
                return refused(vec![MOut::NotFound]);
            }
            a.delete_tag(g);
        }
        MOp::Relate(p, g) => {
            if !w.parents.contains_key(&p) || !w.tags.contains_key(&g) {
                return refused(vec![MOut::NotFound]);
            }
            a.links.insert((p, g));
        }
        MOp::Unrelate(p, g) => {
            let removed = a.links.remove(&(p, g));
            return vec![(MOut::Count(removed as u64), a)];
        }
        MOp::TagAdd(p, g) => {
            if !w.parents.contains_key(&p) || !w.tags.contains_key(&g) {
                return refused(vec![MOut::NotFound]);
            }
            a.tags.insert(g, n);
            a.links.insert((p, g));
        }
        MOp::TxCreate(p, k, g) => {
            let mut errs = Vec::new();
            if w.parents.contains_key(&p) || w.kids.contains_key(&k) {
                errs.push(MOut::KeyConflict);
            }
            if !w.tags.contains_key(&g) {
                errs.push(MOut::NotFound);
            }
            if !errs.is_empty() {
                return refused(errs);
            }
            a.parents.insert(p, n);
            a.kids.insert(k, (n, Some(p)));
            a.links.insert((p, g));
        }
        MOp::TxUpdateDeleteKid(p, k) => {
            if !w.parents.contains_key(&p) || !w.kids.contains_key(&k) {
                return refused(vec![MOut::NotFound]);
            }
            a.parents.insert(p, n);
            a.kids.remove(&k);
        }
        MOp::TxSaveAdd(p, k) => {
            if !w.kids.contains_key(&k) {
                return refused(vec![MOut::NotFound]);
            }
            a.parents.insert(p, n);
            a.kids.insert(k, (n, Some(p)));
        }
    }
    vec![(MOut::Ok, a)]
}

/// Runs `op` (write number `n` of `task`) through the model layer.
async fn m_write(db: Database, task: u64, op: MOp, n: u64) -> remodel::Result<MOut> {
    fn ok<T>(_: T) -> MOut {
        MOut::Ok
    }
    match op {
        MOp::ParentCreate(p) => parent(task, p, n).create(&db).await.map(ok),
        MOp::ParentSave(p) => parent(task, p, n).save(&db).await.map(ok),
        MOp::ParentUpdate(p) => parent(task, p, 0).update(&db, |m| m.seq = n).await.map(ok),
        MOp::ParentDelete(p) => parent(task, p, 0).delete(&db).await.map(ok),
        MOp::KidCreate(k, p) => parent(task, p, 0)
            .kids(&db)
            .create(kid(task, k, n, None))
            .await
            .map(ok),
        MOp::KidAdd(k, p) => parent(task, p, 0)
            .kids(&db)
            .add(&mut [kid(task, k, n, None)])
            .await
            .map(ok),
        MOp::KidRemove(k, p) => parent(task, p, 0)
            .kids(&db)
            .remove(&mut [kid(task, k, 0, Some(p))])
            .await
            .map(MOut::Count),
        MOp::KidUpdate(k) => kid(task, k, 0, None)
            .update(&db, |m| m.seq = n)
            .await
            .map(ok),
        MOp::KidDelete(k) => kid(task, k, 0, None).delete(&db).await.map(ok),
        MOp::TagCreate(g) => tag(task, g, n).create(&db).await.map(ok),
        MOp::TagDelete(g) => tag(task, g, 0).delete(&db).await.map(ok),
        MOp::Relate(p, g) => parent(task, p, 0)
            .tags(&db)
            .relate(&[gkey(task, g)])
            .await
            .map(ok),
        MOp::Unrelate(p, g) => parent(task, p, 0)
            .tags(&db)
            .remove(&mut [tag(task, g, 0)])
            .await
            .map(MOut::Count),
        MOp::TagAdd(p, g) => parent(task, p, 0)
            .tags(&db)
            .add(&mut [tag(task, g, n)])
            .await
            .map(ok),
        MOp::TxCreate(p, k, g) => {
            let mut tx = Transaction::new(&db);
            let created = tx.create(parent(task, p, n)).await?;
            tx.create(kid(task, k, n, Some(p))).await?;
            tx.relate(&created.tags(&db), &[gkey(task, g)]).await?;
            tx.commit().await.map(ok)
        }
        MOp::TxUpdateDeleteKid(p, k) => {
            let mut tx = Transaction::new(&db);
            tx.update(&mut parent(task, p, 0), |m| m.seq = n).await?;
            tx.delete(kid(task, k, 0, None)).await?;
            tx.commit().await.map(ok)
        }
        MOp::TxUpdateDelete(p) => {
            let mut tx = Transaction::new(&db);
            tx.update(&mut parent(task, p, 0), |m| m.seq = n).await?;
            tx.delete(parent(task, p, 0)).await?;
            tx.commit().await.map(ok)
        }
        MOp::TxSaveAdd(p, k) => {
            let mut tx = Transaction::new(&db);
            let mut saved = parent(task, p, n);
            tx.save(&mut saved).await?;
            tx.add(&saved.kids(&db), &mut [kid(task, k, n, None)])
                .await?;
            tx.commit().await.map(ok)
        }
    }
}

fn m_outcome(r: remodel::Result<MOut>) -> Result<MOut, String> {
    match r {
        Ok(o) => Ok(o),
        Err(Error::Model(ModelError::NotFound { .. })) | Err(Error::NotFound { .. }) => {
            Ok(MOut::NotFound)
        }
        Err(Error::KeyConflict { .. }) => Ok(MOut::KeyConflict),
        Err(e) => Err(format!("an error of a valid write: {e} ({e:?})")),
    }
}

fn pick_m(rng: &mut Rng) -> MOp {
    let p = rng.below(PARENTS as u64) as u8;
    let k = rng.below(KIDS as u64) as u8;
    let g = rng.below(TAGS as u64) as u8;
    match rng.below(18) {
        0 => MOp::ParentCreate(p),
        1 => MOp::ParentSave(p),
        2 => MOp::ParentUpdate(p),
        3 => MOp::ParentDelete(p),
        4 => MOp::KidCreate(k, p),
        5 => MOp::KidAdd(k, p),
        6 => MOp::KidRemove(k, p),
        7 => MOp::KidUpdate(k),
        8 => MOp::KidDelete(k),
        9 => MOp::TagCreate(g),
        10 => MOp::TagDelete(g),
        11 => MOp::Relate(p, g),
        12 => MOp::Unrelate(p, g),
        13 => MOp::TagAdd(p, g),
        14 => MOp::TxCreate(p, k, g),
        15 => MOp::TxUpdateDeleteKid(p, k),
        16 => MOp::TxUpdateDelete(p),
        _ => MOp::TxSaveAdd(p, k),
    }
}

fn random_world(rng: &mut Rng, n: u64) -> MWorld {
    let mut w = MWorld::default();
    for p in 0..PARENTS {
        if rng.chance(70) {
            w.parents.insert(p, n);
        }
    }
    let parents: Vec<u8> = w.parents.keys().copied().collect();
    for k in 0..KIDS {
        if rng.chance(60) {
            let of = match parents.is_empty() || rng.chance(25) {
                true => None,
                false => Some(parents[rng.below(parents.len() as u64) as usize]),
            };
            w.kids.insert(k, (n, of));
        }
    }
    for g in 0..TAGS {
        if rng.chance(60) {
            w.tags.insert(g, n);
        }
    }
    for &p in &parents {
        for &g in w.tags.keys() {
            if rng.chance(50) {
                w.links.insert((p, g));
            }
        }
    }
    w
}

fn link_doc(task: u64, p: u8, g: u8) -> Value {
    let (p, g) = (pkey(task, p), gkey(task, g));
    json!({"id": [p.as_str(), g.as_str()], "parent_id": p.as_str(), "tag_id": g.as_str()})
}

/// Stores `w` as `task`'s rows (there are none), in one batch.
async fn seed_world(db: &Database, task: u64, w: &MWorld) -> remodel::Result<()> {
    let mut b = db.batch();
    for (&p, &seq) in &w.parents {
        b = b.insert("ca_parents", parent(task, p, seq).to_json()?);
    }
    for (&k, &(seq, of)) in &w.kids {
        b = b.insert("ca_kids", kid(task, k, seq, of).to_json()?);
    }
    for (&g, &seq) in &w.tags {
        b = b.insert("ca_tags", tag(task, g, seq).to_json()?);
    }
    for &(p, g) in &w.links {
        b = b.insert("ca_links", link_doc(task, p, g));
    }
    b.await?.check()?;
    Ok(())
}

/// The index of a key `t<task><kind><j>`.
fn index_of(task: u64, kind: char, key: &Value) -> Option<u8> {
    key.as_str()?
        .strip_prefix(&format!("t{task}{kind}"))?
        .parse()
        .ok()
}

/// The task a row is of: its `by`, or for a link the task of its parent's key.
fn task_of(row: &Value) -> Option<u64> {
    if let Some(t) = row["by"].as_u64() {
        return Some(t);
    }
    let p = row["id"][0].as_str()?.strip_prefix('t')?;
    p.split('p').next()?.parse().ok()
}

/// The world that `task`'s rows (of any of the four tables) make.
fn m_world<'a>(task: u64, rows: impl Iterator<Item = &'a Value>) -> Result<MWorld, String> {
    let mut w = MWorld::default();
    let fields = |d: &Value| -> BTreeSet<String> {
        d.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    for d in rows {
        let bad = || format!("an unexpected row of task {task}: {d}");
        let seq = || d["seq"].as_u64().ok_or_else(bad);
        if d["id"].is_array() {
            let p = index_of(task, 'p', &d["id"][0]).ok_or_else(bad)?;
            let g = index_of(task, 'g', &d["id"][1]).ok_or_else(bad)?;
            if fields(d) != set(&["id", "parent_id", "tag_id"])
                || d["parent_id"] != d["id"][0]
                || d["tag_id"] != d["id"][1]
            {
                return Err(bad());
            }
            w.links.insert((p, g));
            continue;
        }
        if d["by"] != json!(task) {
            return Err(bad());
        }
        if let Some(p) = index_of(task, 'p', &d["id"]) {
            if fields(d) != set(&["id", "by", "seq"]) {
                return Err(bad());
            }
            w.parents.insert(p, seq()?);
        } else if let Some(k) = index_of(task, 'k', &d["id"]) {
            if fields(d) != set(&["id", "by", "seq", "parent_id"]) {
                return Err(bad());
            }
            let of = match &d["parent_id"] {
                Value::Null => None,
                v => Some(index_of(task, 'p', v).ok_or_else(bad)?),
            };
            w.kids.insert(k, (seq()?, of));
        } else if let Some(g) = index_of(task, 'g', &d["id"]) {
            if fields(d) != set(&["id", "by", "seq"]) {
                return Err(bad());
            }
            w.tags.insert(g, seq()?);
        } else {
            return Err(bad());
        }
    }
    Ok(w)
}

const MODEL_TABLES: [&str; 4] = ["ca_links", "ca_kids", "ca_tags", "ca_parents"];

async fn model_task(db: Database, task: u64, seed: u64, stop: Arc<AtomicBool>) -> Report {
    let mut rng = Rng::for_task(seed, task);
    let mut report = Report {
        failures: Vec::new(),
        acked: 0,
        dropped: 0,
    };
    let mut history = History::default();
    let mut n = 1u64;
    let label = |n: u64| format!("CANCEL_ATTACK_SEED={seed} task {task} write #{n}");
    let start = random_world(&mut rng, n);
    if let Err(e) = seed_world(&db, task, &start).await {
        report.failures.push(format!("{}: seeding: {e}", label(n)));
        return report;
    }
    let mut worlds = BTreeSet::from([start]);
    'rounds: while !stop.load(Ordering::Relaxed) {
        for _ in 0..3 + rng.below(8) {
            n += 1;
            let op = pick_m(&mut rng);
            let cancel = match worlds.len() > MAX_WORLDS {
                true => Cancel::None,
                false => Cancel::pick(&mut rng),
            };
            let actual = match run(m_write(db.clone(), task, op, n), cancel).await {
                Ran::Hung => {
                    report.failures.push(format!(
                        "{}: {op:?} hung for 30 s{}",
                        label(n),
                        history.text()
                    ));
                    break 'rounds;
                }
                Ran::Dropped => {
                    report.dropped += 1;
                    history.push(format!("#{n} {op:?} ({cancel:?}): dropped"));
                    worlds = widen(&worlds, |w| {
                        apply_m(op, n, w).into_iter().map(|(_, w)| w).collect()
                    });
                    continue;
                }
                Ran::Done(r) => m_outcome(r),
            };
            report.acked += 1;
            let actual = match actual {
                Ok(a) => a,
                Err(e) => {
                    report
                        .failures
                        .push(format!("{}: {op:?}: {e}{}", label(n), history.text()));
                    break 'rounds;
                }
            };
            history.push(format!("#{n} {op:?} ({cancel:?}): {actual:?}"));
            let narrowed = narrow(&worlds, &actual, |w| apply_m(op, n, w));
            match narrowed {
                Ok(w) => worlds = w,
                Err(e) => {
                    report.failures.push(format!(
                        "{}: {op:?} ({cancel:?}): {e}{}",
                        label(n),
                        history.text()
                    ));
                    break 'rounds;
                }
            }
        }
        // The probe: one batch, after every drop, deleting every row of the task.
        let mine = |t: &str| db.table(t).filter(field("by").eq(task));
        let links = db
            .table("ca_links")
            .filter(field("parent_id").starts_with(format!("t{task}p")));
        let probe = db
            .batch()
            .delete_where(&links)
            .delete_where(&mine("ca_kids"))
            .delete_where(&mine("ca_tags"))
            .delete_where(&mine("ca_parents"))
            .return_changes(true)
            .into_future();
        let found = match run(probe, Cancel::None).await {
            Ran::Done(Ok(r)) => m_world(task, r.changes.iter().filter_map(|c| c.old_val.as_ref())),
            Ran::Done(Err(e)) => Err(format!("the probe failed: {e} ({e:?})")),
            _ => Err("the probe hung for 30 s".to_string()),
        };
        match found {
            Ok(found) if worlds.contains(&found) => {
                history.push(format!("probe after #{n}: found {found:?}"));
            }
            Ok(found) => {
                report.failures.push(format!(
                    "{}: the probe {}{}",
                    label(n),
                    not_in(&found, &worlds),
                    history.text()
                ));
                break 'rounds;
            }
            Err(e) => {
                report
                    .failures
                    .push(format!("{}: {e}{}", label(n), history.text()));
                break 'rounds;
            }
        }
        n += 1;
        let next = random_world(&mut rng, n);
        if let Err(e) = seed_world(&db, task, &next).await {
            report
                .failures
                .push(format!("{}: seeding: {e}{}", label(n), history.text()));
            break 'rounds;
        }
        history.push(format!("#{n} seeded {next:?}"));
        worlds = BTreeSet::from([next]);
    }
    if report.failures.is_empty() {
        FINAL_MODELS
            .lock()
            .unwrap()
            .insert(task, (worlds, history.text()));
    }
    report
}

static FINAL_MODELS: FinalWorlds<MWorld> = std::sync::Mutex::new(BTreeMap::new());

/// Model writes (create, save, update, cascading delete, has_many and many-to-many
/// writes, transactions), dropped at random points: a dropped write is either never made
/// or made before the task's next write, and no cascade leaves an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_model_writes_never_land_after_later_writes() {
    let seed = seed();
    let db = db().await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(model_task(db.clone(), task, seed, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(if on_pg() { 5 } else { 4 })).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let (acked, dropped) = join_all(tasks, &mut failures).await;
    settle(&db).await;
    let mut by_task: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let mut keys: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut all = Vec::new();
    for t in MODEL_TABLES {
        for row in db.table(t).run().await.expect("read back") {
            if let Some(k) = row["id"].as_str() {
                keys.entry(t).or_default().insert(k.to_string());
            }
            all.push((t, row));
        }
    }
    // No orphan: every kid's parent and every link's two rows are there.
    let has = |t: &str, k: &Value| {
        k.as_str()
            .is_some_and(|k| keys.get(t).is_some_and(|s| s.contains(k)))
    };
    for (t, row) in &all {
        let orphan = match *t {
            "ca_kids" => !row["parent_id"].is_null() && !has("ca_parents", &row["parent_id"]),
            "ca_links" => !has("ca_parents", &row["parent_id"]) || !has("ca_tags", &row["tag_id"]),
            _ => false,
        };
        if orphan {
            failures.push(format!("an orphan in {t}: {row}"));
        }
    }
    for (t, row) in all {
        match task_of(&row) {
            Some(task) if task < TASKS => by_task.entry(task).or_default().push(row),
            _ => failures.push(format!("a row of no task in {t}: {row}")),
        }
    }
    let finals = std::mem::take(&mut *FINAL_MODELS.lock().unwrap());
    check_finals(
        &finals,
        by_task,
        |t, rows| m_world(t, rows.iter()),
        &mut failures,
    );
    println!("{acked} model writes acknowledged, {dropped} dropped");
    assert!(
        dropped > 100,
        "too few writes were dropped to test ({dropped})"
    );
    assert_no_failures(seed, &failures);
}

// ---------------------------------------------------------------------------------------
// 3. Directed attacks.

/// An insert of 9,000 documents (three chunks of 4,096 at most) dropped at a random point,
/// then a delete of every row of the task: a dropped insert stops before its next chunk, so
/// it is never made after the delete (nothing is left then, nor once the database caught
/// up), and what the delete finds is whole chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_large_insert_stops_at_a_chunk_before_a_later_delete() {
    const DOCS_PER_INSERT: u64 = 9_000;
    let seed = seed();
    let db = db().await;
    db.ensure_table("ca_big").await.unwrap();
    db.table("ca_big")
        .ensure_index("by", IndexSpec::field("by"))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4u64)
        .map(|task| {
            let (db, stop) = (db.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng::for_task(seed, task);
                let t = db.table("ca_big");
                let mut report = Report {
                    failures: Vec::new(),
                    acked: 0,
                    dropped: 0,
                };
                let mut seen = BTreeMap::<u64, u64>::new();
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let docs: Vec<Value> = (0..DOCS_PER_INSERT)
                        .map(|i| json!({"id": format!("t{task}r{round}_{i}"), "by": task}))
                        .collect();
                    let cancel = match rng.below(3) {
                        0 => Cancel::AfterPolls(1 + rng.below(3) as u32),
                        // Inserts of 9,000 take longer on PostgreSQL.
                        _ => Cancel::After(Duration::from_millis(rng.below(if on_pg() {
                            1_500
                        } else {
                            300
                        }))),
                    };
                    match run(t.insert_many(docs).into_future(), cancel).await {
                        Ran::Dropped => report.dropped += 1,
                        Ran::Done(Ok(r)) if r.inserted == DOCS_PER_INSERT => report.acked += 1,
                        Ran::Done(r) => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: insert: {r:?}"));
                            break;
                        }
                        Ran::Hung => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: the insert hung"));
                            break;
                        }
                    }
                    let delete = t.get_all([task]).index("by").delete().into_future();
                    let deleted = match run(delete, Cancel::None).await {
                        Ran::Done(Ok(r)) => r.deleted,
                        Ran::Done(Err(e)) => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: delete: {e}"));
                            break;
                        }
                        _ => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: the delete hung"));
                            break;
                        }
                    };
                    *seen.entry(deleted).or_default() += 1;
                    if deleted != DOCS_PER_INSERT && deleted % CHUNK as u64 != 0 {
                        report.failures.push(format!(
                            "task {task} round {round}: the delete found {deleted} rows: \
                             not whole chunks of the dropped insert"
                        ));
                    }
                    let left = t.get_all([task]).index("by").count().await;
                    if !matches!(left, Ok(0)) {
                        report.failures.push(format!(
                            "task {task} round {round}: {left:?} rows after the delete: the \
                             dropped insert went on after it"
                        ));
                        break;
                    }
                }
                println!("task {task}: rows found by the deletes (rows: times): {seen:?}");
                report
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let (acked, dropped) = join_all(tasks, &mut failures).await;
    settle(&db).await;
    let left = db.table("ca_big").count().await.expect("count");
    if left != 0 {
        failures.push(format!(
            "{left} rows left after every task deleted its rows"
        ));
    }
    println!("{acked} large inserts acknowledged, {dropped} dropped");
    assert!(dropped > 5, "too few inserts were dropped ({dropped})");
    assert_no_failures(seed, &failures);
}

/// `Model::create` dropped at a random point, then `Model::delete` of its key (a write the
/// task starts after the drop), then a raw delete of the key: whatever the model's delete
/// said (deleted, or `NotFound`), the create may not land after it, so the raw delete finds
/// nothing. (`Model::delete` reads the row before it writes, and returns `NotFound` without
/// writing when the read does not show it: a create dropped on its way may not show yet.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_delete_after_a_dropped_create_never_sees_it_come_back() {
    let seed = seed();
    let db = db().await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (db, stop) = (db.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng::for_task(seed, task);
                let mut report = Report {
                    failures: Vec::new(),
                    acked: 0,
                    dropped: 0,
                };
                // Keys of tasks of their own (so that the other tests' tasks are not in the way).
                let owner = 1_000 + task;
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let cancel = match rng.chance(50) {
                        true => Cancel::After(Duration::from_millis(rng.below(4))),
                        false => Cancel::AfterPolls(1 + rng.below(4) as u32),
                    };
                    let created = match run(parent(owner, 0, round).create(&db), cancel).await {
                        Ran::Dropped => {
                            report.dropped += 1;
                            "dropped"
                        }
                        Ran::Done(Ok(_)) => "created",
                        Ran::Done(Err(e)) => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: create: {e}"));
                            break;
                        }
                        Ran::Hung => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: the create hung"));
                            break;
                        }
                    };
                    let deleted = match run(parent(owner, 0, 0).delete(&db), Cancel::None).await {
                        Ran::Done(Ok(())) => "deleted it",
                        Ran::Done(Err(Error::Model(ModelError::NotFound { .. }))) => {
                            "found nothing"
                        }
                        Ran::Done(Err(e)) => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: delete: {e}"));
                            break;
                        }
                        _ => {
                            report
                                .failures
                                .push(format!("task {task} round {round}: delete hung"));
                            break;
                        }
                    };
                    report.acked += 1;
                    let key = pkey(owner, 0);
                    match Parent::table(&db).get(key.as_str()).delete().await {
                        Ok(r) if r.deleted == 0 => {}
                        Ok(_) => report.failures.push(format!(
                            "task {task} round {round}: the create ({created}) landed after \
                             Model::delete ({deleted}): the row came back"
                        )),
                        Err(e) => report
                            .failures
                            .push(format!("task {task} round {round}: raw delete: {e}")),
                    }
                }
                report
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let (acked, dropped) = join_all(tasks, &mut failures).await;
    println!("{acked} rounds, {dropped} creates dropped");
    assert!(dropped > 50, "too few creates were dropped ({dropped})");
    assert_no_failures(seed, &failures);
}
