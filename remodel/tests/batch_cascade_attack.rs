//! Adversarial, oracle-checked tests of batches with cascading deletes (`Batch::delete_cascading`,
//! `Batch::delete_where_cascading`, `query/cascade.rs`, `query/write.rs::expand`, the
//! `Preview` of `db/write.rs`).
//!
//! An in-memory model of the documented semantics (tables as maps of JSON documents, a
//! three-level reference graph `fleets <- ships.fleet <- crew.ship <- logs.member` plus the
//! self-reference `crew <- crew.mentor`, mixed actions, a multi-valued `crew.ship`, missing and
//! null reference fields, numeric and string keys that look alike) runs the same random
//! batches as the database; the outcome (Ok, or the error) and the state after every batch
//! must match exactly.
//!
//! The rules the model follows (from the rustdoc of `Batch`):
//! - the steps run in order, as one all-or-nothing commit;
//! - a cascade selects the rows that refer to what it deletes as the batch's earlier steps
//!   leave them (not as its own writes leave them: within one cascade the selection is that
//!   of the step's start; the schema avoids the cases where that could matter), recursively;
//! - `update_where`, `delete_where`, `require_empty` and the rows a `delete_where_cascading`
//!   starts from select from the data as it was before the batch;
//! - `require_exists` needs the row stored before the batch and deleted by no step before
//!   it (refused at its step), nor by a step after it unless the step right after it writes
//!   that same row;
//! - errors: the first cascade/precondition/requirement error in step order, then the first
//!   requirement whose row a later step deletes, then the first refused write in write
//!   order.
//!
//! Seeds: every random test prints its seed; `BATCH_CASCADE_SEED=<n>` replays one seed,
//! `BATCH_CASCADE_SEEDS=<n>` changes how many run.

mod common;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::{
    field, json, Conflict, Database, Error, IndexSpec, Patch, ReferenceAction, References, Value,
};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Schema.

const TABLES: [&str; 4] = ["fleets", "ships", "crew", "logs"];

fn pool(table: &str) -> Vec<Value> {
    match table {
        "fleets" => vec![json!(1), json!(2), json!("1"), json!("f3")],
        "ships" => vec![json!(1), json!(2), json!("1"), json!("s3"), json!("s4")],
        "crew" => vec![
            json!(1),
            json!(2),
            json!("1"),
            json!("c3"),
            json!("c4"),
            json!("c5"),
        ],
        "logs" => vec![json!(1), json!("1"), json!("l2"), json!("l3")],
        _ => unreachable!(),
    }
}

/// The reference field of a table and the table it refers to.
fn ref_field(table: &str) -> Option<(&'static str, &'static str)> {
    match table {
        "ships" => Some(("fleet", "fleets")),
        "crew" => Some(("ship", "ships")),
        "logs" => Some(("member", "crew")),
        _ => None,
    }
}

fn is_multi(table: &str, field: &str) -> bool {
    table == "crew" && field == "ship"
}

async fn schema(db: &Database) {
    for t in TABLES {
        db.create_table(t).await.unwrap();
    }
    db.create_table("marks").await.unwrap();
    db.table("ships")
        .create_index("fleet", IndexSpec::field("fleet"))
        .await
        .unwrap();
    db.table("crew")
        .create_index("ship", IndexSpec::multi("ship"))
        .await
        .unwrap();
    db.table("crew")
        .create_index("mentor", IndexSpec::field("mentor"))
        .await
        .unwrap();
    db.table("logs")
        .create_index("member", IndexSpec::field("member"))
        .await
        .unwrap();
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Del,
    Null,
    Restrict,
}

/// Which references a cascade follows, and how. (`crew.mentor` never restricts: whether a
/// restricting row that the same cascade deletes counts is not documented.)
#[derive(Clone, Debug)]
struct Refs {
    fleet_ship: Option<Act>,
    ship_crew: Option<Act>,
    crew_mentor: Option<Act>,
    crew_logs: Option<Act>,
}

impl Refs {
    /// In the order they are added (the order `References` keeps per target).
    fn list(&self) -> Vec<(&'static str, &'static str, &'static str, Act)> {
        let mut v = Vec::new();
        let all = [
            ("fleets", "ships", "fleet", self.fleet_ship),
            ("ships", "crew", "ship", self.ship_crew),
            ("crew", "crew", "mentor", self.crew_mentor),
            ("crew", "logs", "member", self.crew_logs),
        ];
        for (target, table, f, a) in all {
            if let Some(a) = a {
                v.push((target, table, f, a));
            }
        }
        v
    }

    fn of(&self, target: &str) -> Vec<(&'static str, &'static str, Act)> {
        self.list()
            .into_iter()
            .filter(|r| r.0 == target)
            .map(|r| (r.1, r.2, r.3))
            .collect()
    }

    fn build(&self) -> References {
        let mut refs = References::new();
        for (target, table, f, a) in self.list() {
            let action = match a {
                Act::Del => ReferenceAction::Delete,
                Act::Null => ReferenceAction::Nullify,
                Act::Restrict => ReferenceAction::Restrict {
                    why: format!("restrict {table}.{f}"),
                },
            };
            refs.add(target, table, f, action);
        }
        refs
    }
}

// ---------------------------------------------------------------------------------------
// Closures: pure functions of the current row, shared by the database and the model.

#[derive(Clone, Copy, Debug)]
enum Fun {
    /// `n` goes up by one (mod 5).
    Bump,
    /// The reference moves: to the next parent of the pool, the first element of an array,
    /// or a parent picked by `n` when there is none.
    Follow,
    /// Fails when the row's `n` is 3 (a closure error fails the batch).
    FailIf3,
}

fn n_of(doc: &Value) -> i64 {
    doc.get("n").and_then(Value::as_i64).unwrap_or(0)
}

fn followed(table: &str, doc: &Value) -> Option<(&'static str, Value)> {
    let (f, parent) = ref_field(table)?;
    let p = pool(parent);
    let next = match doc.get(f) {
        Some(Value::Array(a)) => a.first().cloned().unwrap_or(Value::Null),
        Some(v) if !v.is_null() => match p.iter().position(|x| x == v) {
            Some(i) => p[(i + 1) % p.len()].clone(),
            None => p[0].clone(),
        },
        _ => p[n_of(doc).rem_euclid(p.len() as i64) as usize].clone(),
    };
    Some((f, next))
}

impl Fun {
    fn patch(self, table: &str, doc: &Value) -> remodel::Result<Value> {
        match self {
            Fun::Bump => Ok(json!({"n": (n_of(doc) + 1) % 5})),
            Fun::Follow => Ok(match followed(table, doc) {
                Some((f, v)) => json!({ f: v }),
                None => json!({"tag": "followed"}),
            }),
            Fun::FailIf3 => {
                if n_of(doc) == 3 {
                    Err(Error::Precondition("closure saw n=3".into()))
                } else {
                    Ok(json!({"seen": true}))
                }
            }
        }
    }

    /// What `replace_with` writes (without the key, which the store fills in, for Follow).
    fn replace(self, table: &str, doc: &Value) -> remodel::Result<Value> {
        match self {
            Fun::Bump => {
                let mut d = doc.clone();
                d["n"] = json!((n_of(doc) + 1) % 5);
                Ok(d)
            }
            Fun::Follow => {
                let mut d = json!({"n": n_of(doc)});
                if let Some((f, v)) = followed(table, doc) {
                    d[f] = v;
                }
                Ok(d)
            }
            Fun::FailIf3 => {
                if n_of(doc) == 3 {
                    Err(Error::Precondition("closure saw n=3".into()))
                } else {
                    let mut d = doc.clone();
                    d["replaced"] = json!(true);
                    Ok(d)
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Batches as data.

#[derive(Clone, Debug)]
enum Query {
    /// `get_all(keys).index(field)` on a reference index.
    ByIndex(&'static str, &'static str, Vec<Value>),
    /// `filter(n == v)`.
    ByN(&'static str, i64),
    /// `get_all(keys)` on the primary key.
    ByPk(&'static str, Vec<Value>),
}

impl Query {
    fn table(&self) -> &'static str {
        match self {
            Query::ByIndex(t, ..) | Query::ByN(t, _) | Query::ByPk(t, _) => t,
        }
    }
    fn build(&self, db: &Database) -> remodel::Query {
        match self {
            Query::ByIndex(t, f, keys) => db.table(*t).get_all(keys.clone()).index(*f),
            Query::ByN(t, n) => db.table(*t).filter(field("n").eq(*n)),
            Query::ByPk(t, keys) => db.table(*t).get_all(keys.clone()),
        }
    }
    /// The keys of the rows it selects in `m`.
    fn select(&self, m: &Model) -> Vec<Value> {
        let t = &m.t[self.table()];
        t.values()
            .filter(|d| match self {
                Query::ByIndex(tb, f, keys) => refers(tb, f, d, keys),
                Query::ByN(_, n) => d.get("n").and_then(Value::as_i64) == Some(*n),
                Query::ByPk(_, keys) => keys.contains(&d["id"]),
            })
            .map(|d| d["id"].clone())
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Upd {
    Merge(Value),
    With(Fun),
}

impl Upd {
    fn build(&self, table: &'static str) -> Patch {
        match self {
            Upd::Merge(v) => Patch::merge(v.clone()),
            Upd::With(f) => {
                let f = *f;
                Patch::with(move |d| f.patch(table, d))
            }
        }
    }
    fn apply(&self, table: &str, doc: &Value) -> Result<Value, String> {
        let patch = match self {
            Upd::Merge(v) => v.clone(),
            Upd::With(f) => f.patch(table, doc).map_err(|e| kind(&e))?,
        };
        let mut out = doc.clone();
        merge(&mut out, &patch);
        Ok(out)
    }
}

#[derive(Clone, Debug)]
enum Pol {
    Error,
    Replace,
    Update,
    /// `insert_resolving`: the new document, keeping the stored `n`.
    KeepN,
}

#[derive(Clone, Debug)]
enum Step {
    Insert(&'static str, Value, Pol),
    Update(&'static str, Value, Upd),
    Replace(&'static str, Value, Value),
    ReplaceWith(&'static str, Value, Fun),
    Delete(&'static str, Value),
    DeleteCascading(&'static str, Value, Refs),
    UpdateWhere(Query, Upd),
    DeleteWhere(Query),
    DeleteWhereCascading(Query, Refs),
    RequireEmpty(Query),
    RequireExists(&'static str, Value),
}

impl Step {
    /// The row a keyed write writes (what makes a `require_exists` just before it its own).
    fn keyed(&self) -> Option<(&'static str, &Value)> {
        match self {
            Step::Update(t, k, _)
            | Step::Replace(t, k, _)
            | Step::ReplaceWith(t, k, _)
            | Step::Delete(t, k)
            | Step::DeleteCascading(t, k, _) => Some((t, k)),
            _ => None,
        }
    }
}

fn build(db: &Database, steps: &[Step]) -> remodel::Batch {
    let mut b = db.batch();
    for s in steps {
        b = match s {
            Step::Insert(t, doc, pol) => match pol {
                Pol::Error => b.insert(t, doc.clone()),
                Pol::Replace => b.insert_with(t, doc.clone(), Conflict::Replace),
                Pol::Update => b.insert_with(t, doc.clone(), Conflict::Update),
                Pol::KeepN => b.insert_resolving(t, doc.clone(), |stored, new| {
                    let mut d = new.clone();
                    d["n"] = stored["n"].clone();
                    Ok(d)
                }),
            },
            Step::Update(t, k, u) => b.update(t, k.clone(), u.build(t)),
            Step::Replace(t, k, doc) => b.replace(t, k.clone(), doc.clone()),
            Step::ReplaceWith(t, k, f) => {
                let (f, table) = (*f, *t);
                b.replace_with(t, k.clone(), move |d| f.replace(table, d))
            }
            Step::Delete(t, k) => b.delete(t, k.clone()),
            Step::DeleteCascading(t, k, r) => b.delete_cascading(t, k.clone(), &r.build()),
            Step::UpdateWhere(q, u) => b.update_where(&q.build(db), u.build(q.table())),
            Step::DeleteWhere(q) => b.delete_where(&q.build(db)),
            Step::DeleteWhereCascading(q, r) => b.delete_where_cascading(&q.build(db), &r.build()),
            Step::RequireEmpty(q) => b.require_empty(&q.build(db), "require_empty"),
            Step::RequireExists(t, k) => b.require_exists(t, k.clone()),
        };
    }
    b
}

/// An error as the model names it.
fn kind(e: &Error) -> String {
    match e {
        Error::KeyConflict { table, key } => format!("KeyConflict {table} {key}"),
        Error::NotFound { table, key } => format!("NotFound {table} {key}"),
        Error::Restricted {
            table,
            referenced_by,
            field,
            ..
        } => format!("Restricted {table}<-{referenced_by}.{field}"),
        Error::Precondition(why) => format!("Precondition {why}"),
        Error::InvalidDocument { .. } => "InvalidDocument".into(),
        other => format!("other: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The model.

fn merge(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => {
            for (k, v) in p {
                match d.get_mut(k) {
                    Some(old) if old.is_object() && v.is_object() => merge(old, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (d, p) => *d = p.clone(),
    }
}

fn ck(k: &Value) -> String {
    k.to_string()
}

/// Whether `doc` of `table` refers to one of `keys` in `field` (as its index has it).
fn refers(table: &str, field: &str, doc: &Value, keys: &[Value]) -> bool {
    match doc.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) if is_multi(table, field) => {
            a.iter().any(|v| !v.is_null() && keys.contains(v))
        }
        Some(v) => keys.contains(v),
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
struct Model {
    t: BTreeMap<&'static str, BTreeMap<String, Value>>,
}

impl Model {
    fn new() -> Self {
        let mut m = Model::default();
        for t in TABLES {
            m.t.insert(t, BTreeMap::new());
        }
        m
    }

    fn get(&self, t: &str, k: &Value) -> Option<&Value> {
        self.t[t].get(&ck(k))
    }

    /// A cascade from `keys` of `table`, selecting from the rows as they are at its start.
    fn cascade(
        &mut self,
        table: &'static str,
        keys: Vec<Value>,
        refs: &Refs,
        deletes: &mut HashSet<(String, String)>,
    ) -> Result<(), String> {
        let view = self.clone();
        let mut done: HashSet<(String, String)> = HashSet::new();
        let mut first = Vec::new();
        for k in keys {
            if done.insert((table.into(), ck(&k))) {
                self.t.get_mut(table).unwrap().remove(&ck(&k));
                deletes.insert((table.into(), ck(&k)));
                first.push(k);
            }
        }
        let mut work = vec![(table, first)];
        while let Some((target, keys)) = work.pop() {
            if keys.is_empty() {
                continue;
            }
            for (rt, rf, act) in refs.of(target) {
                let rows: Vec<(String, Value)> = view.t[rt]
                    .iter()
                    .filter(|(_, d)| refers(rt, rf, d, &keys))
                    .map(|(k, d)| (k.clone(), d.clone()))
                    .collect();
                match act {
                    Act::Restrict => {
                        if !rows.is_empty() {
                            return Err(format!("Restricted {target}<-{rt}.{rf}"));
                        }
                    }
                    Act::Null => {
                        for (k, _) in rows {
                            if let Some(d) = self.t.get_mut(rt).unwrap().get_mut(&k) {
                                d[rf] = Value::Null;
                            }
                        }
                    }
                    Act::Del => {
                        let mut next = Vec::new();
                        for (k, d) in rows {
                            if done.insert((rt.into(), k.clone())) {
                                self.t.get_mut(rt).unwrap().remove(&k);
                                deletes.insert((rt.into(), k));
                                next.push(d["id"].clone());
                            }
                        }
                        if !next.is_empty() && !refs.of(rt).is_empty() {
                            work.push((rt, next));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a batch: Ok (and the model moves on) or the error it must fail with (and the
    /// model stays).
    fn run(&mut self, steps: &[Step]) -> Result<(), String> {
        // Checked when the batch is built.
        for s in steps {
            if let Step::Replace(_, k, doc) = s {
                if doc.get("id").is_some_and(|id| id != k) {
                    return Err("InvalidDocument".into());
                }
            }
        }
        let before = self.clone();
        let mut st = self.clone();
        let mut refused: Option<String> = None;
        let mut deletes: HashSet<(String, String)> = HashSet::new();
        let mut required = Vec::new();
        let fail = |refused: &mut Option<String>, e: String| {
            if refused.is_none() {
                *refused = Some(e);
            }
        };
        for (i, s) in steps.iter().enumerate() {
            match s {
                Step::Insert(t, doc, pol) => {
                    let key = ck(&doc["id"]);
                    let tab = st.t.get_mut(t).unwrap();
                    match (tab.get(&key).cloned(), pol) {
                        (None, _) => {
                            tab.insert(key, doc.clone());
                        }
                        (Some(_), Pol::Error) => {
                            fail(&mut refused, format!("KeyConflict {t} {}", doc["id"]))
                        }
                        (Some(_), Pol::Replace) => {
                            tab.insert(key, doc.clone());
                        }
                        (Some(mut old), Pol::Update) => {
                            merge(&mut old, doc);
                            tab.insert(key, old);
                        }
                        (Some(old), Pol::KeepN) => {
                            let mut d = doc.clone();
                            d["n"] = old["n"].clone();
                            tab.insert(key, d);
                        }
                    }
                }
                Step::Update(t, k, u) => {
                    if let Some(d) = st.get(t, k).cloned() {
                        match u.apply(t, &d) {
                            Ok(d) => {
                                st.t.get_mut(t).unwrap().insert(ck(k), d);
                            }
                            Err(e) => fail(&mut refused, e),
                        }
                    }
                }
                Step::Replace(t, k, doc) => {
                    if st.get(t, k).is_some() {
                        let mut d = doc.clone();
                        d["id"] = k.clone();
                        st.t.get_mut(t).unwrap().insert(ck(k), d);
                    }
                }
                Step::ReplaceWith(t, k, f) => {
                    if let Some(d) = st.get(t, k).cloned() {
                        match f.replace(t, &d) {
                            Ok(mut out) => {
                                if out.get("id").is_none() {
                                    out["id"] = d["id"].clone();
                                }
                                st.t.get_mut(t).unwrap().insert(ck(k), out);
                            }
                            Err(e) => fail(&mut refused, kind(&e)),
                        }
                    }
                }
                Step::Delete(t, k) => {
                    st.t.get_mut(t).unwrap().remove(&ck(k));
                    deletes.insert((t.to_string(), ck(k)));
                }
                Step::DeleteCascading(t, k, refs) => {
                    st.cascade(t, vec![k.clone()], refs, &mut deletes)?
                }
                Step::UpdateWhere(q, u) => {
                    let t = q.table();
                    for k in q.select(&before) {
                        if let Some(d) = st.get(t, &k).cloned() {
                            match u.apply(t, &d) {
                                Ok(d) => {
                                    st.t.get_mut(t).unwrap().insert(ck(&k), d);
                                }
                                Err(e) => fail(&mut refused, e),
                            }
                        }
                    }
                }
                Step::DeleteWhere(q) => {
                    for k in q.select(&before) {
                        st.t.get_mut(q.table()).unwrap().remove(&ck(&k));
                        deletes.insert((q.table().to_string(), ck(&k)));
                    }
                }
                Step::DeleteWhereCascading(q, refs) => {
                    let keys = q.select(&before);
                    st.cascade(q.table(), keys, refs, &mut deletes)?
                }
                Step::RequireEmpty(q) => {
                    if !q.select(&before).is_empty() {
                        return Err("Precondition require_empty".into());
                    }
                }
                Step::RequireExists(t, k) => {
                    // Missing before the batch, or deleted by a step before it (and not
                    // inserted again): refused at this step.
                    let deleted_before =
                        deletes.contains(&(t.to_string(), ck(k))) && st.get(t, k).is_none();
                    if before.get(t, k).is_none() || deleted_before {
                        return Err(format!("NotFound {t} {k}"));
                    }
                    let own = steps
                        .get(i + 1)
                        .and_then(Step::keyed)
                        .is_some_and(|(t2, k2)| t2 == *t && k2 == k);
                    required.push((*t, k.clone(), own));
                }
            }
        }
        for (t, k, own) in required {
            let gone = !own && deletes.contains(&(t.to_string(), ck(&k)));
            if gone || before.get(t, &k).is_none() {
                return Err(format!("NotFound {t} {k}"));
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        *self = st;
        Ok(())
    }
}

async fn state_of(db: &Database) -> Model {
    let mut m = Model::new();
    for t in TABLES {
        for d in db.table(t).run().await.unwrap() {
            m.t.get_mut(t).unwrap().insert(ck(&d["id"]), d);
        }
    }
    m
}

fn diff(db: &Model, model: &Model) -> String {
    let mut out = String::new();
    for t in TABLES {
        let (a, b) = (&db.t[t], &model.t[t]);
        for k in a
            .keys()
            .chain(b.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if a.get(k) != b.get(k) {
                out.push_str(&format!(
                    "  {t}[{k}]: db {:?} / model {:?}\n",
                    a.get(k).map(|v| v.to_string()),
                    b.get(k).map(|v| v.to_string())
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Random generation.

fn pick<T: Clone>(rng: &mut StdRng, v: &[T]) -> T {
    v[rng.gen_range(0..v.len())].clone()
}

fn some_keys(rng: &mut StdRng, table: &str) -> Vec<Value> {
    let p = pool(table);
    (0..rng.gen_range(1..=2)).map(|_| pick(rng, &p)).collect()
}

/// A value for the reference field of `table` (a parent key, several, null, or nothing).
fn ref_value(rng: &mut StdRng, table: &str) -> Option<Value> {
    let (f, parent) = ref_field(table)?;
    let p = pool(parent);
    Some(match rng.gen_range(0..10) {
        0 => Value::Null,
        1 => return None,
        2..=4 if is_multi(table, f) => {
            let mut a: Vec<Value> = (0..rng.gen_range(0..=3)).map(|_| pick(rng, &p)).collect();
            if rng.gen_bool(0.1) {
                a.push(Value::Null);
            }
            Value::Array(a)
        }
        _ => pick(rng, &p),
    })
}

fn doc(rng: &mut StdRng, table: &str, key: Value) -> Value {
    let mut d = json!({"id": key, "n": rng.gen_range(0..5)});
    if let Some((f, _)) = ref_field(table) {
        if let Some(v) = ref_value(rng, table) {
            d[f] = v;
        }
    }
    if table == "crew" && rng.gen_bool(0.6) {
        d["mentor"] = pick(rng, &pool("crew"));
    }
    d
}

fn any_table(rng: &mut StdRng) -> &'static str {
    // The tables that refer more often than fleets.
    pick(
        rng,
        &["fleets", "ships", "ships", "crew", "crew", "crew", "logs"],
    )
}

fn gen_refs(rng: &mut StdRng, calm: bool) -> Refs {
    let opt = |rng: &mut StdRng, acts: &[Act]| {
        if rng.gen_bool(0.1) {
            None
        } else {
            Some(pick(rng, acts))
        }
    };
    if calm {
        return Refs {
            fleet_ship: opt(rng, &[Act::Del, Act::Del, Act::Null]),
            ship_crew: opt(rng, &[Act::Del, Act::Null]),
            crew_mentor: opt(rng, &[Act::Del, Act::Null]),
            crew_logs: opt(rng, &[Act::Del, Act::Null]),
        };
    }
    Refs {
        fleet_ship: opt(rng, &[Act::Del, Act::Del, Act::Null, Act::Restrict]),
        ship_crew: opt(rng, &[Act::Del, Act::Null, Act::Restrict]),
        crew_mentor: opt(rng, &[Act::Del, Act::Null]),
        crew_logs: opt(rng, &[Act::Del, Act::Null, Act::Restrict]),
    }
}

fn gen_query(rng: &mut StdRng) -> Query {
    match rng.gen_range(0..4) {
        0 | 1 => {
            let (t, f, parent) = pick(
                rng,
                &[
                    ("ships", "fleet", "fleets"),
                    ("crew", "ship", "ships"),
                    ("crew", "mentor", "crew"),
                    ("logs", "member", "crew"),
                ],
            );
            Query::ByIndex(t, f, some_keys(rng, parent))
        }
        2 => Query::ByN(any_table(rng), rng.gen_range(0..5)),
        _ => {
            let t = any_table(rng);
            Query::ByPk(t, some_keys(rng, t))
        }
    }
}

fn gen_upd(rng: &mut StdRng, table: &str, calm: bool) -> Upd {
    match rng.gen_range(0..5) {
        2 if calm => Upd::With(Fun::Bump),
        0 => Upd::With(Fun::Bump),
        1 => Upd::With(Fun::Follow),
        2 => Upd::With(Fun::FailIf3),
        _ => {
            let mut p = json!({});
            match ref_field(table) {
                Some((f, _)) if rng.gen_bool(0.8) => {
                    p[f] = ref_value(rng, table).unwrap_or(Value::Null);
                }
                _ => p["n"] = json!(rng.gen_range(0..5)),
            }
            if table == "crew" && rng.gen_bool(0.3) {
                p["mentor"] = pick(rng, &pool("crew"));
            }
            Upd::Merge(p)
        }
    }
}

fn gen_fun(rng: &mut StdRng, calm: bool) -> Fun {
    if calm {
        return pick(rng, &[Fun::Bump, Fun::Follow]);
    }
    pick(rng, &[Fun::Bump, Fun::Follow, Fun::Follow, Fun::FailIf3])
}

fn gen_step(rng: &mut StdRng, calm: bool) -> Step {
    let t = any_table(rng);
    let k = pick(rng, &pool(t));
    match rng.gen_range(0..100) {
        0..=11 => {
            let pol = if calm {
                pick(rng, &[Pol::Replace, Pol::Update, Pol::KeepN])
            } else {
                pick(
                    rng,
                    &[
                        Pol::Error,
                        Pol::Error,
                        Pol::Replace,
                        Pol::Update,
                        Pol::KeepN,
                    ],
                )
            };
            Step::Insert(t, doc(rng, t, k), pol)
        }
        12..=27 => {
            let u = gen_upd(rng, t, calm);
            Step::Update(t, k, u)
        }
        28..=31 => {
            let mut d = doc(rng, t, k.clone());
            if rng.gen_bool(0.3) {
                d.as_object_mut().unwrap().remove("id");
            } else if !calm && rng.gen_bool(0.03) {
                d["id"] = json!("not-the-key");
            }
            Step::Replace(t, k, d)
        }
        32..=37 => Step::ReplaceWith(t, k, gen_fun(rng, calm)),
        38..=45 => Step::Delete(t, k),
        46..=65 => {
            let t = pick(rng, &["fleets", "fleets", "ships", "ships", "crew"]);
            let k = pick(rng, &pool(t));
            Step::DeleteCascading(t, k, gen_refs(rng, calm))
        }
        66..=72 => {
            let q = gen_query(rng);
            let u = gen_upd(rng, q.table(), calm);
            Step::UpdateWhere(q, u)
        }
        73..=77 => Step::DeleteWhere(gen_query(rng)),
        78..=86 => Step::DeleteWhereCascading(gen_query(rng), gen_refs(rng, calm)),
        87..=91 if calm => Step::Delete(t, k),
        87..=91 => Step::RequireEmpty(gen_query(rng)),
        _ if calm => Step::Insert(t, doc(rng, t, k), Pol::Update),
        _ => Step::RequireExists(t, k),
    }
}

fn gen_batch(rng: &mut StdRng, calm: bool) -> Vec<Step> {
    let n = rng.gen_range(1..=9);
    let mut steps: Vec<Step> = (0..n).map(|_| gen_step(rng, calm)).collect();
    // Often: a move onto (or away from) a row, then a cascade from that row.
    if rng.gen_bool(0.4) {
        let (t, parent) = pick(
            rng,
            &[("ships", "fleets"), ("crew", "ships"), ("logs", "crew")],
        );
        let target = pick(rng, &pool(parent));
        let f = ref_field(t).unwrap().0;
        let child = pick(rng, &pool(t));
        let at = rng.gen_range(0..=steps.len());
        let mv = if rng.gen_bool(0.5) {
            Step::Update(t, child, Upd::Merge(json!({ f: target.clone() })))
        } else {
            let mut d = doc(rng, t, child);
            d[f] = target.clone();
            let pols = if calm {
                vec![Pol::Replace]
            } else {
                vec![Pol::Error, Pol::Replace]
            };
            Step::Insert(t, d, pick(rng, &pols))
        };
        steps.insert(at, mv);
        let at = rng.gen_range(0..=steps.len());
        steps.insert(
            at,
            Step::DeleteCascading(parent, target, gen_refs(rng, calm)),
        );
    }
    steps
}

fn initial(rng: &mut StdRng) -> Vec<(&'static str, Value)> {
    let mut rows = Vec::new();
    for t in TABLES {
        for k in pool(t) {
            if rng.gen_bool(0.75) {
                rows.push((t, doc(rng, t, k)));
            }
        }
    }
    rows
}

async fn load(db: &Database, rows: &[(&'static str, Value)]) -> Model {
    let mut m = Model::new();
    for t in TABLES {
        let docs: Vec<Value> = rows
            .iter()
            .filter(|r| r.0 == t)
            .map(|r| r.1.clone())
            .collect();
        for d in &docs {
            m.t.get_mut(t).unwrap().insert(ck(&d["id"]), d.clone());
        }
        if !docs.is_empty() {
            db.table(t).insert_many(docs).await.unwrap();
        }
    }
    m
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("BATCH_CASCADE_SEED") {
        return vec![s.parse().expect("BATCH_CASCADE_SEED: a number")];
    }
    let n = std::env::var("BATCH_CASCADE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let base: u64 = rand::random::<u32>() as u64;
    (0..n).map(|i| base * 1000 + i).collect()
}

fn on_postgres() -> bool {
    remodel::postgres::suites_on_postgres()
}

fn show(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| format!("    {s:?}\n"))
        .collect::<String>()
}

// ---------------------------------------------------------------------------------------
// Directed cases (each one a rule of the rustdoc, on the smallest batch that shows it).

async fn fresh() -> Database {
    let db = common::soft_db().await;
    schema(&db).await;
    db
}

fn all(act: Act) -> Refs {
    Refs {
        fleet_ship: Some(if act == Act::Restrict { Act::Del } else { act }),
        ship_crew: Some(act),
        crew_mentor: Some(if act == Act::Restrict { Act::Null } else { act }),
        crew_logs: Some(act),
    }
}

/// Runs `steps` on `db` and on the model, and checks they agree; returns the outcome.
async fn check(db: &Database, m: &mut Model, steps: &[Step], ctx: &str) -> Result<(), String> {
    let got = build(db, steps).await.map(|_| ()).map_err(|e| kind(&e));
    let want = m.run(steps);
    let now = state_of(db).await;
    assert_eq!(
        got,
        want,
        "{ctx}: outcome differs\n  batch:\n{}  state diff:\n{}",
        show(steps),
        diff(&now, m)
    );
    assert!(
        now == *m,
        "{ctx}: state differs after {got:?}\n  batch:\n{}  diff (db / model):\n{}",
        show(steps),
        diff(&now, m)
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_three_levels_moves_and_inserts_around_a_cascade() {
    let db = fresh().await;
    let rows = vec![
        ("fleets", json!({"id": 1, "n": 0})),
        ("fleets", json!({"id": "1", "n": 0})),
        ("ships", json!({"id": 1, "n": 0, "fleet": 1})),
        ("ships", json!({"id": "1", "n": 0, "fleet": "1"})),
        ("ships", json!({"id": 2, "n": 0, "fleet": 1})),
        ("crew", json!({"id": 1, "n": 0, "ship": [1, "1"]})),
        ("crew", json!({"id": "1", "n": 0, "ship": "1", "mentor": 1})),
        ("crew", json!({"id": 2, "n": 0, "ship": 2})),
        ("crew", json!({"id": "c3", "n": 0, "mentor": 2})),
        ("logs", json!({"id": 1, "n": 0, "member": "c3"})),
        ("logs", json!({"id": "1", "n": 0, "member": 1})),
    ];
    let mut m = load(&db, &rows).await;
    // Ship 2 moves away from fleet 1 before the cascade, ship "1" (of fleet "1", the string)
    // moves onto fleet 1; a crew member is inserted onto ship 1 and another moved onto ship
    // 2 after the cascade (left dangling); the fleet is deleted again by a plain delete.
    let steps = vec![
        Step::Update("ships", json!(2), Upd::Merge(json!({"fleet": "1"}))),
        Step::Update("ships", json!("1"), Upd::Merge(json!({"fleet": 1}))),
        Step::Insert("crew", json!({"id": "c4", "ship": [2, 1]}), Pol::Error),
        Step::DeleteCascading("fleets", json!(1), all(Act::Del)),
        Step::Update("crew", json!("c3"), Upd::Merge(json!({"ship": 1}))),
        Step::Delete("fleets", json!(1)),
    ];
    check(&db, &mut m, &steps, "delete").await.unwrap();
    // Nullify through the self-reference and the logs.
    let mut r = all(Act::Null);
    r.ship_crew = Some(Act::Del);
    let steps = vec![
        Step::Insert("crew", json!({"id": "c5", "mentor": 2}), Pol::Error),
        Step::DeleteCascading("ships", json!(2), r),
    ];
    check(&db, &mut m, &steps, "nullify").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directed_restrict_sees_moves_and_fails_everything() {
    let db = fresh().await;
    let rows = vec![
        ("ships", json!({"id": 1, "n": 0})),
        ("ships", json!({"id": "1", "n": 0})),
        ("crew", json!({"id": 1, "n": 0, "ship": [1, "1"]})),
        ("logs", json!({"id": 1, "n": 0, "member": 1})),
    ];
    let mut m = load(&db, &rows).await;
    let r = all(Act::Restrict);
    // Crew 1 leaves ship 1 (its array becomes ["1"]): ship 1 is free.
    let steps = vec![
        Step::Update("crew", json!(1), Upd::Merge(json!({"ship": ["1"]}))),
        Step::DeleteCascading("ships", json!(1), r.clone()),
    ];
    check(&db, &mut m, &steps, "free").await.unwrap();
    // Crew 1 still on "1" (string key): restricted, nothing written.
    let steps = vec![
        Step::Insert("ships", json!({"id": 7}), Pol::Error),
        Step::Update("crew", json!(1), Upd::With(Fun::Bump)),
        Step::DeleteCascading("ships", json!("1"), r.clone()),
    ];
    assert!(check(&db, &mut m, &steps, "restricted").await.is_err());
    // The log moves away from crew 1 inside the batch, then crew 1 can go (logs restrict).
    let mut r2 = all(Act::Restrict);
    r2.ship_crew = Some(Act::Del);
    let steps = vec![
        Step::Update("logs", json!(1), Upd::Merge(json!({"member": "c9"}))),
        Step::DeleteCascading("ships", json!("1"), r2.clone()),
    ];
    check(&db, &mut m, &steps, "log moved away").await.unwrap();
}

/// `Error::Restricted { rows }` says "how many rows refer to it": a row that refers to two
/// of the deleted rows through a multi-valued field is one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn restricted_counts_rows_not_index_entries() {
    let db = fresh().await;
    let rows = vec![
        ("fleets", json!({"id": 1})),
        ("ships", json!({"id": 1, "fleet": 1})),
        ("ships", json!({"id": 2, "fleet": 1})),
        ("crew", json!({"id": 1, "ship": [1, 2]})),
    ];
    load(&db, &rows).await;
    let mut r = all(Act::Restrict);
    r.fleet_ship = Some(Act::Del);
    let got = db.batch().delete_cascading("fleets", 1, &r.build()).await;
    assert!(
        matches!(got, Err(Error::Restricted { rows: 1, .. })),
        "one crew row refers to the deleted ships: {got:?}"
    );
}

/// `require_exists` just before a `delete_cascading` of the same row is that delete's own,
/// however the key is spelled (1 and 1.0 are the same key, as they are for `delete`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn require_exists_own_delete_cascading_with_another_spelling_of_the_key() {
    let db = fresh().await;
    load(&db, &[("fleets", json!({"id": 1}))]).await;
    let refs = all(Act::Del).build();
    // With `delete` the requirement is its own write whatever the spelling.
    let plain = db
        .batch()
        .require_exists("fleets", 1)
        .delete("fleets", 1.0)
        .insert("ships", json!({"id": 9}))
        .await;
    assert!(plain.is_ok(), "{plain:?}");
    db.table("fleets").insert(json!({"id": 1})).await.unwrap();
    let cascading = db
        .batch()
        .require_exists("fleets", 1)
        .delete_cascading("fleets", 1.0, &refs)
        .await;
    assert!(
        cascading.is_ok(),
        "require_exists(1) then delete_cascading(1.0): {cascading:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Random batches against the model.

/// The items a feed has queued now (after waiting `wait` for the first).
async fn drain(feed: &mut remodel::Feed, n: usize) -> Vec<remodel::Change> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), feed.next()).await {
            Ok(Some(c)) => out.push(c.unwrap()),
            Ok(None) => panic!("a feed ended"),
            Err(_) => panic!("a feed stalled with {} of {n} items", out.len()),
        }
    }
    out
}

/// The batch's changefeed items, per table: one per row the batch changed (old and new as
/// the states before and after it), all with one commit position.
async fn check_feeds(
    feeds: &mut [(&'static str, remodel::Feed)],
    before: &Model,
    after: &Model,
    ctx: &str,
) {
    let mut seqs = HashSet::new();
    for (t, feed) in feeds.iter_mut() {
        let (a, b) = (&before.t[*t], &after.t[*t]);
        let changed: BTreeMap<String, (Option<Value>, Option<Value>)> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| (k.clone(), (a.get(k).cloned(), b.get(k).cloned())))
            .collect();
        let items = drain(feed, changed.len()).await;
        let mut got = BTreeMap::new();
        for c in &items {
            seqs.insert(c.seq());
            let row = c.new_val().or(c.old_val()).unwrap();
            let prev = got.insert(ck(&row["id"]), (c.old_val().cloned(), c.new_val().cloned()));
            assert!(prev.is_none(), "{ctx}: two items for {t}[{}]", row["id"]);
        }
        assert!(
            got == changed,
            "{ctx}: the feed of {t} differs\n  items: {got:?}\n  changes: {changed:?}"
        );
    }
    assert!(
        seqs.len() <= 1,
        "{ctx}: one commit, several positions {seqs:?}"
    );
    // Nothing more than what the commit changed.
    tokio::time::sleep(Duration::from_millis(if on_postgres() { 20 } else { 1 })).await;
    for (t, feed) in feeds.iter_mut() {
        if let Some(c) = futures::FutureExt::now_or_never(feed.next()).flatten() {
            panic!("{ctx}: an item of {t} for no change: {c:?}");
        }
    }
}

async fn random_run(seed: u64, batches: usize, calm: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = fresh().await;
    let rows = initial(&mut rng);
    let mut m = load(&db, &rows).await;
    let mut feeds = Vec::new();
    for t in TABLES {
        feeds.push((t, db.table(t).changes().await.unwrap()));
    }
    let mut outcomes = (0, 0);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..batches {
        let steps = gen_batch(&mut rng, calm);
        // Refill now and then, so that cascades keep finding rows.
        if i % 10 == 9 {
            let more = initial(&mut rng);
            let before = m.clone();
            let mut docs: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for (t, d) in more {
                if m.get(t, &d["id"]).is_none() {
                    m.t.get_mut(t).unwrap().insert(ck(&d["id"]), d.clone());
                    docs.entry(t).or_default().push(d);
                }
            }
            for (t, d) in docs {
                db.table(t).insert_many(d).await.unwrap();
            }
            // (several commits: their items are checked as a whole)
            let mut seqless = Vec::new();
            for (t, f) in feeds.iter_mut() {
                let n = m.t[*t].len() - before.t[*t].len();
                seqless.push(drain(f, n).await.len());
            }
            let _ = seqless;
        }
        let ctx = format!("seed {seed} (BATCH_CASCADE_SEED={seed}), calm {calm}, batch #{i}");
        let before = m.clone();
        let r = check(&db, &mut m, &steps, &ctx).await;
        check_feeds(&mut feeds, &before, &m, &ctx).await;
        match r {
            Ok(()) => outcomes.0 += 1,
            Err(e) => {
                outcomes.1 += 1;
                let k = e.split(' ').next().unwrap_or("").to_string();
                *errors.entry(k).or_default() += 1;
            }
        }
    }
    eprintln!(
        "seed {seed}: {} ok, {} failed {errors:?}",
        outcomes.0, outcomes.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_batches_match_the_model() {
    let (n, per) = if on_postgres() { (6, 40) } else { (40, 60) };
    for seed in seeds(n) {
        eprintln!("seed {seed}");
        random_run(seed, per, false).await;
    }
}

/// The same without failing steps (no restrict, no conflicting insert, no failing closure
/// or requirement): long runs of committed cascades.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_committing_batches_match_the_model() {
    let (n, per) = if on_postgres() { (4, 50) } else { (30, 80) };
    for seed in seeds(n) {
        eprintln!("seed {seed}");
        random_run(seed, per, true).await;
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency: batches from several tasks; the final state is the serial replay, in
// commit order (a marker row per batch, numbered by a changefeed), of the acknowledged ones.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_equal_a_serial_replay_in_commit_order() {
    let (n, tasks, per) = if on_postgres() {
        (2, 3, 12)
    } else {
        (6, 4, 25)
    };
    for seed in seeds(n) {
        let db = fresh().await;
        concurrent_run(vec![db.clone(), db], seed, tasks, per).await;
    }
}

/// Two handles on one PostgreSQL database (two writers with replicas of their own, as two
/// processes are): a cascade on one must see what the other committed before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_from_two_handles_equal_a_serial_replay() {
    if !on_postgres() {
        eprintln!("PostgreSQL only (REMODEL_TEST_BACKEND=postgres)");
        return;
    }
    for seed in seeds(2) {
        let cluster = remodel::postgres::TestCluster::shared().unwrap();
        let pg = cluster.create_database().await.unwrap();
        let open = || {
            remodel::postgres::Connect::new(pg.url())
                .connections(2)
                .open()
        };
        let a = open().await.unwrap();
        schema(&a).await;
        let b = open().await.unwrap();
        // The second handle has the schema before it writes.
        for _ in 0..200 {
            let ready = b
                .table("logs")
                .index_names()
                .is_ok_and(|n| n.iter().any(|n| n == "member"));
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        concurrent_run(vec![a, b], seed, 4, 12).await;
    }
}

/// Batches from `tasks` tasks (over `handles` in turn), each with a marker row; checks the
/// final state (read through the first handle) against the model's replay in commit order.
async fn concurrent_run(handles: Vec<Database>, seed: u64, tasks: usize, per: usize) {
    {
        eprintln!("seed {seed}");
        let calm = seed.is_multiple_of(2);
        let mut rng = StdRng::seed_from_u64(seed);
        let db = handles[0].clone();
        let rows = initial(&mut rng);
        let start = load(&db, &rows).await;
        let mut feed = db.table("marks").changes().await.unwrap();
        let plans: Vec<Vec<Vec<Step>>> = (0..tasks)
            .map(|_| (0..per).map(|_| gen_batch(&mut rng, calm)).collect())
            .collect();
        let mut joins = Vec::new();
        for (ti, plan) in plans.iter().cloned().enumerate() {
            let db = handles[ti % handles.len()].clone();
            joins.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for (bi, steps) in plan.into_iter().enumerate() {
                    let mark = format!("{ti}-{bi}");
                    let b = build(&db, &steps).insert("marks", json!({ "id": mark }));
                    let r = b.await;
                    acked.push((mark, r.map(|_| ()).map_err(|e| kind(&e))));
                    tokio::task::yield_now().await;
                }
                acked
            }));
        }
        let mut results = BTreeMap::new();
        for h in joins {
            for (mark, r) in h.await.unwrap() {
                results.insert(mark, r);
            }
        }
        let acked = results.values().filter(|r| r.is_ok()).count();
        let mut order: Vec<(u64, u32, String)> = Vec::new();
        while order.len() < acked {
            let c = tokio::time::timeout(Duration::from_secs(20), feed.next())
                .await
                .expect("the marker feed stalled")
                .unwrap()
                .unwrap();
            let mark = c.new_val().unwrap()["id"].as_str().unwrap().to_string();
            order.push((c.seq().unwrap(), c.position_in_commit().unwrap(), mark));
        }
        order.sort();
        let seqs: HashSet<u64> = order.iter().map(|o| o.0).collect();
        assert_eq!(
            seqs.len(),
            order.len(),
            "two batches in one commit: {order:?}"
        );
        let mut m = start.clone();
        for (_, _, mark) in &order {
            assert!(
                results[mark].is_ok(),
                "seed {seed}: failed batch {mark} has a marker"
            );
            let (ti, bi) = mark.split_once('-').unwrap();
            let steps = &plans[ti.parse::<usize>().unwrap()][bi.parse::<usize>().unwrap()];
            let r = m.run(steps);
            assert!(
                r.is_ok(),
                "seed {seed}: batch {mark} committed, but fails in the replay in commit order \
                 with {r:?}\n{}",
                show(steps)
            );
        }
        let now = state_of(&db).await;
        assert!(
            now == m,
            "seed {seed}: final state differs from the serial replay\n{}",
            diff(&now, &m)
        );
        eprintln!("seed {seed}: {acked} of {} committed", results.len());
    }
}

/// "None that refers to a deleted row is left behind, whenever it was written": writers
/// that join a ship only if it is there (`require_exists` + insert, the rustdoc's pattern)
/// race a cascading delete of that ship (from another handle on PostgreSQL). Afterwards no
/// crew refers to it, and every joiner that was acknowledged before the delete went with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_racing_a_cascade_leave_no_orphan() {
    let (a, b, _pg) = if on_postgres() {
        let cluster = remodel::postgres::TestCluster::shared().unwrap();
        let pg = cluster.create_database().await.unwrap();
        let a = remodel::postgres::Connect::new(pg.url())
            .connections(2)
            .open()
            .await
            .unwrap();
        schema(&a).await;
        let b = remodel::postgres::Connect::new(pg.url())
            .connections(2)
            .open()
            .await
            .unwrap();
        for _ in 0..200 {
            if b.table("logs")
                .index_names()
                .is_ok_and(|n| n.iter().any(|n| n == "member"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (a, b, Some(pg))
    } else {
        let db = fresh().await;
        (db.clone(), db, None)
    };
    let refs = all(Act::Del).build();
    let rounds = if on_postgres() { 6 } else { 20 };
    for round in 0..rounds {
        a.table("fleets")
            .insert(json!({"id": "f3"}))
            .conflict(Conflict::Replace)
            .await
            .unwrap();
        a.table("ships")
            .insert(json!({"id": "s3", "fleet": "f3"}))
            .await
            .unwrap();
        let mut joins = Vec::new();
        for w in 0..2 {
            let b = b.clone();
            joins.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..30 {
                    let id = format!("r{round}-w{w}-{i}");
                    let r = b
                        .batch()
                        .require_exists("ships", "s3")
                        .insert("crew", json!({"id": id, "ship": ["s4", "s3"]}))
                        .insert("logs", json!({"id": id, "member": id}))
                        .await;
                    match r {
                        Ok(_) => acked.push(id),
                        Err(Error::NotFound { .. }) => break,
                        Err(e) => panic!("joiner: {e:?}"),
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(3 + round as u64 % 7)).await;
        // The fleet goes, and with it the ship, its crew and their logs.
        let gone = a
            .batch()
            .update("ships", "s3", json!({"n": round}))
            .delete_cascading("fleets", "f3", &refs)
            .await
            .unwrap()
            .deleted;
        let mut acked = 0;
        for j in joins {
            acked += j.await.unwrap().len();
        }
        // The fleet, the ship, and a crew row and a log per joiner acknowledged before it.
        eprintln!("round {round}: {acked} joined, the cascade deleted {gone}");
        assert_eq!(gone, 2 + 2 * acked as u64, "round {round}");
        // Read through the handle that deleted (its replica has every commit it saw).
        if on_postgres() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for db in [&a, &b] {
            let orphans = db
                .table("crew")
                .get_all(["s3"])
                .index("ship")
                .run()
                .await
                .unwrap();
            assert!(orphans.is_empty(), "round {round}: orphans {orphans:?}");
            let logs = db.table("logs").run().await.unwrap();
            assert!(logs.is_empty(), "round {round}: orphan logs {logs:?}");
        }
    }
}

/// The documented edges of `References`: a reference from a table that does not exist is
/// skipped; one whose index does not exist fails the batch (`NoSuchIndex`), with or without
/// earlier writes in the batch, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_to_missing_tables_and_indexes() {
    let db = fresh().await;
    load(
        &db,
        &[
            ("ships", json!({"id": 1})),
            ("crew", json!({"id": 1, "ship": 1, "rank": 1})),
        ],
    )
    .await;
    let mut ghost = References::new();
    ghost.add("ships", "ghosts", "ship", ReferenceAction::Delete);
    ghost.add("ships", "crew", "ship", ReferenceAction::Nullify);
    db.batch()
        .update("crew", 1, json!({"n": 1}))
        .delete_cascading("ships", 1, &ghost)
        .await
        .unwrap();
    assert_eq!(
        db.table("crew").get(1).await.unwrap(),
        Some(json!({"id": 1, "ship": null, "rank": 1, "n": 1}))
    );
    db.table("ships").insert(json!({"id": 2})).await.unwrap();
    let mut unindexed = References::new();
    unindexed.add("ships", "crew", "rank", ReferenceAction::Delete);
    for earlier in [false, true] {
        let mut b = db.batch();
        if earlier {
            b = b.update("crew", 1, json!({"rank": 2}));
        }
        let r = b.delete_cascading("ships", 2, &unindexed).await;
        assert!(
            matches!(r, Err(Error::NoSuchIndex { .. })),
            "earlier write {earlier}: {r:?}"
        );
        assert!(db.table("ships").get(2).await.unwrap().is_some());
        assert_eq!(db.table("crew").get(1).await.unwrap().unwrap()["rank"], 1);
    }
}
