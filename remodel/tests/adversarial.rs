//! The adversarial suite (issue 8): bad input on every entry point, interleaved with DDL,
//! against a model, with reopens.
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

mod common;

use common::{index_values, merge, path_get};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};
use remodel::value::{compare, encode_value, MAX_DEPTH};
use remodel::{
    field, has_fields, json, Conflict, Database, Error, IndexSpec, Order, Predicate, Value,
};
use serde_json::Map;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Descriptions of inputs (deep values are built in the test, never held by proptest, which
// clones and prints its inputs recursively)
// ---------------------------------------------------------------------------------------------

/// A value: a small random one, or a chain of `depth` arrays/objects (chosen by the bits of
/// `pattern`) around a small one.
#[derive(Clone, Debug)]
enum Val {
    Small(Value),
    Chain {
        depth: usize,
        pattern: u64,
        leaf: Value,
    },
}

impl Val {
    fn build(&self) -> Value {
        match self {
            Val::Small(v) => v.clone(),
            Val::Chain {
                depth,
                pattern,
                leaf,
            } => {
                let mut v = leaf.clone();
                for i in 0..*depth {
                    v = if pattern >> (i % 64) & 1 == 1 {
                        let mut m = Map::new();
                        m.insert("k".into(), v);
                        Value::Object(m)
                    } else {
                        Value::Array(vec![v])
                    };
                }
                v
            }
        }
    }

    /// The nesting depth of the built value.
    fn depth(&self) -> usize {
        match self {
            Val::Small(v) => depth_of(v),
            Val::Chain { depth, leaf, .. } => depth + depth_of(leaf),
        }
    }
}

fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// A document: its key (absent, or a value of any kind) and fields.
#[derive(Clone, Debug)]
struct Doc {
    key: Option<Val>,
    fields: Vec<(String, Val)>,
    /// Not an object at all (a bare value).
    bare: Option<Val>,
}

impl Doc {
    fn build(&self) -> Value {
        if let Some(b) = &self.bare {
            return b.build();
        }
        let mut m = Map::new();
        for (i, (k, v)) in self.fields.iter().enumerate() {
            // A later field of the same name wins; the shadowed value is never built (it
            // would be dropped recursively here).
            if self.fields[i + 1..].iter().all(|(later, _)| later != k) {
                m.insert(k.clone(), v.build());
            }
        }
        if let Some(k) = &self.key {
            m.insert("id".into(), k.build());
        }
        Value::Object(m)
    }

    fn depth(&self) -> usize {
        if let Some(b) = &self.bare {
            return b.depth();
        }
        // A later field of the same name replaces an earlier one.
        let fields: HashMap<&str, &Val> =
            self.fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let inner = fields
            .values()
            .map(|v| v.depth())
            .chain(self.key.iter().map(Val::depth))
            .max()
            .unwrap_or(0);
        1 + inner
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<Doc>),
    Update(Val, Val),
    Replace(Val, Doc),
    Delete(Val),
    Filter(Pred),
    CreateTable(String),
    DropTable(String),
    CreateIndex(String, Spec),
    DropIndex(String),
    /// A create_index racing inserts on the same table.
    IndexDuringWrites(String, Spec, Vec<Doc>),
    /// drop_index of an index while it is being built.
    DropDuringBuild(String, Spec),
    /// drop_table racing inserts into it.
    DropTableDuringWrites(Vec<Doc>),
    Reopen,
}

#[derive(Clone, Debug)]
enum Spec {
    Field(String),
    Compound(String, String),
    Multi(String),
}

impl Spec {
    fn index_spec(&self) -> IndexSpec {
        match self {
            Spec::Field(p) => IndexSpec::field(p.as_str()),
            Spec::Compound(a, b) => IndexSpec::compound([a.as_str(), b.as_str()]),
            Spec::Multi(p) => IndexSpec::multi(p.as_str()),
        }
    }
}

/// A predicate description; `nest` wraps it in that many `not`s / single `and`s.
#[derive(Clone, Debug)]
enum Pred {
    Cmp(u8, String, Val),
    HasFields(Vec<String>),
    StartsWith(String, String),
    Matches(String, String),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
    Nest(usize, Box<Pred>),
}

impl Pred {
    fn build(&self) -> Predicate {
        match self {
            Pred::Cmp(op, f, v) => {
                let fl = field(f.as_str());
                let v = v.build();
                match op % 7 {
                    0 => fl.eq(v),
                    1 => fl.ne(v),
                    2 => fl.lt(v),
                    3 => fl.le(v),
                    4 => fl.gt(v),
                    5 => fl.ge(v),
                    _ => fl.contains(v),
                }
            }
            Pred::HasFields(fs) => has_fields(fs.iter().map(String::as_str)),
            Pred::StartsWith(f, p) => field(f.as_str()).starts_with(p.as_str()),
            Pred::Matches(f, p) => field(f.as_str()).matches(p.as_str()),
            Pred::And(ps) => Predicate::And {
                all: ps.iter().map(Pred::build).collect(),
            },
            Pred::Or(ps) => Predicate::Or {
                any: ps.iter().map(Pred::build).collect(),
            },
            Pred::Not(p) => !p.build(),
            Pred::Nest(n, p) => {
                let mut out = p.build();
                for i in 0..*n {
                    out = if i % 2 == 0 {
                        !out
                    } else {
                        Predicate::And { all: vec![out] }
                    };
                }
                out
            }
        }
    }

    /// Whether the predicate is within the limits (nesting and operand depth).
    fn within_limits(&self, budget: usize) -> bool {
        match self {
            Pred::Cmp(_, _, v) => v.depth() <= MAX_DEPTH,
            Pred::HasFields(_) | Pred::StartsWith(..) | Pred::Matches(..) => true,
            Pred::And(ps) | Pred::Or(ps) => {
                budget > 0 && ps.iter().all(|p| p.within_limits(budget - 1))
            }
            Pred::Not(p) => budget > 0 && p.within_limits(budget - 1),
            Pred::Nest(n, p) => *n <= budget && p.within_limits(budget - n),
        }
    }

    fn uses_regex(&self) -> bool {
        match self {
            Pred::Matches(..) => true,
            Pred::And(ps) | Pred::Or(ps) => ps.iter().any(Pred::uses_regex),
            Pred::Not(p) | Pred::Nest(_, p) => p.uses_regex(),
            _ => false,
        }
    }

    /// The documented semantics, for predicates without regexes and within the limits.
    fn eval(&self, doc: &Value) -> bool {
        match self {
            Pred::Cmp(op, f, v) => {
                let v = v.build();
                let Some(x) = path_get(doc, f) else {
                    return false;
                };
                let o = compare(x, &v);
                match op % 7 {
                    0 => o == Ordering::Equal,
                    1 => o != Ordering::Equal,
                    2 => o == Ordering::Less,
                    3 => o != Ordering::Greater,
                    4 => o == Ordering::Greater,
                    5 => o != Ordering::Less,
                    _ => x
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| compare(i, &v).is_eq())),
                }
            }
            Pred::HasFields(fs) => fs
                .iter()
                .all(|f| path_get(doc, f).is_some_and(|v| !v.is_null())),
            Pred::StartsWith(f, p) => path_get(doc, f)
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(p.as_str())),
            Pred::Matches(..) => unreachable!("not evaluated"),
            Pred::And(ps) => ps.iter().all(|p| p.eval(doc)),
            Pred::Or(ps) => ps.iter().any(|p| p.eval(doc)),
            Pred::Not(p) => !p.eval(doc),
            Pred::Nest(n, p) => {
                // `not` at even steps, `and [x]` (the identity) at odd ones.
                let inner = p.eval(doc);
                if n.div_ceil(2) % 2 == 1 {
                    !inner
                } else {
                    inner
                }
            }
        }
    }

    fn paths_valid(&self) -> bool {
        let ok = |f: &String| !f.is_empty() && f.split('.').all(|s| !s.is_empty());
        match self {
            Pred::Cmp(_, f, _) | Pred::StartsWith(f, _) | Pred::Matches(f, _) => ok(f),
            Pred::HasFields(fs) => fs.iter().all(ok),
            Pred::And(ps) | Pred::Or(ps) => ps.iter().all(Pred::paths_valid),
            Pred::Not(p) | Pred::Nest(_, p) => p.paths_valid(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn arb_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => (-3i64..4).prop_map(Value::from),
        1 => (-3i64..4).prop_map(|i| json!(i as f64 + 0.5)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        3 => "[ab\u{0}é日]{0,3}".prop_map(Value::String),
        1 => any::<String>().prop_map(Value::String),
    ]
    .boxed()
}

fn arb_small() -> BoxedStrategy<Value> {
    arb_leaf()
        .prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                vec(("[abk]{0,2}", inner), 0..3)
                    .prop_map(|kvs| Value::Object(kvs.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Depths around the limit, and far past it.
fn arb_depth() -> BoxedStrategy<usize> {
    prop_oneof![
        4 => 0usize..6,
        1 => Just(MAX_DEPTH - 2),
        1 => Just(MAX_DEPTH - 1),
        1 => Just(MAX_DEPTH),
        1 => Just(MAX_DEPTH + 1),
        1 => Just(130),
        1 => Just(10_000),
    ]
    .boxed()
}

fn arb_val() -> BoxedStrategy<Val> {
    prop_oneof![
        6 => arb_small().prop_map(Val::Small),
        1 => (arb_depth(), any::<u64>(), arb_leaf())
            .prop_map(|(depth, pattern, leaf)| Val::Chain { depth, pattern, leaf }),
    ]
    .boxed()
}

/// Keys of every type: valid ones from a small pool (so that writes collide), and nulls,
/// objects, too-long strings, arrays (with nulls inside), too-deep arrays.
fn arb_key() -> BoxedStrategy<Val> {
    let pool = prop::sample::select(vec![
        json!(0),
        json!(1),
        json!(1.0),
        json!(-2),
        json!(2.5),
        json!(u64::MAX),
        json!(""),
        json!("a"),
        json!("a\u{0}"),
        json!("é"),
        json!(true),
        json!(false),
        json!([]),
        json!([1, "a"]),
        json!([[true]]),
    ]);
    prop_oneof![
        40 => pool.prop_map(Val::Small),
        1 => Just(Val::Small(Value::Null)),
        1 => Just(Val::Small(json!({"a": 1}))),
        1 => Just(Val::Small(json!([1, null]))),
        1 => Just(Val::Small(json!("x".repeat(1100)))),
        1 => (arb_depth(), arb_leaf().prop_filter("keyable", |l| !l.is_null()))
            .prop_map(|(depth, leaf)| Val::Chain { depth, pattern: 0, leaf }),
    ]
    .boxed()
}

fn arb_field_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "n", "tags", "meta"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "a.b", "é", " ", "id2"]).prop_map(String::from),
    ]
    .boxed()
}

fn arb_doc() -> BoxedStrategy<Doc> {
    let fields = vec(
        (
            arb_field_name(),
            prop_oneof![
                5 => arb_val(),
                1 => vec(arb_small(), 0..5).prop_map(|v| Val::Small(Value::Array(v))),
                1 => arb_small().prop_map(|v| Val::Small(json!({"tag": v}))),
            ],
        ),
        0..4,
    );
    prop_oneof![
        12 => (prop::option::weighted(0.9, arb_key()), fields)
            .prop_map(|(key, fields)| Doc { key, fields, bare: None }),
        1 => arb_val().prop_map(|b| Doc { key: None, fields: vec![], bare: Some(b) }),
    ]
    .boxed()
}

fn arb_path() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "n", "tags", "meta.tag", "a.k"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "a..b", ".a", "missing"]).prop_map(String::from),
    ]
    .boxed()
}

fn arb_spec() -> BoxedStrategy<Spec> {
    prop_oneof![
        3 => arb_path().prop_map(Spec::Field),
        1 => (arb_path(), arb_path()).prop_map(|(a, b)| Spec::Compound(a, b)),
        2 => arb_path().prop_map(Spec::Multi),
    ]
    .boxed()
}

fn arb_name() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(vec!["ia", "ib", "ic"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "bad name", "é", "id"]).prop_map(String::from),
        1 => Just("x".repeat(65)),
    ]
    .boxed()
}

fn arb_table_name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => Just("t".to_string()),
        2 => Just("u".to_string()),
        1 => prop::sample::select(vec!["", "t/x", "ü", "__remodel_catalog"]).prop_map(String::from),
        1 => Just("y".repeat(65)),
    ]
    .boxed()
}

fn arb_pred() -> BoxedStrategy<Pred> {
    let leaf = prop_oneof![
        6 => (any::<u8>(), arb_path(), arb_val()).prop_map(|(o, f, v)| Pred::Cmp(o, f, v)),
        1 => vec(arb_path(), 0..3).prop_map(Pred::HasFields),
        1 => (arb_path(), "[ab]{0,2}").prop_map(|(f, p)| Pred::StartsWith(f, p)),
        1 => (arb_path(), prop::sample::select(vec!["^a", "(", "b+$", "[z-a]"]))
            .prop_map(|(f, p)| Pred::Matches(f, p.to_string())),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Pred::And),
            vec(inner.clone(), 0..3).prop_map(Pred::Or),
            inner.clone().prop_map(|p| Pred::Not(Box::new(p))),
            (arb_depth(), inner).prop_map(|(n, p)| Pred::Nest(n, Box::new(p))),
        ]
    })
    .boxed()
}

fn arb_op() -> BoxedStrategy<Op> {
    prop_oneof![
        12 => vec(arb_doc(), 1..4).prop_map(Op::Insert),
        3 => (arb_key(), prop_oneof![
                4 => vec((arb_field_name(), arb_val()), 0..3).prop_map(|kvs| {
                    // Built as an object description; too-deep values stay descriptions.
                    Val::Small(Value::Object(kvs.iter()
                        .filter(|(_, v)| v.depth() <= 3)
                        .map(|(k, v)| (k.clone(), v.build())).collect()))
                }),
                1 => arb_val(),
            ]).prop_map(|(k, p)| Op::Update(k, p)),
        2 => (arb_key(), arb_doc()).prop_map(|(k, d)| Op::Replace(k, d)),
        2 => arb_key().prop_map(Op::Delete),
        3 => arb_pred().prop_map(Op::Filter),
        1 => arb_table_name().prop_map(Op::CreateTable),
        2 => Just(Op::CreateTable("t".into())),
        1 => prop::sample::select(vec!["t", "u", "u", "", "t/x", "__remodel_catalog"])
            .prop_map(|n| Op::DropTable(n.to_string())),
        2 => (arb_name(), arb_spec()).prop_map(|(n, s)| Op::CreateIndex(n, s)),
        1 => arb_name().prop_map(Op::DropIndex),
        1 => (arb_name(), arb_spec(), vec(arb_doc(), 1..6))
            .prop_map(|(n, s, d)| Op::IndexDuringWrites(n, s, d)),
        1 => (arb_name(), arb_spec()).prop_map(|(n, s)| Op::DropDuringBuild(n, s)),
        1 => vec(arb_doc(), 1..8).prop_map(Op::DropTableDuringWrites),
        1 => Just(Op::Reopen),
    ]
    .boxed()
}

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
