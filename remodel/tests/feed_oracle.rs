//! The changefeed oracle: a differential, model-based test of every feed kind and option.
//!
//! Each case opens one to three feeds on a small table (keys 0..8, an ordered field `a` in
//! 0..5 with an index, an unordered field `b`, a multi-indexed `tags`), then runs a random
//! sequence of writes: inserts (three conflict policies), `insert_many`, updates of the
//! ordered and of the unordered field, updates that keep the order value, replaces, deletes,
//! no-op writes, updates and deletes by query, `db.batch()` commits mixing all of them, and
//! bursts of several commits made while no feed is read.
//!
//! After every step, once the feed has delivered what the step produced (writes queue their
//! items before they return, so a non-blocking drain is exact; squash windows are waited out
//! with one short sleep), the feed's items are applied to what the consumer holds: a
//! multiset of rows, or for top-N feeds with offsets a list edited by "delete at
//! old_offset, then insert at new_offset". That must equal re-running the feed's query.
//! Every item is also checked on its own (kind, old != new, offsets, sequence numbers), and
//! every step that the feed sees as one (an atomic commit; for squashed feeds, anything that
//! piled up) must be delivered as its net change: each row value leaves as many times as the
//! query result lost it and enters as many times as the result gained it, never a row that
//! was in no committed result.
//!
//! The properties are split by feed family and by kind of write, so that one known defect
//! does not hide the others behind its counterexample. Counterexamples print as the Rust
//! that reproduces them (`t.get(1).update({"b":2})`).
//!
//! `REMODEL_ORACLE_CASES=N` runs N cases per property instead of the CI default.

use futures::{FutureExt, StreamExt};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use remodel::{
    field, json, Change, ChangeKind, Changes, Config, Conflict, Database, Durability, Error, Feed,
    FeedState, IndexSpec, Order, Predicate, Query, Table, Value,
};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The domain: small, so that shrunk counterexamples are short and collisions are frequent.
// ---------------------------------------------------------------------------------------------

const KEYS: u8 = 8;
const VALS: u8 = 5;
const TAGS: u8 = 3;
/// The squash window of windowed feeds, in seconds; after each step the test sleeps a little
/// longer than this so that the batch is due.
const WINDOW: f64 = 0.002;
const WINDOW_WAIT: Duration = Duration::from_millis(4);

/// A document: `a` is ordered and indexed (absent: not in the index), `b` is not indexed,
/// `tags` is a multi index.
#[derive(Clone, PartialEq)]
struct Doc {
    id: u8,
    a: Option<u8>,
    b: u8,
    tags: Vec<u8>,
}

impl Doc {
    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!(self.id));
        if let Some(a) = self.a {
            m.insert("a".into(), json!(a));
        }
        m.insert("b".into(), json!(self.b));
        if !self.tags.is_empty() {
            m.insert("tags".into(), json!(self.tags));
        }
        Value::Object(m)
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.json())
    }
}

/// An update: `a: Some(None)` sets `a` to null (the row leaves the `a` index).
#[derive(Clone, PartialEq)]
struct Patch {
    a: Option<Option<u8>>,
    b: Option<u8>,
    tags: Option<Vec<u8>>,
}

impl Patch {
    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(a) = self.a {
            m.insert("a".into(), a.map_or(Value::Null, |a| json!(a)));
        }
        if let Some(b) = self.b {
            m.insert("b".into(), json!(b));
        }
        if let Some(t) = &self.tags {
            m.insert("tags".into(), json!(t));
        }
        Value::Object(m)
    }
}

impl fmt::Debug for Patch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.json())
    }
}

/// The rows a write by query selects.
#[derive(Clone, PartialEq)]
enum Sel {
    BEq(u8),
    /// `between(lo, hi).index("a")`, lo included, hi excluded.
    ARange(u8, u8),
    /// A primary key range, lo included, hi excluded.
    KeyRange(u8, u8),
    All,
}

impl Sel {
    fn query(&self, t: &Table) -> Query {
        match *self {
            Sel::BEq(v) => t.filter(field("b").eq(v)),
            Sel::ARange(lo, hi) => t
                .between(Bound::Included(json!(lo)), Bound::Excluded(json!(hi)))
                .index("a"),
            Sel::KeyRange(lo, hi) => {
                t.between(Bound::Included(json!(lo)), Bound::Excluded(json!(hi)))
            }
            Sel::All => t.query(),
        }
    }
}

impl fmt::Debug for Sel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sel::BEq(v) => write!(f, "t.filter(b == {v})"),
            Sel::ARange(lo, hi) => write!(f, "t.between({lo}, {hi}).index(\"a\")"),
            Sel::KeyRange(lo, hi) => write!(f, "t.between({lo}, {hi})"),
            Sel::All => write!(f, "t"),
        }
    }
}

/// One write inside a `db.batch()`.
#[derive(Clone, PartialEq)]
enum BOp {
    /// Conflict policy `Error`: an existing key fails the whole batch (nothing is written).
    Insert(Doc),
    Upsert(Doc),
    Update(u8, Patch),
    Replace(Doc),
    Delete(u8),
    UpdateWhere(Sel, Patch),
    DeleteWhere(Sel),
    /// An upsert into the other table, `u`.
    Other(Doc),
}

impl fmt::Debug for BOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BOp::Insert(d) => write!(f, ".insert(t, {d:?})"),
            BOp::Upsert(d) => write!(f, ".insert_with(t, {d:?}, Replace)"),
            BOp::Update(k, p) => write!(f, ".update(t, {k}, {p:?})"),
            BOp::Replace(d) => write!(f, ".replace(t, {}, {d:?})", d.id),
            BOp::Delete(k) => write!(f, ".delete(t, {k})"),
            BOp::UpdateWhere(s, p) => write!(f, ".update_where({s:?}, {p:?})"),
            BOp::DeleteWhere(s) => write!(f, ".delete_where({s:?})"),
            BOp::Other(d) => write!(f, ".insert_with(u, {d:?}, Replace)"),
        }
    }
}

/// One step of a case.
#[derive(Clone, PartialEq)]
enum Op {
    /// Conflict policy `Error`: an existing key is counted as an error, nothing written.
    Insert(Doc),
    Upsert(Doc),
    /// Conflict policy `Update`: merged into an existing document.
    MergeInsert(Doc),
    /// One commit (`Conflict::Replace`; a key given twice is written twice).
    InsertMany(Vec<Doc>),
    Update(u8, Patch),
    /// Sets `b` and writes `a` back with its current value: the order value is kept.
    KeepOrder(u8, u8),
    Replace(Doc),
    /// Replaces the document with itself: a no-op write.
    Rewrite(u8),
    /// An empty update: a no-op write.
    Touch(u8),
    Delete(u8),
    UpdateWhere(Sel, Patch),
    DeleteWhere(Sel),
    Batch(Vec<BOp>),
    /// An upsert into the other table, `u`.
    Other(Doc),
    /// Several commits made while no feed is read (what squashing merges).
    Burst(Vec<Op>),
}

impl Op {
    /// Whether the step is one commit (so every feed must see it as one net change).
    fn atomic(&self) -> bool {
        !matches!(self, Op::Burst(_))
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Insert(d) => write!(f, "t.insert({d:?})"),
            Op::Upsert(d) => write!(f, "t.insert({d:?}).conflict(Replace)"),
            Op::MergeInsert(d) => write!(f, "t.insert({d:?}).conflict(Update)"),
            Op::InsertMany(ds) => write!(f, "t.insert_many({ds:?}).conflict(Replace)"),
            Op::Update(k, p) => write!(f, "t.get({k}).update({p:?})"),
            Op::KeepOrder(k, b) => write!(f, "t.get({k}).update({{\"a\": <its a>, \"b\": {b}}})"),
            Op::Replace(d) => write!(f, "t.get({}).replace({d:?})", d.id),
            Op::Rewrite(k) => write!(f, "t.get({k}).replace(<itself>)"),
            Op::Touch(k) => write!(f, "t.get({k}).update({{}})"),
            Op::Delete(k) => write!(f, "t.get({k}).delete()"),
            Op::UpdateWhere(s, p) => write!(f, "{s:?}.update({p:?})"),
            Op::DeleteWhere(s) => write!(f, "{s:?}.delete()"),
            Op::Other(d) => write!(f, "u.insert({d:?}).conflict(Replace)"),
            Op::Batch(ops) => {
                write!(f, "db.batch()")?;
                for op in ops {
                    write!(f, "{op:?}")?;
                }
                Ok(())
            }
            Op::Burst(ops) => {
                write!(f, "burst[")?;
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{op:?}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Which key a `get_all` or `between` reads through.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ix {
    Id,
    A,
    Tags,
}

impl Ix {
    fn name(self) -> &'static str {
        match self {
            Ix::Id => "id",
            Ix::A => "a",
            Ix::Tags => "tags",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum B {
    Unb,
    Inc(u8),
    Exc(u8),
}

impl B {
    fn bound(self) -> Bound<Value> {
        match self {
            B::Unb => Bound::Unbounded,
            B::Inc(v) => Bound::Included(json!(v)),
            B::Exc(v) => Bound::Excluded(json!(v)),
        }
    }
}

impl fmt::Debug for B {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            B::Unb => write!(f, "Unbounded"),
            B::Inc(v) => write!(f, "Included({v})"),
            B::Exc(v) => write!(f, "Excluded({v})"),
        }
    }
}

/// A row transform after the source.
#[derive(Clone, PartialEq)]
enum Tf {
    BEq(u8),
    BGe(u8),
    HasA,
    Pluck(&'static [&'static str]),
    Without(&'static [&'static str]),
}

impl Tf {
    fn apply(&self, q: Query) -> Query {
        match self {
            Tf::BEq(v) => q.filter(field("b").eq(*v)),
            Tf::BGe(v) => q.filter(field("b").ge(*v)),
            Tf::HasA => q.filter(remodel::has_fields(["a"])),
            Tf::Pluck(fs) => q.pluck(fs.iter().copied()),
            Tf::Without(fs) => q.without(fs.iter().copied()),
        }
    }

    fn predicate(&self) -> Option<Predicate> {
        match self {
            Tf::BEq(v) => Some(field("b").eq(*v)),
            Tf::BGe(v) => Some(field("b").ge(*v)),
            Tf::HasA => Some(remodel::has_fields(["a"])),
            _ => None,
        }
    }
}

impl fmt::Debug for Tf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tf::BEq(v) => write!(f, ".filter(b == {v})"),
            Tf::BGe(v) => write!(f, ".filter(b >= {v})"),
            Tf::HasA => write!(f, ".filter(has_fields([\"a\"]))"),
            Tf::Pluck(fs) => write!(f, ".pluck({fs:?})"),
            Tf::Without(fs) => write!(f, ".without({fs:?})"),
        }
    }
}

/// What a feed watches.
#[derive(Clone, PartialEq)]
enum Kind {
    Table(Vec<Tf>),
    Point(u8),
    /// A point feed followed by transforms (`get(k).pluck(..)` and co.); see
    /// `point_feeds_with_transforms`.
    PointT(u8, Vec<Tf>),
    GetAll(Vec<u8>, Ix, Vec<Tf>),
    Between(B, B, Ix, Vec<Tf>),
    TopN {
        ix: Ix,
        desc: bool,
        n: usize,
        /// `between(lo, hi).index(ix)` before the ordering.
        range: Option<(B, B)>,
    },
    Min(Ix),
    Max(Ix),
}

impl Kind {
    fn top_n(&self) -> bool {
        matches!(self, Kind::TopN { .. } | Kind::Min(_) | Kind::Max(_))
    }
    /// Whether the rows the feed shows carry their primary key (no `pluck` dropping `id`,
    /// no `without("id")`), so that equal rows are the same row.
    fn keyed(&self) -> bool {
        let tfs = match self {
            Kind::Table(ts)
            | Kind::PointT(_, ts)
            | Kind::GetAll(_, _, ts)
            | Kind::Between(_, _, _, ts) => ts,
            _ => return true,
        };
        tfs.iter().all(|tf| match tf {
            Tf::Pluck(fs) => fs.contains(&"id"),
            Tf::Without(fs) => !fs.contains(&"id"),
            _ => true,
        })
    }

    fn point(&self) -> Option<u8> {
        match self {
            Kind::Point(k) | Kind::PointT(k, _) => Some(*k),
            _ => None,
        }
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tfs = |f: &mut fmt::Formatter<'_>, tfs: &[Tf]| -> fmt::Result {
            for t in tfs {
                write!(f, "{t:?}")?;
            }
            Ok(())
        };
        let index = |ix: Ix| match ix {
            Ix::Id => String::new(),
            ix => format!(".index(\"{}\")", ix.name()),
        };
        match self {
            Kind::Table(ts) => {
                write!(f, "t")?;
                tfs(f, ts)
            }
            Kind::Point(k) => write!(f, "t.get({k})"),
            Kind::PointT(k, ts) => {
                write!(f, "t.get({k})")?;
                tfs(f, ts)
            }
            Kind::GetAll(keys, ix, ts) => {
                write!(f, "t.get_all({keys:?}){}", index(*ix))?;
                tfs(f, ts)
            }
            Kind::Between(lo, hi, ix, ts) => {
                write!(f, "t.between({lo:?}, {hi:?}){}", index(*ix))?;
                tfs(f, ts)
            }
            Kind::TopN { ix, desc, n, range } => {
                write!(f, "t")?;
                if let Some((lo, hi)) = range {
                    write!(f, ".between({lo:?}, {hi:?}).index(\"{}\")", ix.name())?;
                }
                let d = if *desc { ".desc()" } else { "" };
                write!(
                    f,
                    ".order_by(Order::index(\"{}\"){d}).limit({n})",
                    ix.name()
                )
            }
            Kind::Min(ix) => write!(f, "t.min_by_index(\"{}\")", ix.name()),
            Kind::Max(ix) => write!(f, "t.max_by_index(\"{}\")", ix.name()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Sq {
    Off,
    Merge,
    Window,
}

/// A feed and its options.
#[derive(Clone, PartialEq)]
struct Case {
    kind: Kind,
    initial: bool,
    states: bool,
    types: bool,
    offsets: bool,
    squash: Sq,
    /// The feed is opened just before this step (after the steps before it).
    open_before: usize,
    /// Two identical feeds are opened (they share their group's work and log).
    twice: bool,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.open_before > 0 {
            write!(f, "[opened before step #{}] ", self.open_before)?;
        }
        if self.twice {
            write!(f, "[twice] ")?;
        }
        write!(f, "{:?}.changes()", self.kind)?;
        if self.initial {
            write!(f, ".include_initial(true)")?;
        }
        if self.states {
            write!(f, ".include_states(true)")?;
        }
        if self.types {
            write!(f, ".include_types(true)")?;
        }
        if self.offsets {
            write!(f, ".include_offsets(true)")?;
        }
        match self.squash {
            Sq::Off => Ok(()),
            Sq::Merge => write!(f, ".squash(true)"),
            Sq::Window => write!(f, ".squash_window({WINDOW})"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running queries and feeds
// ---------------------------------------------------------------------------------------------

fn order(ix: Ix, desc: bool) -> Order {
    let o = Order::index(ix.name());
    if desc {
        o.desc()
    } else {
        o
    }
}

/// The query a (non-point) feed watches.
fn query(t: &Table, kind: &Kind) -> Query {
    let with = |q: Query, ts: &[Tf]| ts.iter().fold(q, |q, tf| tf.apply(q));
    let via = |q: Query, ix: Ix| match ix {
        Ix::Id => q,
        ix => q.index(ix.name()),
    };
    match kind {
        Kind::Table(ts) => with(t.query(), ts),
        Kind::Point(k) => t.get_all([*k]),
        Kind::PointT(k, ts) => with(t.get_all([*k]), ts),
        Kind::GetAll(keys, ix, ts) => with(via(t.get_all(keys.iter().copied()), *ix), ts),
        Kind::Between(lo, hi, ix, ts) => with(via(t.between(lo.bound(), hi.bound()), *ix), ts),
        Kind::TopN { ix, desc, n, range } => {
            let q = match range {
                Some((lo, hi)) => via(t.between(lo.bound(), hi.bound()), *ix),
                None => t.query(),
            };
            q.order_by(order(*ix, *desc)).limit(*n)
        }
        Kind::Min(ix) => t.min_by_index(ix.name()),
        Kind::Max(ix) => t.max_by_index(ix.name()),
    }
}

/// Re-runs the feed's query: the result the feed must equal.
async fn expected(t: &Table, kind: &Kind) -> Result<Vec<Value>, String> {
    match kind {
        Kind::Point(k) => Ok(t.get(*k).run().await.map_err(err)?.into_iter().collect()),
        Kind::PointT(k, ts) => point_transformed::expected(t, *k, ts).await,
        kind => query(t, kind).run().await.map_err(err),
    }
}

fn changes(t: &Table, case: &Case) -> Changes {
    let c = match &case.kind {
        Kind::Point(k) => t.get(*k).changes(),
        Kind::PointT(k, ts) => point_transformed::changes(t, *k, ts),
        kind => query(t, kind).changes(),
    };
    let c = c
        .include_initial(case.initial)
        .include_states(case.states)
        .include_types(case.types);
    let c = if case.offsets {
        c.include_offsets(true)
    } else {
        c
    };
    match case.squash {
        Sq::Off => c,
        Sq::Merge => c.squash(true),
        Sq::Window => c.squash_window(WINDOW),
    }
}

/// Point feeds with transforms: `get(k).pluck(..)`, `.without(..)`, `.filter(..)`.
mod point_transformed {
    use super::*;
    use remodel::PointQuery;

    fn point_query(t: &Table, k: u8, ts: &[Tf]) -> PointQuery {
        let (first, rest) = ts
            .split_first()
            .expect("a transformed point feed has a transform");
        let apply_to_get = |tf: &Tf| {
            let g = t.get(k);
            match (tf, tf.predicate()) {
                (_, Some(p)) => g.filter(p),
                (Tf::Pluck(fs), None) => g.pluck(fs.iter().copied()),
                (Tf::Without(fs), None) => g.without(fs.iter().copied()),
                _ => unreachable!("every transform is a filter, pluck or without"),
            }
        };
        rest.iter()
            .fold(apply_to_get(first), |q, tf| match (tf, tf.predicate()) {
                (_, Some(p)) => q.filter(p),
                (Tf::Pluck(fs), None) => q.pluck(fs.iter().copied()),
                (Tf::Without(fs), None) => q.without(fs.iter().copied()),
                _ => unreachable!("every transform is a filter, pluck or without"),
            })
    }

    pub(super) async fn expected(t: &Table, k: u8, ts: &[Tf]) -> Result<Vec<Value>, String> {
        Ok(point_query(t, k, ts)
            .run()
            .await
            .map_err(err)?
            .into_iter()
            .collect())
    }

    pub(super) fn changes(t: &Table, k: u8, ts: &[Tf]) -> Changes {
        point_query(t, k, ts).changes()
    }
}

fn err(e: Error) -> String {
    format!("unexpected error: {e:?}")
}

/// Object keys sorted, so that equal rows print alike whatever their field order.
fn canon(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let s: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(s.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            v => v.clone(),
        }
    }
    sorted(v).to_string()
}

fn opt(v: Option<&Value>) -> String {
    v.map_or_else(|| "null".to_string(), canon)
}

/// How many times each row value occurs.
fn bag<'a>(rows: impl IntoIterator<Item = &'a Value>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(canon(r)).or_insert(0) += 1;
    }
    m
}

fn show(rows: &[Value]) -> String {
    let v: Vec<String> = rows.iter().map(canon).collect();
    format!("[{}]", v.join(", "))
}

fn show_item(c: &Change) -> String {
    let mut s = format!("{{old: {}, new: {}", opt(c.old_val()), opt(c.new_val()));
    if c.old_offset().is_some() || c.new_offset().is_some() {
        s += &format!(
            ", old_offset: {:?}, new_offset: {:?}",
            c.old_offset(),
            c.new_offset()
        );
    }
    if let Some(seq) = c.seq() {
        s += &format!(", seq: {seq}");
    }
    s + "}"
}

/// The items a feed has queued, without waiting.
fn drain(feed: &mut Feed) -> Vec<Result<Change, Error>> {
    let mut out = Vec::new();
    while let Some(Some(item)) = feed.next().now_or_never() {
        out.push(item);
    }
    out
}

/// What the consumer holds: a list (top-N with offsets) or a multiset of rows.
#[derive(Clone)]
enum Held {
    List(Vec<Value>),
    Bag(Vec<Value>),
}

impl Held {
    fn rows(&self) -> &[Value] {
        match self {
            Held::List(v) | Held::Bag(v) => v,
        }
    }

    /// Applies one change item; `Err` says why it cannot be applied.
    fn apply(&mut self, c: &Change) -> Result<(), String> {
        match self {
            Held::List(list) => {
                match (c.old_val(), c.old_offset()) {
                    (None, None) => {}
                    (Some(old), Some(i)) => match list.get(i) {
                        Some(there) if there == old => {
                            list.remove(i);
                        }
                        there => {
                            return Err(format!(
                                "old_offset {i} holds {}, not the old_val",
                                opt(there)
                            ))
                        }
                    },
                    (old, off) => {
                        return Err(format!(
                            "old_val {} with old_offset {off:?}: one without the other",
                            opt(old)
                        ))
                    }
                }
                match (c.new_val(), c.new_offset()) {
                    (None, None) => {}
                    (Some(new), Some(i)) if i <= list.len() => list.insert(i, new.clone()),
                    (Some(_), Some(i)) => {
                        return Err(format!(
                            "new_offset {i} is past the end of a list of {}",
                            list.len()
                        ))
                    }
                    (new, off) => {
                        return Err(format!(
                            "new_val {} with new_offset {off:?}: one without the other",
                            opt(new)
                        ))
                    }
                }
            }
            Held::Bag(rows) => {
                if c.old_offset().is_some() || c.new_offset().is_some() {
                    return Err("offsets on a feed without include_offsets".into());
                }
                if let Some(old) = c.old_val() {
                    match rows.iter().position(|r| r == old) {
                        Some(i) => {
                            rows.swap_remove(i);
                        }
                        None => return Err("its old_val is not a row the consumer holds".into()),
                    }
                }
                if let Some(new) = c.new_val() {
                    rows.push(new.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether the consumer's rows equal the query's result.
    fn equals(&self, result: &[Value]) -> bool {
        match self {
            Held::List(list) => {
                list.len() == result.len() && list.iter().zip(result).all(|(a, b)| a == b)
            }
            Held::Bag(rows) => bag(rows.iter()) == bag(result.iter()),
        }
    }
}

/// A feed under test, with what its consumer holds.
struct Watch {
    case: Case,
    feed: Feed,
    held: Held,
    /// The largest sequence number delivered so far.
    last_seq: Option<u64>,
    /// Whether a `{new_val: null}` initial item on a non-point feed is reported (only some
    /// properties do, so that this one defect does not hide the others).
    null_initial_fails: bool,
}

impl Watch {
    /// Opens the feed and checks its first items; `None` when the feed is refused as
    /// unwatchable and may be (top-N on a multi index: the documentation does not say).
    async fn open(
        t: &Table,
        case: Case,
        null_initial_fails: bool,
        shown: Option<u64>,
    ) -> Result<Option<Watch>, String> {
        let multi_top_n = matches!(
            case.kind,
            Kind::TopN { ix: Ix::Tags, .. } | Kind::Min(Ix::Tags) | Kind::Max(Ix::Tags)
        );
        let feed = match changes(t, &case).await {
            Ok(feed) => feed,
            Err(Error::Unwatchable(_)) if multi_top_n => return Ok(None),
            Err(e) => return Err(format!("feed {case:?}: could not be opened: {e:?}")),
        };
        let mut w = Watch {
            held: if case.offsets {
                Held::List(Vec::new())
            } else {
                Held::Bag(Vec::new())
            },
            case,
            last_seq: feed.snapshot_seq(),
            feed,
            null_initial_fails,
        };
        let now = expected(t, &w.case.kind).await?;
        let exists = match w.case.kind.point() {
            Some(k) => t.get(k).await.map_err(err)?.is_some(),
            None => false,
        };
        let items = drain(&mut w.feed);
        // The snapshot is numbered: the changes after it are those numbered above it.
        let snapshot = match (w.last_seq, shown) {
            (None, _) => Err("the feed has no snapshot_seq".to_string()),
            (Some(s), Some(shown)) if s < shown => Err(format!(
                "snapshot_seq {s} is below commit {shown}, which a feed had already shown"
            )),
            _ => Ok(()),
        };
        snapshot
            .and_then(|()| w.opening(&items, &now, exists))
            .map_err(|why| w.report("opening the feed", &items, None, &now, &why))?;
        Ok(Some(w))
    }

    /// Checks the items delivered when the feed opens (states, initial rows) and takes the
    /// initial rows (or, without include_initial, the query's result) as the consumer's.
    fn opening(
        &mut self,
        items: &[Result<Change, Error>],
        now: &[Value],
        exists: bool,
    ) -> Result<(), String> {
        let case = self.case.clone();
        let mut items: Vec<Change> = items
            .iter()
            .map(|i| i.clone().map_err(|e| format!("an error item: {e:?}")))
            .collect::<Result<_, _>>()?;
        if case.states {
            let want_first = if case.initial {
                FeedState::Initializing
            } else {
                FeedState::Ready
            };
            if items.first().and_then(Change::state) != Some(want_first) {
                return Err(format!("the first item is not the state {want_first:?}"));
            }
            items.remove(0);
            if case.initial {
                if items.last().and_then(Change::state) != Some(FeedState::Ready) {
                    return Err("the initial rows are not followed by the state Ready".into());
                }
                items.pop();
            }
        }
        if let Some(c) = items.iter().find(|c| c.state().is_some()) {
            return Err(format!("an unexpected state item {:?}", c.state()));
        }
        if !case.initial {
            if !items.is_empty() {
                return Err("items delivered before any write, without include_initial".into());
            }
            self.held = match &self.held {
                Held::List(_) => Held::List(now.to_vec()),
                Held::Bag(_) => Held::Bag(now.to_vec()),
            };
            return Ok(());
        }
        let mut nulls = 0;
        for (i, c) in items.iter().enumerate() {
            check_json(c, case.types)?;
            if c.kind() != ChangeKind::Initial || c.old_val().is_some() || c.seq().is_some() {
                return Err(format!(
                    "initial item #{i} is not {{new_val}} of kind initial"
                ));
            }
            let want_offset = (case.offsets).then_some(i - nulls);
            if c.new_val().is_some() && c.new_offset() != want_offset {
                return Err(format!(
                    "initial item #{i} has new_offset {:?}, expected {want_offset:?} (best first)",
                    c.new_offset()
                ));
            }
            match c.new_val() {
                None => nulls += 1,
                Some(_) => self.held.apply(c)?,
            }
        }
        match case.kind.point() {
            // A point feed on a missing row delivers one {new_val: null}; on a row it shows,
            // none. (A present row that a filter hides is not specified: 0 or 1.)
            Some(_) if !exists && nulls != 1 => {
                return Err(format!(
                    "a point feed on a missing row delivered {nulls} {{new_val: null}} items (expected 1)"
                ));
            }
            Some(_) if !now.is_empty() && nulls > 0 => {
                return Err(format!(
                    "a point feed on a row it shows delivered {nulls} {{new_val: null}} items"
                ));
            }
            Some(_) if nulls > 1 => {
                return Err(format!(
                    "a point feed delivered {nulls} {{new_val: null}} items"
                ));
            }
            None if nulls > 0 && self.null_initial_fails => {
                return Err(format!(
                    "{nulls} initial {{new_val: null}} item(s) on a feed whose query result is {}",
                    show(now)
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Takes what the feed delivered for one step and checks it.
    async fn step(
        &mut self,
        t: &Table,
        step: &str,
        atomic: bool,
        before: &[Value],
    ) -> Result<(), String> {
        let items = drain(&mut self.feed);
        let after = expected(t, &self.case.kind).await?;
        let held_before = self.held.clone();
        self.take(&items, atomic, before, &after)
            .map_err(|why| self.report(step, &items, Some((before, &held_before)), &after, &why))
    }

    fn take(
        &mut self,
        items: &[Result<Change, Error>],
        atomic: bool,
        before: &[Value],
        after: &[Value],
    ) -> Result<(), String> {
        let squashed = self.case.squash != Sq::Off;
        let floor = self.last_seq;
        let mut changes = Vec::new();
        for (n, item) in items.iter().enumerate() {
            let c = item
                .as_ref()
                .map_err(|e| format!("item #{n} is an error: {e:?}"))?;
            check_json(c, self.case.types)?;
            if c.state().is_some() || c.kind() == ChangeKind::Initial {
                return Err(format!(
                    "item #{n} is a state or an initial row after the start"
                ));
            }
            let want = match (c.old_val().is_some(), c.new_val().is_some()) {
                (false, _) => ChangeKind::Add,
                (true, false) => ChangeKind::Remove,
                (true, true) => ChangeKind::Change,
            };
            if c.kind() != want {
                return Err(format!("item #{n} has kind {:?}", c.kind()));
            }
            if c.old_val() == c.new_val() {
                return Err(format!("item #{n} has old_val == new_val"));
            }
            let Some(seq) = c.seq() else {
                return Err(format!("item #{n} has no sequence number"));
            };
            // Later steps commit later: their numbers are above every earlier step's.
            if floor.is_some_and(|f| seq <= f) {
                return Err(format!(
                    "item #{n} has seq {seq}, not above the previous step's {floor:?}"
                ));
            }
            // Within a step, unsquashed items come in commit order.
            if !squashed && self.last_seq.is_some_and(|l| seq < l) {
                return Err(format!("item #{n} has seq {seq}, below the item before it"));
            }
            self.last_seq = Some(self.last_seq.map_or(seq, |l| l.max(seq)));
            self.held
                .apply(c)
                .map_err(|why| format!("item #{n} cannot be applied: {why}"))?;
            changes.push(c);
        }
        if !self.held.equals(after) {
            return Err("the rows rebuilt from the feed differ from the query's result".into());
        }
        // One commit (or, squashed, one batch) is delivered as its net change.
        if atomic || squashed {
            let (b, a) = (bag(before.iter()), bag(after.iter()));
            let olds = bag(changes.iter().filter_map(|c| c.old_val()));
            let news = bag(changes.iter().filter_map(|c| c.new_val()));
            let keys: std::collections::BTreeSet<&String> = b
                .keys()
                .chain(a.keys())
                .chain(olds.keys())
                .chain(news.keys())
                .collect();
            for k in keys {
                let (bk, ak) = (
                    b.get(k).copied().unwrap_or(0),
                    a.get(k).copied().unwrap_or(0),
                );
                let (ok, nk) = (
                    olds.get(k).copied().unwrap_or(0),
                    news.get(k).copied().unwrap_or(0),
                );
                let (lost, gained) = ((bk - ak).max(0), (ak - bk).max(0));
                // Rows without their key can look alike: then only require that every
                // row shown was in a committed result.
                let wrong = if self.case.kind.keyed() {
                    ok != lost || nk != gained
                } else {
                    ok > bk || nk > ak
                };
                if wrong {
                    let what = if squashed { "batch" } else { "commit" };
                    return Err(format!(
                        "not the net change of the {what}: row {k} is {bk}x in the result before \
                         and {ak}x after, but leaves in {ok} item(s) and enters in {nk}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn report(
        &self,
        step: &str,
        items: &[Result<Change, Error>],
        before: Option<(&[Value], &Held)>,
        after: &[Value],
        why: &str,
    ) -> String {
        let mut s = format!("\n  feed:     {:?}\n  {step}\n", self.case);
        if let Some((before, held)) = before {
            s += &format!("  query before: {}\n", show(before));
            s += &format!("  held before:  {}\n", show(held.rows()));
        }
        s += &format!("  query after:  {}\n", show(after));
        s += "  items:\n";
        // Long lists (the 4,096-row commit) are cut in the middle.
        let cut = items.len() > 24;
        for (n, item) in items.iter().enumerate() {
            if cut && (12..items.len() - 4).contains(&n) {
                if n == 12 {
                    s += &format!("    ... {} more ...\n", items.len() - 16);
                }
                continue;
            }
            match item {
                Ok(c) if c.state().is_some() => s += &format!("    state {:?}\n", c.state()),
                Ok(c) if c.kind() == ChangeKind::Initial => {
                    s += &format!("    initial {}\n", show_item(c))
                }
                Ok(c) => s += &format!("    {}\n", show_item(c)),
                Err(e) => s += &format!("    error {e:?}\n"),
            }
        }
        s += &format!(
            "  held after:   {}\n  problem: {why}\n",
            show(self.held.rows())
        );
        s
    }
}

/// The JSON form shows `type` exactly when asked for.
fn check_json(c: &Change, types: bool) -> Result<(), String> {
    let j = c.to_json();
    match (types, j.get("type")) {
        (true, Some(t)) if t == c.kind().as_str() => Ok(()),
        (false, None) => Ok(()),
        (_, t) => Err(format!(
            "to_json has type {t:?} with include_types({types}), kind {:?}",
            c.kind()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

fn accept(r: remodel::Result<remodel::WriteResult>) -> Result<(), String> {
    match r {
        Ok(r) => match r.first_error {
            None | Some(Error::KeyConflict { .. }) => Ok(()),
            Some(e) => Err(format!("the write failed: {e:?}")),
        },
        // A batch insert of an existing key fails the whole batch: nothing is written.
        Err(Error::KeyConflict { .. }) => Ok(()),
        Err(e) => Err(format!("the write failed: {e:?}")),
    }
}

async fn run_op(db: &Database, t: &Table, op: &Op) -> Result<(), String> {
    match op {
        Op::Insert(d) => accept(t.insert(d.json()).await),
        Op::Upsert(d) => accept(t.insert(d.json()).conflict(Conflict::Replace).await),
        Op::MergeInsert(d) => accept(t.insert(d.json()).conflict(Conflict::Update).await),
        Op::InsertMany(ds) => accept(
            t.insert_many(ds.iter().map(Doc::json))
                .conflict(Conflict::Replace)
                .await,
        ),
        Op::Update(k, p) => accept(t.get(*k).update(p.json()).await),
        Op::KeepOrder(k, b) => match t.get(*k).await.map_err(err)? {
            Some(doc) => {
                let mut p = json!({ "b": b });
                if let Some(a) = doc.get("a") {
                    p["a"] = a.clone();
                }
                accept(t.get(*k).update(p).await)
            }
            None => Ok(()),
        },
        Op::Replace(d) => accept(t.get(d.id).replace(d.json()).await),
        Op::Rewrite(k) => match t.get(*k).await.map_err(err)? {
            Some(doc) => accept(t.get(*k).replace(doc).await),
            None => Ok(()),
        },
        Op::Touch(k) => accept(t.get(*k).update(json!({})).await),
        Op::Delete(k) => accept(t.get(*k).delete().await),
        Op::UpdateWhere(s, p) => accept(s.query(t).update(p.json()).await),
        Op::DeleteWhere(s) => accept(s.query(t).delete().await),
        Op::Other(d) => accept(
            db.table("u")
                .insert(d.json())
                .conflict(Conflict::Replace)
                .await,
        ),
        Op::Batch(ops) => {
            let mut b = db.batch();
            for op in ops {
                b = match op {
                    BOp::Insert(d) => b.insert("t", d.json()),
                    BOp::Upsert(d) => b.insert_with("t", d.json(), Conflict::Replace),
                    BOp::Update(k, p) => b.update("t", *k, p.json()),
                    BOp::Replace(d) => b.replace("t", d.id, d.json()),
                    BOp::Delete(k) => b.delete("t", *k),
                    BOp::UpdateWhere(s, p) => b.update_where(&s.query(t), p.json()),
                    BOp::DeleteWhere(s) => b.delete_where(&s.query(t)),
                    BOp::Other(d) => b.insert_with("u", d.json(), Conflict::Replace),
                };
            }
            accept(b.await)
        }
        Op::Burst(ops) => {
            for op in ops {
                Box::pin(run_op(db, t, op)).await?;
            }
            Ok(())
        }
    }
}

/// Runs one case: seed rows, feeds opened, then the steps, each checked on every feed.
async fn scenario(
    seed: Vec<Doc>,
    cases: Vec<Case>,
    ops: Vec<Op>,
    rules: Rules,
) -> Result<(), String> {
    let db = Config::temporary()
        .durability(rules.durability)
        .open()
        .await
        .map_err(err)?;
    db.create_table("t").await.map_err(err)?;
    // Another table: its writes (alone or in a batch with `t`) concern no feed.
    db.create_table("u").await.map_err(err)?;
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a"))
        .await
        .map_err(err)?;
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .map_err(err)?;
    if !seed.is_empty() {
        accept(
            t.insert_many(seed.iter().map(Doc::json))
                .conflict(Conflict::Replace)
                .await,
        )?;
    }
    let windowed = cases.iter().any(|c| c.squash == Sq::Window);
    let mut watches = Vec::new();
    for i in 0..=ops.len() {
        // Feeds due now (the last ones, due after the end, are opened and checked last).
        for case in cases.iter().filter(|c| c.open_before.min(ops.len()) == i) {
            for _ in 0..if case.twice { 2 } else { 1 } {
                // Every commit some feed has shown precedes this feed's snapshot.
                let shown = watches.iter().filter_map(|w: &Watch| w.last_seq).max();
                watches
                    .extend(Watch::open(&t, case.clone(), rules.null_initial_fails, shown).await?);
            }
        }
        let Some(op) = ops.get(i) else { break };
        let mut before = Vec::new();
        for w in &watches {
            before.push(expected(&t, &w.case.kind).await?);
        }
        run_op(&db, &t, op).await?;
        if windowed {
            tokio::time::sleep(WINDOW_WAIT).await;
        }
        for (w, before) in watches.iter_mut().zip(&before) {
            w.step(&t, &format!("step #{i}: {op:?}"), op.atomic(), before)
                .await?;
        }
    }
    Ok(())
}

/// What a property checks beyond the common rules, and how it writes.
#[derive(Clone, Copy)]
struct Rules {
    /// Whether a `{new_val: null}` initial item on a non-point feed fails the case.
    null_initial_fails: bool,
    /// The database's durability (every write uses it).
    durability: Durability,
}

const LENIENT: Rules = Rules {
    null_initial_fails: false,
    durability: Durability::Soft,
};

const STRICT: Rules = Rules {
    null_initial_fails: true,
    durability: Durability::Soft,
};

/// Every write waits for the disk, and feeds show a hard write only once it is there.
const HARD: Rules = Rules {
    null_initial_fails: false,
    durability: Durability::Hard,
};

fn run(seed: Vec<Doc>, cases: Vec<Case>, ops: Vec<Op>, rules: Rules) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(scenario(seed, cases, ops, rules))
        .map_err(TestCaseError::fail)
}

fn config(default_cases: u32) -> ProptestConfig {
    config_scaled(default_cases, 1)
}

/// `default_cases`, or `REMODEL_ORACLE_CASES / divisor` (for slower properties).
fn config_scaled(default_cases: u32, divisor: u32) -> ProptestConfig {
    let cases = std::env::var("REMODEL_ORACLE_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(default_cases, |n| (n / divisor).max(1));
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        max_shrink_time: 60_000,
        // Counterexamples are printed; no regression files next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn key() -> impl Strategy<Value = u8> {
    0..KEYS
}

fn val() -> impl Strategy<Value = u8> {
    0..VALS
}

fn tags() -> impl Strategy<Value = Vec<u8>> {
    vec(0..TAGS, 0..3)
}

fn doc() -> impl Strategy<Value = Doc> {
    (key(), prop::option::weighted(0.85, val()), val(), tags()).prop_map(|(id, a, b, tags)| Doc {
        id,
        a,
        b,
        tags,
    })
}

fn patch() -> impl Strategy<Value = Patch> {
    (
        prop::option::weighted(0.6, prop::option::weighted(0.9, val())),
        prop::option::weighted(0.6, val()),
        prop::option::weighted(0.2, tags()),
    )
        .prop_map(|(a, b, tags)| Patch { a, b, tags })
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        3 => val().prop_map(Sel::BEq),
        3 => (val(), 1..=VALS).prop_map(|(lo, w)| Sel::ARange(lo, lo + w)),
        2 => (key(), 1..=KEYS).prop_map(|(lo, w)| Sel::KeyRange(lo, lo + w)),
        1 => Just(Sel::All),
    ]
}

/// Writes of one row.
fn single_op() -> BoxedStrategy<Op> {
    prop_oneof![
        2 => doc().prop_map(Op::Insert),
        3 => doc().prop_map(Op::Upsert),
        1 => doc().prop_map(Op::MergeInsert),
        4 => (key(), patch()).prop_map(|(k, p)| Op::Update(k, p)),
        2 => (key(), val()).prop_map(|(k, b)| Op::KeepOrder(k, b)),
        2 => doc().prop_map(Op::Replace),
        1 => key().prop_map(Op::Rewrite),
        1 => key().prop_map(Op::Touch),
        3 => key().prop_map(Op::Delete),
        1 => doc().prop_map(Op::Other),
    ]
    .boxed()
}

fn batch_op() -> impl Strategy<Value = BOp> {
    prop_oneof![
        1 => doc().prop_map(BOp::Insert),
        3 => doc().prop_map(BOp::Upsert),
        3 => (key(), patch()).prop_map(|(k, p)| BOp::Update(k, p)),
        1 => doc().prop_map(BOp::Replace),
        2 => key().prop_map(BOp::Delete),
        1 => (sel(), patch()).prop_map(|(s, p)| BOp::UpdateWhere(s, p)),
        1 => sel().prop_map(BOp::DeleteWhere),
        1 => doc().prop_map(BOp::Other),
    ]
}

/// Writes of several rows in one commit.
fn multi_op() -> BoxedStrategy<Op> {
    prop_oneof![
        2 => vec(doc(), 1..6).prop_map(Op::InsertMany),
        2 => (sel(), patch()).prop_map(|(s, p)| Op::UpdateWhere(s, p)),
        1 => sel().prop_map(Op::DeleteWhere),
        4 => vec(batch_op(), 1..6).prop_map(Op::Batch),
    ]
    .boxed()
}

/// Batches of inserts and deletes only (no member is updated in place).
fn insert_delete_commit() -> BoxedStrategy<Op> {
    prop_oneof![
        2 => vec(doc(), 1..6).prop_map(Op::InsertMany),
        1 => sel().prop_map(Op::DeleteWhere),
        4 => vec(
            prop_oneof![doc().prop_map(BOp::Upsert), key().prop_map(BOp::Delete)],
            1..6
        )
        .prop_map(Op::Batch),
    ]
    .boxed()
}

/// Any step, bursts of several commits included.
fn any_op() -> BoxedStrategy<Op> {
    prop_oneof![
        6 => single_op(),
        3 => multi_op(),
        2 => vec(prop_oneof![3 => single_op(), 1 => multi_op()], 2..5).prop_map(Op::Burst),
    ]
    .boxed()
}

fn bound() -> impl Strategy<Value = B> {
    prop_oneof![
        1 => Just(B::Unb),
        2 => (0..KEYS).prop_map(B::Inc),
        2 => (0..KEYS).prop_map(B::Exc),
    ]
}

fn transforms() -> impl Strategy<Value = Vec<Tf>> {
    let tf = prop_oneof![
        2 => val().prop_map(Tf::BEq),
        2 => val().prop_map(Tf::BGe),
        1 => Just(Tf::HasA),
        1 => prop::sample::select(vec![&["id", "b"][..], &["a"][..], &["b", "tags"][..]])
            .prop_map(Tf::Pluck),
        1 => prop::sample::select(vec![&["b"][..], &["a", "tags"][..], &["id"][..]])
            .prop_map(Tf::Without),
    ];
    prop_oneof![2 => Just(Vec::new()), 2 => vec(tf, 1..3)]
}

fn ix() -> impl Strategy<Value = Ix> {
    prop_oneof![Just(Ix::Id), Just(Ix::A), Just(Ix::Tags)]
}

/// Table, point, get_all and between feeds, with transforms.
///
/// With `dups`, also feeds whose result holds a row more than once (a key given twice to
/// `get_all`, a multi index matching a row by two elements).
fn rows_kind(dups: bool) -> BoxedStrategy<Kind> {
    let ix = if dups {
        ix().boxed()
    } else {
        prop_oneof![Just(Ix::Id), Just(Ix::A)].boxed()
    };
    prop_oneof![
        2 => transforms().prop_map(Kind::Table),
        2 => key().prop_map(Kind::Point),
        3 => (vec(0..KEYS, 1..4), ix.clone(), transforms())
            .prop_map(move |(mut keys, ix, ts)| {
                if !dups {
                    keys.sort_unstable();
                    keys.dedup();
                }
                Kind::GetAll(keys, ix, ts)
            }),
        3 => (bound(), bound(), ix, transforms())
            .prop_map(|(lo, hi, ix, ts)| Kind::Between(lo, hi, ix, ts)),
    ]
    .boxed()
}

/// Top-N feeds on the primary key or on `a`, ascending or descending, optionally within a
/// range of the same index; min and max.
///
/// With `multi`, on the multi index `tags` only (a row is in the order once per element).
fn top_n_kind_on(multi: bool) -> BoxedStrategy<Kind> {
    let oix = if multi {
        Just(Ix::Tags).boxed()
    } else {
        prop_oneof![1 => Just(Ix::Id), 3 => Just(Ix::A)].boxed()
    };
    prop_oneof![
        6 => (oix.clone(), any::<bool>(), 1usize..4, prop::option::weighted(0.2, (bound(), bound())))
            .prop_map(|(ix, desc, n, range)| Kind::TopN { ix, desc, n, range }),
        1 => oix.clone().prop_map(Kind::Min),
        1 => oix.prop_map(Kind::Max),
    ]
    .boxed()
}

fn top_n_kind() -> BoxedStrategy<Kind> {
    top_n_kind_on(false)
}

fn case(
    kind: BoxedStrategy<Kind>,
    squash: BoxedStrategy<Sq>,
    initial: bool,
) -> BoxedStrategy<Case> {
    let initial = if initial {
        any::<bool>().boxed()
    } else {
        Just(false).boxed()
    };
    (
        kind,
        initial,
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        any::<bool>(),
        squash,
        prop_oneof![3 => Just(0usize), 1 => 1usize..8],
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(kind, initial, states, types, offsets, squash, open_before, twice)| {
                let offsets = offsets && kind.top_n();
                Case {
                    open_before,
                    twice,
                    kind,
                    initial,
                    states,
                    types,
                    offsets,
                    squash,
                }
            },
        )
        .boxed()
}

fn unsquashed() -> BoxedStrategy<Sq> {
    Just(Sq::Off).boxed()
}

fn squashed() -> BoxedStrategy<Sq> {
    prop_oneof![2 => Just(Sq::Merge), 1 => Just(Sq::Window)].boxed()
}

fn seed() -> impl Strategy<Value = Vec<Doc>> {
    vec(doc(), 0..8)
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Table, point, get_all (primary, secondary, multi) and between feeds, with filters and
    /// transforms, with or without initial rows, under every kind of write. (A spurious
    /// `{new_val: null}` initial item is left to the next property.)
    #[test]
    fn row_feeds_equal_their_query(
        seed in seed(),
        cases in vec(case(rows_kind(true), unsquashed(), true), 1..4),
        ops in vec(any_op(), 1..14),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }

    /// The same feeds with include_initial (and states): initial rows, then changes.
    #[test]
    fn row_feeds_with_initial_rows_equal_their_query(
        seed in seed(),
        cases in vec(case(rows_kind(true), unsquashed(), true), 1..4),
        ops in vec(any_op(), 0..10),
    ) {
        run(seed, cases, ops, STRICT)?;
    }

    /// The same feeds, squashed (true, or a small window), on results that hold each row
    /// once: each batch is its net change.
    #[test]
    fn squashed_row_feeds_equal_their_query(
        seed in seed(),
        cases in vec(case(rows_kind(false), squashed(), true), 1..4),
        ops in vec(any_op(), 1..12),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }

    /// Squashed feeds whose result holds a row twice (`get_all([k, k])`, a multi index):
    /// as documented (the `remodel::feed` module and `Change`), such a feed delivers each
    /// change twice, and squashing keeps one entry per primary key; the consumer must still end
    /// up with the query's result.
    #[test]
    fn squashed_feeds_with_duplicate_rows_equal_their_query(
        seed in seed(),
        cases in vec(case(rows_kind(true), squashed(), true), 1..4),
        ops in vec(any_op(), 1..12),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }

    /// Top-N feeds (and min/max) under single-row writes.
    #[test]
    fn top_n_feeds_under_single_row_writes(
        seed in seed(),
        cases in vec(case(top_n_kind(), unsquashed(), true), 1..4),
        ops in vec(single_op(), 1..14),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }

    /// Top-N feeds under commits that insert and delete several rows at once (no row is
    /// updated in place): each commit is seen whole, never an intermediate set.
    #[test]
    fn top_n_feeds_under_multi_row_inserts_and_deletes(
        seed in seed(),
        cases in vec(case(top_n_kind(), unsquashed(), true), 1..4),
        ops in vec(insert_delete_commit(), 1..10),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }

    /// Top-N feeds under any commit: batches, insert_many, update and delete by query.
    #[test]
    fn top_n_feeds_under_multi_row_commits(
        seed in seed(),
        cases in vec(case(top_n_kind(), unsquashed(), true), 1..4),
        ops in vec(prop_oneof![1 => single_op(), 2 => multi_op()], 1..10),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }

    /// Top-N feeds on a multi index (`order_by(index("tags")).limit(n)`, min/max), where a
    /// row holds one place per element, squashed or not, under any step: refused with
    /// `Error::Unwatchable`, or equal to their query.
    #[test]
    fn top_n_feeds_on_a_multi_index(
        seed in seed(),
        cases in vec(case(top_n_kind_on(true), prop_oneof![2 => Just(Sq::Off), 1 => Just(Sq::Merge)].boxed(), true), 1..4),
        ops in vec(any_op(), 1..10),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }

    /// Squashed top-N feeds: per batch, the net difference of the set (as valid list edits
    /// with offsets).
    #[test]
    fn squashed_top_n_feeds_equal_their_query(
        seed in seed(),
        cases in vec(case(top_n_kind(), squashed(), true), 1..4),
        ops in vec(any_op(), 1..10),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Point feeds followed by filter / pluck / without (`get(k).pluck(..)`), with and
    /// without initial rows and squash.
    #[test]
    fn point_feeds_with_transforms(
        seed in seed(),
        cases in vec(
            case(
                (key(), vec(
                    prop_oneof![
                        val().prop_map(Tf::BEq),
                        val().prop_map(Tf::BGe),
                        Just(Tf::HasA),
                        Just(Tf::Pluck(&["id", "b"])),
                        Just(Tf::Without(&["b"])),
                    ],
                    1..3,
                ))
                    .prop_map(|(k, ts)| Kind::PointT(k, ts))
                    .boxed(),
                prop_oneof![2 => Just(Sq::Off), 1 => Just(Sq::Merge), 1 => Just(Sq::Window)].boxed(),
                true,
            ),
            1..4,
        ),
        ops in vec(any_op(), 0..12),
    ) {
        run(seed, cases, ops, LENIENT)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases the properties might take long to reach
// ---------------------------------------------------------------------------------------------

/// One `insert_many` of 4,096 rows (one atomic commit) into a table watched by top-N feeds:
/// each feed must see only the net change of its set.
#[test]
fn a_4096_row_insert_many_is_one_step_for_top_n_feeds() {
    // Keys are u8 in the model; the big insert uses keys of its own, written here directly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let db = Config::temporary()
            .durability(Durability::Soft)
            .open()
            .await
            .unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        t.create_index("a", IndexSpec::field("a")).await.unwrap();
        t.create_index("tags", IndexSpec::multi("tags"))
            .await
            .unwrap();
        t.insert_many((0..6u8).map(|i| json!({"id": 10_000 + i as u32, "a": 2, "b": 0})))
            .await
            .unwrap();
        let mut watches = Vec::new();
        for kind in [
            Kind::TopN {
                ix: Ix::A,
                desc: false,
                n: 3,
                range: None,
            },
            Kind::TopN {
                ix: Ix::A,
                desc: true,
                n: 3,
                range: None,
            },
            Kind::Min(Ix::A),
        ] {
            for offsets in [false, true] {
                let case = Case {
                    kind: kind.clone(),
                    initial: true,
                    states: false,
                    types: false,
                    offsets,
                    squash: Sq::Off,
                    open_before: 0,
                    twice: false,
                };
                watches.extend(Watch::open(&t, case, true, None).await.unwrap());
            }
        }
        let mut before = Vec::new();
        for w in &watches {
            before.push(expected(&t, &w.case.kind).await.unwrap());
        }
        let docs: Vec<Value> = (0..4096u32)
            .map(|i| json!({"id": i, "a": i % 5, "b": i % 3}))
            .collect();
        t.insert_many(docs).await.unwrap().check().unwrap();
        let step = "t.insert_many(4096 rows {id: i, a: i % 5, b: i % 3})";
        let mut failures = Vec::new();
        for (w, before) in watches.iter_mut().zip(&before) {
            if let Err(e) = w.step(&t, step, true, before).await {
                failures.push(e);
            }
        }
        assert!(
            failures.is_empty(),
            "t.insert_many(4096 rows {{id: i, a: i % 5}}):{}",
            failures.join("")
        );
    });
}

/// Squash windows that cannot be honoured are refused, or clamped; polling never panics.
#[test]
fn huge_squash_windows_are_refused_or_clamped() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let db = Config::temporary()
            .durability(Durability::Soft)
            .open()
            .await
            .unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        for w in [
            1e9,
            1e12,
            1e19,
            1.8e19,
            1e300,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
            -1.0,
        ] {
            let opened = t.changes().squash_window(w).await;
            let mut feed = match opened {
                Err(Error::InvalidFeedOption(_) | Error::InvalidQuery(_)) => continue,
                Err(e) => panic!("squash_window({w}): {e:?}"),
                Ok(f) if !w.is_finite() || w < 0.0 => {
                    panic!("squash_window({w}) was accepted: {f:?}")
                }
                Ok(f) => f,
            };
            for i in 0..3 {
                t.insert(json!({"id": i})).await.unwrap();
                // The first batch is handed over at once; later ones wait (clamped or not),
                // but polling must not panic.
                let polled = std::panic::AssertUnwindSafe(async { drain(&mut feed) })
                    .catch_unwind()
                    .await;
                assert!(
                    polled.is_ok(),
                    "squash_window({w}): polling the feed panicked after insert #{i}"
                );
            }
            t.query().delete().await.unwrap();
        }
    });
}

/// A `get_all` of one missing key with include_initial delivers no initial item (a point feed
/// delivers one `{new_val: null}`); on a present key both deliver the row.
#[test]
fn get_all_of_a_missing_key_has_no_initial_item() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let r = rt.block_on(scenario(
        vec![Doc {
            id: 1,
            a: Some(1),
            b: 0,
            tags: Vec::new(),
        }],
        vec![
            Case {
                kind: Kind::Point(0),
                initial: true,
                states: false,
                types: false,
                offsets: false,
                squash: Sq::Off,
                open_before: 0,
                twice: false,
            },
            Case {
                kind: Kind::GetAll(vec![1], Ix::Id, Vec::new()),
                initial: true,
                states: false,
                types: false,
                offsets: false,
                squash: Sq::Off,
                open_before: 0,
                twice: false,
            },
            Case {
                kind: Kind::GetAll(vec![0], Ix::Id, Vec::new()),
                initial: true,
                states: true,
                types: false,
                offsets: false,
                squash: Sq::Off,
                open_before: 0,
                twice: false,
            },
        ],
        Vec::new(),
        STRICT,
    ));
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// The example of a commit that changes two rows near the boundary of a top-3 set:
/// rows `0:8 1:8 3:8 4:2 2:2` (id:a), one batch setting `a` of 1 and 3 to 4. The refill
/// must read the state the commit leaves, not the storage it has already half-written.
#[test]
fn a_batch_moving_two_members_refills_from_the_committed_state() {
    let doc = |id, a| Doc {
        id,
        a: Some(a),
        b: 0,
        tags: Vec::new(),
    };
    let patch = Patch {
        a: Some(Some(4)),
        b: None,
        tags: None,
    };
    let cases = [false, true]
        .into_iter()
        .flat_map(|offsets| {
            [Sq::Off, Sq::Merge].into_iter().map(move |squash| Case {
                kind: Kind::TopN {
                    ix: Ix::A,
                    desc: true,
                    n: 3,
                    range: None,
                },
                initial: true,
                states: false,
                types: false,
                offsets,
                squash,
                open_before: 0,
                twice: false,
            })
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let r = rt.block_on(scenario(
        vec![doc(3, 8), doc(1, 8), doc(0, 8), doc(4, 2), doc(2, 2)],
        cases,
        vec![Op::Batch(vec![
            BOp::Update(1, patch.clone()),
            BOp::Update(3, patch),
        ])],
        STRICT,
    ));
    if let Err(e) = r {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(config_scaled(128, 2))]

    /// Hard durability: a feed shows a write only once it is on disk, and by the time the
    /// acknowledged write returns, its changes are there to read. Row and top-N feeds,
    /// squashed or not.
    #[test]
    fn feeds_with_hard_durability_equal_their_query(
        seed in seed(),
        cases in vec(
            case(
                prop_oneof![rows_kind(false), top_n_kind()].boxed(),
                prop_oneof![2 => Just(Sq::Off), 1 => Just(Sq::Merge)].boxed(),
                true,
            ),
            1..3,
        ),
        ops in vec(any_op(), 1..8),
    ) {
        run(seed, cases, ops, HARD)?;
    }
}
