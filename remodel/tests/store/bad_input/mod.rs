//! Bad input on every entry point, interleaved with DDL, against a model, with reopens (the
//! adversarial suite of issue 8). The inputs and their strategies are in `inputs`.
//!
//! Each case runs a random program on a database in a folder: inserts (one or many) of random
//! JSON of every shape and depth (up to and past `MAX_DEPTH`, and 10,000 levels), with keys of
//! every type (valid or not: null, objects, too long, too deep, missing); updates, replaces
//! and deletes by key with random patches; filters with random predicates (bad paths, bad
//! regexes, too deep); random table and index names (valid or not) and index specs; index
//! creation racing writes, index drops racing their own creation, table drops racing writes;
//! reopens. After every step:
//! - nothing panicked, and every error is a typed error of the kind the input calls for
//!   (never `Storage`/`Serialization`, which would mean the store itself broke);
//! - a write the store refused changed nothing; a write it acknowledged is there;
//! - at checkpoints and after every reopen, each table equals the model, and every index
//!   equals what a scan of the model gives (`order_by(index)` and `index_status`).
//!
//! Bounded to run in about a minute in debug builds: 600 cases (`ADVERSARIAL_CASES` overrides
//! the number).

mod inputs;

use crate::common::rules::{index_values, merge};
use inputs::{arb_op, Doc, Op, Spec, Val};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};
use remodel::value::{compare, encode_value, MAX_DEPTH};
use remodel::{Conflict, Database, Error, IndexSpec, Order, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The model and the checks
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct TableModel {
    /// Documents by encoded primary key.
    docs: BTreeMap<Vec<u8>, Value>,
    indexes: HashMap<String, IndexSpec>,
}

type Model = BTreeMap<String, TableModel>;

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// Errors that mean the store itself broke, not the input.
fn check_typed(what: &str, e: &Error) -> Result<(), TestCaseError> {
    let text = e.to_string();
    if text.contains("panicked") {
        return Err(fail(format!("{what}: a panic: {text}")));
    }
    match e {
        Error::Storage { .. }
        | Error::Serialization { .. }
        | Error::Unusable(_)
        | Error::Damaged { .. } => Err(fail(format!("{what}: the store broke: {text}"))),
        _ => Ok(()),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_path(p: &str) -> bool {
    !p.is_empty() && p.split('.').all(|s| !s.is_empty())
}

fn spec_valid(s: &Spec) -> bool {
    match s {
        Spec::Field(p) | Spec::Multi(p) => valid_path(p),
        Spec::Compound(a, b) => valid_path(a) && valid_path(b),
    }
}

/// Whether a key value is a valid primary key, per the documented rules.
fn key_valid(k: &Val) -> bool {
    fn scalars(v: &Value) -> bool {
        match v {
            Value::Null | Value::Object(_) => false,
            Value::Array(items) => items.iter().all(scalars),
            _ => true,
        }
    }
    if k.depth() > MAX_DEPTH {
        return false;
    }
    let v = k.build();
    scalars(&v) && encode_value(&v).len() <= 1024
}

/// Whether a document is valid for an insert (an object, within the depth limit, with a
/// valid key or none).
fn doc_valid(d: &Doc) -> bool {
    d.bare
        .as_ref()
        // (depth first: a too-deep value must not be built here and dropped recursively)
        .is_none_or(|b| b.depth() <= MAX_DEPTH && matches!(b.build(), Value::Object(_)))
        && d.depth() <= MAX_DEPTH
        && d.key.as_ref().is_none_or(key_valid)
}

/// The rows an index should return, in order: `(value, primary key)`, as documented.
fn expected_index(t: &TableModel, spec: &IndexSpec) -> Vec<Value> {
    let mut entries: Vec<(Value, &Vec<u8>, &Value)> = Vec::new();
    for (pk, doc) in &t.docs {
        for v in index_values(spec, doc) {
            entries.push((v, pk, doc));
        }
    }
    entries.sort_by(|a, b| compare(&a.0, &b.0).then_with(|| a.1.cmp(b.1)));
    entries.into_iter().map(|(_, _, d)| d.clone()).collect()
}

async fn verify(db: &Database, model: &Model, when: &str) -> Result<(), TestCaseError> {
    let mut names = db.table_names().map_err(|e| fail(format!("{when}: {e}")))?;
    names.sort();
    let expected: Vec<String> = model.keys().cloned().collect();
    prop_assert_eq!(&names, &expected, "{}: tables", when);
    for (name, t) in model {
        let table = db.table(name);
        let rows = table
            .run()
            .await
            .map_err(|e| fail(format!("{when}: scan of {name}: {e}")))?;
        let want: Vec<Value> = t.docs.values().cloned().collect();
        prop_assert_eq!(rows.len(), want.len(), "{}: {} rows", when, name);
        for (got, want) in rows.iter().zip(&want) {
            prop_assert!(
                got == want,
                "{}: {} has {} instead of {}",
                when,
                name,
                got,
                want
            );
        }
        let mut status: Vec<(String, usize)> = table
            .index_status()
            .map_err(|e| fail(format!("{when}: {e}")))?
            .into_iter()
            .map(|s| (s.name, s.entries))
            .collect();
        status.sort();
        let mut want_names: Vec<&String> = t.indexes.keys().collect();
        want_names.sort();
        let got_names: Vec<&String> = status.iter().map(|s| &s.0).collect();
        prop_assert_eq!(got_names, want_names, "{}: indexes of {}", when, name);
        for (ix, entries) in &status {
            let want = expected_index(t, &t.indexes[ix]);
            let got = table
                .order_by(Order::index(ix.as_str()))
                .run()
                .await
                .map_err(|e| fail(format!("{when}: index {ix}: {e}")))?;
            prop_assert_eq!(*entries, want.len(), "{}: entries of {}.{}", when, name, ix);
            prop_assert_eq!(got.len(), want.len(), "{}: rows of {}.{}", when, name, ix);
            for (g, w) in got.iter().zip(&want) {
                prop_assert!(
                    g == w,
                    "{}: index {}.{} has {} for {}",
                    when,
                    name,
                    ix,
                    g,
                    w
                );
            }
        }
    }
    Ok(())
}

/// Opens the database, retrying while the previous handle of this process lets go of it.
async fn open(dir: &Path) -> Database {
    let mut tries = 0;
    loop {
        match Database::open(dir).await {
            Ok(db) => return db,
            Err(e) if tries < 200 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

/// The encoded key of a stored document (its `id` field).
fn pk(doc: &Value) -> Vec<u8> {
    remodel::value::encode_key(&doc["id"]).expect("stored documents have valid keys")
}

/// Applies an acknowledged insert of `docs` (conflict: replace) to the model.
fn model_insert(t: &mut TableModel, docs: Vec<Value>, generated: &[Value]) {
    let mut generated = generated.iter();
    for mut d in docs {
        if d.get("id").is_none() {
            d["id"] = generated.next().expect("a generated key").clone();
        }
        t.docs.insert(pk(&d), d);
    }
}

// ---------------------------------------------------------------------------------------------
// Running a program
// ---------------------------------------------------------------------------------------------

async fn run_program(dir: PathBuf, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut db = open(&dir).await;
    let mut model: Model = BTreeMap::new();
    db.create_table("t").await.unwrap();
    model.insert("t".into(), TableModel::default());
    for (step, op) in ops.into_iter().enumerate() {
        let when = format!("step {step} ({op:?})");
        let when = if when.len() > 300 {
            format!(
                "{}…",
                &when[..when.char_indices().nth(300).map_or(when.len(), |c| c.0)]
            )
        } else {
            when
        };
        match op {
            Op::Insert(docs) => {
                let Some(t) = model.get_mut("t") else {
                    let r = db.table("t").insert_many(docs.iter().map(Doc::build)).await;
                    let deep = docs.iter().any(|d| d.depth() > MAX_DEPTH);
                    prop_assert!(
                        matches!(r, Err(Error::NoSuchTable(_)))
                            || (deep && matches!(r, Err(Error::TooDeep { .. }))),
                        "{}: {:?}",
                        when,
                        r
                    );
                    continue;
                };
                let valid = docs.iter().all(doc_valid);
                let built: Vec<Value> = docs.iter().map(Doc::build).collect();
                let keep = if valid { Some(built.clone()) } else { None };
                let r = db
                    .table("t")
                    .insert_many(built)
                    .conflict(Conflict::Replace)
                    .await;
                match (r, keep) {
                    (Ok(res), Some(kept)) => {
                        prop_assert!(res.first_error.is_none(), "{}: {:?}", when, res.first_error);
                        model_insert(t, kept, &res.generated_keys);
                    }
                    (Ok(res), None) => {
                        return Err(fail(format!(
                            "{when}: an invalid insert was accepted: {res:?}"
                        )))
                    }
                    (Err(e), None) => {
                        check_typed(&when, &e)?;
                        let too_deep = docs.iter().any(|d| d.depth() > MAX_DEPTH);
                        if too_deep {
                            // Depth is checked first, at the door.
                            prop_assert!(matches!(e, Error::TooDeep { .. }), "{}: {}", when, e);
                        }
                    }
                    (Err(e), Some(_)) => {
                        return Err(fail(format!("{when}: a valid insert was refused: {e}")))
                    }
                }
            }
            Op::Update(key, patch) => {
                let r = db.table("t").get(key.build()).update(patch.build()).await;
                let Some(t) = model.get_mut("t") else {
                    prop_assert!(r.is_err(), "{}", when);
                    continue;
                };
                match r {
                    Err(e) => {
                        check_typed(&when, &e)?;
                        prop_assert!(
                            !key_valid(&key) || patch.depth() > MAX_DEPTH,
                            "{}: refused: {}",
                            when,
                            e
                        );
                    }
                    Ok(res) => {
                        if let Some(e) = &res.first_error {
                            check_typed(&when, e)?;
                            continue;
                        }
                        let enc = remodel::value::encode_key(&key.build()).unwrap();
                        let Some(old) = t.docs.get(&enc) else {
                            prop_assert_eq!(res.skipped, 1, "{}", when);
                            continue;
                        };
                        // Merged as documented; the key keeps its stored spelling.
                        let mut expected = old.clone();
                        merge(&mut expected, &patch.build());
                        expected["id"] = old["id"].clone();
                        let stored = db
                            .table("t")
                            .get(key.build())
                            .await
                            .map_err(|e| fail(format!("{when}: {e}")))?;
                        prop_assert!(
                            stored.as_ref() == Some(&expected),
                            "{}: {:?} instead of {}",
                            when,
                            stored,
                            expected
                        );
                        t.docs.insert(enc, expected);
                    }
                }
            }
            Op::Replace(key, doc) => {
                let r = db.table("t").get(key.build()).replace(doc.build()).await;
                if !model.contains_key("t") {
                    prop_assert!(r.is_err(), "{}", when);
                    continue;
                }
                match r {
                    Err(e) => check_typed(&when, &e)?,
                    Ok(res) => match &res.first_error {
                        Some(e) => check_typed(&when, e)?,
                        None => {
                            let t = model.get_mut("t").unwrap();
                            let enc = remodel::value::encode_key(&key.build()).unwrap();
                            if res.replaced + res.unchanged == 1 {
                                let mut expected = doc.build();
                                if expected.get("id").is_none() {
                                    expected["id"] = key.build();
                                }
                                let stored = db.table("t").get(key.build()).await.unwrap().unwrap();
                                prop_assert!(
                                    compare(&stored, &expected).is_eq(),
                                    "{}: {} instead of {}",
                                    when,
                                    stored,
                                    expected
                                );
                                t.docs.insert(enc, stored);
                            } else {
                                prop_assert!(!t.docs.contains_key(&enc), "{}: {:?}", when, res);
                            }
                        }
                    },
                }
            }
            Op::Delete(key) => {
                let r = db.table("t").get(key.build()).delete().await;
                let Some(t) = model.get_mut("t") else {
                    prop_assert!(r.is_err(), "{}", when);
                    continue;
                };
                match r {
                    Err(e) => {
                        check_typed(&when, &e)?;
                        prop_assert!(!key_valid(&key), "{}: {}", when, e);
                    }
                    Ok(res) => {
                        let enc = remodel::value::encode_key(&key.build()).unwrap();
                        let had = t.docs.remove(&enc).is_some();
                        prop_assert_eq!(res.deleted, u64::from(had), "{}", when);
                    }
                }
            }
            Op::Filter(p) => {
                let r = db.table("t").filter(p.build()).run().await;
                let Some(t) = model.get("t") else {
                    prop_assert!(r.is_err(), "{}", when);
                    continue;
                };
                let fine = p.within_limits(MAX_DEPTH) && p.paths_valid();
                match r {
                    Err(e) => {
                        check_typed(&when, &e)?;
                        if !p.within_limits(MAX_DEPTH) {
                            prop_assert!(matches!(e, Error::TooDeep { .. }), "{}: {}", when, e);
                        } else {
                            prop_assert!(!fine || p.uses_regex(), "{}: refused: {}", when, e);
                        }
                    }
                    Ok(rows) => {
                        prop_assert!(fine, "{}: accepted", when);
                        if !p.uses_regex() {
                            let want: Vec<&Value> = t.docs.values().filter(|d| p.eval(d)).collect();
                            prop_assert_eq!(rows.len(), want.len(), "{}", when);
                            for (g, w) in rows.iter().zip(want) {
                                prop_assert!(g == w, "{}: {} vs {}", when, g, w);
                            }
                        }
                    }
                }
            }
            Op::CreateTable(name) => {
                let r = db.create_table(&name).await;
                match r {
                    Ok(()) => {
                        prop_assert!(valid_name(&name) && !model.contains_key(&name), "{}", when);
                        model.insert(name, TableModel::default());
                    }
                    Err(e) => {
                        check_typed(&when, &e)?;
                        prop_assert!(
                            !valid_name(&name) || model.contains_key(&name),
                            "{}: {}",
                            when,
                            e
                        );
                    }
                }
            }
            Op::DropTable(name) => match db.drop_table(&name).await {
                Ok(()) => {
                    prop_assert!(model.remove(&name).is_some(), "{}", when);
                }
                Err(e) => {
                    check_typed(&when, &e)?;
                    prop_assert!(!model.contains_key(&name), "{}: {}", when, e);
                }
            },
            Op::CreateIndex(name, spec) => {
                let r = db.table("t").create_index(&name, spec.index_spec()).await;
                let Some(t) = model.get_mut("t") else {
                    prop_assert!(r.is_err(), "{}", when);
                    continue;
                };
                match r {
                    Ok(()) => {
                        prop_assert!(valid_name(&name) && spec_valid(&spec), "{}", when);
                        prop_assert!(!t.indexes.contains_key(&name) && name != "id", "{}", when);
                        t.indexes.insert(name, spec.index_spec());
                    }
                    Err(e) => {
                        check_typed(&when, &e)?;
                        prop_assert!(
                            !valid_name(&name)
                                || !spec_valid(&spec)
                                || t.indexes.contains_key(&name)
                                || name == "id",
                            "{}: {}",
                            when,
                            e
                        );
                    }
                }
            }
            Op::DropIndex(name) => {
                let r = db.table("t").drop_index(&name).await;
                let Some(t) = model.get_mut("t") else {
                    prop_assert!(r.is_err(), "{}", when);
                    continue;
                };
                match r {
                    Ok(()) => prop_assert!(t.indexes.remove(&name).is_some(), "{}", when),
                    Err(e) => {
                        check_typed(&when, &e)?;
                        prop_assert!(!t.indexes.contains_key(&name), "{}: {}", when, e);
                    }
                }
            }
            Op::IndexDuringWrites(name, spec, docs) => {
                let Some(t) = model.get_mut("t") else {
                    continue;
                };
                let table = db.table("t");
                let build = {
                    let table = table.clone();
                    let spec = spec.index_spec();
                    let name = name.clone();
                    tokio::spawn(async move { table.create_index(&name, spec).await })
                };
                for d in &docs {
                    let valid = doc_valid(d);
                    let built = d.build();
                    let keep = valid.then(|| built.clone());
                    match (table.insert(built).conflict(Conflict::Replace).await, keep) {
                        (Ok(res), Some(kept)) if res.first_error.is_none() => {
                            model_insert(t, vec![kept], &res.generated_keys)
                        }
                        (Ok(res), _) => return Err(fail(format!("{when}: {res:?}"))),
                        (Err(e), None) => check_typed(&when, &e)?,
                        (Err(e), Some(_)) => return Err(fail(format!("{when}: refused: {e}"))),
                    }
                }
                match build.await.unwrap() {
                    Ok(()) => {
                        t.indexes.insert(name, spec.index_spec());
                    }
                    Err(e) => check_typed(&when, &e)?,
                }
            }
            Op::DropDuringBuild(name, spec) => {
                let Some(t) = model.get_mut("t") else {
                    continue;
                };
                if t.indexes.contains_key(&name) {
                    continue;
                }
                let table = db.table("t");
                let build = {
                    let table = table.clone();
                    let spec = spec.index_spec();
                    let name = name.clone();
                    tokio::spawn(async move { table.create_index(&name, spec).await })
                };
                tokio::task::yield_now().await;
                let dropped = table.drop_index(&name).await;
                let built = build.await.unwrap();
                if let Err(e) = &built {
                    check_typed(&when, e)?;
                }
                if let Err(e) = &dropped {
                    check_typed(&when, e)?;
                }
                // Whatever the interleaving, the index is there exactly when the store says.
                let exists = table.index_names().unwrap().contains(&name);
                prop_assert_eq!(exists, built.is_ok() && dropped.is_err(), "{}", when);
                if exists {
                    t.indexes.insert(name, spec.index_spec());
                }
            }
            Op::DropTableDuringWrites(docs) => {
                if !model.contains_key("t") {
                    continue;
                }
                let table = db.table("t");
                let writer = {
                    let table = table.clone();
                    let built: Vec<Value> = docs.iter().map(Doc::build).collect();
                    tokio::spawn(async move {
                        let mut results = Vec::new();
                        for d in built {
                            results.push(table.insert(d).conflict(Conflict::Replace).await);
                        }
                        results
                    })
                };
                tokio::task::yield_now().await;
                db.drop_table("t").await.unwrap();
                model.remove("t");
                for r in writer.await.unwrap() {
                    if let Err(e) = r {
                        check_typed(&when, &e)?;
                    }
                }
                // The table comes back empty, for the steps that follow.
                db.create_table("t").await.unwrap();
                model.insert("t".into(), TableModel::default());
            }
            Op::Reopen => {
                db.close().await.unwrap();
                drop(db);
                db = open(&dir).await;
                verify(&db, &model, &format!("{when}, after reopen")).await?;
            }
        }
        if step % 8 == 7 {
            verify(&db, &model, &when).await?;
        }
    }
    if std::env::var_os("ADVERSARIAL_VERBOSE").is_some() {
        let sizes: Vec<(String, usize, usize)> = model
            .iter()
            .map(|(n, t)| (n.clone(), t.docs.len(), t.indexes.len()))
            .collect();
        eprintln!("program done: {sizes:?}");
    }
    verify(&db, &model, "at the end").await?;
    db.close().await.unwrap();
    drop(db);
    let db = open(&dir).await;
    verify(&db, &model, "after the last reopen").await?;
    db.close().await.unwrap();
    Ok(())
}

fn cases() -> u32 {
    std::env::var("ADVERSARIAL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(600)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random programs of bad and good input, DDL races and reopens, against the model.
    #[test]
    fn the_store_survives_adversarial_programs(ops in vec(arb_op(), 1..40)) {
        let dir = std::env::temp_dir().join(format!(
            "remodel-adversarial-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(run_program(dir.clone(), ops));
        drop(rt);
        let _ = std::fs::remove_dir_all(&dir);
        outcome?;
    }
}
