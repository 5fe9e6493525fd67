//! Live aggregates, differentially: after every random write, the state a consumer rebuilds
//! from a feed's items (initial groups, then `{old_val, new_val}` per changed group) equals
//! re-running the aggregate. Each item is also checked on its own: an `old_val` is what the
//! consumer holds for that group, and no item repeats a value.
//!
//! Two oracles: small numbers (`live_aggregates_equal_rerunning_them`), and values of every
//! type in every field (`live_aggregates_agree_with_the_query_for_every_value_type`: `null`,
//! booleans, numbers with ties such as `1` / `1.0`, strings, arrays, objects, missing
//! fields; sums of doubles that a running total would round differently).
//!
//! The exact items of live aggregates, example by example, are `feeds/aggregates.rs`.

use futures::{FutureExt, StreamExt};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use remodel::{
    field, json, Aggregate, AggregateOutput, Changes, Database, Durability, Error, Feed, Group,
    IndexSpec, Table, Value,
};
use std::collections::BTreeMap;
use std::ops::Bound;

#[derive(Clone, Debug)]
enum Op {
    Put {
        id: u8,
        a: Option<u8>,
        b: u8,
        tags: Vec<u8>,
    },
    SetA {
        id: u8,
        a: u8,
    },
    SetB {
        id: u8,
        b: u8,
    },
    Delete {
        id: u8,
    },
    /// Several writes in one commit.
    Batch(Vec<(u8, Option<u8>, u8)>),
}

fn doc(id: u8, a: Option<u8>, b: u8, tags: &[u8]) -> Value {
    let mut d = json!({"id": id, "b": b});
    if let Some(a) = a {
        d["a"] = json!(a);
    }
    if !tags.is_empty() {
        d["tags"] = json!(tags);
    }
    d
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8u8, proptest::option::of(0..5u8), 0..3u8, vec(0..3u8, 0..3))
            .prop_map(|(id, a, b, tags)| Op::Put { id, a, b, tags }),
        2 => (0..8u8, 0..5u8).prop_map(|(id, a)| Op::SetA { id, a }),
        2 => (0..8u8, 0..3u8).prop_map(|(id, b)| Op::SetB { id, b }),
        2 => (0..8u8).prop_map(|id| Op::Delete { id }),
        1 => vec((0..8u8, proptest::option::of(0..5u8), 0..3u8), 1..4).prop_map(Op::Batch),
    ]
}

async fn apply(db: &Database, t: &Table, op: &Op) {
    match op {
        Op::Put { id, a, b, tags } => {
            t.insert(doc(*id, *a, *b, tags))
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }
        Op::SetA { id, a } => {
            t.get(*id).update(json!({"a": a})).await.unwrap();
        }
        Op::SetB { id, b } => {
            t.get(*id).update(json!({"b": b})).await.unwrap();
        }
        Op::Delete { id } => {
            t.get(*id).delete().await.unwrap();
        }
        Op::Batch(ws) => {
            let mut batch = db.batch();
            for (id, a, b) in ws {
                batch = match a {
                    Some(_) => {
                        batch.insert_with("t", doc(*id, *a, *b, &[]), remodel::Conflict::Replace)
                    }
                    None => batch.delete("t", json!(id)),
                };
            }
            batch.await.unwrap();
        }
    }
}

/// A re-run of an aggregate, as group -> reduction (an error when the query fails).
type Rerun =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<BTreeMap<String, Value>, Error>>>;

/// A watched aggregate: how to re-run it (as group -> reduction) and its feed.
struct Watched {
    name: String,
    grouped: bool,
    rerun: Rerun,
    feed: Feed,
    state: BTreeMap<String, Value>,
    /// The error the feed ended with, if it did.
    ended: Option<Error>,
}

fn groups_map(gs: Vec<Group>) -> BTreeMap<String, Value> {
    gs.into_iter()
        .map(|g| (g.group.to_string(), g.reduction))
        .collect()
}

async fn watch_grouped(name: &str, a: Aggregate<Vec<Group>>) -> Watched {
    try_watch_grouped(name, a).await.unwrap()
}

/// Watches a grouped aggregate; the error if the feed cannot open (after checking that the
/// query fails too).
async fn try_watch_grouped(name: &str, a: Aggregate<Vec<Group>>) -> Result<Watched, Error> {
    let rerun = {
        let a = a.clone();
        move || {
            let a = a.clone();
            async move { a.await.map(groups_map) }.boxed()
        }
    };
    watch(name, true, a.changes(), Box::new(rerun)).await
}

async fn watch_value<T: AggregateOutput + serde::Serialize>(
    name: &str,
    a: Aggregate<T>,
) -> Watched {
    try_watch_value(name, a).await.unwrap()
}

/// Watches an ungrouped aggregate (see [`try_watch_grouped`]).
async fn try_watch_value<T: AggregateOutput + serde::Serialize>(
    name: &str,
    a: Aggregate<T>,
) -> Result<Watched, Error> {
    let rerun = {
        let a = a.clone();
        move || {
            let a = a.clone();
            async move {
                let v = serde_json::to_value(a.await?).unwrap();
                Ok(BTreeMap::from([(String::new(), v)]))
            }
            .boxed()
        }
    };
    watch(name, false, a.changes(), Box::new(rerun)).await
}

async fn watch(
    name: &str,
    grouped: bool,
    changes: Changes,
    rerun: Rerun,
) -> Result<Watched, Error> {
    match changes.include_initial(true).await {
        Ok(feed) => Ok(Watched {
            name: name.into(),
            grouped,
            rerun,
            feed,
            state: BTreeMap::new(),
            ended: None,
        }),
        Err(e) => {
            // A feed that cannot open is one whose query fails (a sum of a string).
            assert!(
                rerun().await.is_err(),
                "{name}: the feed failed ({e}), the query not"
            );
            Err(e)
        }
    }
}

impl Watched {
    /// Applies every item delivered so far.
    fn drain(&mut self) {
        while let Some(Some(item)) = self.feed.next().now_or_never() {
            let c = match item {
                Ok(c) => c,
                Err(e) => {
                    assert!(self.ended.is_none(), "{}: an item after the end", self.name);
                    self.ended = Some(e);
                    continue;
                }
            };
            let split = |v: &Value| -> (String, Value) {
                if self.grouped {
                    (v["group"].to_string(), v["reduction"].clone())
                } else {
                    (String::new(), v.clone())
                }
            };
            if let Some(old) = c.old_val() {
                let (g, r) = split(old);
                assert_eq!(
                    self.state.get(&g),
                    Some(&r),
                    "{}: old_val of group {g}",
                    self.name
                );
                self.state.remove(&g);
            }
            if let Some(new) = c.new_val() {
                let (g, r) = split(new);
                assert_ne!(
                    c.old_val(),
                    Some(new),
                    "{}: an item that changes nothing",
                    self.name
                );
                self.state.insert(g, r);
            }
        }
    }
}

async fn run_case(ops: Vec<Op>) {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    // A few rows before the feeds open, so that initial states are not all empty.
    for op in ops.iter().take(3) {
        apply(&db, &t, op).await;
    }
    let q = t.query();
    let filtered = t.query().filter(field("b").ne(1));
    let range = t
        .between(Bound::Included(json!(1)), Bound::Excluded(json!(4)))
        .index("a");
    let mut watched = vec![
        watch_value("count", q.count()).await,
        watch_value("sum a", q.sum("a")).await,
        watch_value("avg a", q.avg("a")).await,
        watch_value("min a", q.min("a")).await,
        watch_value("max a", q.max("a")).await,
        watch_value("filtered max a", filtered.max("a")).await,
        watch_value("get_all count", t.get_all([1, 2, 2]).count()).await,
        watch_grouped("group b count", q.group("b").count()).await,
        watch_grouped("group b sum a", q.group("b").sum("a")).await,
        watch_grouped("group b avg a", q.group("b").avg("a")).await,
        watch_grouped("group b min a", q.group("b").min("a")).await,
        watch_grouped("group b max a", q.group("b").max("a")).await,
        watch_grouped("group a count", q.group("a").count()).await,
        watch_grouped("tags count", q.group_by_index("tags").count()).await,
        watch_grouped("filtered group b sum", filtered.group("b").sum("a")).await,
        watch_grouped("range group b count", range.group("b").count()).await,
        watch_grouped("range group b max", range.group("b").max("a")).await,
    ];
    for w in &mut watched {
        w.drain();
        assert_eq!(w.state, (w.rerun)().await.unwrap(), "{}: initial", w.name);
    }
    for (i, op) in ops.iter().enumerate().skip(3) {
        apply(&db, &t, op).await;
        for w in &mut watched {
            w.drain();
            assert_eq!(
                w.state,
                (w.rerun)().await.unwrap(),
                "{} after step {i}: {op:?}",
                w.name
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: crate::common::scaled_cases(64),
        // Failing cases are kept beside this file, as before it moved into a folder with a
        // main.rs (proptest's default would now use `../proptest-regressions/aggregates.txt`).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn live_aggregates_equal_rerunning_them(ops in vec(op(), 3..24)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_case(ops));
    }
}

/// A field's value in the typed oracle: `None` is a missing field.
type Field = Option<Value>;

/// Values of every type, in the total order's classes, with ties (`1` and `1.0`, `0` and
/// `-0.0`, equal arrays and objects) and `null`.
fn any_value() -> impl Strategy<Value = Field> {
    prop_oneof![
        2 => Just(None),
        3 => Just(Some(Value::Null)),
        1 => any::<bool>().prop_map(|b| Some(json!(b))),
        4 => proptest::sample::select(vec![
            json!(0), json!(-0.0), json!(1), json!(1.0), json!(2.5), json!(-3),
            json!(9007199254740993u64), json!(9007199254740992u64),
        ])
        .prop_map(Some),
        2 => proptest::sample::select(vec![json!(""), json!("a"), json!("b")]).prop_map(Some),
        2 => proptest::sample::select(vec![
            json!([]), json!([1]), json!([null]), json!([1, "a"]), json!([false]), json!([1.0]),
        ])
        .prop_map(Some),
        2 => proptest::sample::select(vec![
            json!({}), json!({"a": 1}), json!({"a": null}), json!({"b": [1]}), json!({"a": 1.0}),
        ])
        .prop_map(Some),
    ]
}

/// A summed field: numbers whose running `f64` total would drift (`0.1 + 0.2 - 0.1`, `1e20
/// + 1 - 1e20`), `null`, missing, and rarely a string (the query fails, the feed ends).
fn summed() -> impl Strategy<Value = Field> {
    prop_oneof![
        40 => proptest::sample::select(vec![
            json!(0.1), json!(0.2), json!(0.3), json!(1), json!(1.0), json!(-2), json!(1e20),
            json!(-1e20), json!(1e-300), json!(2.5), json!(9007199254740993u64), json!(-0.0),
        ])
        .prop_map(Some),
        6 => Just(None),
        6 => Just(Some(Value::Null)),
        1 => Just(Some(json!("seven"))),
    ]
}

/// A grouping field: a few values of several types, ties between `1` and `1.0` included.
fn group_value() -> impl Strategy<Value = Field> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        4 => proptest::sample::select(vec![
            json!(1), json!(1.0), json!("x"), json!(true), json!([1]), json!({"k": 1}),
        ])
        .prop_map(Some),
    ]
}

#[derive(Clone, Debug)]
struct Row {
    g: Field,
    v: Field,
    n: Field,
    tags: Field,
}

fn row() -> impl Strategy<Value = Row> {
    let tags = prop_oneof![
        2 => Just(None),
        1 => any_value(),
        2 => vec(proptest::sample::select(vec![json!(1), json!(1.0), json!("a"), json!(null)]), 0..3)
            .prop_map(|t| Some(Value::Array(t))),
    ];
    (group_value(), any_value(), summed(), tags).prop_map(|(g, v, n, tags)| Row { g, v, n, tags })
}

impl Row {
    fn doc(&self, id: u8) -> Value {
        let mut d = json!({"id": id});
        for (name, f) in [
            ("g", &self.g),
            ("v", &self.v),
            ("n", &self.n),
            ("tags", &self.tags),
        ] {
            if let Some(v) = f {
                d[name] = v.clone();
            }
        }
        d
    }
}

#[derive(Clone, Debug)]
enum TypedOp {
    Put(u8, Row),
    /// Sets one field (`None`: removes it) of a row that exists.
    Set(u8, &'static str, Field),
    Delete(u8),
    /// Several rows put (or deleted: `None`) in one commit.
    Batch(Vec<(u8, Option<Row>)>),
}

fn typed_op() -> impl Strategy<Value = TypedOp> {
    let field = proptest::sample::select(vec!["g", "v", "v", "n", "tags"]);
    prop_oneof![
        4 => (0..8u8, row()).prop_map(|(id, r)| TypedOp::Put(id, r)),
        4 => (0..8u8, field, any_value()).prop_map(|(id, f, v)| TypedOp::Set(id, f, v)),
        2 => (0..8u8).prop_map(TypedOp::Delete),
        1 => vec((0..8u8, proptest::option::weighted(0.7, row())), 1..5).prop_map(TypedOp::Batch),
    ]
}

async fn apply_typed(db: &Database, t: &Table, op: &TypedOp) {
    match op {
        TypedOp::Put(id, r) => {
            t.insert(r.doc(*id))
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }
        TypedOp::Set(id, name, v) => {
            // Read, change, write back whole (an update cannot remove a field); a missing row
            // stays missing.
            if let Some(mut d) = t.get(*id).await.unwrap() {
                match v {
                    Some(v) => d[*name] = v.clone(),
                    None => {
                        d.as_object_mut().unwrap().remove(*name);
                    }
                }
                t.insert(d)
                    .conflict(remodel::Conflict::Replace)
                    .await
                    .unwrap();
            }
        }
        TypedOp::Delete(id) => {
            t.get(*id).delete().await.unwrap();
        }
        TypedOp::Batch(ws) => {
            let mut batch = db.batch();
            for (id, r) in ws {
                batch = match r {
                    Some(r) => batch.insert_with("t", r.doc(*id), remodel::Conflict::Replace),
                    None => batch.delete("t", json!(id)),
                };
            }
            batch.await.unwrap();
        }
    }
}

/// Every reduction over `q`, ungrouped and grouped by `g` (`name` prefixes the names);
/// aggregates whose feed cannot open (their query fails) are left out.
async fn watch_all(name: &str, q: &remodel::Query, out: &mut Vec<Watched>) {
    let n = |what: &str| format!("{name} {what}");
    let mut add = |w: Result<Watched, Error>| {
        if let Ok(w) = w {
            out.push(w);
        }
    };
    add(try_watch_value(&n("count"), q.count()).await);
    add(try_watch_value(&n("sum n"), q.sum("n")).await);
    add(try_watch_value(&n("avg n"), q.avg("n")).await);
    add(try_watch_value(&n("min v"), q.min("v")).await);
    add(try_watch_value(&n("max v"), q.max("v")).await);
    let g = q.group("g");
    add(try_watch_grouped(&n("group g count"), g.count()).await);
    add(try_watch_grouped(&n("group g sum n"), g.sum("n")).await);
    add(try_watch_grouped(&n("group g avg n"), g.avg("n")).await);
    add(try_watch_grouped(&n("group g min v"), g.min("v")).await);
    add(try_watch_grouped(&n("group g max v"), g.max("v")).await);
}

async fn run_typed_case(ops: Vec<TypedOp>) {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    t.create_index("g", IndexSpec::field("g")).await.unwrap();
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    // A few rows before the feeds open, so that initial states are not all empty.
    for op in ops.iter().take(3) {
        apply_typed(&db, &t, op).await;
    }
    let mut watched = Vec::new();
    watch_all("table", &t.query(), &mut watched).await;
    watch_all(
        "filtered",
        &t.query().filter(field("g").ne(1)),
        &mut watched,
    )
    .await;
    watch_all("get_all", &t.get_all([1, 2, 2, 5]), &mut watched).await;
    watch_all(
        "plucked",
        &t.query().pluck(["id", "g", "v", "n"]),
        &mut watched,
    )
    .await;
    let by_g = t.get_all([json!(1), json!("x"), json!(true)]).index("g");
    watch_all("get_all g", &by_g, &mut watched).await;
    // Bounds of mixed types: from the booleans to the strings (`null` is not indexed).
    let range = t
        .between(Bound::Included(json!(false)), Bound::Excluded(json!("b")))
        .index("v");
    watch_all("range v", &range, &mut watched).await;
    let tags = t.query().group_by_index("tags");
    for (what, a) in [
        ("count", tags.count()),
        ("sum n", tags.sum("n")),
        ("min v", tags.min("v")),
        ("max v", tags.max("v")),
    ] {
        if let Ok(w) = try_watch_grouped(&format!("tags {what}"), a).await {
            watched.push(w);
        }
    }
    for (i, op) in std::iter::once(None)
        .chain(ops.iter().skip(3).map(Some))
        .enumerate()
    {
        if let Some(op) = op {
            apply_typed(&db, &t, op).await;
        }
        for w in &mut watched {
            if w.ended.is_some() {
                continue;
            }
            w.drain();
            match ((w.rerun)().await, &w.ended) {
                (Ok(now), None) => {
                    assert_eq!(w.state, now, "{} after step {i}: {op:?}", w.name);
                }
                // The query fails (a sum of a string): the feed ended, saying why.
                (Err(_), Some(Error::FeedAborted(_))) => {}
                (query, feed) => panic!(
                    "{} after step {i}: {op:?}: the query gives {query:?}, the feed ended with \
                     {feed:?}",
                    w.name
                ),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: crate::common::scaled_cases(64),
        // Failing cases are kept beside this file, as before it moved into a folder with a
        // main.rs (proptest's default would now use `../proptest-regressions/aggregates.txt`).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn live_aggregates_agree_with_the_query_for_every_value_type(
        ops in vec(typed_op(), 3..30)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_typed_case(ops));
    }
}
