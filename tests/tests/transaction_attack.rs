//! An adversarial, oracle-checked attack on `Transaction` (remodel/src/model/transaction.rs).
//!
//! The rules under attack: every write of a transaction is decided at commit against the
//! rows as they are then (a row deleted meanwhile is `NotFound` and nothing is written;
//! fields the struct does not know are kept; a delete's relations reach the rows as the
//! transaction leaves them); `require` holds at commit (or the whole transaction fails with
//! `Precondition` / `NotFound`); hooks run as documented; a transaction is all or nothing.
//!
//! Oracles:
//! 1. `random_transactions_equal_a_serial_replay`: tasks run random transactions (creates,
//!    updates of random fields, saves of stale copies, deletes with cascade / nullify /
//!    restrict / many-to-many relations, add / relate, requires on rows other tasks
//!    change, raw writes of unknown fields). Each transaction creates a marker row, whose
//!    position in the marker table's feed (`Change::seq`) is its commit position. A model of
//!    the documented semantics replays the acknowledged transactions in that order: each must
//!    be accepted by the replay at its position (every `require` true there), every refused
//!    one must be refused by the replay, with the same kind of error, at some position its
//!    commit can have had (between the acknowledged transactions that ended before it began
//!    and those that began after it ended), and the final tables must equal the replay.
//!    `after_save` hooks run once per staged write of a committed transaction, never for a
//!    refused one.
//! 2. Directed races: a require against an update flipping its predicate; a require on a
//!    row deleted meanwhile; an update against a delete; write skew (two transactions each
//!    requiring what the other changes: exactly one commits).
//! 3. Directed single-transaction semantics: within-transaction ordering, relations reached
//!    as the transaction leaves them, unknown fields, hooks, all or nothing.
//!
//! Seeds: `TX_ATTACK_SEED` replays a run (the seed is printed).

#[path = "common/mod.rs"]
mod common;

use common::Rng;

use futures::StreamExt;
use remodel::model::{create_schema, Callbacks, Id, ModelError, Transaction};
use remodel::{Database, Error, Model};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// Models: tables of their own (`tx_*`).

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "tx_accounts")]
#[remodel(has_many(Item, on_delete = "cascade"))]
#[remodel(has_many(Note, on_delete = "nullify"))]
#[remodel(has_many(Pin, on_delete = "restrict"))]
#[remodel(has_and_belongs_to_many(Label))]
struct Acct {
    id: Option<Id>,
    name: String,
    balance: i64,
    flag: bool,
    tag: u64,
}

const ACCT_FIELDS: &[&str] = &["id", "name", "balance", "flag", "tag"];
const ITEM_FIELDS: &[&str] = &["id", "acct_id", "qty", "touched", "tag"];

/// Hooks: `before_save` refuses a negative quantity and counts the saves it let through
/// (`touched`); `after_save` and `after_delete` count per tag.
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "tx_items", callbacks)]
#[remodel(belongs_to(Acct))]
struct Item {
    id: Option<Id>,
    acct_id: Option<Id>,
    qty: i64,
    touched: u64,
    tag: u64,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "tx_notes")]
#[remodel(belongs_to(Acct))]
struct Note {
    id: Option<Id>,
    acct_id: Option<Id>,
    text: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "tx_pins")]
#[remodel(belongs_to(Acct))]
struct Pin {
    id: Option<Id>,
    acct_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "tx_labels")]
struct Label {
    id: Option<Id>,
    name: String,
}

/// One per transaction: its position in the commit order is its insert's `seq`.
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "tx_marks")]
struct Mark {
    id: String,
}

/// Hooks of `Hooked`: what ran, in order (per test, by the name's prefix).
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "tx_hooked", callbacks)]
struct Hooked {
    id: Option<Id>,
    name: String,
    /// What `before_save` saw: how many `Hooked` rows were committed.
    seen: u64,
}

static HOOK_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// `after_save` calls of `Item`, per tag.
static ITEM_SAVED: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

fn log(s: String) {
    HOOK_LOG.lock().unwrap().push(s);
}

fn logged(prefix: &str) -> Vec<String> {
    HOOK_LOG
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.contains(prefix))
        .cloned()
        .collect()
}

impl Callbacks for Item {
    async fn before_save(&mut self, _db: &Database) -> remodel::Result<()> {
        if self.qty < 0 {
            return Err(ModelError::Rejected("negative quantity".into()).into());
        }
        self.touched += 1;
        Ok(())
    }
    fn after_save(&self) {
        *ITEM_SAVED.lock().unwrap().entry(self.tag).or_default() += 1;
    }
}

impl Callbacks for Hooked {
    async fn before_save(&mut self, db: &Database) -> remodel::Result<()> {
        if self.name.ends_with("!reject") {
            return Err(ModelError::Rejected("rejected".into()).into());
        }
        self.seen = Hooked::count(db).await?;
        log(format!("before_save {}", self.name));
        Ok(())
    }
    fn after_save(&self) {
        log(format!("after_save {} seen={}", self.name, self.seen));
    }
    async fn before_delete(&mut self, _db: &Database) -> remodel::Result<()> {
        if self.name.ends_with("!keep") {
            return Err(ModelError::Rejected("kept".into()).into());
        }
        log(format!("before_delete {}", self.name));
        Ok(())
    }
    fn after_delete(&self) {
        log(format!("after_delete {}", self.name));
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

async fn db() -> Database {
    let db = common::db().await.unwrap();
    create_schema(&db).await.unwrap();
    db
}

fn on_pg() -> bool {
    remodel::postgres::suites_on_postgres()
}

fn seed() -> u64 {
    common::seed("TX_ATTACK_SEED")
}

/// The kind of a refusal at commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    NotFound,
    Precondition,
    Restricted,
    KeyConflict,
}

fn kind(e: &Error) -> Option<Kind> {
    match e {
        Error::Model(ModelError::NotFound { .. }) => Some(Kind::NotFound),
        Error::Model(ModelError::Restricted { .. }) => Some(Kind::Restricted),
        Error::Precondition(_) => Some(Kind::Precondition),
        Error::KeyConflict { .. } => Some(Kind::KeyConflict),
        _ => None,
    }
}

fn kid(id: &Option<Id>) -> String {
    id.as_ref().unwrap().as_str().to_string()
}

fn acct(name: &str, balance: i64) -> Acct {
    Acct {
        id: None,
        name: name.into(),
        balance,
        flag: true,
        tag: 0,
    }
}

fn item(qty: i64, tag: u64) -> Item {
    Item {
        id: None,
        acct_id: None,
        qty,
        touched: 0,
        tag,
    }
}

/// The top-level fields whose values differ (as `FieldChanges::between` finds them).
fn changed(before: &Value, after: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in after.as_object().unwrap() {
        if before.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The model of the documented semantics: a serial replay.

#[derive(Clone, Debug)]
enum Pred {
    BalanceEq(i64),
    FlagIs(bool),
    BalanceAtLeast(i64),
}

impl Pred {
    fn holds_json(&self, d: &Value) -> bool {
        match self {
            Pred::BalanceEq(b) => d["balance"].as_i64() == Some(*b),
            Pred::FlagIs(f) => d["flag"].as_bool() == Some(*f),
            Pred::BalanceAtLeast(b) => d["balance"].as_i64().is_some_and(|x| x >= *b),
        }
    }
    fn holds(&self, a: &Acct) -> bool {
        match self {
            Pred::BalanceEq(b) => a.balance == *b,
            Pred::FlagIs(f) => a.flag == *f,
            Pred::BalanceAtLeast(b) => a.balance >= *b,
        }
    }
}

/// One staged write of a transaction, as the replay applies it.
#[derive(Clone, Debug)]
enum ROp {
    /// `create` / a new child of `add`: a taken key is KeyConflict.
    Insert {
        table: &'static str,
        doc: Value,
    },
    /// `update`: the changed fields, onto the row at commit (NotFound if gone).
    Update {
        table: &'static str,
        key: String,
        changes: Map<String, Value>,
    },
    /// `save` of a keyed model: an upsert keeping the stored fields it does not know.
    Save {
        table: &'static str,
        doc: Value,
        known: &'static [&'static str],
    },
    /// A stored child of `add`: written back as `save` does, NotFound if gone.
    Store {
        table: &'static str,
        doc: Value,
        known: &'static [&'static str],
    },
    /// A row an `add` / `relate` refers to (its parent, a side of a link): stored before the
    /// commit and deleted by no step of it.
    Refers {
        table: &'static str,
        key: String,
    },
    Require {
        key: String,
        pred: Pred,
    },
    DeleteAcct {
        key: String,
    },
    DeletePin {
        key: String,
    },
    Link {
        acct: String,
        label: String,
    },
    /// A raw write of a field no model knows (skipped when the row is gone).
    RawExtra {
        key: String,
        n: u64,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    tables: BTreeMap<&'static str, BTreeMap<String, Value>>,
    links: BTreeSet<(String, String)>,
}

const TABLES: [&str; 5] = [
    "tx_accounts",
    "tx_items",
    "tx_notes",
    "tx_pins",
    "tx_labels",
];

impl State {
    fn t(&mut self, t: &'static str) -> &mut BTreeMap<String, Value> {
        self.tables.entry(t).or_default()
    }
    fn has(&self, t: &str, k: &str) -> bool {
        self.tables.get(t).is_some_and(|m| m.contains_key(k))
    }

    /// Applies a transaction: `Err` with the kinds of every refusal the replay finds (the
    /// state is then unchanged), or `Ok` with the state changed.
    fn apply(&mut self, ops: &[ROp]) -> Result<(), BTreeSet<Kind>> {
        let before = self.clone();
        let mut s = self.clone();
        let mut fails = BTreeSet::new();
        let mut deleted: HashSet<(&'static str, String)> = HashSet::new();
        let mut refers = Vec::new();
        for op in ops {
            match op {
                ROp::Insert { table, doc } => {
                    let k = doc["id"].as_str().unwrap().to_string();
                    if s.has(table, &k) {
                        fails.insert(Kind::KeyConflict);
                    } else {
                        s.t(table).insert(k, doc.clone());
                    }
                }
                ROp::Update {
                    table,
                    key,
                    changes,
                } => match s.t(table).get_mut(key) {
                    None => {
                        fails.insert(Kind::NotFound);
                    }
                    Some(row) => {
                        for (f, v) in changes {
                            row[f] = v.clone();
                        }
                    }
                },
                ROp::Save { table, doc, known } | ROp::Store { table, doc, known } => {
                    let k = doc["id"].as_str().unwrap().to_string();
                    let mut new = doc.clone();
                    match s.t(table).get(&k) {
                        Some(stored) => {
                            for (f, v) in stored.as_object().unwrap() {
                                if !known.contains(&f.as_str()) {
                                    new[f] = v.clone();
                                }
                            }
                        }
                        None if matches!(op, ROp::Store { .. }) => {
                            fails.insert(Kind::NotFound);
                            continue;
                        }
                        None => {}
                    }
                    s.t(table).insert(k, new);
                }
                ROp::Refers { table, key } => {
                    if !before.has(table, key) {
                        fails.insert(Kind::NotFound);
                    }
                    refers.push((*table, key.clone()));
                }
                ROp::Require { key, pred } => match s.t("tx_accounts").get(key) {
                    None => {
                        fails.insert(Kind::NotFound);
                    }
                    Some(row) if !pred.holds_json(row) => {
                        fails.insert(Kind::Precondition);
                    }
                    Some(_) => {}
                },
                ROp::DeleteAcct { key } => {
                    if s.t("tx_accounts").remove(key).is_none() {
                        fails.insert(Kind::NotFound);
                        continue;
                    }
                    deleted.insert(("tx_accounts", key.clone()));
                    let of = |d: &Value| d["acct_id"].as_str() == Some(key);
                    if s.t("tx_pins").values().any(of) {
                        fails.insert(Kind::Restricted);
                    }
                    let items: Vec<String> = s
                        .t("tx_items")
                        .iter()
                        .filter(|(_, d)| of(d))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in items {
                        s.t("tx_items").remove(&k);
                        deleted.insert(("tx_items", k));
                    }
                    for d in s.t("tx_notes").values_mut() {
                        if of(d) {
                            d["acct_id"] = Value::Null;
                        }
                    }
                    s.links.retain(|(a, _)| a != key);
                }
                ROp::DeletePin { key } => {
                    if s.t("tx_pins").remove(key).is_none() {
                        fails.insert(Kind::NotFound);
                    }
                    deleted.insert(("tx_pins", key.clone()));
                }
                ROp::Link { acct, label } => {
                    s.links.insert((acct.clone(), label.clone()));
                }
                ROp::RawExtra { key, n } => {
                    if let Some(row) = s.t("tx_accounts").get_mut(key) {
                        row["extra"] = json!(n);
                    }
                }
            }
        }
        if refers
            .iter()
            .any(|(t, k)| deleted.contains(&(*t, k.clone())))
        {
            fails.insert(Kind::NotFound);
        }
        if fails.is_empty() {
            *self = s;
            Ok(())
        } else {
            Err(fails)
        }
    }
}

/// The tables as stored (links as `(acct, label)` pairs).
async fn read_state(db: &Database) -> State {
    let mut s = State::default();
    for t in TABLES {
        let m = s.t(t);
        for d in db.table(t).query().run().await.unwrap() {
            m.insert(d["id"].as_str().unwrap().to_string(), d);
        }
    }
    for d in db
        .table("tx_accounts_tx_labels")
        .query()
        .run()
        .await
        .unwrap()
    {
        s.links.insert((
            d["acct_id"].as_str().unwrap().to_string(),
            d["label_id"].as_str().unwrap().to_string(),
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Oracle 1: random transactions against a serial replay.

#[derive(Default)]
struct Pools {
    accts: Vec<String>,
    items: Vec<String>,
    pins: Vec<String>,
    labels: Vec<String>,
}

/// What a transaction was, and how it ended.
#[derive(Debug)]
struct Run {
    tag: u64,
    ops: Vec<ROp>,
    outcome: Result<(), Kind>,
    start: Instant,
    end: Instant,
}

/// Builds, stages and commits one random transaction (tag `tag`).
async fn random_tx(
    db: &Database,
    rng: &mut Rng,
    tag: u64,
    pools: &Mutex<Pools>,
    stale: &mut HashMap<String, Value>,
) -> Run {
    let mut ops = Vec::new();
    let (accts, items, pins, labels) = {
        let p = pools.lock().unwrap();
        (
            p.accts.clone(),
            p.items.clone(),
            p.pins.clone(),
            p.labels.clone(),
        )
    };
    // A raw write of an unknown field, with its marker, in one batch.
    if rng.chance(8) {
        let key = rng.pick(&accts).unwrap();
        let n = rng.below(1000);
        let start = Instant::now();
        db.batch()
            .insert("tx_marks", json!({"id": format!("m{tag}")}))
            .update("tx_accounts", key.clone(), json!({"extra": n}))
            .await
            .unwrap()
            .check()
            .unwrap();
        return Run {
            tag,
            ops: vec![ROp::RawExtra { key, n }],
            outcome: Ok(()),
            start,
            end: Instant::now(),
        };
    }
    let mut tx = Transaction::new(db);
    tx.create(Mark {
        id: format!("m{tag}"),
    })
    .await
    .unwrap();
    // Rows this transaction touches (one write each), and those it creates or saves
    // (`add` / `relate` do not require those to be stored before the commit).
    let mut touched: HashSet<String> = HashSet::new();
    let mut staged: HashSet<String> = HashSet::new();
    let mut item_writes = 0u64;
    let mut created_accts = Vec::new();
    let mut created_items = Vec::new();
    let mut created_pins = Vec::new();
    let n = 1 + rng.below(3);
    // A current copy if the row is there, else the copy this task saw last (stale).
    async fn copy<T: Model<Key = Id>>(
        db: &Database,
        key: &str,
        stale: &HashMap<String, Value>,
    ) -> Option<T> {
        match T::get(db, key).await.unwrap() {
            Some(t) => Some(t),
            None => stale.get(key).map(|d| T::from_json(d.clone()).unwrap()),
        }
    }
    for _ in 0..n {
        let choice = rng.below(14);
        match choice {
            0 => {
                let a = tx
                    .create(acct(&format!("a{tag}"), rng.below(5) as i64))
                    .await
                    .unwrap();
                let k = kid(&a.id);
                ops.push(ROp::Insert {
                    table: "tx_accounts",
                    doc: a.to_json().unwrap(),
                });
                staged.insert(k.clone());
                touched.insert(k.clone());
                created_accts.push(k.clone());
                if rng.chance(50) {
                    // A child of the account created in the same commit.
                    let mut kids = vec![item(rng.below(5) as i64, tag)];
                    tx.add(&a.items(db), &mut kids).await.unwrap();
                    item_writes += 1;
                    ops.push(ROp::Insert {
                        table: "tx_items",
                        doc: kids[0].to_json().unwrap(),
                    });
                    created_items.push(kid(&kids[0].id));
                }
            }
            1..=3 => {
                // Update random fields of a (perhaps stale) copy.
                let Some(k) = rng.pick(&accts) else { continue };
                if !touched.insert(k.clone()) {
                    continue;
                }
                let Some(mut a) = copy::<Acct>(db, &k, stale).await else {
                    continue;
                };
                stale.insert(k.clone(), a.to_json().unwrap());
                tokio::task::yield_now().await;
                let before = a.to_json().unwrap();
                let (b, f, nm) = (
                    rng.chance(60).then(|| rng.below(6) as i64),
                    rng.chance(40).then(|| rng.chance(50)),
                    rng.chance(30).then(|| format!("n{}", rng.below(4))),
                );
                tx.update(&mut a, |a| {
                    if let Some(b) = b {
                        a.balance = b;
                    }
                    if let Some(f) = f {
                        a.flag = f;
                    }
                    if let Some(nm) = nm {
                        a.name = nm;
                    }
                    a.tag = tag;
                })
                .await
                .unwrap();
                ops.push(ROp::Update {
                    table: "tx_accounts",
                    key: k,
                    changes: changed(&before, &a.to_json().unwrap()),
                });
            }
            4 => {
                // Save a stale copy (an upsert that keeps the unknown fields).
                let Some(k) = rng.pick(&accts) else { continue };
                if !touched.insert(k.clone()) {
                    continue;
                }
                let mut a: Acct = match stale.get(&k) {
                    Some(d) if rng.chance(70) => Acct::from_json(d.clone()).unwrap(),
                    _ => match Acct::get(db, k.as_str()).await.unwrap() {
                        Some(a) => a,
                        None => continue,
                    },
                };
                a.balance = rng.below(6) as i64;
                a.tag = tag;
                tx.save(&mut a).await.unwrap();
                staged.insert(k.clone());
                ops.push(ROp::Save {
                    table: "tx_accounts",
                    doc: a.to_json().unwrap(),
                    known: ACCT_FIELDS,
                });
            }
            5..=7 => {
                // Require something of a row another task changes.
                let Some(k) = rng.pick(&accts) else { continue };
                if !touched.insert(k.clone()) {
                    continue;
                }
                let Some(seen) = copy::<Acct>(db, &k, stale).await else {
                    continue;
                };
                let pred = match rng.below(3) {
                    0 => Pred::BalanceEq(seen.balance),
                    1 => Pred::FlagIs(true),
                    _ => Pred::BalanceAtLeast(2),
                };
                let p = pred.clone();
                tx.require(&seen, "no longer so", move |a: &Acct| p.holds(a))
                    .unwrap();
                ops.push(ROp::Require { key: k, pred });
            }
            8 => {
                // Add a new or a stored item to an account.
                let Some(ak) = rng.pick(&accts) else { continue };
                let Some(parent) = copy::<Acct>(db, &ak, stale).await else {
                    continue;
                };
                let existing = rng.chance(60);
                let mut child = match (existing, rng.pick(&items)) {
                    (true, Some(ik)) => {
                        if !touched.insert(ik.clone()) {
                            continue;
                        }
                        match copy::<Item>(db, &ik, stale).await {
                            Some(i) => i,
                            None => continue,
                        }
                    }
                    _ => item(rng.below(5) as i64, tag),
                };
                child.tag = tag;
                let had_key = child.id.is_some();
                let mut kids = vec![child];
                tx.add(&parent.items(db), &mut kids).await.unwrap();
                item_writes += 1;
                if !staged.contains(&ak) {
                    ops.push(ROp::Refers {
                        table: "tx_accounts",
                        key: ak.clone(),
                    });
                }
                let doc = kids[0].to_json().unwrap();
                if had_key {
                    ops.push(ROp::Store {
                        table: "tx_items",
                        doc,
                        known: ITEM_FIELDS,
                    });
                } else {
                    created_items.push(kid(&kids[0].id));
                    ops.push(ROp::Insert {
                        table: "tx_items",
                        doc,
                    });
                }
            }
            9 => {
                // Update an item's quantity; a negative one is refused by its hook when
                // staged (the transaction goes on without it).
                let Some(ik) = rng.pick(&items) else { continue };
                if !touched.insert(ik.clone()) {
                    continue;
                }
                let Some(mut i) = copy::<Item>(db, &ik, stale).await else {
                    continue;
                };
                stale.insert(ik.clone(), i.to_json().unwrap());
                let before = i.to_json().unwrap();
                let qty = rng.below(7) as i64 - 1;
                match tx
                    .update(&mut i, |i| {
                        i.qty = qty;
                        i.tag = tag;
                    })
                    .await
                {
                    Ok(()) => {
                        item_writes += 1;
                        ops.push(ROp::Update {
                            table: "tx_items",
                            key: ik,
                            changes: changed(&before, &i.to_json().unwrap()),
                        });
                    }
                    Err(Error::Model(ModelError::Rejected(_))) => assert!(qty < 0),
                    Err(e) => panic!("{e}"),
                }
            }
            10 => {
                // A pin (restricting the account's delete) or a note (nullified by it).
                let Some(ak) = rng.pick(&accts) else { continue };
                let Some(parent) = copy::<Acct>(db, &ak, stale).await else {
                    continue;
                };
                if !staged.contains(&ak) {
                    ops.push(ROp::Refers {
                        table: "tx_accounts",
                        key: ak.clone(),
                    });
                }
                if rng.chance(50) {
                    let mut p = vec![Pin {
                        id: None,
                        acct_id: None,
                    }];
                    tx.add(&parent.pins(db), &mut p).await.unwrap();
                    created_pins.push(kid(&p[0].id));
                    ops.push(ROp::Insert {
                        table: "tx_pins",
                        doc: p[0].to_json().unwrap(),
                    });
                } else {
                    let mut nt = vec![Note {
                        id: None,
                        acct_id: None,
                        text: format!("t{tag}"),
                    }];
                    tx.add(&parent.notes(db), &mut nt).await.unwrap();
                    ops.push(ROp::Insert {
                        table: "tx_notes",
                        doc: nt[0].to_json().unwrap(),
                    });
                }
            }
            11 => {
                // Delete a pin.
                let Some(pk) = rng.pick(&pins) else { continue };
                if !touched.insert(pk.clone()) {
                    continue;
                }
                let p = Pin {
                    id: Some(Id::from(pk.as_str())),
                    acct_id: None,
                };
                tx.delete(p).await.unwrap();
                ops.push(ROp::DeletePin { key: pk });
            }
            _ => {
                // Relate an account and a label.
                let (Some(ak), Some(lk)) = (rng.pick(&accts), rng.pick(&labels)) else {
                    continue;
                };
                let parent = Acct {
                    id: Some(Id::from(ak.as_str())),
                    ..acct("", 0)
                };
                tx.relate(&parent.labels(db), &[Id::from(lk.as_str())])
                    .await
                    .unwrap();
                if !staged.contains(&ak) {
                    ops.push(ROp::Refers {
                        table: "tx_accounts",
                        key: ak.clone(),
                    });
                }
                ops.push(ROp::Refers {
                    table: "tx_labels",
                    key: lk.clone(),
                });
                ops.push(ROp::Link {
                    acct: ak,
                    label: lk,
                });
            }
        }
    }
    // Sometimes a delete, last (its relations reach the rows as they are at commit).
    if rng.chance(25) {
        if let Some(k) = rng.pick(&accts) {
            if touched.insert(k.clone()) {
                let a = Acct {
                    id: Some(Id::from(k.as_str())),
                    ..acct("", 0)
                };
                tx.delete(a).await.unwrap();
                ops.push(ROp::DeleteAcct { key: k });
            }
        }
    }
    let start = Instant::now();
    let result = tx.commit().await;
    let end = Instant::now();
    let saved = ITEM_SAVED.lock().unwrap().get(&tag).copied().unwrap_or(0);
    let outcome = match result {
        Ok(_) => {
            assert_eq!(
                saved, item_writes,
                "tx {tag}: after_save ran {saved} times for {item_writes} item writes"
            );
            let mut p = pools.lock().unwrap();
            p.accts.extend(created_accts);
            p.items.extend(created_items);
            p.pins.extend(created_pins);
            Ok(())
        }
        Err(e) => {
            assert_eq!(saved, 0, "tx {tag}: after_save ran for a refused commit");
            Err(kind(&e).unwrap_or_else(|| panic!("tx {tag}: unexpected error {e:?}")))
        }
    };
    Run {
        tag,
        ops,
        outcome,
        start,
        end,
    }
}

async fn run_random(seed: u64, tasks: u64, per_task: u64) {
    let db = db().await;
    let mut pools = Pools::default();
    let mut rng = Rng(seed);
    for i in 0..6 {
        let a = acct(&format!("a{i}"), rng.below(5) as i64)
            .create(&db)
            .await
            .unwrap();
        pools.accts.push(kid(&a.id));
        for _ in 0..2 {
            let mut it = item(rng.below(4) as i64, 0);
            it.acct_id = a.id.clone();
            let it = it.create(&db).await.unwrap();
            pools.items.push(kid(&it.id));
        }
    }
    for i in 0..3 {
        let l = Label {
            id: None,
            name: format!("l{i}"),
        }
        .create(&db)
        .await
        .unwrap();
        pools.labels.push(kid(&l.id));
    }
    let state0 = read_state(&db).await;
    let mut marks = db
        .table("tx_marks")
        .changes()
        .queue_size(1 << 20)
        .await
        .unwrap();
    let pools = Arc::new(Mutex::new(pools));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (db, pools) = (db.clone(), pools.clone());
        let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0xA076_1D64_78BD_642F));
        handles.push(tokio::spawn(async move {
            let mut stale = HashMap::new();
            let mut runs = Vec::new();
            for i in 0..per_task {
                let tag = 1_000_000 * (seed % 1000 + 1) + t * 10_000 + i + 1;
                runs.push(random_tx(&db, &mut rng, tag, &pools, &mut stale).await);
            }
            runs
        }));
    }
    let mut runs = Vec::new();
    for h in handles {
        runs.extend(h.await.unwrap());
    }
    // The commit order of the acknowledged transactions, from the marker feed.
    db.table("tx_marks")
        .insert(json!({"id": "sentinel"}))
        .await
        .unwrap()
        .check()
        .unwrap();
    let mut order: Vec<(u64, u64)> = Vec::new();
    while let Some(c) = marks.next().await {
        let c = c.unwrap();
        let Some(n) = c.new_val() else { continue };
        let id = n["id"].as_str().unwrap();
        if id == "sentinel" {
            break;
        }
        order.push((c.seq().unwrap(), id[1..].parse().unwrap()));
    }
    order.sort();
    let by_tag: HashMap<u64, &Run> = runs.iter().map(|r| (r.tag, r)).collect();
    let acked: Vec<&Run> = order.iter().map(|(_, t)| by_tag[t]).collect();
    let acked_tags: HashSet<u64> = acked.iter().map(|r| r.tag).collect();
    for r in &runs {
        assert_eq!(
            r.outcome.is_ok(),
            acked_tags.contains(&r.tag),
            "seed {seed}: tx {} acknowledged {:?} but its marker {} the history",
            r.tag,
            r.outcome,
            if acked_tags.contains(&r.tag) {
                "is in"
            } else {
                "is not in"
            }
        );
    }
    // Replay, keeping the state at every position.
    let mut failures = Vec::new();
    let mut states = vec![state0];
    for r in &acked {
        let mut s = states.last().unwrap().clone();
        if let Err(k) = s.apply(&r.ops) {
            failures.push(format!(
                "tx {} committed, but the replay refuses it at its position ({k:?}): {:?}",
                r.tag, r.ops
            ));
        }
        states.push(s);
    }
    // Each refused transaction: refused by the replay at some position it can have had.
    let mut refused = 0;
    for r in runs.iter().filter(|r| r.outcome.is_err()) {
        refused += 1;
        let got = r.outcome.unwrap_err();
        let lo = acked
            .iter()
            .rposition(|a| a.end < r.start)
            .map_or(0, |i| i + 1);
        let hi = acked
            .iter()
            .position(|a| a.start > r.end)
            .unwrap_or(acked.len());
        let ok = (lo..=hi.max(lo)).any(|p| {
            let mut s = states[p].clone();
            matches!(s.apply(&r.ops), Err(kinds) if kinds.contains(&got))
        });
        if !ok {
            let why: Vec<_> = (lo..=hi.max(lo))
                .map(|p| states[p].clone().apply(&r.ops))
                .collect();
            failures.push(format!(
                "tx {} refused with {got:?}, but the replay at positions {lo}..={hi} gives {why:?}: {:?}",
                r.tag, r.ops
            ));
        }
    }
    let stored = read_state(&db).await;
    let replayed = states.last().unwrap();
    for t in TABLES {
        let (a, b) = (&stored.tables[t], &replayed.tables[t]);
        for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            if a.get(k) != b.get(k) {
                failures.push(format!(
                    "{t} {k}: stored {:?}, replayed {:?}",
                    a.get(k),
                    b.get(k)
                ));
            }
        }
    }
    if stored.links != replayed.links {
        failures.push(format!(
            "links: stored {:?}, replayed {:?}",
            stored.links, replayed.links
        ));
    }
    eprintln!(
        "seed {seed}: {} transactions, {} committed, {refused} refused",
        runs.len(),
        acked.len()
    );
    assert!(
        failures.is_empty(),
        "TX_ATTACK_SEED={seed}: {} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_transactions_equal_a_serial_replay() {
    let seed = seed();
    let (rounds, tasks, per_task) = if on_pg() { (3, 6, 50) } else { (6, 8, 80) };
    for r in 0..rounds {
        run_random(seed.wrapping_add(r), tasks, per_task).await;
    }
}

// ---------------------------------------------------------------------------------------
// Oracle 2: directed races, checked against the commit order of the feeds.

/// A table's history from `feed` (opened before the workload), up to a sentinel written now.
async fn history(
    db: &Database,
    table: &str,
    mut feed: remodel::Feed,
) -> Vec<(u64, Option<Value>, Option<Value>)> {
    db.table(table)
        .insert(json!({"id": "sentinel"}))
        .await
        .unwrap()
        .check()
        .unwrap();
    let mut out = Vec::new();
    while let Some(c) = feed.next().await {
        let c = c.unwrap();
        if c.new_val().is_some_and(|n| n["id"] == "sentinel") {
            break;
        }
        out.push((c.seq().unwrap(), c.old_val().cloned(), c.new_val().cloned()));
    }
    out
}

async fn feed(db: &Database, table: &str) -> remodel::Feed {
    db.table(table).changes().queue_size(1 << 20).await.unwrap()
}

/// The seq of the marker `id`, if committed.
fn mark_seq(marks: &[(u64, Option<Value>, Option<Value>)], id: &str) -> Option<u64> {
    marks
        .iter()
        .find(|(_, _, n)| n.as_ref().is_some_and(|n| n["id"] == id))
        .map(|c| c.0)
}

fn rounds(embedded: usize, pg: usize) -> usize {
    if on_pg() {
        pg
    } else {
        embedded
    }
}

/// A random delay of one side of a race: yields (embedded), or up to ~1.6 ms (PostgreSQL,
/// where every write is a few round trips).
async fn pause(n: u64) {
    if on_pg() {
        tokio::time::sleep(std::time::Duration::from_micros(n * 40)).await;
    } else {
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
    }
}

/// Runs `a` and `b` released together.
async fn race<A, B>(a: A, b: B) -> (A::Output, B::Output)
where
    A: std::future::Future + Send + 'static,
    B: std::future::Future + Send + 'static,
    A::Output: Send + 'static,
    B::Output: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (b1, b2) = (barrier.clone(), barrier);
    let ha = tokio::spawn(async move {
        b1.wait().await;
        a.await
    });
    let hb = tokio::spawn(async move {
        b2.wait().await;
        b.await
    });
    (ha.await.unwrap(), hb.await.unwrap())
}

/// A require races an update that makes its predicate false: a transaction that committed
/// did so before the update (in commit order), one refused is refused with Precondition and
/// wrote nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_races_an_update_flipping_it() {
    let db = db().await;
    let marks = feed(&db, "tx_marks").await;
    let accts = feed(&db, "tx_accounts").await;
    let mut outcomes = Vec::new();
    let mut other = acct("other", 0).create(&db).await.unwrap();
    let mut jitter = Rng(seed());
    for round in 0..rounds(60, 30) as u64 {
        let a = acct("flip", 1).create(&db).await.unwrap();
        let seen = a.clone();
        let (db1, db2, mut o) = (db.clone(), db.clone(), other.clone());
        let mut a2 = a.clone();
        let mut tx = Transaction::new(&db1);
        tx.require(&seen, "flag gone", |a: &Acct| a.flag).unwrap();
        tx.create(Mark {
            id: format!("r{round}"),
        })
        .await
        .unwrap();
        tx.update(&mut o, |o| o.balance = round as i64 + 1)
            .await
            .unwrap();
        let (spin, spin2) = (jitter.below(3), jitter.below(40));
        let (tx, _) = race(
            async move {
                for _ in 0..spin {
                    tokio::task::yield_now().await;
                }
                tx.commit().await
            },
            async move {
                pause(spin2).await;
                a2.update(&db2, |a| {
                    a.flag = false;
                    a.tag = round + 1;
                })
                .await
                .unwrap()
            },
        )
        .await;
        if tx.is_ok() {
            other.balance = round as i64 + 1;
        }
        outcomes.push((round, kid(&a.id), tx.map_err(|e| kind(&e))));
    }
    let marks = history(&db, "tx_marks", marks).await;
    let accts = history(&db, "tx_accounts", accts).await;
    let mut committed = 0;
    for (round, key, outcome) in &outcomes {
        let flip = accts
            .iter()
            .find(|(_, _, n)| {
                n.as_ref()
                    .is_some_and(|n| n["id"] == key.as_str() && n["flag"] == false)
            })
            .expect("the flip committed")
            .0;
        let mark = mark_seq(&marks, &format!("r{round}"));
        match outcome {
            Ok(_) => {
                committed += 1;
                let m = mark.expect("an acknowledged transaction's marker");
                assert!(
                    m < flip,
                    "round {round}: committed after the flip ({m} > {flip})"
                );
            }
            Err(k) => {
                assert_eq!(*k, Some(Kind::Precondition), "round {round}");
                assert!(
                    mark.is_none(),
                    "round {round}: refused, yet its marker is stored"
                );
            }
        }
    }
    let stored = Acct::get(&db, other.id.clone().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.balance, other.balance,
        "the last committed write of `other`"
    );
    eprintln!(
        "{committed} of {} committed before the flip",
        outcomes.len()
    );
}

/// A require races the delete of its row: committed before the delete, or NotFound and
/// nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_races_a_delete() {
    let db = db().await;
    let marks = feed(&db, "tx_marks").await;
    let accts = feed(&db, "tx_accounts").await;
    let mut outcomes = Vec::new();
    let mut jitter = Rng(seed());
    for round in 0..rounds(60, 30) as u64 {
        let a = acct("doomed", 1).create(&db).await.unwrap();
        let seen = a.clone();
        let (db1, db2) = (db.clone(), db.clone());
        let mut gone = a.clone();
        let mut tx = Transaction::new(&db1);
        tx.require(&seen, "never false", |_: &Acct| true).unwrap();
        tx.create(Mark {
            id: format!("d{round}"),
        })
        .await
        .unwrap();
        let n = tx.create(acct(&format!("new{round}"), 0)).await.unwrap();
        let (spin, spin2) = (jitter.below(3), jitter.below(40));
        let (tx, _) = race(
            async move {
                for _ in 0..spin {
                    tokio::task::yield_now().await;
                }
                (tx.commit().await, n)
            },
            async move {
                pause(spin2).await;
                gone.delete(&db2).await.unwrap()
            },
        )
        .await;
        outcomes.push((round, kid(&a.id), tx.0.map_err(|e| kind(&e)), tx.1));
    }
    let marks = history(&db, "tx_marks", marks).await;
    let accts = history(&db, "tx_accounts", accts).await;
    for (round, key, outcome, new) in &outcomes {
        let delete = accts
            .iter()
            .find(|(_, o, n)| n.is_none() && o.as_ref().is_some_and(|o| o["id"] == key.as_str()))
            .expect("the delete committed")
            .0;
        let mark = mark_seq(&marks, &format!("d{round}"));
        let created = Acct::get(&db, new.id.clone().unwrap()).await.unwrap();
        match outcome {
            Ok(_) => {
                let m = mark.expect("marker");
                assert!(
                    m < delete,
                    "round {round}: a require committed after its row's delete"
                );
                assert!(created.is_some());
            }
            Err(k) => {
                assert_eq!(*k, Some(Kind::NotFound), "round {round}");
                assert!(
                    mark.is_none() && created.is_none(),
                    "round {round}: refused but wrote"
                );
            }
        }
    }
}

/// A transaction updates a row (and creates a child of it) while another deletes the row
/// (cascading its children): the update committed before the delete (then the child was
/// cascaded with it), or the transaction is NotFound and wrote nothing. Never resurrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_races_a_delete() {
    let db = db().await;
    let marks = feed(&db, "tx_marks").await;
    let accts = feed(&db, "tx_accounts").await;
    let mut outcomes = Vec::new();
    let mut jitter = Rng(seed());
    for round in 0..rounds(60, 30) as u64 {
        let a = acct("doomed", 1).create(&db).await.unwrap();
        let (db1, db2) = (db.clone(), db.clone());
        let (mut copy, mut gone) = (a.clone(), a.clone());
        let mut tx = Transaction::new(&db1);
        tx.update(&mut copy, |a| a.balance = 100 + round as i64)
            .await
            .unwrap();
        tx.create(Mark {
            id: format!("u{round}"),
        })
        .await
        .unwrap();
        let mut kid_ = item(1, round);
        kid_.acct_id = copy.id.clone();
        let kid_ = tx.create(kid_).await.unwrap();
        let (spin, spin2) = (jitter.below(3), jitter.below(40));
        let (tx, _) = race(
            async move {
                for _ in 0..spin {
                    tokio::task::yield_now().await;
                }
                (tx.commit().await, kid_)
            },
            async move {
                pause(spin2).await;
                gone.delete(&db2).await.unwrap()
            },
        )
        .await;
        outcomes.push((round, kid(&a.id), tx.0.map_err(|e| kind(&e)), tx.1));
    }
    let marks = history(&db, "tx_marks", marks).await;
    let accts = history(&db, "tx_accounts", accts).await;
    for (round, key, outcome, child) in &outcomes {
        let delete = accts
            .iter()
            .find(|(_, o, n)| n.is_none() && o.as_ref().is_some_and(|o| o["id"] == key.as_str()))
            .expect("the delete committed")
            .0;
        assert!(
            Acct::get(&db, key.as_str()).await.unwrap().is_none(),
            "round {round}: resurrected"
        );
        assert!(
            Item::get(&db, child.id.clone().unwrap())
                .await
                .unwrap()
                .is_none(),
            "round {round}: the child outlived its account"
        );
        let mark = mark_seq(&marks, &format!("u{round}"));
        match outcome {
            Ok(_) => {
                let m = mark.expect("marker");
                assert!(
                    m < delete,
                    "round {round}: an update committed after the delete"
                );
                let updated = accts.iter().any(|(s, _, n)| {
                    *s == m && n.as_ref().is_some_and(|n| n["balance"] == 100 + *round)
                });
                assert!(updated, "round {round}: the update is not in its commit");
            }
            Err(k) => {
                assert_eq!(*k, Some(Kind::NotFound), "round {round}");
                assert!(mark.is_none(), "round {round}: refused but wrote");
            }
        }
    }
}

/// Write skew: T1 requires A's flag and clears B's; T2 requires B's and clears A's. Both
/// flags are set at the start, so in any serial order exactly one commits (the second's
/// requirement is false). Also across two tables (an account and an item).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_skew_is_impossible() {
    let db = db().await;
    for round in 0..rounds(80, 25) {
        let a = acct("A", 1).create(&db).await.unwrap();
        let b = acct("B", 1).create(&db).await.unwrap();
        let (db1, db2) = (db.clone(), db.clone());
        let (a1, mut b1, mut a2, b2) = (a.clone(), b.clone(), a.clone(), b.clone());
        let (r1, r2) = race(
            async move {
                let mut tx = Transaction::new(&db1);
                tx.require(&a1, "A cleared", |a: &Acct| a.flag).unwrap();
                tx.update(&mut b1, |b| b.flag = false).await.unwrap();
                tx.commit().await.map_err(|e| kind(&e))
            },
            async move {
                let mut tx = Transaction::new(&db2);
                tx.require(&b2, "B cleared", |b: &Acct| b.flag).unwrap();
                tx.update(&mut a2, |a| a.flag = false).await.unwrap();
                tx.commit().await.map_err(|e| kind(&e))
            },
        )
        .await;
        let a = Acct::get(&db, a.id.unwrap()).await.unwrap().unwrap();
        let b = Acct::get(&db, b.id.unwrap()).await.unwrap().unwrap();
        match (&r1, &r2) {
            (Ok(_), Err(Some(Kind::Precondition))) => assert!(a.flag && !b.flag),
            (Err(Some(Kind::Precondition)), Ok(_)) => assert!(!a.flag && b.flag),
            _ => panic!(
                "round {round}: write skew or spurious refusal: {r1:?} {r2:?}, flags {} {}",
                a.flag, b.flag
            ),
        }
        // Across tables: T1 requires the account's flag and empties the item; T2 requires
        // the item's quantity and clears the flag.
        let acc = acct("C", 1).create(&db).await.unwrap();
        let it = item(3, 0).create(&db).await.unwrap();
        let (db1, db2) = (db.clone(), db.clone());
        let (c1, mut i1, mut c2, i2) = (acc.clone(), it.clone(), acc.clone(), it.clone());
        let (r1, r2) = race(
            async move {
                let mut tx = Transaction::new(&db1);
                tx.require(&c1, "flag cleared", |a: &Acct| a.flag).unwrap();
                tx.update(&mut i1, |i| i.qty = 0).await.unwrap();
                tx.commit().await.map_err(|e| kind(&e))
            },
            async move {
                let mut tx = Transaction::new(&db2);
                tx.require(&i2, "emptied", |i: &Item| i.qty > 0).unwrap();
                tx.update(&mut c2, |a| a.flag = false).await.unwrap();
                tx.commit().await.map_err(|e| kind(&e))
            },
        )
        .await;
        let c = Acct::get(&db, acc.id.unwrap()).await.unwrap().unwrap();
        let i = Item::get(&db, it.id.unwrap()).await.unwrap().unwrap();
        match (&r1, &r2) {
            (Ok(_), Err(Some(Kind::Precondition))) => assert!(c.flag && i.qty == 0),
            (Err(Some(Kind::Precondition)), Ok(_)) => assert!(!c.flag && i.qty == 3),
            _ => panic!(
                "round {round} (two tables): {r1:?} {r2:?}, flag {} qty {}",
                c.flag, i.qty
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Oracle 3: directed semantics of one transaction.

/// A require staged after an update of the same row in the transaction sees the update
/// (the row as the transaction leaves it at that point); one staged before sees the row as
/// it was. A refused require writes nothing.
#[tokio::test]
async fn a_require_sees_the_row_as_the_transaction_leaves_it() -> remodel::Result<()> {
    let db = db().await;
    let a = acct("a", 1).create(&db).await?;
    let mut tx = Transaction::new(&db);
    tx.require(&a, "was 1", |a: &Acct| a.balance == 1)?;
    tx.update(&mut a.clone(), |a| a.balance = 5).await?;
    tx.require(&a, "is 5", |a: &Acct| a.balance == 5)?;
    tx.commit().await?;
    assert_eq!(
        Acct::get(&db, a.id.clone().unwrap())
            .await?
            .unwrap()
            .balance,
        5
    );

    let mut tx = Transaction::new(&db);
    tx.update(&mut a.clone(), |a| a.balance = 9).await?;
    tx.require(&a, "still 5", |a: &Acct| a.balance == 5)?;
    let err = tx.commit().await.unwrap_err();
    assert!(
        matches!(err, Error::Precondition(ref w) if w == "still 5"),
        "{err}"
    );
    assert_eq!(
        Acct::get(&db, a.id.clone().unwrap())
            .await?
            .unwrap()
            .balance,
        5
    );
    Ok(())
}

/// A require staged after the transaction's own delete of its row: the row is not stored
/// at that point of the commit, so NotFound (or Precondition: the predicate is false);
/// nothing is written.
#[tokio::test]
async fn a_require_after_its_own_delete_is_not_found() -> remodel::Result<()> {
    let db = db().await;
    let a = acct("a", 1).create(&db).await?;
    let mut tx = Transaction::new(&db);
    tx.create(Mark {
        id: "own-delete".into(),
    })
    .await?;
    tx.delete(a.clone()).await?;
    tx.require(&a, "never", |_: &Acct| false)?;
    let r = tx.commit().await;
    assert!(
        matches!(
            r.as_ref().map_err(kind),
            Err(Some(Kind::NotFound | Kind::Precondition))
        ),
        "committed: {r:?}"
    );
    assert!(Acct::get(&db, a.id.clone().unwrap()).await?.is_some());
    Ok(())
}

/// The same for an update staged after the transaction's own delete (directly, or through
/// a cascade): a single `update` of a deleted row is NotFound, and the transaction's docs say
/// a row missing at commit fails it.
#[tokio::test]
async fn an_update_after_its_own_delete_is_not_found() -> remodel::Result<()> {
    let db = db().await;
    let a = acct("a", 1).create(&db).await?;
    let mut tx = Transaction::new(&db);
    tx.delete(a.clone()).await?;
    tx.update(&mut a.clone(), |a| a.balance = 7).await?;
    let r = tx.commit().await;
    let direct = r.as_ref().map_err(kind).err();
    // Through a cascade: the item goes with its account, then is updated.
    let b = acct("b", 1).create(&db).await?;
    let mut i = item(1, 0);
    i.acct_id = b.id.clone();
    let mut i = i.create(&db).await?;
    let mut tx = Transaction::new(&db);
    tx.delete(b.clone()).await?;
    tx.update(&mut i, |i| i.qty = 4).await?;
    let r2 = tx.commit().await;
    let cascaded = r2.as_ref().map_err(kind).err();
    assert_eq!(
        (direct, cascaded),
        (Some(Some(Kind::NotFound)), Some(Some(Kind::NotFound))),
        "direct: {r:?}, through the cascade: {r2:?}"
    );
    Ok(())
}

/// A delete reaches the rows as the transaction leaves them: an item moved away survives,
/// one moved in is cascaded, a note moved in is nullified, a pin moved in restricts, a
/// link made to it is NotFound; with every refusal nothing is written.
#[tokio::test]
async fn a_delete_reaches_the_rows_as_the_transaction_leaves_them() -> remodel::Result<()> {
    let db = db().await;
    let a = acct("a", 1).create(&db).await?;
    let b = acct("b", 1).create(&db).await?;
    let mut away = a.items(&db).create(item(1, 0)).await?;
    let mut inn = b.items(&db).create(item(2, 0)).await?;
    let mut note = b
        .notes(&db)
        .create(Note {
            id: None,
            acct_id: None,
            text: "n".into(),
        })
        .await?;
    let mut tx = Transaction::new(&db);
    tx.add(&b.items(&db), std::slice::from_mut(&mut away))
        .await?;
    tx.update(&mut inn, |i| i.acct_id = a.id.clone()).await?;
    tx.update(&mut note, |n| n.acct_id = a.id.clone()).await?;
    tx.delete(a.clone()).await?;
    tx.commit().await?;
    assert_eq!(
        Item::get(&db, away.id.clone().unwrap())
            .await?
            .unwrap()
            .acct_id,
        b.id
    );
    assert!(
        Item::get(&db, inn.id.clone().unwrap()).await?.is_none(),
        "moved in, not cascaded"
    );
    assert_eq!(
        Note::get(&db, note.id.clone().unwrap())
            .await?
            .unwrap()
            .acct_id,
        None
    );

    // A pin moved onto the account restricts its delete.
    let c = acct("c", 1).create(&db).await?;
    let mut pin = b
        .pins(&db)
        .create(Pin {
            id: None,
            acct_id: None,
        })
        .await?;
    let before = read_state(&db).await;
    let mut tx = Transaction::new(&db);
    tx.update(&mut pin, |p| p.acct_id = c.id.clone()).await?;
    tx.create(acct("x", 0)).await?;
    tx.delete(c.clone()).await?;
    let r = tx.commit().await;
    assert!(
        matches!(r.as_ref().map_err(kind), Err(Some(Kind::Restricted))),
        "{r:?}"
    );
    assert_eq!(read_state(&db).await, before, "a refused transaction wrote");

    // A link to it in the same commit: NotFound, before or after the delete.
    let l = Label {
        id: None,
        name: "l".into(),
    }
    .create(&db)
    .await?;
    let b = acct("d", 1).create(&db).await?;
    let before = read_state(&db).await;
    for link_first in [true, false] {
        let mut tx = Transaction::new(&db);
        if link_first {
            tx.relate(&b.labels(&db), &[l.id.clone().unwrap()]).await?;
        }
        tx.delete(b.clone()).await?;
        if !link_first {
            tx.relate(&b.labels(&db), &[l.id.clone().unwrap()]).await?;
        }
        let r = tx.commit().await;
        assert!(
            matches!(r.as_ref().map_err(kind), Err(Some(Kind::NotFound))),
            "{r:?}"
        );
        assert_eq!(read_state(&db).await, before, "a refused transaction wrote");
    }
    // Added to it (a new child), before or after the delete: NotFound.
    for add_first in [true, false] {
        let mut tx = Transaction::new(&db);
        if add_first {
            tx.add(&b.items(&db), &mut [item(1, 0)]).await?;
        }
        tx.delete(b.clone()).await?;
        if !add_first {
            tx.add(&b.items(&db), &mut [item(1, 0)]).await?;
        }
        let r = tx.commit().await;
        assert!(
            matches!(r.as_ref().map_err(kind), Err(Some(Kind::NotFound))),
            "{r:?}"
        );
        assert_eq!(read_state(&db).await, before, "a refused transaction wrote");
    }
    Ok(())
}

/// Fields the struct does not know, written after the copy was read (before the commit),
/// are kept by the transaction's save, update and add.
#[tokio::test]
async fn unknown_fields_written_meanwhile_are_kept() -> remodel::Result<()> {
    let db = db().await;
    let mut a = acct("a", 1).create(&db).await?;
    let mut b = acct("b", 1).create(&db).await?;
    let mut i = item(1, 0).create(&db).await?;
    let mut tx = Transaction::new(&db);
    a.balance = 4;
    tx.save(&mut a).await?;
    tx.update(&mut b, |b| b.name = "bb".into()).await?;
    tx.add(&b.items(&db), std::slice::from_mut(&mut i)).await?;
    // Another program writes fields none of these structs has, after they were staged.
    for (t, k) in [
        ("tx_accounts", &a.id),
        ("tx_accounts", &b.id),
        ("tx_items", &i.id),
    ] {
        db.table(t)
            .get(kid(k))
            .update(json!({"extra": "kept", "balance_note": 1}))
            .await?;
    }
    tx.commit().await?;
    for (t, k) in [
        ("tx_accounts", &a.id),
        ("tx_accounts", &b.id),
        ("tx_items", &i.id),
    ] {
        let d = db.table(t).get(kid(k)).await?.unwrap();
        assert_eq!(
            (d["extra"].clone(), d["balance_note"].clone()),
            (json!("kept"), json!(1)),
            "{t}: {d}"
        );
    }
    let d = db.table("tx_accounts").get(kid(&a.id)).await?.unwrap();
    assert_eq!(d["balance"], 4);
    let d = db.table("tx_items").get(kid(&i.id)).await?.unwrap();
    assert_eq!(d["acct_id"], json!(kid(&b.id)));
    Ok(())
}

/// Hooks: `before_save` / `before_delete` run when staged (seeing what is committed, not
/// what the transaction staged; their changes are written; their error leaves the
/// transaction as it was); `after_save` / `after_delete` run once the commit succeeded, in
/// staging order, and never for a refused commit.
#[tokio::test]
async fn hooks_run_as_documented() -> remodel::Result<()> {
    let db = db().await;
    let hooked = |n: &str| Hooked {
        id: None,
        name: format!("hk-{n}"),
        seen: 99,
    };
    let old = hooked("old").create(&db).await?;
    HOOK_LOG.lock().unwrap().clear();
    let mut tx = Transaction::new(&db);
    let one = tx.create(hooked("one")).await?;
    let two = tx.create(hooked("two")).await?;
    assert_eq!(
        (one.seen, two.seen),
        (1, 1),
        "before_save sees the committed rows only"
    );
    let err = tx.create(hooked("three!reject")).await.unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::Rejected(_))),
        "{err}"
    );
    let err = tx
        .delete(Hooked {
            name: "hk-x!keep".into(),
            ..old.clone()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::Rejected(_))),
        "{err}"
    );
    tx.delete(old.clone()).await?;
    assert_eq!(
        logged("hk-"),
        vec![
            "before_save hk-one",
            "before_save hk-two",
            "before_delete hk-old"
        ],
        "before hooks when staged, no after hook before the commit"
    );
    tx.commit().await?;
    assert_eq!(
        logged("hk-")[3..],
        [
            "after_save hk-one seen=1",
            "after_save hk-two seen=1",
            "after_delete hk-old"
        ]
    );
    let stored: Vec<u64> = Hooked::all(&db).await?.iter().map(|h| h.seen).collect();
    assert_eq!(stored, vec![1, 1], "the hook's change is what is written");
    assert!(Hooked::get(&db, old.id.clone().unwrap()).await?.is_none());

    // A refused commit runs no after hook.
    HOOK_LOG.lock().unwrap().clear();
    let mut gone = one.clone();
    one.clone().delete(&db).await?;
    HOOK_LOG.lock().unwrap().clear();
    let mut tx = Transaction::new(&db);
    tx.create(hooked("four")).await?;
    tx.update(&mut gone, |g| g.name = "hk-gone".into()).await?;
    tx.delete(two.clone()).await?;
    let r = tx.commit().await;
    assert!(
        matches!(r.as_ref().map_err(kind), Err(Some(Kind::NotFound))),
        "{r:?}"
    );
    assert!(
        logged("hk-").iter().all(|l| l.starts_with("before_")),
        "an after hook ran for a refused commit: {:?}",
        logged("hk-")
    );
    assert_eq!(Hooked::count(&db).await?, 1);
    Ok(())
}

/// All or nothing: every kind of refusal (KeyConflict, Restricted, Precondition, NotFound)
/// anywhere in a transaction that also creates, updates, saves, adds, relates and deletes
/// leaves every table as it was.
#[tokio::test]
async fn a_refusal_anywhere_writes_nothing() -> remodel::Result<()> {
    let db = db().await;
    let a = acct("a", 1).create(&db).await?;
    let pinned = acct("pinned", 1).create(&db).await?;
    pinned
        .pins(&db)
        .create(Pin {
            id: None,
            acct_id: None,
        })
        .await?;
    let victim = acct("victim", 1).create(&db).await?;
    let doomed = acct("doomed", 1).create(&db).await?;
    let i = victim.items(&db).create(item(1, 0)).await?;
    let l = Label {
        id: None,
        name: "l".into(),
    }
    .create(&db)
    .await?;
    let mut gone = acct("gone", 1).create(&db).await?;
    let stale = gone.clone();
    gone.delete(&db).await?;
    let before = read_state(&db).await;
    for failure in 0..4 {
        let mut tx = Transaction::new(&db);
        tx.create(acct("new", 0)).await?;
        tx.update(&mut a.clone(), |a| a.balance = 42).await?;
        let mut s = a.clone();
        s.name = "saved".into();
        tx.save(&mut s).await?;
        tx.add(&a.items(&db), &mut [i.clone(), item(3, 0)]).await?;
        tx.relate(&a.labels(&db), &[l.id.clone().unwrap()]).await?;
        tx.delete(victim.clone()).await?;
        match failure {
            0 => drop(tx.create(doomed.clone()).await?),
            1 => tx.delete(pinned.clone()).await?,
            2 => tx.require(&doomed, "no", |_: &Acct| false)?,
            _ => tx.update(&mut stale.clone(), |g| g.balance = 3).await?,
        }
        tx.update(&mut doomed.clone(), |d| d.balance = 8).await?;
        let r = tx.commit().await;
        let want = [
            Kind::KeyConflict,
            Kind::Restricted,
            Kind::Precondition,
            Kind::NotFound,
        ][failure];
        assert_eq!(r.as_ref().map_err(kind).err(), Some(Some(want)), "{r:?}");
        assert_eq!(read_state(&db).await, before, "refusal {want:?} wrote");
    }
    Ok(())
}
