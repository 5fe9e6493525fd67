//! The oracle of row, point and top-N feeds: a differential, model-based test of every feed
//! kind and option.
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
//!
//! The domain of the cases is in `domain`, their strategies in `strategies`, and what a
//! consumer holds and checks item by item in `watch`.

mod domain;
mod strategies;
mod watch;

use crate::common::feeds::drain;
use domain::*;
use futures::FutureExt;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use remodel::{
    field, json, Change, ChangeKind, Changes, Conflict, Database, Durability, Error, Feed,
    FeedState, IndexSpec, Order, Predicate, Query, Table, Value,
};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::time::Duration;
use strategies::*;
use watch::*;

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
    let db = crate::common::open(rules.durability).await.map_err(err)?;
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
        cases: crate::common::scaled_cases(cases),
        max_shrink_iters: 4096,
        max_shrink_time: 60_000,
        // Counterexamples are printed; no regression files next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
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
        let db = crate::common::open(Durability::Soft).await.unwrap();
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
        let db = crate::common::open(Durability::Soft).await.unwrap();
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
