//! Adversarial, oracle-checked tests of FEED OPTIONS and OVERFLOW on the embedded (sled)
//! backend: every feed kind (point, table, filter, get_all on primary / simple / compound /
//! multi indexes, between on primary and secondary indexes, top-N, aggregates, eq_join)
//! combined with include_initial / include_states / include_types / include_offsets /
//! squash (merge and window) / queue_size, under random writes from several concurrent
//! tasks. The oracle: the state rebuilt from a feed's items equals the query re-run, and
//! every item satisfies the documented invariants (kinds, types, states order, commit
//! positions shared by the items of one commit, squashed states were committed states,
//! overflow reported exactly as `feed/mod.rs` promises).
//!
//! Seeded: each test prints its seed; `FEED_ATTACK_SEED=<n>` replays it (the writes are a
//! function of the seed; the interleaving of the concurrent writers is not).

#[path = "common/mod.rs"]
mod common;

use common::canon;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::{
    field, json, Change, ChangeKind, ChangeLogRetention, Changes, Config, Conflict, Cursor,
    Database, Durability, Error, Feed, FeedOptions, FeedState, IndexSpec, Order, Squash, Value,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Seeds, databases, writes
// ---------------------------------------------------------------------------------------------

fn seed(test: &str) -> u64 {
    let s = std::env::var("FEED_ATTACK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("[{test}] seed = {s} (replay with FEED_ATTACK_SEED={s})");
    s
}

/// Keys of table `t` are 0..KEYS.
const KEYS: i64 = 24;

async fn setup(log: Option<ChangeLogRetention>) -> Database {
    let mut c = Config::temporary()
        .durability(Durability::Soft)
        .flush_interval(Duration::from_millis(20));
    if let Some(r) = log {
        c = c.change_log(r);
    }
    let db = c.open().await.unwrap();
    db.create_table("t").await.unwrap();
    db.create_table("u").await.unwrap();
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    t.create_index("ab", IndexSpec::compound(["a", "b"]))
        .await
        .unwrap();
    let u = db.table("u");
    for i in 0..3 {
        u.insert(json!({"id": i, "name": format!("u{i}-init")}))
            .await
            .unwrap();
    }
    db
}

fn doc(rng: &mut StdRng, id: i64, tag: &str) -> Value {
    let tags: Vec<i64> = (0..rng.gen_range(0..3))
        .map(|_| rng.gen_range(0..4))
        .collect();
    json!({"id": id, "a": rng.gen_range(0..6), "b": rng.gen_range(0..3), "tags": tags, "op": tag})
}

/// A few rows before the feeds open.
async fn seed_rows(db: &Database, rng: &mut StdRng) {
    let mut docs = Vec::new();
    for k in 0..KEYS {
        if rng.gen_bool(0.6) {
            docs.push(doc(rng, k, "seed"));
        }
    }
    if !docs.is_empty() {
        db.table("t").insert_many(docs).await.unwrap();
    }
}

/// One random write (one commit, or none when it changes nothing). Every document it writes
/// carries `op: <tag>`, unique per write, so that items can be traced to their commit.
async fn random_write(db: &Database, rng: &mut StdRng, tag: &str) {
    let t = db.table("t");
    let k = rng.gen_range(0..KEYS);
    match rng.gen_range(0..12) {
        0..=2 => {
            let d = doc(rng, k, tag);
            let _ = t.insert(d).conflict(Conflict::Replace).await.unwrap();
        }
        3 => {
            let a = rng.gen_range(0..6);
            t.get(k).update(json!({"a": a, "op": tag})).await.unwrap();
        }
        4 => {
            let b = rng.gen_range(0..3);
            let tags: Vec<i64> = (0..rng.gen_range(0..3))
                .map(|_| rng.gen_range(0..4))
                .collect();
            t.get(k)
                .update(json!({"b": b, "tags": tags, "op": tag}))
                .await
                .unwrap();
        }
        5 | 6 => {
            t.get(k).delete().await.unwrap();
        }
        7 | 8 => {
            // One atomic commit over several rows.
            let mut keys: Vec<i64> = (0..KEYS).collect();
            let n = rng.gen_range(2..5);
            let mut b = db.batch();
            for _ in 0..n {
                let k = keys.swap_remove(rng.gen_range(0..keys.len()));
                b = match rng.gen_range(0..3) {
                    0 => b.insert_with("t", doc(rng, k, tag), Conflict::Replace),
                    1 => b.insert_with("t", doc(rng, k, tag), Conflict::Replace),
                    _ => b.delete("t", k),
                };
            }
            b.await.unwrap();
        }
        9 | 10 => {
            let mut keys: Vec<i64> = (0..KEYS).collect();
            let n = rng.gen_range(2..6);
            let docs: Vec<Value> = (0..n)
                .map(|_| {
                    let k = keys.swap_remove(rng.gen_range(0..keys.len()));
                    doc(rng, k, tag)
                })
                .collect();
            t.insert_many(docs)
                .conflict(Conflict::Replace)
                .await
                .unwrap();
        }
        _ => {
            // The join's other table.
            let r = rng.gen_range(0..3);
            db.table("u")
                .insert(json!({"id": r, "name": tag}))
                .conflict(Conflict::Replace)
                .await
                .unwrap();
        }
    }
}

/// `writers` tasks, each making `ops` random writes (seeded per writer), with short random
/// pauses. Returns their handles.
fn spawn_writers(
    db: &Database,
    seed: u64,
    writers: usize,
    ops: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64));
                for i in 0..ops {
                    random_write(&db, &mut rng, &format!("w{w}-{i}")).await;
                    if rng.gen_bool(0.2) {
                        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..800))).await;
                    }
                }
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What a consumer holds, and the per-item checks
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Held {
    /// A multiset of rows / pairs.
    Bag(BTreeMap<String, i64>),
    /// A top-N list edited by offsets.
    List(Vec<String>),
    /// Aggregate groups (`""` for an ungrouped one).
    Groups(BTreeMap<String, String>),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Shape {
    Bag,
    List,
    Grouped,
    Value,
}

impl Held {
    fn new(shape: Shape) -> Self {
        match shape {
            Shape::Bag => Held::Bag(BTreeMap::new()),
            Shape::List => Held::List(Vec::new()),
            Shape::Grouped | Shape::Value => Held::Groups(BTreeMap::new()),
        }
    }

    fn from_rows(shape: Shape, rows: &[Value]) -> Self {
        let mut h = Held::new(shape);
        match &mut h {
            Held::Bag(b) => {
                for r in rows {
                    *b.entry(canon(r)).or_default() += 1;
                }
            }
            Held::List(l) => l.extend(rows.iter().map(canon)),
            Held::Groups(g) => {
                for r in rows {
                    if shape == Shape::Grouped {
                        g.insert(canon(&r["group"]), canon(&r["reduction"]));
                    } else {
                        g.insert(String::new(), canon(r));
                    }
                }
            }
        }
        h
    }

    /// A top-N list as a multiset (feeds without offsets).
    fn into_bag(self) -> Held {
        match self {
            Held::List(l) => {
                let mut b = BTreeMap::new();
                for r in l {
                    *b.entry(r).or_default() += 1;
                }
                Held::Bag(b)
            }
            h => h,
        }
    }

    fn apply(&mut self, shape: Shape, c: &Change) -> Result<(), String> {
        match self {
            Held::Bag(b) => {
                if let Some(old) = c.old_val() {
                    let k = canon(old);
                    let n = b
                        .get_mut(&k)
                        .ok_or_else(|| format!("old_val {k} is not held"))?;
                    *n -= 1;
                    if *n == 0 {
                        b.remove(&k);
                    }
                }
                if let Some(new) = c.new_val() {
                    *b.entry(canon(new)).or_default() += 1;
                }
            }
            Held::List(l) => {
                if c.kind() == ChangeKind::Initial {
                    let o = c
                        .new_offset()
                        .ok_or("an initial top-N row without offset")?;
                    if o != l.len() {
                        return Err(format!("initial offset {o}, list has {}", l.len()));
                    }
                    l.push(canon(c.new_val().ok_or("initial without row")?));
                    return Ok(());
                }
                if c.old_val().is_some() != c.old_offset().is_some()
                    || c.new_val().is_some() != c.new_offset().is_some()
                {
                    return Err("offsets do not match values".into());
                }
                if let (Some(o), Some(v)) = (c.old_offset(), c.old_val()) {
                    if l.get(o) != Some(&canon(v)) {
                        return Err(format!("old_offset {o} does not hold {}", canon(v)));
                    }
                    l.remove(o);
                }
                if let (Some(o), Some(v)) = (c.new_offset(), c.new_val()) {
                    if o > l.len() {
                        return Err(format!("new_offset {o} past the end {}", l.len()));
                    }
                    l.insert(o, canon(v));
                }
            }
            Held::Groups(g) => {
                let split = |v: &Value| {
                    if shape == Shape::Grouped {
                        (canon(&v["group"]), canon(&v["reduction"]))
                    } else {
                        (String::new(), canon(v))
                    }
                };
                if let Some(old) = c.old_val() {
                    let (k, r) = split(old);
                    if g.get(&k) != Some(&r) {
                        return Err(format!("old_val {k}={r}, held {:?}", g.get(&k)));
                    }
                    g.remove(&k);
                }
                if let Some(new) = c.new_val() {
                    let (k, r) = split(new);
                    g.insert(k, r);
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Opts {
    initial: bool,
    states: bool,
    types: bool,
    offsets: bool,
    /// 0: off, 1: merge, 2: window
    squash: u8,
    queue: Option<usize>,
}

impl Opts {
    fn apply(self, c: Changes) -> Changes {
        let mut c = c
            .include_initial(self.initial)
            .include_states(self.states)
            .include_types(self.types)
            .include_offsets(self.offsets);
        c = match self.squash {
            0 => c,
            1 => c.squash(true),
            _ => c.squash_window(0.015),
        };
        if let Some(q) = self.queue {
            c = c.queue_size(q);
        }
        c
    }
}

type Rerun = Box<dyn Fn() -> BoxFuture<'static, Held> + Send + Sync>;

/// A feed kind: how to watch it, how to re-run it, and how its items build a result.
struct Kind {
    name: &'static str,
    shape: Shape,
    top_n: bool,
    /// Items carry the `op` tag of their row (row feeds of whole rows).
    tagged: bool,
    changes: Box<dyn Fn() -> Changes + Send + Sync>,
    rerun: Rerun,
}

fn rows_kind(name: &'static str, q: remodel::Query, tagged: bool) -> Kind {
    let (q1, q2) = (q.clone(), q);
    Kind {
        name,
        shape: Shape::Bag,
        top_n: false,
        tagged,
        changes: Box::new(move || q1.changes()),
        rerun: Box::new(move || {
            let q = q2.clone();
            async move { Held::from_rows(Shape::Bag, &q.run().await.unwrap()) }.boxed()
        }),
    }
}

fn kinds(db: &Database) -> Vec<Kind> {
    let t = db.table("t");
    let mut out = vec![
        rows_kind("table", t.query(), true),
        rows_kind("filter a>=3", t.filter(field("a").ge(3)), true),
        rows_kind(
            "filter b==1 pluck",
            t.filter(field("b").eq(1)).pluck(["id", "a"]),
            false,
        ),
        rows_kind("get_all [1,2,2,30]", t.get_all([1, 2, 2, 30]), true),
        rows_kind("get_all a=2", t.get_all([2]).index("a"), true),
        rows_kind(
            "get_all ab=[1,0],[4,2]",
            t.get_all([json!([1, 0]), json!([4, 2])]).index("ab"),
            true,
        ),
        rows_kind("get_all tags=1,3", t.get_all([1, 3]).index("tags"), true),
        rows_kind(
            "between 5..15",
            t.between(Bound::Included(json!(5)), Bound::Excluded(json!(15))),
            true,
        ),
        rows_kind(
            "between a 1..=3 filter b!=2",
            t.between(Bound::Included(json!(1)), Bound::Included(json!(3)))
                .index("a")
                .filter(field("b").ne(2)),
            true,
        ),
        rows_kind(
            "between tags 2..",
            t.between(Bound::Included(json!(2)), Bound::Unbounded)
                .index("tags"),
            true,
        ),
    ];
    // A point feed.
    {
        let (t1, t2) = (t.clone(), t.clone());
        out.push(Kind {
            name: "get 7",
            shape: Shape::Bag,
            top_n: false,
            tagged: true,
            changes: Box::new(move || t1.get(7).changes()),
            rerun: Box::new(move || {
                let t = t2.clone();
                async move {
                    let rows: Vec<Value> = t.get(7).run().await.unwrap().into_iter().collect();
                    Held::from_rows(Shape::Bag, &rows)
                }
                .boxed()
            }),
        });
    }
    // Top-N.
    for (name, q) in [
        ("top3 a desc", t.order_by(Order::index("a").desc()).limit(3)),
        ("top2 a asc in 3..20", {
            t.between(Bound::Included(json!(3)), Bound::Excluded(json!(20)))
                .order_by(Order::index("id"))
                .limit(2)
        }),
        ("min a", t.min_by_index("a")),
        ("top4 ab", t.order_by(Order::index("ab")).limit(4)),
    ] {
        let (q1, q2) = (q.clone(), q);
        out.push(Kind {
            name,
            shape: Shape::List,
            top_n: true,
            tagged: false,
            changes: Box::new(move || q1.changes()),
            rerun: Box::new(move || {
                let q = q2.clone();
                async move { Held::from_rows(Shape::List, &q.run().await.unwrap()) }.boxed()
            }),
        });
    }
    // Aggregates.
    macro_rules! value_agg {
        ($name:expr, $agg:expr) => {{
            let (a1, a2) = ($agg, $agg);
            out.push(Kind {
                name: $name,
                shape: Shape::Value,
                top_n: false,
                tagged: false,
                changes: Box::new(move || a1.changes()),
                rerun: Box::new(move || {
                    let a = a2.clone();
                    async move {
                        let v = serde_json::to_value(a.await.unwrap()).unwrap();
                        Held::from_rows(Shape::Value, &[v])
                    }
                    .boxed()
                }),
            });
        }};
    }
    macro_rules! grouped_agg {
        ($name:expr, $agg:expr) => {{
            let (a1, a2) = ($agg, $agg);
            out.push(Kind {
                name: $name,
                shape: Shape::Grouped,
                top_n: false,
                tagged: false,
                changes: Box::new(move || a1.changes()),
                rerun: Box::new(move || {
                    let a = a2.clone();
                    async move {
                        let gs: Vec<Value> = a
                            .await
                            .unwrap()
                            .into_iter()
                            .map(|g| serde_json::to_value(g).unwrap())
                            .collect();
                        Held::from_rows(Shape::Grouped, &gs)
                    }
                    .boxed()
                }),
            });
        }};
    }
    value_agg!("count", t.query().count());
    value_agg!("sum a", t.query().sum("a"));
    value_agg!("count get_all a=1", t.get_all([1]).index("a").count());
    grouped_agg!("group b count", t.query().group("b").count());
    grouped_agg!("group b sum a", t.query().group("b").sum("a"));
    grouped_agg!(
        "group_by_index tags count",
        t.query().group_by_index("tags").count()
    );
    grouped_agg!(
        "between a group b max a",
        t.between(Bound::Included(json!(1)), Bound::Excluded(json!(5)))
            .index("a")
            .group("b")
            .max("a")
    );
    // A join (b -> u.id).
    {
        let j = t.query().eq_join("b", "u");
        let (j1, j2) = (j.clone(), j);
        out.push(Kind {
            name: "eq_join b->u",
            shape: Shape::Bag,
            top_n: false,
            tagged: false,
            changes: Box::new(move || j1.changes()),
            rerun: Box::new(move || {
                let j = j2.clone();
                async move { Held::from_rows(Shape::Bag, &j.run().await.unwrap()) }.boxed()
            }),
        });
    }
    out
}

/// The documented invariants of one item, given the feed's options and what came before.
struct Checker {
    #[allow(dead_code)]
    name: String,
    opts: Opts,
    /// 0: expecting `initializing`, 1: initial rows, 2: live.
    phase: u8,
    saw_ready: bool,
    last_cursor: Option<Cursor>,
    strict_cursors: bool,
}

impl Checker {
    fn new(name: &str, opts: Opts, strict_cursors: bool) -> Self {
        Checker {
            name: name.to_string(),
            opts,
            phase: if opts.states && opts.initial {
                0
            } else if opts.initial {
                1
            } else {
                2
            },
            saw_ready: false,
            last_cursor: None,
            strict_cursors,
        }
    }

    fn check(&mut self, c: &Change) -> Result<(), String> {
        let o = self.opts;
        let j = c.to_json();
        // include_types: `type` iff asked for, and it is the kind's name.
        match (o.types, j.get("type")) {
            (true, Some(t)) if t == c.kind().as_str() => {}
            (false, None) => {}
            (t, got) => return Err(format!("include_types {t}, type {got:?} for {j}")),
        }
        if !o.offsets && (c.old_offset().is_some() || c.new_offset().is_some()) {
            return Err(format!("offsets without include_offsets: {j}"));
        }
        match c.kind() {
            ChangeKind::State => {
                if !o.states {
                    return Err("a state without include_states".into());
                }
                match (c.state(), self.phase) {
                    (Some(FeedState::Initializing), 0) => self.phase = 1,
                    (Some(FeedState::Ready), 1) | (Some(FeedState::Ready), 2)
                        if !(self.saw_ready || self.phase == 2 && o.initial) =>
                    {
                        self.saw_ready = true;
                        self.phase = 2;
                    }
                    (s, p) => return Err(format!("state {s:?} in phase {p}")),
                }
                if c.seq().is_some() || c.cursor().is_some() {
                    return Err("a state with a position".into());
                }
            }
            ChangeKind::Initial => {
                if !o.initial || self.phase != 1 {
                    return Err(format!("an initial row in phase {}", self.phase));
                }
                if c.old_val().is_some() || c.seq().is_some() || c.cursor().is_some() {
                    return Err(format!("an initial row with old_val or position: {j}"));
                }
            }
            ChangeKind::Uninitial => return Err("uninitial".into()),
            k => {
                if o.states && !self.saw_ready {
                    return Err(format!("a change before `ready`: {j}"));
                }
                self.phase = 2;
                let want = match (c.old_val().is_some(), c.new_val().is_some()) {
                    (false, true) => ChangeKind::Add,
                    (true, false) => ChangeKind::Remove,
                    (true, true) => ChangeKind::Change,
                    (false, false) => return Err("a change with neither value".into()),
                };
                if k != want {
                    return Err(format!("kind {k:?} for {j}"));
                }
                if c.old_val().is_some() && c.old_val() == c.new_val() {
                    return Err(format!("a change that changes nothing: {j}"));
                }
                let cur = c.cursor().ok_or("a change without cursor")?;
                let seq = c.seq().ok_or("a change without seq")?;
                if cur.seq() < seq {
                    return Err(format!("cursor {cur} before its commit {seq}"));
                }
                if let Some(pos) = c.position_in_commit() {
                    if seq + u64::from(pos) != cur.seq() {
                        return Err(format!("seq {seq} + pos {pos} != cursor {cur}"));
                    }
                }
                if o.squash == 0 {
                    if let Some(last) = self.last_cursor {
                        let bad = if self.strict_cursors {
                            cur <= last
                        } else {
                            cur.seq() < last.seq()
                        };
                        if bad {
                            return Err(format!("cursor {cur} after {last}: out of commit order"));
                        }
                    }
                    self.last_cursor = Some(cur);
                }
            }
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), String> {
        if self.opts.states && !self.saw_ready {
            return Err("no `ready` state".into());
        }
        Ok(())
    }
}

/// A feed under test.
struct Watched {
    label: String,
    kind: usize,
    shape: Shape,
    opts: Opts,
    feed: Feed,
    held: Held,
    checker: Checker,
    /// Every item (for the cross-feed checks at the end).
    items: Vec<Change>,
    overflows: Vec<u64>,
    error: Option<String>,
}

impl Watched {
    async fn open(kinds: &[Kind], kind: usize, opts: Opts) -> Watched {
        let k = &kinds[kind];
        let feed = opts
            .apply((k.changes)())
            .await
            .unwrap_or_else(|e| panic!("{}: open with {opts:?}: {e}", k.name));
        let label = format!("{} {opts:?}", k.name);
        // Without initial rows, the consumer starts from the result at opening (no writer
        // runs while feeds are opened).
        let shape = if k.shape == Shape::List && !opts.offsets {
            Shape::Bag
        } else {
            k.shape
        };
        let held = if opts.initial {
            Held::new(shape)
        } else {
            (k.rerun)().await
        };
        let held = if shape == Shape::Bag {
            held.into_bag()
        } else {
            held
        };
        Watched {
            checker: Checker::new(&label, opts, !k.name.contains("join")),
            label,
            kind,
            shape,
            opts,
            feed,
            held,
            items: Vec::new(),
            overflows: Vec::new(),
            error: None,
        }
    }

    fn take(&mut self, shape: Shape, item: Result<Change, Error>) {
        if self.error.is_some() {
            return;
        }
        match item {
            Ok(c) => {
                let r = self.checker.check(&c).and_then(|_| {
                    if self.overflows.is_empty() {
                        self.held.apply(shape, &c)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = r {
                    self.error = Some(format!(
                        "{}: item #{} {}: {e}",
                        self.label,
                        self.items.len(),
                        c.to_json()
                    ));
                }
                self.items.push(c);
            }
            Err(Error::FeedOverflow { skipped }) => self.overflows.push(skipped),
            Err(e) => self.error = Some(format!("{}: error item {e:?}", self.label)),
        }
    }

    /// Reads what is ready now.
    fn read_ready(&mut self, shape: Shape, max: usize) {
        for _ in 0..max {
            match self.feed.next().now_or_never() {
                Some(Some(item)) => self.take(shape, item),
                _ => break,
            }
        }
    }

    /// Reads until the feed is quiet for `quiet`.
    async fn settle(&mut self, shape: Shape, quiet: Duration) {
        while let Ok(Some(item)) = tokio::time::timeout(quiet, self.feed.next()).await {
            self.take(shape, item);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Every feed kind × options, concurrent writers, a consumer that stalls: rebuilt == query
// ---------------------------------------------------------------------------------------------

fn option_sets(top_n: bool) -> Vec<Opts> {
    let big = Some(100_000);
    let mut v = vec![
        // The witness (first): every item, initial rows, states and types.
        Opts {
            initial: true,
            states: true,
            types: true,
            queue: big,
            ..Opts::default()
        },
        Opts {
            initial: false,
            states: true,
            ..Opts::default()
        },
        Opts {
            initial: true,
            squash: 1,
            states: true,
            ..Opts::default()
        },
        Opts {
            initial: true,
            squash: 2,
            types: true,
            ..Opts::default()
        },
        Opts {
            initial: false,
            squash: 1,
            queue: Some(1_000),
            ..Opts::default()
        },
    ];
    if top_n {
        v.push(Opts {
            initial: true,
            offsets: true,
            ..Opts::default()
        });
        v.push(Opts {
            initial: true,
            offsets: true,
            squash: 1,
            states: true,
            ..Opts::default()
        });
        v.push(Opts {
            initial: true,
            offsets: true,
            squash: 2,
            queue: Some(2),
            ..Opts::default()
        });
    }
    v
}

async fn run_matrix(seed: u64, kinds_wanted: &dyn Fn(&Kind) -> bool) {
    let db = setup(None).await;
    let mut rng = StdRng::seed_from_u64(seed);
    seed_rows(&db, &mut rng).await;
    let kinds = kinds(&db);
    // Witnesses of every commit: the whole of `t` and of `u`.
    let mut all_t = db.table("t").changes().queue_size(1 << 20).await.unwrap();
    let mut all_u = db.table("u").changes().queue_size(1 << 20).await.unwrap();
    let mut watched = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        if !kinds_wanted(k) {
            continue;
        }
        for o in option_sets(k.top_n) {
            let o = if k.top_n || !o.offsets { o } else { continue };
            watched.push(Watched::open(&kinds, i, o).await);
        }
    }
    let writers = spawn_writers(&db, seed, 3, 70);
    // The consumer: reads some feeds, stalls on others, at random.
    let mut crng = StdRng::seed_from_u64(seed ^ 0xc0ffee);
    while !writers.iter().all(|w| w.is_finished()) {
        for w in watched.iter_mut() {
            if crng.gen_bool(0.4) {
                let n = crng.gen_range(1..50);
                w.read_ready(w.shape, n);
            }
        }
        tokio::time::sleep(Duration::from_millis(crng.gen_range(0..4))).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    // Commit positions, from the whole-table witnesses.
    let mut tag_seq: HashMap<String, u64> = HashMap::new();
    let mut commit_seqs: HashSet<u64> = HashSet::new();
    let mut problems = Vec::new();
    for (name, f) in [("t", &mut all_t), ("u", &mut all_u)] {
        let items = common_drain(f);
        for c in items {
            let c = c.unwrap_or_else(|e| panic!("witness of {name}: {e}"));
            let seq = c.seq().unwrap();
            commit_seqs.insert(seq);
            if let Some(tag) = c
                .new_val()
                .and_then(|v| v.get("op"))
                .and_then(|t| t.as_str())
            {
                if name == "t" {
                    if let Some(prev) = tag_seq.insert(tag.to_string(), seq) {
                        if prev != seq {
                            problems.push(format!(
                                "items of one commit ({tag}) have seqs {prev} and {seq}"
                            ));
                        }
                    }
                }
            }
        }
    }
    // Distinct commits have distinct positions.
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    for (tag, seq) in &tag_seq {
        if let Some(other) = by_seq.insert(*seq, tag.clone()) {
            problems.push(format!("commits {other} and {tag} share seq {seq}"));
        }
    }
    // Every committed value of each kind's result, as its (unsquashed) witness saw it.
    let mut committed: HashMap<usize, HashSet<String>> = HashMap::new();
    for w in watched.iter_mut() {
        w.settle(w.shape, Duration::from_millis(120)).await;
    }
    for w in &watched {
        if w.opts.squash == 0 && w.overflows.is_empty() {
            let set = committed.entry(w.kind).or_default();
            for c in &w.items {
                if let Some(v) = c.new_val() {
                    set.insert(canon(v));
                }
                if let Some(v) = c.old_val() {
                    set.insert(canon(v));
                }
            }
        }
    }
    for w in &mut watched {
        let k = &kinds[w.kind];
        if let Some(e) = &w.error {
            problems.push(e.clone());
            continue;
        }
        if let Err(e) = w.checker.finish() {
            problems.push(format!("{}: {e}", w.label));
        }
        if !w.overflows.is_empty() {
            problems.push(format!(
                "{}: overflowed {:?} with a queue of {:?}",
                w.label, w.overflows, w.opts.queue
            ));
            continue;
        }
        let expected = (k.rerun)().await;
        let expected = if w.shape == Shape::Bag {
            expected.into_bag()
        } else {
            expected
        };
        if w.held != expected {
            problems.push(format!(
                "{}: rebuilt state != query\n  rebuilt: {:?}\n  query:   {:?}",
                w.label, w.held, expected
            ));
        }
        for c in &w.items {
            if c.kind() == ChangeKind::State || c.kind() == ChangeKind::Initial {
                continue;
            }
            let seq = c.seq().unwrap();
            if !commit_seqs.contains(&seq) {
                problems.push(format!(
                    "{}: seq {seq} is no commit's: {}",
                    w.label,
                    c.to_json()
                ));
            }
            if k.tagged {
                if let Some(tag) = c
                    .new_val()
                    .and_then(|v| v.get("op"))
                    .and_then(|t| t.as_str())
                {
                    if tag != "seed" && tag_seq.get(tag) != Some(&seq) {
                        problems.push(format!(
                            "{}: item of commit {tag} (seq {:?}) has seq {seq}{}",
                            w.label,
                            tag_seq.get(tag),
                            if w.opts.squash > 0 {
                                " (squashed: must be its last change's)"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
            if w.opts.squash > 0 {
                // A squashed item shows only committed states.
                let set = committed.get(&w.kind);
                for v in [c.old_val(), c.new_val()].into_iter().flatten() {
                    if set.is_some_and(|s| !s.contains(&canon(v))) {
                        problems.push(format!(
                            "{}: squashed item shows {} which no committed result had",
                            w.label,
                            canon(v)
                        ));
                    }
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn common_drain(feed: &mut Feed) -> Vec<Result<Change, Error>> {
    let mut out = Vec::new();
    while let Some(Some(item)) = feed.next().now_or_never() {
        out.push(item);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_feeds_with_every_option_rebuild_the_query_under_concurrent_writers() {
    let s = seed("row_feeds");
    run_matrix(s, &|k| k.shape == Shape::Bag && !k.name.contains("join")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_feeds_with_every_option_rebuild_the_query_under_concurrent_writers() {
    let s = seed("top_n");
    run_matrix(s, &|k| k.top_n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_and_join_feeds_with_every_option_rebuild_the_query_under_concurrent_writers() {
    let s = seed("aggregates_joins");
    run_matrix(s, &|k| {
        matches!(k.shape, Shape::Grouped | Shape::Value) || k.name.contains("join")
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Squash windows: "a queue more than half full, an overflow or the feed's end is handed
//    over at once"; "the feed's first hand-over is not delayed"
// ---------------------------------------------------------------------------------------------

/// A consumer already waiting on a squash window (`next()` pending) while the queue fills
/// past half: the batch must come at once, not when the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_waiting_consumer_gets_a_half_full_window_batch_at_once() {
    let db = setup(None).await;
    let t = db.table("t");
    let mut feed = t.changes().squash_window(30.0).queue_size(4).await.unwrap();
    t.insert(json!({"id": 100})).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), feed.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "the first batch at once");
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let item = feed.next().await;
        (start.elapsed(), item)
    });
    tokio::time::sleep(Duration::from_millis(150)).await; // the consumer now waits
    for i in 101..104 {
        t.insert(json!({"id": i})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three changes in a queue of four: more than half full.
    let (elapsed, item) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("a half-full squash-window queue was not handed over at once to a waiting consumer (it waits for the 30 s window)")
        .unwrap();
    assert!(matches!(item, Some(Ok(_))), "{item:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

/// Same, with an overflow: it is handed over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_waiting_consumer_gets_a_window_overflow_at_once() {
    let db = setup(None).await;
    let t = db.table("t");
    let mut feed = t.changes().squash_window(30.0).queue_size(2).await.unwrap();
    t.insert(json!({"id": 100})).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), feed.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "the first batch at once");
    let waiter = tokio::spawn(async move {
        let item = feed.next().await;
        (item, feed)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // One change (the consumer is woken, finds the window running, waits), then enough
    // distinct rows to overflow a queue of 2 several times.
    for i in 101..110 {
        t.insert(json!({"id": i})).await.unwrap();
        if i == 101 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (item, _feed) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect(
            "an overflow of a squash-window feed was not handed over at once to a waiting consumer",
        )
        .unwrap();
    assert!(
        matches!(item, Some(Err(Error::FeedOverflow { .. })) | Some(Ok(_))),
        "{item:?}"
    );
}

/// include_initial with an empty result hands over nothing first: the first batch of
/// changes is then the feed's first hand-over and must not wait for the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn the_first_hand_over_is_not_delayed_when_there_were_no_initial_rows() {
    let db = setup(None).await;
    let t = db.table("t");
    for (name, changes) in [
        ("table", t.changes()),
        ("get_all", t.get_all([500]).changes()),
        ("filter", t.filter(field("a").eq(99)).changes()),
    ] {
        let mut feed = changes
            .include_initial(true)
            .squash_window(30.0)
            .await
            .unwrap();
        // An empty table (for `table`: nothing yet; the others select nothing).
        let initial: Vec<_> = common_drain(&mut feed);
        assert!(initial.is_empty(), "{name}: {initial:?}");
        let id = 500;
        t.insert(json!({"id": id, "a": 99}))
            .conflict(Conflict::Replace)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), feed.next()).await;
        assert!(
            matches!(got, Ok(Some(Ok(_)))),
            "{name}: the first hand-over waited for the window: {got:?}"
        );
        t.get(id).delete().await.unwrap();
        drop(feed);
        t.query().delete().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Overflow: exactly as documented, for every feed kind
// ---------------------------------------------------------------------------------------------

/// A feed with a small queue and a stalling consumer, beside a witness of the same query
/// with a big queue (both read the group's log): the victim's items are the witness's items
/// with runs replaced by one `FeedOverflow { skipped }` each, `skipped` being the run's
/// length, a whole number of queues; the feed goes on after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_skips_exactly_the_lost_items_for_every_feed_kind() {
    let s = seed("overflow_exact");
    let db = setup(None).await;
    let mut rng = StdRng::seed_from_u64(s);
    seed_rows(&db, &mut rng).await;
    let kinds = kinds(&db);
    struct Pair {
        kind: usize,
        q: usize,
        witness: Feed,
        victim: Feed,
        got: Vec<Result<Change, Error>>,
    }
    let mut pairs = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        for q in [1usize, 2, 10] {
            let o = Opts {
                initial: true,
                offsets: k.top_n,
                ..Opts::default()
            };
            let witness = o.apply((k.changes)()).queue_size(1 << 20).await.unwrap();
            let victim = o.apply((k.changes)()).queue_size(q).await.unwrap();
            pairs.push(Pair {
                kind: i,
                q,
                witness,
                victim,
                got: Vec::new(),
            });
        }
    }
    let writers = spawn_writers(&db, s, 3, 60);
    let mut crng = StdRng::seed_from_u64(s ^ 0xfeed);
    while !writers.iter().all(|w| w.is_finished()) {
        for p in pairs.iter_mut() {
            if crng.gen_bool(0.3) {
                for _ in 0..crng.gen_range(1..4) {
                    match p.victim.next().now_or_never() {
                        Some(Some(item)) => p.got.push(item),
                        _ => break,
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(crng.gen_range(0..5))).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut problems = Vec::new();
    for p in pairs.iter_mut() {
        let name = kinds[p.kind].name;
        p.got.extend(common_drain(&mut p.victim));
        let all: Vec<Change> = common_drain(&mut p.witness)
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{name}: witness {e}")))
            .collect();
        let mut at = 0;
        let mut prev_overflow = false;
        let mut since_overflow = 0usize;
        for item in &p.got {
            match item {
                Ok(c) => {
                    match all.get(at) {
                        Some(w) if w == c && w.cursor() == c.cursor() => {}
                        other => {
                            problems.push(format!(
                                "{name} q={}: item {} is {} but the witness has {:?}",
                                p.q,
                                at,
                                c.to_json(),
                                other.map(|w| w.to_json())
                            ));
                            break;
                        }
                    }
                    at += 1;
                    prev_overflow = false;
                    since_overflow += 1;
                }
                Err(Error::FeedOverflow { skipped }) => {
                    let skipped = *skipped as usize;
                    // Two overflows in a row are possible: the consumer fell a queue
                    // behind again before it read anything (writers run meanwhile).
                    let _ = prev_overflow;
                    if skipped == 0 || !skipped.is_multiple_of(p.q) {
                        problems.push(format!(
                            "{name} q={}: skipped {skipped}, not a whole number of queues",
                            p.q
                        ));
                    }
                    if at + skipped > all.len() {
                        problems.push(format!(
                            "{name} q={}: skipped {skipped} at {at}, but only {} items exist",
                            p.q,
                            all.len()
                        ));
                        break;
                    }
                    at += skipped;
                    prev_overflow = true;
                    since_overflow = 0;
                }
                Err(e) => {
                    problems.push(format!("{name}: error {e:?}"));
                    break;
                }
            }
            let _ = since_overflow;
        }
        if at != all.len() && problems.is_empty() {
            problems.push(format!(
                "{name} q={}: the victim accounted for {at} of {} items",
                p.q,
                all.len()
            ));
        }
    }
    assert!(problems.is_empty(), "seed {s}:\n{}", problems.join("\n"));
}

/// The documented catch-up after an overflow: "resume a row feed from the last cursor it
/// handed over". A consumer with a tiny queue that resumes after every overflow (or re-reads
/// with include_initial before its first cursor) ends equal to the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_the_last_cursor_after_an_overflow_catches_up_exactly() {
    let s = seed("overflow_resume");
    let db = setup(Some(ChangeLogRetention::default())).await;
    let mut rng = StdRng::seed_from_u64(s);
    seed_rows(&db, &mut rng).await;
    let kinds: Vec<Kind> = kinds(&db)
        .into_iter()
        .filter(|k| k.shape == Shape::Bag && !k.name.contains("join"))
        .collect();
    struct C {
        kind: usize,
        feed: Feed,
        held: Held,
        last: Option<Cursor>,
        resumes: usize,
        error: Option<String>,
        q: usize,
    }
    let mut cs = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        for q in [1usize, 3] {
            let feed = (k.changes)()
                .include_initial(true)
                .queue_size(q)
                .await
                .unwrap();
            cs.push(C {
                kind: i,
                feed,
                held: Held::new(Shape::Bag),
                last: None,
                resumes: 0,
                error: None,
                q,
            });
        }
    }
    async fn step(c: &mut C, k: &Kind, max: usize) -> usize {
        let mut read = 0;
        for _ in 0..max {
            if c.error.is_some() {
                return read;
            }
            let Some(Some(item)) = c.feed.next().now_or_never() else {
                return read;
            };
            read += 1;
            match item {
                Ok(ch) => {
                    if let Err(e) = c.held.apply(Shape::Bag, &ch) {
                        c.error = Some(format!("{}: {e} ({})", k.name, ch.to_json()));
                    }
                    if let Some(cur) = ch.cursor() {
                        c.last = Some(cur);
                    }
                }
                Err(Error::FeedOverflow { .. }) => {
                    c.resumes += 1;
                    let q = c.q;
                    match c.last {
                        Some(cur) => {
                            c.feed = (k.changes)().resume_from(cur).queue_size(q).await.unwrap();
                        }
                        None => {
                            c.held = Held::new(Shape::Bag);
                            c.feed = (k.changes)()
                                .include_initial(true)
                                .queue_size(q)
                                .await
                                .unwrap();
                        }
                    }
                }
                Err(e) => c.error = Some(format!("{}: {e:?}", k.name)),
            }
        }
        read
    }
    let writers = spawn_writers(&db, s, 3, 60);
    let mut crng = StdRng::seed_from_u64(s ^ 0xabc);
    while !writers.iter().all(|w| w.is_finished()) {
        for c in cs.iter_mut() {
            if crng.gen_bool(0.3) {
                let n = crng.gen_range(1..6);
                step(c, &kinds[c.kind], n).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(crng.gen_range(0..5))).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut problems = Vec::new();
    let mut resumed = 0;
    for c in cs.iter_mut() {
        let k = &kinds[c.kind];
        // Catch up (resumes included) until the feed is quiet.
        for _ in 0..50 {
            if step(c, k, 100_000).await == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if step(c, k, 100_000).await == 0 {
                    break;
                }
            }
        }
        resumed += c.resumes;
        if let Some(e) = &c.error {
            problems.push(e.clone());
            continue;
        }
        let expected = (k.rerun)().await;
        if c.held != expected {
            problems.push(format!(
                "{} q={} after {} resumes: rebuilt != query\n  rebuilt {:?}\n  query   {:?}",
                k.name, c.q, c.resumes, c.held, expected
            ));
        }
    }
    eprintln!("overflow_resume: {resumed} resumes after overflows");
    assert!(problems.is_empty(), "seed {s}:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. Chunked initial reads (a table over 512 rows) with a small queue and concurrent writers
// ---------------------------------------------------------------------------------------------

async fn big_table(db: &Database, rows: i64) {
    let t = db.table("t");
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        t.insert_many(chunk.iter().map(|i| json!({"id": i, "a": i % 6, "v": 0})))
            .await
            .unwrap();
    }
}

/// Writers insert rows past the end of the table while a feed with a small queue reads
/// its initial rows in chunks. Changes to rows the scan has not reached are not delivered
/// (the scan reads those rows); only rows inserted after the scan are changes. An overflow
/// must count items the consumer lost: `skipped + delivered` = the rows that are changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_initial_read_never_reports_overflows_of_items_it_would_not_deliver() {
    let s = seed("chunked_overflow");
    let mut worst = None;
    for round in 0..4 {
        let db = setup(None).await;
        big_table(&db, 6000).await;
        let t = db.table("t");
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(1_000_000));
        let writer = {
            let (t, stop, next) = (t.clone(), stop.clone(), next.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    let id = next.fetch_add(1, Ordering::AcqRel);
                    t.insert(json!({"id": id, "a": 1, "v": 1})).await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let q = 4 + round;
        let mut feed = t
            .changes()
            .include_initial(true)
            .queue_size(q)
            .await
            .unwrap();
        stop.store(true, Ordering::Release);
        writer.await.unwrap();
        let mut initial = HashSet::new();
        let (mut delivered, mut skipped, mut overflows) = (0u64, 0u64, Vec::new());
        for item in common_drain(&mut feed) {
            match item {
                Ok(c) if c.kind() == ChangeKind::Initial => {
                    initial.insert(c.new_val().unwrap()["id"].as_i64().unwrap());
                }
                Ok(_) => delivered += 1,
                Err(Error::FeedOverflow { skipped: n }) => {
                    skipped += n;
                    overflows.push(n);
                }
                Err(e) => panic!("{e}"),
            }
        }
        let rows = t.query().run().await.unwrap();
        let changes = rows
            .iter()
            .filter(|r| !initial.contains(&r["id"].as_i64().unwrap()))
            .count() as u64;
        let written = next.load(Ordering::Acquire) - 1_000_000;
        eprintln!(
            "round {round} (seed {s}): q={q}, {written} inserted meanwhile, {} initial rows, {changes} rows are changes, {delivered} delivered, overflows {overflows:?}",
            initial.len()
        );
        if skipped + delivered != changes {
            worst = Some(format!(
                "q={q}: {changes} rows came as changes, the feed delivered {delivered} and reported {skipped} skipped ({overflows:?})"
            ));
        }
    }
    if let Some(w) = worst {
        panic!("seed {s}: {w}");
    }
}

/// `Feed::snapshot_cursor`: "a feed resumed from this cursor gets every change after those
/// rows, none of them twice". Initial rows of a chunked read (writers updating rows the scan
/// has passed), then a feed resumed from the snapshot cursor: together they must be the
/// query's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_rows_plus_a_resume_from_the_snapshot_cursor_equal_the_query() {
    let s = seed("snapshot_cursor");
    let mut failures = Vec::new();
    for round in 0..3 {
        let db = setup(Some(ChangeLogRetention::default())).await;
        big_table(&db, 20_000).await;
        let t = db.table("t");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (t, stop) = (t.clone(), stop.clone());
            let mut rng = StdRng::seed_from_u64(s + round);
            tokio::spawn(async move {
                let mut v = 1;
                while !stop.load(Ordering::Acquire) {
                    // Mostly rows near the start, which the scan reads first.
                    let id = if rng.gen_bool(0.8) {
                        rng.gen_range(0..600)
                    } else {
                        rng.gen_range(0..4000)
                    };
                    v += 1;
                    t.get(id).update(json!({"v": v})).await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut feed = t.changes().include_initial(true).await.unwrap();
        let snapshot = feed.snapshot_cursor();
        let mut held = Held::new(Shape::Bag);
        let mut rest = Vec::new();
        for item in common_drain(&mut feed) {
            let c = item.unwrap();
            if c.kind() == ChangeKind::Initial {
                held.apply(Shape::Bag, &c).unwrap();
            } else {
                rest.push(c);
            }
        }
        drop(feed);
        // Read across commits (the writer got in between chunks), the initial rows stand at
        // no one position, and the feed says so (no snapshot cursor): they and the changes
        // that follow them are the result, and the last change's cursor is where a resume
        // takes up. (Before, the cursor of the last chunk was given: a resume from it missed
        // the changes made between the chunks to rows read before them.)
        let cursor = match snapshot {
            Some(cursor) => cursor,
            None => {
                for c in &rest {
                    if let Err(e) = held.apply(Shape::Bag, c) {
                        failures.push(format!("round {round}: the live feed: {e}"));
                    }
                }
                match rest.last().and_then(|c| c.cursor()) {
                    Some(cursor) => cursor,
                    None => {
                        eprintln!("round {round}: read across commits, no change to resume after");
                        stop.store(true, Ordering::Release);
                        writer.await.unwrap();
                        continue;
                    }
                }
            }
        };
        let before = rest
            .iter()
            .filter(|c| c.cursor().unwrap() <= cursor)
            .count();
        eprintln!(
            "round {round}: resume cursor {cursor} (snapshot: {}); the live feed delivered {} changes, {before} of them at or before the cursor",
            snapshot.is_some(),
            rest.len()
        );
        let mut resumed = t.changes().resume_from(cursor).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        stop.store(true, Ordering::Release);
        writer.await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut bad = None;
        for item in common_drain(&mut resumed) {
            let c = item.unwrap();
            if let Err(e) = held.apply(Shape::Bag, &c) {
                bad.get_or_insert(format!("{e} ({})", c.to_json()));
            }
        }
        let expected = Held::from_rows(Shape::Bag, &t.query().run().await.unwrap());
        if held != expected || bad.is_some() {
            let (Held::Bag(h), Held::Bag(e)) = (&held, &expected) else {
                unreachable!()
            };
            let stale: Vec<_> = h.keys().filter(|k| !e.contains_key(*k)).take(3).collect();
            failures.push(format!(
                "round {round}: snapshot cursor {cursor}: {} held rows differ from the query (first error: {bad:?}); stale e.g. {stale:?}",
                h.keys().filter(|k| !e.contains_key(*k)).count()
            ));
        }
    }
    assert!(failures.is_empty(), "seed {s}:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. Slow consumers never block writers; squashed feeds within their documented bounds never
//    overflow
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_feeds_of_every_kind_and_option_do_not_slow_writers() {
    let s = seed("stalled");
    // Baseline: the same writes without feeds.
    let base = setup(None).await;
    let mut rng = StdRng::seed_from_u64(s);
    seed_rows(&base, &mut rng).await;
    let start = Instant::now();
    for w in spawn_writers(&base, s, 3, 150) {
        w.await.unwrap();
    }
    let baseline = start.elapsed();
    drop(base);

    let db = setup(None).await;
    let mut rng = StdRng::seed_from_u64(s);
    seed_rows(&db, &mut rng).await;
    let kinds = kinds(&db);
    let mut stalled = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        for o in [
            Opts {
                queue: Some(1),
                ..Opts::default()
            },
            Opts {
                queue: Some(1),
                initial: true,
                states: true,
                ..Opts::default()
            },
            Opts {
                queue: Some(1),
                squash: 1,
                ..Opts::default()
            },
            Opts {
                queue: Some(2),
                squash: 2,
                offsets: k.top_n,
                ..Opts::default()
            },
            Opts {
                queue: Some(1),
                squash: 1,
                offsets: k.top_n,
                initial: true,
                ..Opts::default()
            },
        ] {
            for _ in 0..3 {
                stalled.push((i, o, o.apply((k.changes)()).await.unwrap()));
            }
        }
    }
    let start = Instant::now();
    let writers = spawn_writers(&db, s, 3, 150);
    for w in writers {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("writers never wait for consumers")
            .unwrap();
    }
    let with_feeds = start.elapsed();
    eprintln!(
        "writers: {baseline:?} without feeds, {with_feeds:?} with {} stalled feeds",
        stalled.len()
    );
    assert!(
        with_feeds < baseline * 20 + Duration::from_secs(3),
        "stalled feeds slowed writers: {baseline:?} -> {with_feeds:?}"
    );
    // The squashed top-N feeds never overflow (their batches are bounded by the limit), nor
    // do squashed ungrouped aggregates (one merged item): what they hand over rebuilds the
    // result.
    let mut problems = Vec::new();
    for (i, o, feed) in stalled.iter_mut() {
        let k = &kinds[*i];
        let items = {
            let mut v = common_drain(feed);
            tokio::time::sleep(Duration::from_millis(if o.squash == 2 { 30 } else { 0 })).await;
            v.extend(common_drain(feed));
            v
        };
        let overflowed = items
            .iter()
            .any(|r| matches!(r, Err(Error::FeedOverflow { .. })));
        if let Some(e) = items.iter().find_map(|r| match r {
            Err(Error::FeedOverflow { .. }) | Ok(_) => None,
            Err(e) => Some(e),
        }) {
            problems.push(format!("{} {o:?}: {e:?}", k.name));
        }
        let never_overflows = o.squash > 0 && (k.top_n || k.shape == Shape::Value);
        if never_overflows && overflowed {
            problems.push(format!(
                "{} {o:?}: a squashed feed that never overflows overflowed",
                k.name
            ));
        }
        if never_overflows && o.initial && !overflowed {
            let shape = if k.top_n && !o.offsets {
                Shape::Bag
            } else {
                k.shape
            };
            let mut held = Held::new(shape);
            for c in items.iter().flatten() {
                if let Err(e) = held.apply(shape, c) {
                    problems.push(format!("{} {o:?}: {e}", k.name));
                    break;
                }
            }
            let exp = (k.rerun)().await;
            let exp = if shape == Shape::Bag {
                exp.into_bag()
            } else {
                exp
            };
            if held != exp {
                problems.push(format!(
                    "{} {o:?}: rebuilt {held:?} != query {exp:?}",
                    k.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "seed {s}:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 6. Resuming at the edge of the retained history: CursorExpired below it, never a gap
// ---------------------------------------------------------------------------------------------

/// A short change log (64 changes, segments of 64): a witness records every change with its
/// cursor while writers run; then every cursor is resumed from (while more writes run).
/// The cursors that resume are a suffix of the witness's, each giving exactly the witness's
/// later items (nothing missed, nothing twice); the others give `CursorExpired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_near_the_retention_edge_is_exact_or_expired() {
    let s = seed("resume_edge");
    let db = setup(Some(ChangeLogRetention {
        max_changes: Some(64),
        max_age: None,
    }))
    .await;
    let mut rng = StdRng::seed_from_u64(s);
    seed_rows(&db, &mut rng).await;
    let t = db.table("t");
    let queries: Vec<(&str, remodel::Query)> = vec![
        ("table", t.query()),
        ("filter a>=2", t.filter(field("a").ge(2))),
        ("get_all tags 1,1", t.get_all([1, 1]).index("tags")),
        (
            "between a 1..4",
            t.between(Bound::Included(json!(1)), Bound::Excluded(json!(4)))
                .index("a"),
        ),
    ];
    let mut witnesses = Vec::new();
    for (_, q) in &queries {
        witnesses.push(q.changes().queue_size(1 << 20).await.unwrap());
    }
    for w in spawn_writers(&db, s, 3, 120) {
        w.await.unwrap();
    }
    // Let the log trim (a segment goes once a flush has passed it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    for w in spawn_writers(&db, s ^ 1, 1, 20) {
        w.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut problems = Vec::new();
    for ((name, q), w) in queries.iter().zip(witnesses.iter_mut()) {
        let all: Vec<Change> = common_drain(w).into_iter().map(|r| r.unwrap()).collect();
        let mut first_ok = None;
        let mut expired = 0;
        for (i, c) in all.iter().enumerate() {
            let cur = c.cursor().unwrap();
            match q.changes().resume_from(cur).await {
                Err(Error::CursorExpired { .. }) => {
                    expired += 1;
                    if let Some(j) = first_ok {
                        problems.push(format!(
                            "{name}: cursor #{i} ({cur}) expired but the older #{j} resumed"
                        ));
                    }
                }
                Err(e) => problems.push(format!("{name}: cursor #{i}: {e:?}")),
                Ok(mut f) => {
                    first_ok.get_or_insert(i);
                    let got: Vec<Change> = common_drain(&mut f)
                        .into_iter()
                        .map(|r| r.unwrap())
                        .collect();
                    let want = &all[i + 1..];
                    let same = got.len() == want.len()
                        && got
                            .iter()
                            .zip(want)
                            .all(|(a, b)| a == b && a.cursor() == b.cursor());
                    if !same {
                        problems.push(format!(
                            "{name}: resumed from #{i} ({cur}): {} items, the witness has {} after it{}",
                            got.len(),
                            want.len(),
                            got.iter()
                                .zip(want)
                                .position(|(a, b)| a != b || a.cursor() != b.cursor())
                                .map(|p| format!(", first difference at {p}"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
        }
        eprintln!(
            "{name}: {} items, {expired} cursors expired, first resumable #{first_ok:?}",
            all.len()
        );
        if first_ok.is_none() && !all.is_empty() {
            problems.push(format!("{name}: no cursor resumes at all"));
        }
        // Position cursors at the edge: the database's position now resumes with nothing.
        let mut f = q.changes().resume_from(db.position()).await.unwrap();
        if let Some(Some(x)) = f.next().now_or_never() {
            problems.push(format!(
                "{name}: resumed from the current position, got {x:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "seed {s}:\n{}",
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// While writers run, a feed resumed from a cursor delivers the replayed items and then the
/// live ones with no gap and no duplicate: equal to a witness that never disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_resumed_while_writers_run_joins_the_live_changes_exactly() {
    let s = seed("resume_live");
    let db = setup(Some(ChangeLogRetention::default())).await;
    let mut rng = StdRng::seed_from_u64(s);
    seed_rows(&db, &mut rng).await;
    let t = db.table("t");
    let q = t.get_all([0, 2]).index("tags");
    let mut witness = q.changes().queue_size(1 << 20).await.unwrap();
    let mut first = q.changes().await.unwrap();
    let writers = spawn_writers(&db, s, 3, 80);
    let mut resumed = Vec::new();
    let mut seen: Vec<Change> = Vec::new();
    let mut crng = StdRng::seed_from_u64(s ^ 7);
    // Read a few, drop, resume from the last cursor, repeatedly, while writers run.
    while !writers.iter().all(|w| w.is_finished()) {
        if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(3), first.next()).await {
            seen.push(item.unwrap());
        }
        if crng.gen_bool(0.1) {
            if let Some(cur) = seen.last().and_then(|c| c.cursor()) {
                first = q.changes().resume_from(cur).await.unwrap();
                resumed.push(cur);
            }
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    seen.extend(common_drain(&mut first).into_iter().map(|r| r.unwrap()));
    let all: Vec<Change> = common_drain(&mut witness)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    eprintln!("{} items, {} resumes", all.len(), resumed.len());
    assert_eq!(
        seen.len(),
        all.len(),
        "seed {s}: a resumed feed missed or repeated items"
    );
    for (i, (a, b)) in seen.iter().zip(&all).enumerate() {
        assert!(
            a == b && a.cursor() == b.cursor(),
            "seed {s}: item {i}: {} vs {}",
            a.to_json(),
            b.to_json()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Bad option values: a typed error, never a panic
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_options_in_json_and_builders_are_typed_errors_never_panics() {
    let db = setup(Some(ChangeLogRetention::default())).await;
    let t = db.table("t");
    let bad_json = [
        json!(null),
        json!([]),
        json!("squash"),
        json!(1),
        json!({"queue_size": 0}),
        json!({"queue_size": -1}),
        json!({"queue_size": 1.5}),
        json!({"queue_size": "10"}),
        json!({"queue_size": null}),
        json!({"queue_size": true}),
        json!({"squash": -1}),
        json!({"squash": -0.001}),
        json!({"squash": i64::MIN}),
        json!({"squash": "0.5"}),
        json!({"squash": null}),
        json!({"squash": []}),
        json!({"include_initial": 1}),
        json!({"include_initial": "true"}),
        json!({"include_states": null}),
        json!({"include_types": 0}),
        json!({"include_offsets": {}}),
        json!({"includeInitial": true}),
        json!({"Include_Initial": true}),
        json!({"include_initial": true, "bogus": 1}),
        json!({"squash": 0.1, "queue": 3}),
        json!({"resume_from": "1-0"}),
        json!({"changefeed_queue_size": 10}),
    ];
    for v in &bad_json {
        let r = std::panic::catch_unwind(|| FeedOptions::from_json(v));
        match r {
            Ok(Err(Error::InvalidFeedOption(_))) => {}
            other => panic!("{v}: expected InvalidFeedOption, got {other:?}"),
        }
    }
    // Accepted edge values.
    for (v, squash) in [
        (json!({"squash": 0}), Squash::Window(0.0)),
        (json!({"squash": -0.0}), Squash::Window(-0.0)),
        (json!({"squash": 1e308}), Squash::Window(1e308)),
        (json!({"squash": u64::MAX}), Squash::Window(u64::MAX as f64)),
        (json!({"squash": true}), Squash::Merge),
        (json!({"squash": false}), Squash::Off),
    ] {
        let o = FeedOptions::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(o.squash, squash, "{v}");
        // And a feed opens with them, and delivers.
        let mut f = t.changes().options(o).queue_size(8).await.unwrap();
        t.insert(json!({"id": 900}))
            .conflict(Conflict::Replace)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), f.next()).await;
        assert!(matches!(got, Ok(Some(Ok(_)))), "{v}: {got:?}");
        t.get(900).delete().await.unwrap();
    }
    // A huge queue: no allocation of it, no overflow arithmetic panic.
    let o =
        FeedOptions::from_json(&json!({"queue_size": u64::MAX, "include_initial": true})).unwrap();
    for squash in [false, true] {
        let mut f = t.changes().options(o.clone()).squash(squash).await.unwrap();
        common_drain(&mut f);
        for i in 0..50 {
            t.insert(json!({"id": 1000 + i})).await.unwrap();
        }
        let n = common_drain(&mut f)
            .into_iter()
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(n, 50, "squash {squash}");
        t.between(Bound::Included(json!(1000)), Bound::Unbounded)
            .delete()
            .await
            .unwrap();
        common_drain(&mut f);
    }
    // Options set through the struct (the same checks as the builders), on every kind.
    let kinds = kinds(&db);
    let mut bad: Vec<(String, FeedOptions)> = Vec::new();
    for (what, squash) in [
        ("NaN", Squash::Window(f64::NAN)),
        ("-inf", Squash::Window(f64::NEG_INFINITY)),
        ("+inf", Squash::Window(f64::INFINITY)),
        ("-1", Squash::Window(-1.0)),
        ("-tiny", Squash::Window(-f64::MIN_POSITIVE)),
    ] {
        let mut o = FeedOptions::default();
        o.squash = squash;
        bad.push((format!("squash {what}"), o));
    }
    let mut o = FeedOptions::default();
    o.queue_size = Some(0);
    bad.push(("queue_size 0".into(), o));
    for k in &kinds {
        for (what, o) in &bad {
            let r = (k.changes)().options(o.clone()).await;
            assert!(
                matches!(r, Err(Error::InvalidFeedOption(_))),
                "{} with {what}: {:?}",
                k.name,
                r.err()
            );
        }
        // Builders.
        for (what, c) in [
            ("queue_size(0)", (k.changes)().queue_size(0)),
            ("squash_window(NaN)", (k.changes)().squash_window(f64::NAN)),
            ("squash_window(-1)", (k.changes)().squash_window(-1.0)),
        ] {
            let r = c.await;
            assert!(
                matches!(r, Err(Error::InvalidFeedOption(_))),
                "{} {what}: {:?}",
                k.name,
                r.err()
            );
        }
        // include_offsets on anything but top-N.
        if !k.top_n {
            let r = (k.changes)().include_offsets(true).await;
            assert!(
                matches!(r, Err(Error::InvalidFeedOption(_))),
                "{} offsets: {:?}",
                k.name,
                r.err()
            );
            let o = FeedOptions::from_json(&json!({"include_offsets": true})).unwrap();
            let r = (k.changes)().options(o).await;
            assert!(
                matches!(r, Err(Error::InvalidFeedOption(_))),
                "{} offsets (json): {:?}",
                k.name,
                r.err()
            );
        }
        // resume_from with include_initial exclude each other (or the kind cannot resume).
        let r = (k.changes)()
            .include_initial(true)
            .resume_from(db.position())
            .await;
        assert!(
            matches!(
                r,
                Err(Error::InvalidFeedOption(_)) | Err(Error::Unwatchable(_))
            ),
            "{} resume+initial: {:?}",
            k.name,
            r.err()
        );
    }
    // The stats feed too.
    let r = db.stats().changes().squash_window(f64::NAN).await;
    assert!(
        matches!(r, Err(Error::InvalidFeedOption(_))),
        "{:?}",
        r.err()
    );
    let r = db.stats().changes().queue_size(0).await;
    assert!(
        matches!(r, Err(Error::InvalidFeedOption(_))),
        "{:?}",
        r.err()
    );
}
