//! Live aggregates, differentially: after every random write, the state a consumer rebuilds
//! from a feed's items (initial groups, then `{old_val, new_val}` per changed group) equals
//! re-running the aggregate. Each item is also checked on its own: an `old_val` is what the
//! consumer holds for that group, and no item repeats a value.

use futures::{FutureExt, StreamExt};
use proptest::collection::vec;
use proptest::prelude::*;
use remodel::{
    field, json, Aggregate, AggregateOutput, Changes, Config, Database, Durability, Error, Feed,
    Group, IndexSpec, Table, Value,
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

/// A watched aggregate: how to re-run it (as group -> reduction) and its feed.
struct Watched {
    name: String,
    grouped: bool,
    rerun: Box<dyn Fn() -> futures::future::BoxFuture<'static, BTreeMap<String, Value>>>,
    feed: Feed,
    state: BTreeMap<String, Value>,
}

fn groups_map(gs: Vec<Group>) -> BTreeMap<String, Value> {
    gs.into_iter()
        .map(|g| (g.group.to_string(), g.reduction))
        .collect()
}

async fn watch_grouped(name: &str, a: Aggregate<Vec<Group>>) -> Watched {
    let feed = a.changes().include_initial(true).await.unwrap();
    let rerun = move || {
        let a = a.clone();
        async move { groups_map(a.await.unwrap()) }.boxed()
    };
    Watched {
        name: name.into(),
        grouped: true,
        rerun: Box::new(rerun),
        feed,
        state: BTreeMap::new(),
    }
}

async fn watch_value<T: AggregateOutput + serde::Serialize>(
    name: &str,
    a: Aggregate<T>,
) -> Watched {
    let feed = a.changes().include_initial(true).await.unwrap();
    let rerun = move || {
        let a = a.clone();
        async move {
            let v = serde_json::to_value(a.await.unwrap()).unwrap();
            BTreeMap::from([(String::new(), v)])
        }
        .boxed()
    };
    Watched {
        name: name.into(),
        grouped: false,
        rerun: Box::new(rerun),
        feed,
        state: BTreeMap::new(),
    }
}

impl Watched {
    /// Applies every item delivered so far.
    fn drain(&mut self) {
        while let Some(Some(item)) = self.feed.next().now_or_never() {
            let c = item.unwrap();
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
        assert_eq!(w.state, (w.rerun)().await, "{}: initial", w.name);
    }
    for (i, op) in ops.iter().enumerate().skip(3) {
        apply(&db, &t, op).await;
        for w in &mut watched {
            w.drain();
            assert_eq!(
                w.state,
                (w.rerun)().await,
                "{} after step {i}: {op:?}",
                w.name
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn live_aggregates_equal_rerunning_them(ops in vec(op(), 3..24)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_case(ops));
    }
}

#[tokio::test]
async fn min_max_without_an_index_and_other_unwatchable_aggregates_are_refused() {
    let db = Database::temporary().await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let err = t.query().min("a").changes().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unwatchable(m) if m.contains("index")),
        "{err:?}"
    );
    let err = t.query().group("b").max("a").changes().await.unwrap_err();
    assert!(matches!(err, Error::Unwatchable(_)), "{err:?}");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    let err = t
        .order_by(remodel::Order::index("a"))
        .limit(2)
        .count()
        .changes()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unwatchable(_)), "{err:?}");
    let c: Changes = t.query().count().changes();
    let cursor: remodel::Cursor = "1-0".parse().unwrap();
    let err = c.resume_from(cursor).await.unwrap_err();
    assert!(matches!(err, Error::Unwatchable(_)), "{err:?}");
}

#[tokio::test]
async fn a_group_that_empties_has_no_new_val_and_squash_merges_per_group() {
    let db = Config::temporary()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.query().group("s").count().changes().await.unwrap();
    t.insert(json!({"id": 1, "s": "human"})).await.unwrap();
    let c = feed.next().await.unwrap().unwrap();
    assert_eq!(c.old_val(), None);
    assert_eq!(
        c.new_val(),
        Some(&json!({"group": "human", "reduction": 1}))
    );
    t.get(1).delete().await.unwrap();
    let c = feed.next().await.unwrap().unwrap();
    assert_eq!(
        c.old_val(),
        Some(&json!({"group": "human", "reduction": 1}))
    );
    assert_eq!(c.new_val(), None);
    let mut squashed = t
        .query()
        .group("s")
        .count()
        .changes()
        .squash(true)
        .await
        .unwrap();
    for i in 0..5 {
        t.insert(json!({"id": 10 + i, "s": "vulcan"}))
            .await
            .unwrap();
    }
    let c = squashed.next().await.unwrap().unwrap();
    assert_eq!(
        (c.old_val(), c.new_val()),
        (None, Some(&json!({"group": "vulcan", "reduction": 5})))
    );
    assert!(squashed.next().now_or_never().is_none());
}

#[tokio::test]
async fn dropping_the_index_a_live_min_reads_ends_it() {
    let db = Database::temporary().await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.insert(json!({"id": 1, "a": 5})).await.unwrap();
    let mut feed = t.query().min("a").changes().await.unwrap();
    t.drop_index("a").await.unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .expect("the feed ends");
    assert!(matches!(end, Some(Err(Error::FeedAborted(_)))), "{end:?}");
}
