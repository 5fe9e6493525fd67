//! An adversarial, oracle-checked attack on the *stateful* feeds (top-N, live aggregates,
//! live joins) across several app processes on PostgreSQL (`src/feed/ops/topn.rs`,
//! `aggregate.rs`, `join.rs`, fed by `src/postgres/replica.rs`).
//!
//! - **Every commit, every process** (`stateful_feeds_match_every_commit_across_processes`).
//!   Handles A (2 writer tasks) and B (1) write two tables, `l` (left) and `r` (right), with
//!   random upserts, partial updates, replaces, deletes, `insert_many` chunks, multi-table
//!   batches (a left row's join key and its right row in one commit, a key written twice in
//!   one batch), `update_where` moving a whole group and `delete_where`. Field values include
//!   the edge cases: missing, `null`, arrays, objects, 3,000-byte strings, `"1"` / `1` / `1.0`,
//!   `3` / `3.0` as join keys, an array primary key, 2^53 + 1, ties in the ordering, numeric
//!   and string primary keys mixed. Handle C holds, from before the storm, the table feeds
//!   of `l` and `r` (the oracle's commit stream: the state after every commit) and the feeds
//!   under attack: top 5 by index `n` desc (with offsets), top 4 asc of a filter, group
//!   count / sum / max, an ungrouped count, a primary-key join and an index join, plus
//!   squashing copies. Handle D starts mid-storm and opens the same feeds (initial rows
//!   from its own replica). The oracle: each feed's initial state equals the result
//!   computed from the commit stream at its snapshot, and after *every* commit (the items
//!   sharing one `Change::seq`) the feed's replayed state equals the result computed at
//!   that commit (so no item reflects a state that was never committed, none is missing);
//!   top-N lists are replayed by their offsets and compared in order; at the end every feed
//!   equals the query re-run, in C, D and a fresh process E.
//! - **Cursors**: a cursor of a top-N item taken in C mid-storm, resumed as a row feed in D
//!   (started later) and in E (started after the storm: the shared history): exactly C's
//!   table feed after it. Resuming a top-N, aggregate or join feed is refused with
//!   `Unwatchable`, as the docs say (`Changes::resume_from`), in every process.
//! - **DDL under the feeds** (`ddl_under_stateful_feeds_from_another_process`): the index a
//!   top-N and a live max read is dropped by another process, then the right table of two
//!   joins is dropped and re-created (with a new incarnation's rows), then a right index is
//!   dropped: the affected feeds end with `FeedAborted` in every process (never show a row
//!   of the new incarnation), the unaffected count goes on and equals the query.
//! - **group_by_index and its index** (`group_by_index_feed_when_its_index_is_dropped`):
//!   a live `group_by_index(..).count()` while another process drops that index and
//!   re-creates it on another field.
#![cfg(feature = "postgres")]

mod pg_attack;

use futures::StreamExt;
use pg_attack::{assert_no_failures, database, seed, Rng};
use remodel::postgres::Connect;
use remodel::value::{decode_value, encode_key, encode_value};
use remodel::{field, Change, ChangeKind, Conflict, Cursor, Database, Error, IndexSpec, Order};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An item as compared: its commit, its place in the commit, and its old and new values.
type Shown = (Option<u64>, Option<u32>, Option<Value>, Option<Value>);

const STORM: Duration = Duration::from_secs(10);
const HANG: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------
// Feed collection

#[derive(Clone, Debug)]
struct Item {
    kind: ChangeKind,
    seq: Option<u64>,
    pos: Option<u32>,
    cursor: Option<Cursor>,
    old: Option<Value>,
    new: Option<Value>,
    old_off: Option<usize>,
    new_off: Option<usize>,
}

fn item(c: &Change) -> Item {
    Item {
        kind: c.kind(),
        seq: c.seq(),
        pos: c.position_in_commit(),
        cursor: c.cursor(),
        old: c.old_val().cloned(),
        new: c.new_val().cloned(),
        old_off: c.old_offset(),
        new_off: c.new_offset(),
    }
}

#[derive(Debug, Default)]
struct Collected {
    items: Vec<Item>,
    end: Option<String>,
    aborted: bool,
    snapshot: Option<u64>,
}

/// Reads `feed` until `drain` is set and it stays idle for [`IDLE`], or it ends.
async fn collect(
    mut feed: remodel::Feed,
    drain: Arc<AtomicBool>,
    shared: Option<Arc<Mutex<Vec<Item>>>>,
) -> Collected {
    let mut out = Collected {
        snapshot: feed.snapshot_seq(),
        ..Collected::default()
    };
    let mut last = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
            Ok(Some(Ok(c))) => {
                last = Instant::now();
                if c.kind() == ChangeKind::State {
                    continue;
                }
                let it = item(&c);
                if let Some(s) = &shared {
                    s.lock().unwrap().push(it.clone());
                }
                out.items.push(it);
            }
            Ok(Some(Err(e))) => {
                if matches!(e, Error::FeedOverflow { .. }) {
                    out.end = Some(format!("overflow: {e}"));
                    return out;
                }
                out.aborted = matches!(e, Error::FeedAborted(_));
                out.end = Some(format!("{e} ({e:?})"));
                return out;
            }
            Ok(None) => {
                out.end = Some("the feed ended without an error".into());
                return out;
            }
            Err(_) => {
                if drain.load(Ordering::Relaxed) && last.elapsed() > IDLE {
                    return out;
                }
                if !drain.load(Ordering::Relaxed) && last.elapsed() > HANG * 2 {
                    out.end = Some("HANG".into());
                    return out;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The model: tables keyed by the encoding of their primary key

type Rows = BTreeMap<Vec<u8>, Value>;

#[derive(Clone, Default)]
struct Model {
    l: Rows,
    r: Rows,
}

fn pk(doc: &Value) -> Vec<u8> {
    encode_value(&doc["id"])
}

fn present<'a>(doc: &'a Value, f: &str) -> Option<&'a Value> {
    doc.as_object().and_then(|m| m.get(f))
}

fn shown_group(v: &Value) -> Value {
    decode_value(&encode_value(v)).map(|(v, _)| v).unwrap()
}

/// The feeds under attack, by name.
const FEEDS: &[&str] = &[
    "top5", "top4f", "count_g", "sum_w", "max_n", "count", "join_r", "join_s",
];
const SQUASHED: &[&str] = &["top5_sq", "count_g_sq", "join_r_sq"];

fn base_name(name: &str) -> &str {
    name.strip_suffix("_sq").unwrap_or(name)
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    List,
    Keyed,
    Single,
    Multiset,
}

fn shape(name: &str) -> Shape {
    match base_name(name) {
        "top5" | "top4f" => Shape::List,
        "count_g" | "sum_w" | "max_n" => Shape::Keyed,
        "count" => Shape::Single,
        _ => Shape::Multiset,
    }
}

fn top(l: &Rows, desc: bool, limit: usize, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut rows: Vec<(Vec<u8>, Vec<u8>, &Value)> = l
        .iter()
        .filter_map(|(k, d)| match present(d, "n") {
            None | Some(Value::Null) => None,
            Some(n) => keep(d).then(|| (encode_value(n), k.clone(), d)),
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    if desc {
        rows.reverse();
    }
    rows.into_iter().take(limit).map(|r| r.2.clone()).collect()
}

fn grouped(l: &Rows, mut reduce: impl FnMut(&[&Value]) -> Value) -> Vec<Value> {
    let mut groups: BTreeMap<Vec<u8>, (Value, Vec<&Value>)> = BTreeMap::new();
    for d in l.values() {
        let g = present(d, "g").cloned().unwrap_or(Value::Null);
        groups
            .entry(encode_value(&g))
            .or_insert_with(|| (shown_group(&g), Vec::new()))
            .1
            .push(d);
    }
    groups
        .into_values()
        .map(|(g, rows)| json!({"group": g, "reduction": reduce(&rows)}))
        .collect()
}

fn sorted_multiset(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

fn pair(l: &Value, r: &Value) -> Value {
    let mut m = Map::new();
    m.insert("left".into(), l.clone());
    m.insert("right".into(), r.clone());
    Value::Object(m)
}

/// The result of feed `name` over the model, in its comparable form.
fn result(m: &Model, name: &str) -> Vec<Value> {
    let gt50 =
        |d: &Value| present(d, "w").is_some_and(|w| encode_value(w) > encode_value(&json!(50)));
    match base_name(name) {
        "top5" => top(&m.l, true, 5, |_| true),
        "top4f" => top(&m.l, false, 4, gt50),
        "count_g" => grouped(&m.l, |rows| json!(rows.len())),
        "sum_w" => grouped(&m.l, |rows| {
            let s: f64 = rows
                .iter()
                .filter_map(|d| present(d, "w").and_then(Value::as_f64))
                .sum();
            json!(s)
        }),
        "max_n" => grouped(&m.l, |rows| {
            let mut best: Option<(Vec<u8>, Vec<u8>, &Value)> = None;
            for d in rows {
                let Some(n) = present(d, "n") else { continue };
                let (v, k) = (encode_value(n), pk(d));
                let better = match &best {
                    None => true,
                    Some((bv, bk, _)) => v > *bv || (v == *bv && k < *bk),
                };
                if better {
                    best = Some((v, k, d));
                }
            }
            best.map_or(Value::Null, |b| b.2.clone())
        }),
        "count" => vec![json!(m.l.len())],
        "join_r" => {
            let mut out = Vec::new();
            for d in m.l.values() {
                let Some(v) = present(d, "r") else { continue };
                let Ok(k) = encode_key(v) else { continue };
                if let Some(r) = m.r.get(&k) {
                    out.push(pair(d, r));
                }
            }
            sorted_multiset(out)
        }
        "join_s" => {
            let mut out = Vec::new();
            for d in m.l.values() {
                let Some(v) = present(d, "s") else { continue };
                let e = encode_value(v);
                for r in m.r.values() {
                    match present(r, "tag") {
                        None | Some(Value::Null) => {}
                        Some(t) if encode_value(t) == e => out.push(pair(d, r)),
                        _ => {}
                    }
                }
            }
            sorted_multiset(out)
        }
        other => unreachable!("{other}"),
    }
}

/// The state a feed's items build, in the comparable form of [`result`].
struct Replay {
    shape: Shape,
    list: Vec<Value>,
    keyed: BTreeMap<Vec<u8>, Value>,
}

impl Replay {
    fn new(shape: Shape) -> Self {
        Replay {
            shape,
            list: Vec::new(),
            keyed: BTreeMap::new(),
        }
    }

    fn gkey(v: &Value) -> Vec<u8> {
        encode_value(&v["group"])
    }

    fn initial(&mut self, v: &Value) {
        match self.shape {
            Shape::Keyed => {
                self.keyed.insert(Self::gkey(v), v.clone());
            }
            Shape::Single => self.list = vec![v.clone()],
            _ => self.list.push(v.clone()),
        }
    }

    /// Applies one item; an error says why it does not apply to the state.
    fn apply(&mut self, it: &Item) -> Result<(), String> {
        match self.shape {
            Shape::List => {
                if let Some(old) = &it.old {
                    let at = it.old_off.ok_or("an old_val without old_offset")?;
                    match self.list.get(at) {
                        Some(v) if v == old => {
                            self.list.remove(at);
                        }
                        other => {
                            return Err(format!(
                                "old_offset {at} holds {other:?}, not the old_val {old}"
                            ))
                        }
                    }
                }
                if let Some(new) = &it.new {
                    let at = it.new_off.ok_or("a new_val without new_offset")?;
                    if at > self.list.len() {
                        return Err(format!(
                            "new_offset {at} past the list's end {}",
                            self.list.len()
                        ));
                    }
                    self.list.insert(at, new.clone());
                }
            }
            Shape::Keyed => {
                if let Some(old) = &it.old {
                    match self.keyed.remove(&Self::gkey(old)) {
                        Some(v) if v == *old => {}
                        other => {
                            return Err(format!("old_val {old} but the feed showed {other:?}"))
                        }
                    }
                }
                if let Some(new) = &it.new {
                    if let Some(prev) = self.keyed.insert(Self::gkey(new), new.clone()) {
                        return Err(format!("new_val {new} over {prev} the feed showed"));
                    }
                }
            }
            Shape::Single => {
                if it.old.as_ref() != self.list.first() {
                    return Err(format!(
                        "old_val {:?} but the feed showed {:?}",
                        it.old,
                        self.list.first()
                    ));
                }
                self.list = it.new.iter().cloned().collect();
            }
            Shape::Multiset => {
                if let Some(old) = &it.old {
                    match self.list.iter().position(|v| v == old) {
                        Some(i) => {
                            self.list.swap_remove(i);
                        }
                        None => return Err(format!("old_val {old}: no such pair shown")),
                    }
                }
                if let Some(new) = &it.new {
                    self.list.push(new.clone());
                }
            }
        }
        Ok(())
    }

    fn state(&self) -> Vec<Value> {
        match self.shape {
            Shape::Keyed => self.keyed.values().cloned().collect(),
            Shape::Multiset => sorted_multiset(self.list.clone()),
            _ => self.list.clone(),
        }
    }
}

fn short(v: &[Value]) -> String {
    let s = serde_json::to_string(v).unwrap();
    let s = s.replace(&"x".repeat(3000), "<LONG>");
    if s.len() > 1500 {
        format!("{}...", &s[..1500])
    } else {
        s
    }
}

/// One commit of `l` / `r`: (position in commit, table, old, new).
type CommitChanges = Vec<(u32, char, Option<Value>, Option<Value>)>;

/// The commits of the two table feeds, merged by position.
fn commits_of(
    l: &Collected,
    r: &Collected,
    failures: &mut Vec<String>,
) -> Vec<(u64, CommitChanges)> {
    let mut by: BTreeMap<u64, CommitChanges> = BTreeMap::new();
    for (t, c) in [('l', l), ('r', r)] {
        for it in c.items.iter().filter(|i| i.kind != ChangeKind::Initial) {
            match (it.seq, it.pos) {
                (Some(s), Some(p)) => {
                    by.entry(s)
                        .or_default()
                        .push((p, t, it.old.clone(), it.new.clone()))
                }
                _ => failures.push(format!("table feed {t}: a change without a position")),
            }
        }
    }
    by.into_iter()
        .map(|(s, mut ch)| {
            ch.sort_by_key(|c| c.0);
            (s, ch)
        })
        .collect()
}

fn apply_commit(m: &mut Model, changes: &CommitChanges, failures: &mut Vec<String>, seq: u64) {
    for (_, t, old, new) in changes {
        let rows = if *t == 'l' { &mut m.l } else { &mut m.r };
        if let Some(o) = old {
            let shown = rows.remove(&pk(o));
            if shown.as_ref() != Some(o) {
                failures.push(format!(
                    "model: table {t} at {seq:x}: old_val {o} but the table feed showed {shown:?}"
                ));
            }
        }
        if let Some(n) = new {
            rows.insert(pk(n), n.clone());
        }
    }
}

/// Checks a feed against the model at its snapshot and after every commit.
fn check_feed(
    label: &str,
    name: &str,
    got: &Collected,
    base: &Model,
    commits: &[(u64, CommitChanges)],
    per_commit: bool,
    failures: &mut Vec<String>,
) -> Vec<Value> {
    let mut replay = Replay::new(shape(name));
    let mut model = base.clone();
    let snap = got.snapshot.unwrap_or(0);
    let mut ci = 0;
    while ci < commits.len() && commits[ci].0 <= snap {
        let mut sink = Vec::new();
        apply_commit(&mut model, &commits[ci].1, &mut sink, commits[ci].0);
        ci += 1;
    }
    let mut items = got.items.iter().peekable();
    while let Some(it) = items.peek() {
        if it.kind != ChangeKind::Initial {
            break;
        }
        if let Some(v) = &it.new {
            replay.initial(v);
        }
        items.next();
    }
    let want = result(&model, name);
    if replay.state() != want {
        failures.push(format!(
            "{label}: initial state (snapshot {snap:x}) differs from the result at that commit:\n  \
             feed  {}\n  model {}",
            short(&replay.state()),
            short(&want)
        ));
        return replay.state();
    }
    if !per_commit {
        // A squashing feed: items of different rows come in no particular order, each with
        // the position of its last change; only the state they build is checked.
        for it in items {
            if let Err(e) = replay.apply(it) {
                failures.push(format!("{label}: a squashed item does not apply: {e}"));
                break;
            }
        }
        return replay.state();
    }
    let last_item_seq = got.items.last().and_then(|i| i.seq);
    let mut prev_seq: Option<u64> = None;
    let mut out_of_order: Vec<(u64, Vec<Option<u32>>)> = Vec::new();
    let mut reported = false;
    for (seq, changes) in &commits[ci..] {
        if got.end.is_some() && last_item_seq.is_none_or(|s| *seq > s) {
            break; // the feed ended: checked up to its last item
        }
        let mut sink = Vec::new();
        apply_commit(&mut model, changes, &mut sink, *seq);
        // The feed's items of commits before this one with no table change here.
        while let Some(it) = items.peek() {
            let s = it.seq.unwrap_or(0);
            if s >= *seq {
                break;
            }
            failures.push(format!(
                "{label}: an item at {s:x}, a commit with no change of l or r: {it:?}"
            ));
            items.next();
        }
        let mut positions = Vec::new();
        while let Some(it) = items.peek() {
            if it.seq != Some(*seq) {
                break;
            }
            if let Some(p) = prev_seq {
                if p > *seq {
                    failures.push(format!("{label}: positions go back"));
                }
            }
            positions.push(it.pos);
            if let Err(e) = replay.apply(it) {
                if !reported {
                    failures.push(format!(
                        "{label}: item at {seq:x} does not apply: {e}\n  item {:?} -> {:?}",
                        it.old, it.new
                    ));
                    reported = true;
                }
            }
            items.next();
        }
        prev_seq = Some(*seq);
        if per_commit && !reported {
            let want = result(&model, name);
            let have = replay.state();
            if have != want {
                failures.push(format!(
                    "{label}: after commit {seq:x} ({} changes: {}) the feed's state differs \
                     from the committed result:\n  feed  {}\n  model {}",
                    changes.len(),
                    short(
                        &changes
                            .iter()
                            .map(|c| json!([c.0, c.1.to_string(), c.2, c.3]))
                            .collect::<Vec<_>>()
                    ),
                    short(&have),
                    short(&want)
                ));
                reported = true;
            }
        }
        if !positions.windows(2).all(|w| w[0] <= w[1]) {
            out_of_order.push((*seq, positions));
        }
    }
    // (Join items of a commit that wrote both tables came table by table, out of this order:
    // fixed, `hub/publish.rs` applies a join's changes of such a commit together.)
    if let Some((seq, positions)) = out_of_order.first() {
        failures.push(format!(
            "{label}: in {} commits the items come out of position_in_commit order (the \
             docs: items come in commit order, position_in_commit orders the items of one \
             commit), first commit {seq:x}: {positions:?}",
            out_of_order.len()
        ));
    }
    for it in items {
        failures.push(format!("{label}: an item after every known commit: {it:?}"));
    }
    replay.state()
}

// ---------------------------------------------------------------------------------------
// Feeds and queries

async fn open_feed(db: &Database, name: &str) -> remodel::Result<remodel::Feed> {
    let l = db.table("l");
    let changes = match base_name(name) {
        "top5" => l
            .order_by(Order::index("n").desc())
            .limit(5)
            .changes()
            .include_offsets(true),
        "top4f" => l
            .order_by(Order::index("n"))
            .filter(field("w").gt(50))
            .limit(4)
            .changes()
            .include_offsets(true),
        "count_g" => l.query().group("g").count().changes(),
        "sum_w" => l.query().group("g").sum("w").changes(),
        "max_n" => l.query().group("g").max("n").changes(),
        "count" => l.query().count().changes(),
        "join_r" => l.query().eq_join("r", "r").changes(),
        "join_s" => l.query().eq_join("s", "r").index("tag").changes(),
        other => unreachable!("{other}"),
    };
    let squash = name.ends_with("_sq");
    changes.include_initial(true).squash(squash).await
}

/// The query of a feed, re-run, in the comparable form.
async fn rerun(db: &Database, name: &str) -> Result<Vec<Value>, String> {
    let l = db.table("l");
    let e = |e: Error| e.to_string();
    let groups = |g: Vec<remodel::Group>| -> Vec<Value> {
        g.into_iter()
            .map(|g| json!({"group": g.group, "reduction": g.reduction}))
            .collect()
    };
    Ok(match base_name(name) {
        "top5" => l
            .order_by(Order::index("n").desc())
            .limit(5)
            .run()
            .await
            .map_err(e)?,
        "top4f" => l
            .order_by(Order::index("n"))
            .filter(field("w").gt(50))
            .limit(4)
            .run()
            .await
            .map_err(e)?,
        "count_g" => groups(l.query().group("g").count().await.map_err(e)?),
        "sum_w" => groups(l.query().group("g").sum("w").await.map_err(e)?),
        "max_n" => groups(l.query().group("g").max("n").await.map_err(e)?),
        "count" => vec![json!(l.query().count().await.map_err(e)?)],
        "join_r" => sorted_multiset(l.query().eq_join("r", "r").run().await.map_err(e)?),
        "join_s" => sorted_multiset(
            l.query()
                .eq_join("s", "r")
                .index("tag")
                .run()
                .await
                .map_err(e)?,
        ),
        other => unreachable!("{other}"),
    })
}

// ---------------------------------------------------------------------------------------
// The storm's values

fn long(k: u64) -> String {
    format!("{}{k}", "x".repeat(3000))
}

fn l_ids() -> Vec<Value> {
    let mut ids: Vec<Value> = (0..18).map(|i| json!(format!("l{i:02}"))).collect();
    ids.extend((1..=4).map(|i| json!(i)));
    ids
}

fn r_ids() -> Vec<Value> {
    let mut ids: Vec<Value> = (0..8).map(|i| json!(format!("r{i}"))).collect();
    ids.push(json!(3));
    ids.push(json!(["r1"]));
    ids
}

/// A value for field `f` of a left row, or `None`: the field is missing.
fn gen_l_field(rng: &mut Rng, f: &str) -> Option<Value> {
    let x = rng.below(100);
    Some(match f {
        "g" => match x {
            0..=64 => json!(rng.below(4)),
            65..=69 => json!(1.0),
            70..=73 => json!("1"),
            74..=77 => Value::Null,
            78..=81 => return None,
            82..=84 => json!([1, 2]),
            85..=87 => json!({"a": 1}),
            88..=91 => json!(long(rng.below(2))),
            92..=95 => json!(9_007_199_254_740_993u64),
            _ => json!(-0.5),
        },
        "n" => match x {
            0..=69 => json!(rng.below(12)),
            70..=73 => json!(1.5),
            74..=77 => Value::Null,
            78..=81 => return None,
            82..=84 => json!(format!("s{}", rng.below(3))),
            85..=86 => json!([3]),
            87..=88 => json!({"k": 1}),
            89..=90 => json!(long(0)),
            _ => json!(11.0),
        },
        "w" => match x {
            0..=74 => json!(rng.below(100)),
            75..=84 => json!(rng.below(100) as f64 / 2.0),
            85..=92 => Value::Null,
            _ => return None,
        },
        "r" => match x {
            0..=69 => json!(format!("r{}", rng.below(8))),
            70..=74 => json!(3),
            75..=77 => json!(3.0),
            78..=81 => json!(["r1"]),
            82..=85 => Value::Null,
            86..=89 => return None,
            90..=93 => json!({"o": 1}),
            _ => json!("r99"),
        },
        "s" => match x {
            0..=69 => json!(format!("t{}", rng.below(5))),
            70..=74 => Value::Null,
            75..=79 => return None,
            80..=84 => json!(["t1"]),
            85..=88 => json!(long(0)),
            89..=94 => json!(2),
            _ => json!({"x": 1}),
        },
        _ => unreachable!(),
    })
}

fn gen_tag(rng: &mut Rng) -> Option<Value> {
    Some(match rng.below(100) {
        0..=64 => json!(format!("t{}", rng.below(5))),
        65..=69 => Value::Null,
        70..=74 => return None,
        75..=79 => json!(["t1"]),
        80..=84 => json!(long(0)),
        85..=92 => json!(2.0),
        _ => json!({"x": 1}),
    })
}

fn gen_l(rng: &mut Rng, id: &Value, c: u64) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), id.clone());
    m.insert("c".into(), json!(c));
    for f in ["g", "n", "w", "r", "s"] {
        if let Some(v) = gen_l_field(rng, f) {
            m.insert(f.into(), v);
        }
    }
    Value::Object(m)
}

fn gen_r(rng: &mut Rng, id: &Value, c: u64) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), id.clone());
    m.insert("c".into(), json!(c));
    m.insert("v".into(), json!(rng.below(1000)));
    if let Some(t) = gen_tag(rng) {
        m.insert("tag".into(), t);
    }
    Value::Object(m)
}

fn pick(rng: &mut Rng, v: &[Value]) -> Value {
    v[rng.below(v.len() as u64) as usize].clone()
}

/// A storm writer; returns (writes acknowledged, errors by message).
async fn writer(
    db: Database,
    seed: u64,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (u64, BTreeMap<String, u64>) {
    let mut rng = Rng(seed);
    let (lids, rids) = (l_ids(), r_ids());
    let (l, r) = (db.table("l"), db.table("r"));
    let mut acked = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let c = counter.fetch_add(1, Ordering::SeqCst);
        let x = rng.below(100);
        let lid = pick(&mut rng, &lids);
        let rid = pick(&mut rng, &rids);
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = remodel::Result<_>> + Send>> =
            match x {
                0..=21 => l
                    .insert(gen_l(&mut rng, &lid, c))
                    .conflict(Conflict::Replace)
                    .into_future(),
                22..=41 => {
                    let f = ["g", "n", "w", "r", "s"][rng.below(5) as usize];
                    let v = gen_l_field(&mut rng, f).unwrap_or(Value::Null);
                    l.get(lid.clone())
                        .update(json!({ f: v, "c": c }))
                        .into_future()
                }
                42..=45 => l
                    .get(lid.clone())
                    .replace(gen_l(&mut rng, &lid, c))
                    .into_future(),
                46..=52 => l.get(lid.clone()).delete().into_future(),
                53..=59 => r
                    .insert(gen_r(&mut rng, &rid, c))
                    .conflict(Conflict::Replace)
                    .into_future(),
                60..=65 => {
                    let t = gen_tag(&mut rng).unwrap_or(Value::Null);
                    r.get(rid.clone())
                        .update(json!({"tag": t, "v": rng.below(1000), "c": c}))
                        .into_future()
                }
                66..=68 => r.get(rid.clone()).delete().into_future(),
                69..=82 => {
                    // Both tables in one commit: a left row's join keys and its right rows.
                    let mut b = db.batch();
                    let mut ops = 2 + rng.below(4);
                    let first_l = lid.clone();
                    while ops > 0 {
                        ops -= 1;
                        b = match rng.below(7) {
                            0 => {
                                b.insert_with("l", gen_l(&mut rng, &first_l, c), Conflict::Replace)
                            }
                            1 => b.insert_with("r", gen_r(&mut rng, &rid, c), Conflict::Replace),
                            2 => b.delete("r", pick(&mut rng, &rids)),
                            3 => b.delete("l", pick(&mut rng, &lids)),
                            4 => {
                                let other = pick(&mut rng, &lids);
                                b.insert_with("l", gen_l(&mut rng, &other, c), Conflict::Replace)
                            }
                            5 => {
                                let f = if rng.chance(50) { "r" } else { "s" };
                                let v = gen_l_field(&mut rng, f).unwrap_or(Value::Null);
                                b.insert_with(
                                    "l",
                                    {
                                        let mut d = gen_l(&mut rng, &first_l, c);
                                        d[f] = v;
                                        d
                                    },
                                    Conflict::Replace,
                                )
                            }
                            _ => {
                                let other = pick(&mut rng, &rids);
                                b.insert_with("r", gen_r(&mut rng, &other, c), Conflict::Replace)
                            }
                        };
                    }
                    b.into_future()
                }
                83..=88 => {
                    let n = 2 + rng.below(5);
                    let docs: Vec<Value> = (0..n)
                        .map(|_| {
                            let id = pick(&mut rng, &lids);
                            gen_l(&mut rng, &id, c)
                        })
                        .collect();
                    l.insert_many(docs)
                        .conflict(Conflict::Replace)
                        .into_future()
                }
                89..=94 => {
                    // A whole group moves at once.
                    let from = rng.below(4);
                    let to = gen_l_field(&mut rng, "g").unwrap_or(Value::Null);
                    db.batch()
                        .update_where(&l.filter(field("g").eq(from)), json!({"g": to, "c": c}))
                        .into_future()
                }
                _ => {
                    let n = rng.below(12);
                    db.batch()
                        .delete_where(&l.filter(field("n").eq(n)))
                        .into_future()
                }
            };
        match tokio::time::timeout(HANG, fut).await {
            Ok(Ok(_)) => acked += 1,
            Ok(Err(e)) => {
                let msg = format!("{e:?}");
                let msg: String = msg.chars().take(60).collect();
                *errors.entry(msg).or_default() += 1;
            }
            Err(_) => *errors.entry("HANG".into()).or_default() += 1,
        }
    }
    (acked, errors)
}

fn spawn_feeds(
    db: &Database,
    names: &[&'static str],
    drain: &Arc<AtomicBool>,
) -> Vec<(
    &'static str,
    tokio::task::JoinHandle<Result<Collected, String>>,
)> {
    names
        .iter()
        .map(|name| {
            let (db, drain, name) = (db.clone(), drain.clone(), *name);
            (
                name,
                tokio::spawn(async move {
                    match open_feed(&db, name).await {
                        Ok(f) => Ok(collect(f, drain, None).await),
                        Err(e) => Err(format!("{e} ({e:?})")),
                    }
                }),
            )
        })
        .collect()
}

async fn resumed_is_refused(db: &Database, cursor: Cursor, who: &str, failures: &mut Vec<String>) {
    let l = db.table("l");
    let attempts: Vec<(&str, remodel::Changes)> = vec![
        (
            "top5",
            l.order_by(Order::index("n").desc()).limit(5).changes(),
        ),
        ("count_g", l.query().group("g").count().changes()),
        ("count", l.query().count().changes()),
        ("max_n", l.query().group("g").max("n").changes()),
        ("join_r", l.query().eq_join("r", "r").changes()),
        ("join_s", l.query().eq_join("s", "r").index("tag").changes()),
    ];
    for (name, ch) in attempts {
        let r = tokio::time::timeout(HANG, ch.resume_from(cursor).into_future()).await;
        match r {
            Err(_) => failures.push(format!("{who}: resuming {name} hung")),
            Ok(Ok(_)) => failures.push(format!(
                "{who}: resuming {name} from {cursor} was accepted; the docs say top-N, \
                 aggregate and join feeds are refused (Unwatchable)"
            )),
            Ok(Err(Error::Unwatchable(_))) => {}
            Ok(Err(e)) => failures.push(format!(
                "{who}: resuming {name} from {cursor} failed with {e:?}, not Unwatchable"
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_feeds_match_every_commit_across_processes() {
    let Some(pg) = database("stateful_feeds_match_every_commit_across_processes").await else {
        return;
    };
    let seed = seed("LIVE_OPS_SEED");
    let t0 = Instant::now();
    let a = Connect::new(pg.url())
        .connections(4)
        .open()
        .await
        .expect("a connects");
    a.create_table("l").await.unwrap();
    a.create_table("r").await.unwrap();
    a.table("l")
        .create_index("n", IndexSpec::field("n"))
        .await
        .unwrap();
    a.table("r")
        .create_index("tag", IndexSpec::field("tag"))
        .await
        .unwrap();
    let mut rng = Rng(seed ^ 0x5EED);
    let lrows: Vec<Value> = l_ids().iter().map(|id| gen_l(&mut rng, id, 0)).collect();
    let rrows: Vec<Value> = r_ids().iter().map(|id| gen_r(&mut rng, id, 0)).collect();
    a.table("l").insert_many(lrows).await.unwrap();
    a.table("r").insert_many(rrows).await.unwrap();
    let b = Database::connect(pg.url()).await.expect("b connects");
    let c = Database::connect(pg.url()).await.expect("c connects");
    for db in [&b, &c] {
        db.sync().await.unwrap();
    }

    // C's feeds, all opened before the storm.
    let drain = Arc::new(AtomicBool::new(false));
    let tables: Vec<_> = ["l", "r"]
        .iter()
        .map(|t| {
            let (c, drain) = (c.clone(), drain.clone());
            let t = t.to_string();
            tokio::spawn(async move {
                let f = c
                    .table(t.as_str())
                    .changes()
                    .include_initial(true)
                    .await
                    .expect("a table feed");
                collect(f, drain, None).await
            })
        })
        .collect();
    // The top-N feed whose cursor is resumed: its items are visible while it runs.
    let top_live = Arc::new(Mutex::new(Vec::new()));
    let mut c_feeds = Vec::new();
    for name in FEEDS.iter().chain(SQUASHED) {
        let feed = open_feed(&c, name).await.expect("a feed opens on C");
        let shared = (*name == "top5").then(|| top_live.clone());
        c_feeds.push((*name, tokio::spawn(collect(feed, drain.clone(), shared))));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The storm.
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for (w, db) in [(0u64, &a), (1, &a), (2, &b)] {
        writers.push(tokio::spawn(writer(
            db.clone(),
            seed ^ (w + 1).wrapping_mul(0xA24B_AED4_963E_E407),
            counter.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(STORM * 3 / 10).await;
    // A cursor from C's top-N feed, mid-storm.
    let early: Option<Cursor> = top_live.lock().unwrap().iter().rev().find_map(|i| i.cursor);
    // D starts mid-storm and opens the same feeds.
    let d = tokio::time::timeout(HANG, Database::connect(pg.url()))
        .await
        .expect("D connects in time")
        .expect("d connects");
    let d_feeds = spawn_feeds(&d, FEEDS, &drain);
    tokio::time::sleep(STORM * 4 / 10).await;
    let late: Option<Cursor> = top_live.lock().unwrap().iter().rev().find_map(|i| i.cursor);
    tokio::time::sleep(STORM * 3 / 10).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in writers {
        let (n, e) = w.await.expect("a writer");
        acked += n;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    println!(
        "storm over after {:?}: {acked} writes acknowledged, errors {errors:?}; cursors early \
         {early:?} late {late:?}",
        t0.elapsed()
    );
    let mut failures = Vec::new();
    if errors.contains_key("HANG") {
        failures.push(format!("writes hung: {errors:?}"));
    }
    for (h, db) in [("A", &a), ("B", &b), ("C", &c), ("D", &d)] {
        if !matches!(tokio::time::timeout(HANG, db.sync()).await, Ok(Ok(()))) {
            failures.push(format!("{h}: sync after the storm failed"));
        }
    }
    // E: a process started after the storm.
    let e = Database::connect(pg.url()).await.expect("e connects");
    e.sync().await.unwrap();
    let e_feeds = spawn_feeds(&e, FEEDS, &drain);

    // Resumed row feeds from the top-N cursors, in D and E; resumed stateful feeds refused.
    let mut resumed = Vec::new();
    for (who, db) in [("D", &d), ("E", &e)] {
        for (when, cur) in [("early", early), ("late", late)] {
            let Some(cur) = cur else { continue };
            match db.table("l").changes().resume_from(cur).await {
                Ok(f) => resumed.push((
                    who,
                    when,
                    cur,
                    Ok(tokio::spawn(collect(f, drain.clone(), None))),
                )),
                Err(err) => resumed.push((who, when, cur, Err(format!("{err:?}")))),
            }
        }
        if let Some(cur) = early {
            resumed_is_refused(db, cur, who, &mut failures).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drain.store(true, Ordering::Relaxed);

    let mut tabs = Vec::new();
    for t in tables {
        tabs.push(t.await.expect("a table feed task"));
    }
    for (t, got) in ["l", "r"].iter().zip(&tabs) {
        if let Some(end) = &got.end {
            failures.push(format!("C's table feed {t} ended: {end}"));
        }
    }
    let commits = commits_of(&tabs[0], &tabs[1], &mut failures);
    let mut base = Model::default();
    for (t, got) in [('l', &tabs[0]), ('r', &tabs[1])] {
        for it in got.items.iter().filter(|i| i.kind == ChangeKind::Initial) {
            let v = it.new.clone().unwrap();
            if t == 'l' {
                base.l.insert(pk(&v), v);
            } else {
                base.r.insert(pk(&v), v);
            }
        }
    }
    let mut final_model = base.clone();
    for (s, ch) in &commits {
        apply_commit(&mut final_model, ch, &mut failures, *s);
    }
    // The model's end state is every process's table.
    for (h, db) in [("C", &c), ("D", &d), ("E", &e)] {
        let lt: Rows = db
            .table("l")
            .run()
            .await
            .unwrap()
            .into_iter()
            .map(|v| (pk(&v), v))
            .collect();
        if lt != final_model.l {
            failures.push(format!("{h}: table l differs from C's table feed replayed"));
        }
    }
    println!(
        "{} commits of l/r seen by C's table feeds; final l {} rows, r {} rows",
        commits.len(),
        final_model.l.len(),
        final_model.r.len()
    );

    let mut all = Vec::new();
    for (name, h) in c_feeds {
        all.push(("C", name, Ok(h.await.expect("a feed task"))));
    }
    for (name, h) in d_feeds.into_iter().chain(e_feeds) {
        let who = if all.iter().filter(|x| x.0 == "D").count() < FEEDS.len() {
            "D"
        } else {
            "E"
        };
        all.push((who, name, h.await.expect("a feed task")));
    }
    for (who, name, got) in &all {
        let label = format!("{who}/{name}");
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{label}: did not open: {e}"));
                continue;
            }
        };
        if let Some(end) = &got.end {
            failures.push(format!("{label}: ended during the storm: {end}"));
        }
        let squashed = name.ends_with("_sq");
        let state = check_feed(&label, name, got, &base, &commits, !squashed, &mut failures);
        let want = result(&final_model, name);
        if got.end.is_none() && state != want {
            failures.push(format!(
                "{label}: the final state differs from the result of the last commit:\n  \
                 feed  {}\n  model {}",
                short(&state),
                short(&want)
            ));
        }
        let db = match *who {
            "C" => &c,
            "D" => &d,
            _ => &e,
        };
        match rerun(db, name).await {
            Ok(q) if q != want => failures.push(format!(
                "{label}: the query re-run differs from the model (the oracle):\n  query {}\n  \
                 model {}",
                short(&q),
                short(&want)
            )),
            Ok(_) => {}
            Err(err) => failures.push(format!("{label}: the query failed: {err}")),
        }
    }

    // The resumed row feeds: exactly C's table feed after the cursor.
    for (who, when, cur, got) in resumed {
        let want: Vec<Shown> = tabs[0]
            .items
            .iter()
            .filter(|i| i.kind != ChangeKind::Initial && i.cursor > Some(cur))
            .map(|i| (i.seq, i.pos, i.old.clone(), i.new.clone()))
            .collect();
        match got {
            Err(err) if err.contains("CursorExpired") => {
                println!("{who}: resume of the {when} cursor refused (typed): {err}")
            }
            Err(err) => failures.push(format!("{who}: resume of the {when} cursor {cur}: {err}")),
            Ok(h) => {
                let got = h.await.expect("a resumed feed task");
                let have: Vec<_> = got
                    .items
                    .iter()
                    .map(|i| (i.seq, i.pos, i.old.clone(), i.new.clone()))
                    .collect();
                if got.end.is_some() || have != want {
                    let n = have.len().min(want.len());
                    let first = (0..n).find(|&i| have[i] != want[i]).unwrap_or(n);
                    failures.push(format!(
                        "{who}: the l feed resumed from C's top-N cursor {cur} ({when}) has {} \
                         items, C's table feed after it {} (end {:?}); first difference at \
                         #{first}: {:?} vs {:?}",
                        have.len(),
                        want.len(),
                        got.end,
                        have.get(first),
                        want.get(first)
                    ));
                }
            }
        }
    }
    println!("checked in {:?}: {} failures", t0.elapsed(), failures.len());
    for f in &failures {
        println!("FAILURE {f}");
    }
    for db in [&a, &b, &c, &d, &e] {
        let _ = db.close().await;
    }
    assert_no_failures(&format!("LIVE_OPS_SEED={seed}"), &failures);
}

// ---------------------------------------------------------------------------------------

/// Reads a feed until it ends or `for_` passes; (items, end).
async fn read_for(feed: &mut remodel::Feed, for_: Duration) -> (Vec<Item>, Option<Error>) {
    let deadline = Instant::now() + for_;
    let mut items = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, feed.next()).await {
            Ok(Some(Ok(c))) => {
                if c.kind() != ChangeKind::State {
                    items.push(item(&c));
                }
            }
            Ok(Some(Err(e))) => return (items, Some(e)),
            Ok(None) => {
                return (
                    items,
                    Some(Error::FeedAborted("ended without error".into())),
                )
            }
            Err(_) => return (items, None),
        }
    }
}

fn replay_keyed(items: &[Item], failures: &mut Vec<String>, label: &str) -> Vec<Value> {
    let mut r = Replay::new(Shape::Keyed);
    for it in items {
        if it.kind == ChangeKind::Initial {
            r.initial(it.new.as_ref().unwrap());
        } else if let Err(e) = r.apply(it) {
            failures.push(format!("{label}: {e}"));
        }
    }
    r.state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_index_feed_when_its_index_is_dropped() {
    let Some(pg) = database("group_by_index_feed_when_its_index_is_dropped").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("gx").await.unwrap();
    let gx = a.table("gx");
    gx.create_index("gi", IndexSpec::field("a")).await.unwrap();
    gx.insert_many((0..12).map(|i| json!({"id": i, "a": i % 3, "b": format!("b{}", i % 2)})))
        .await
        .unwrap();
    let c = Database::connect(pg.url()).await.unwrap();
    let d = Database::connect(pg.url()).await.unwrap();
    let mut feeds = Vec::new();
    for (h, db) in [("A", &a), ("C", &c), ("D", &d)] {
        db.sync().await.unwrap();
        let f = db
            .table("gx")
            .query()
            .group_by_index("gi")
            .count()
            .changes()
            .include_initial(true)
            .await
            .expect("a group_by_index feed");
        feeds.push((h, f));
    }
    // Another process drops the index and makes one of the same name on another field.
    gx.drop_index("gi").await.unwrap();
    gx.create_index("gi", IndexSpec::field("b")).await.unwrap();
    gx.insert_many((12..16).map(|i| json!({"id": i, "a": i % 3, "b": format!("b{}", i % 2)})))
        .await
        .unwrap();
    let mut failures = Vec::new();
    let groups = |g: Vec<remodel::Group>| -> Vec<Value> {
        g.into_iter()
            .map(|g| json!({"group": g.group, "reduction": g.reduction}))
            .collect::<Vec<_>>()
    };
    for (h, mut f) in feeds {
        let db = match h {
            "A" => &a,
            "C" => &c,
            _ => &d,
        };
        db.sync().await.unwrap();
        let (items, end) = read_for(&mut f, Duration::from_secs(3)).await;
        let state = replay_keyed(&items, &mut failures, h);
        let want = groups(
            db.table("gx")
                .query()
                .group_by_index("gi")
                .count()
                .await
                .unwrap(),
        );
        match end {
            Some(Error::FeedAborted(_)) => {}
            Some(e) => failures.push(format!("{h}: the feed ended untyped: {e:?}")),
            None if state != want => failures.push(format!(
                "{h}: the group_by_index(\"gi\") feed went on after `gi` was dropped and made \
                 again on another field, and shows {} while the query shows {}",
                short(&state),
                short(&want)
            )),
            None => {}
        }
        // A feed opened now must show the new index's groups.
        let mut f2 = db
            .table("gx")
            .query()
            .group_by_index("gi")
            .count()
            .changes()
            .include_initial(true)
            .await
            .expect("a new feed");
        let (items, _) = read_for(&mut f2, Duration::from_millis(500)).await;
        let state = replay_keyed(&items, &mut failures, h);
        if state != want {
            failures.push(format!(
                "{h}: a group_by_index(\"gi\") feed opened after the re-create starts with {} \
                 while the query shows {}",
                short(&state),
                short(&want)
            ));
        }
    }
    for db in [&a, &c, &d] {
        let _ = db.close().await;
    }
    assert_no_failures("group_by_index_feed_when_its_index_is_dropped", &failures);
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_under_stateful_feeds_from_another_process() {
    let Some(pg) = database("ddl_under_stateful_feeds_from_another_process").await else {
        return;
    };
    let seed = seed("LIVE_OPS_DDL_SEED");
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("dl").await.unwrap();
    a.create_table("dr").await.unwrap();
    a.table("dl")
        .create_index("n", IndexSpec::field("n"))
        .await
        .unwrap();
    a.table("dr")
        .create_index("tag", IndexSpec::field("tag"))
        .await
        .unwrap();
    a.table("dl")
        .insert_many((0..20).map(|i| {
            json!({"id": format!("l{i:02}"), "g": i % 3, "n": i % 7, "r": format!("r{}", i % 6),
                   "s": format!("t{}", i % 4)})
        }))
        .await
        .unwrap();
    a.table("dr")
        .insert_many(
            (0..6).map(|i| json!({"id": format!("r{i}"), "tag": format!("t{}", i % 4), "inc": 1})),
        )
        .await
        .unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    let c = Database::connect(pg.url()).await.unwrap();
    let d = Database::connect(pg.url()).await.unwrap();
    for db in [&b, &c, &d] {
        db.sync().await.unwrap();
    }
    let names = ["top", "max", "count_g", "join_r", "join_s"];
    let open = |db: Database, name: &'static str| async move {
        let l = db.table("dl");
        let ch = match name {
            "top" => l.order_by(Order::index("n").desc()).limit(4).changes(),
            "max" => l.query().group("g").max("n").changes(),
            "count_g" => l.query().group("g").count().changes(),
            "join_r" => l.query().eq_join("r", "dr").changes(),
            _ => l.query().eq_join("s", "dr").index("tag").changes(),
        };
        ch.include_initial(true).await.expect("a feed opens")
    };
    let mut feeds: Vec<(&str, &str, remodel::Feed)> = Vec::new();
    for (h, db) in [("C", &c), ("D", &d)] {
        for name in names {
            feeds.push((h, name, open(db.clone(), name).await));
        }
    }
    // Writers on A and B keep writing both tables (right rows carry their incarnation:
    // phase 1 writes incarnation 1, phase 3 incarnation 2; in phase 2, while the right table
    // is dropped and made again, no writer writes it, and the drop waits until every writer
    // has seen phase 2, so no write of one incarnation can land in the other).
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU64::new(1));
    let acks = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (w, db) in [(0u64, &a), (1, &b)] {
        let (db, stop, phase, acks) = (db.clone(), stop.clone(), phase.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (w + 7));
            let mut hung = 0;
            let mut acked_phase2 = false;
            while !stop.load(Ordering::Relaxed) {
                let p = phase.load(Ordering::SeqCst);
                if p == 2 && !acked_phase2 {
                    acked_phase2 = true;
                    acks.fetch_add(1, Ordering::SeqCst);
                }
                let i = rng.below(20);
                let fut = if p == 2 || rng.chance(60) {
                    db.table("dl")
                        .insert(json!({"id": format!("l{i:02}"), "g": rng.below(3),
                                       "n": rng.below(9), "r": format!("r{}", rng.below(6)),
                                       "s": format!("t{}", rng.below(4))}))
                        .conflict(Conflict::Replace)
                        .into_future()
                } else {
                    let k = if p == 1 { 1 } else { 2 };
                    db.table("dr")
                        .insert(json!({"id": format!("r{}", rng.below(6)),
                                       "tag": format!("t{}", rng.below(4)), "inc": k}))
                        .conflict(Conflict::Replace)
                        .into_future()
                };
                if tokio::time::timeout(HANG, fut).await.is_err() {
                    hung += 1;
                }
            }
            hung
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut failures = Vec::new();
    // 1. B drops the index the top-N and the live max read.
    b.table("dl").drop_index("n").await.unwrap();
    let dropped_n = Instant::now();
    // 2. A drops the right table and makes it again, with a new incarnation's rows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    phase.store(2, Ordering::SeqCst);
    let waited = Instant::now();
    while acks.load(Ordering::SeqCst) < 2 && waited.elapsed() < HANG {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match a.drop_table("dr").await {
        Ok(()) => {}
        Err(e) => failures.push(format!("drop dr: {e:?}")),
    }
    let dropped_r = Instant::now();
    a.create_table("dr").await.unwrap();
    a.table("dr")
        .create_index("tag", IndexSpec::field("tag"))
        .await
        .unwrap();
    a.table("dr")
        .insert_many(
            (0..6).map(|i| json!({"id": format!("r{i}"), "tag": format!("t{}", i % 4), "inc": 2})),
        )
        .await
        .unwrap();
    phase.store(3, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // 3. New joins on the new incarnation (C), then B drops its right index.
    let mut new_join_s = open(c.clone(), "join_s").await;
    let mut new_join_r = open(c.clone(), "join_r").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.table("dr").drop_index("tag").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let hung = w.await.unwrap();
        if hung > 0 {
            failures.push(format!("{hung} writes hung"));
        }
    }
    for db in [&a, &b, &c, &d] {
        db.sync().await.unwrap();
    }
    let _ = (dropped_n, dropped_r);
    for (h, name, mut f) in feeds {
        let label = format!("{h}/{name}");
        let (items, end) = read_for(&mut f, Duration::from_secs(2)).await;
        let must_end = name != "count_g";
        match (&end, must_end) {
            (Some(Error::FeedAborted(_)), true) => {}
            (None, false) => {}
            (Some(e), true) => failures.push(format!("{label}: ended untyped: {e:?}")),
            (None, true) => failures.push(format!(
                "{label}: still live after what it reads was dropped ({} items)",
                items.len()
            )),
            (Some(e), false) => failures.push(format!(
                "{label}: ended although nothing it reads was dropped: {e:?}"
            )),
        }
        if name.starts_with("join") {
            for it in &items {
                for v in [&it.old, &it.new].into_iter().flatten() {
                    if v["right"]["inc"] != json!(1) {
                        failures.push(format!(
                            "{label}: shows a right row of another incarnation: {v}"
                        ));
                    }
                }
            }
        }
        if name == "count_g" {
            let state = replay_keyed(&items, &mut failures, &label);
            let db = if h == "C" { &c } else { &d };
            let want: Vec<Value> = db
                .table("dl")
                .query()
                .group("g")
                .count()
                .await
                .unwrap()
                .into_iter()
                .map(|g| json!({"group": g.group, "reduction": g.reduction}))
                .collect();
            if state != want {
                failures.push(format!(
                    "{label}: {} but the query shows {}",
                    short(&state),
                    short(&want)
                ));
            }
        }
    }
    // The joins opened on the new incarnation: the index join ended with its index; the
    // primary key join equals the query and shows only the new incarnation.
    let (items, end) = read_for(&mut new_join_s, Duration::from_secs(1)).await;
    if !matches!(end, Some(Error::FeedAborted(_))) {
        failures.push(format!(
            "C/new join_s: not ended by the drop of its right index: {end:?} ({} items)",
            items.len()
        ));
    }
    let (items, end) = read_for(&mut new_join_r, Duration::from_secs(1)).await;
    if let Some(e) = end {
        failures.push(format!("C/new join_r ended: {e:?}"));
    } else {
        let mut r = Replay::new(Shape::Multiset);
        for it in &items {
            if it.kind == ChangeKind::Initial {
                r.initial(it.new.as_ref().unwrap());
            } else if let Err(e) = r.apply(it) {
                failures.push(format!("C/new join_r: {e}"));
            }
            for v in [&it.old, &it.new].into_iter().flatten() {
                if v["right"]["inc"] != json!(2) {
                    failures.push(format!("C/new join_r: a right row of incarnation 1: {v}"));
                }
            }
        }
        let want = sorted_multiset(
            c.table("dl")
                .query()
                .eq_join("r", "dr")
                .run()
                .await
                .unwrap(),
        );
        if r.state() != want {
            failures.push(format!(
                "C/new join_r: {} pairs replayed, the query {} ({} vs {})",
                r.state().len(),
                want.len(),
                short(&r.state()),
                short(&want)
            ));
        }
    }
    for db in [&a, &b, &c, &d] {
        let _ = db.close().await;
    }
    assert_no_failures(&format!("LIVE_OPS_DDL_SEED={seed}"), &failures);
}

// ---------------------------------------------------------------------------------------

/// `-0.0` and `0.0` are one number to the total order (`value::order::number_parts`), but
/// not the same JSON: a row whose field goes from `0.0` to `-0.0` is another row as the
/// query shows it. The store writes such a change (it was counted `unchanged`), and every
/// stateful feed shows it: they decide whether anything changed bit for bit
/// (`value::identical`), not with `Value`'s `==` (for which `-0.0 == 0.0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_zero_reaches_stateful_feeds() {
    let Some(pg) = database("negative_zero_reaches_stateful_feeds").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("zl").await.unwrap();
    a.create_table("zr").await.unwrap();
    a.table("zl")
        .create_index("n", IndexSpec::field("n"))
        .await
        .unwrap();
    a.table("zl")
        .insert(json!({"id": "a", "n": 1, "g": 0, "r": "x", "v": 0.0}))
        .await
        .unwrap();
    a.table("zr")
        .insert(json!({"id": "x", "v": 0.0}))
        .await
        .unwrap();
    let c = Database::connect(pg.url()).await.unwrap();
    c.sync().await.unwrap();
    let zl = c.table("zl");
    let mut feeds = [
        (
            "join",
            zl.query()
                .eq_join("r", "zr")
                .changes()
                .include_initial(true)
                .await
                .unwrap(),
        ),
        (
            "top",
            zl.order_by(Order::index("n").desc())
                .limit(2)
                .changes()
                .include_initial(true)
                .await
                .unwrap(),
        ),
        (
            "max",
            zl.query()
                .group("g")
                .max("n")
                .changes()
                .include_initial(true)
                .await
                .unwrap(),
        ),
        ("rows", zl.changes().include_initial(true).await.unwrap()),
    ];
    a.table("zr")
        .get("x")
        .update(json!({"v": -0.0}))
        .await
        .unwrap();
    a.table("zl")
        .get("a")
        .update(json!({"v": -0.0}))
        .await
        .unwrap();
    c.sync().await.unwrap();
    let mut failures = Vec::new();
    for (name, f) in feeds.iter_mut() {
        let (items, end) = read_for(f, Duration::from_millis(800)).await;
        if let Some(e) = end {
            failures.push(format!("{name}: ended: {e:?}"));
        }
        let last = items.iter().rev().find_map(|i| i.new.clone());
        let text = last.map(|v| v.to_string()).unwrap_or_default();
        // What the stored rows say: the feed must show the same text.
        let l = c
            .table("zl")
            .get("a")
            .run()
            .await
            .unwrap()
            .unwrap_or_default();
        let r = c
            .table("zr")
            .get("x")
            .run()
            .await
            .unwrap()
            .unwrap_or_default();
        let negative = |v: &Value| v.to_string().contains("-0.0");
        let want = match *name {
            "join" => usize::from(negative(&l)) + usize::from(negative(&r)),
            _ => usize::from(negative(&l)),
        };
        if text.matches("-0.0").count() != want {
            failures.push(format!(
                "{name}: after `v` went from 0.0 to -0.0 the rows read {l} / {r}, but the \
                 feed's last value is {text} ({} items)",
                items.len()
            ));
        }
    }
    for db in [&a, &c] {
        let _ = db.close().await;
    }
    assert_no_failures("negative_zero_reaches_stateful_feeds", &failures);
}
