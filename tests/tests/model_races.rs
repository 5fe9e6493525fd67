//! The model race suite: many tasks create, update, save, delete, add, remove, clear and
//! cascade at once, on shared rows, while another program writes fields the models do not
//! know. The oracle is the commit history itself, read from table feeds: replayed in commit
//! order, every committed change must be the effect of one acknowledged operation applied to
//! the row as it was at that commit (no resurrection, no reverted field, no orphan, no lost
//! or doubled operation), and the replayed state must equal the tables re-read at the end.

use futures::StreamExt;
use remodel::model::{create_schema, Id, ModelError};
use remodel::{Database, Error, Model, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Model, Serialize, Deserialize, Clone, Debug)]
#[remodel(has_many(Ship, on_delete = "cascade"))]
struct Fleet {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug)]
#[remodel(belongs_to(Fleet))]
#[remodel(has_many(Crew, on_delete = "cascade"))]
#[remodel(has_and_belongs_to_many(Crew, accessor = "away_team"))]
struct Ship {
    id: Option<Id>,
    name: String,
    hull: u64,
    tag: u64,
    fleet_id: Option<Id>,
    specs: BTreeMap<String, u64>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug)]
#[remodel(belongs_to(Ship))]
#[remodel(has_and_belongs_to_many(Ship, accessor = "missions"))]
struct Crew {
    id: Option<Id>,
    name: String,
    rank: u64,
    tag: u64,
    ship_id: Option<Id>,
}

/// What one task did, as acknowledged.
// Some fields are read only by `Debug`, in the messages of failed checks (`{op:?}`).
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum Op {
    UpdateShip {
        ship: String,
    },
    SaveShip {
        ship: String,
        doc: Value,
    },
    Note {
        table: &'static str,
        key: String,
    },
    DeleteShip {
        ship: String,
    },
    DeleteFleet {
        fleet: String,
    },
    CreateFleet {
        fleet: String,
    },
    CreateShip {
        ship: String,
        fleet: String,
    },
    CreateCrew {
        ship: String,
    },
    AddCrew {
        ship: String,
        crew: String,
        doc: Value,
    },
    RemoveCrew {
        ship: String,
        crew: String,
    },
    ClearCrew {
        ship: String,
    },
    UpdateCrew {
        crew: String,
    },
    DeleteCrew {
        crew: String,
    },
    AwayAdd {
        ship: String,
        crew: String,
        doc: Value,
    },
    /// `relate`: the link only, by key (the crew row is not written).
    AwayRelate {
        ship: String,
        crew: String,
    },
}

/// The outcome of an operation: written, or refused because a row it needed is gone.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Done,
    Missing,
    /// A create whose key was taken.
    Taken,
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn outcome(r: remodel::Result<()>) -> Outcome {
    match r {
        Ok(()) => Outcome::Done,
        Err(e) if matches!(e.as_model(), Some(ModelError::NotFound { .. })) => Outcome::Missing,
        Err(Error::KeyConflict { .. }) => Outcome::Taken,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

const FLEETS: usize = 3;
const SHIPS: usize = 9;
const CREWS: usize = 27;

/// One random operation with tag `tag` (written into the rows it changes, to find its
/// commit in the history). Returns what was done and how it ended, or `None` when the
/// row it needed was gone before it started.
async fn random_op(db: &Database, rng: &mut Rng, tag: u64) -> Option<(Op, Outcome)> {
    let ship = format!("ship{}", rng.below(SHIPS));
    let crew = format!("crew{}", rng.below(CREWS));
    let r = match rng.below(15) {
        0 => {
            let mut s = Ship::get(db, ship.as_str()).await.unwrap()?;
            let r = s
                .update(db, |s| {
                    s.hull = tag;
                    s.tag = tag;
                })
                .await;
            (Op::UpdateShip { ship }, outcome(r))
        }
        1 => {
            let mut s = Ship::get(db, ship.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            s.tag = tag;
            s.name = format!("saved{tag}");
            // Entries the program removes must stay removed.
            s.specs.retain(|_, v| *v % 2 == 0);
            s.specs.insert(format!("k{}", tag % 4), tag);
            let r = s.save(db).await;
            (
                Op::SaveShip {
                    doc: s.to_json().unwrap(),
                    ship,
                },
                outcome(r),
            )
        }
        2 => {
            let (table, key) = match rng.below(2) {
                0 => ("ships", ship),
                _ => ("crews", crew),
            };
            // Another program: a field the models do not know.
            db.table(table)
                .get(key.as_str())
                .update(json!({ "note": tag }))
                .await
                .unwrap();
            (Op::Note { table, key }, Outcome::Done)
        }
        3 => {
            let mut s = Ship::get(db, ship.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            (Op::DeleteShip { ship }, outcome(s.delete(db).await))
        }
        4 if rng.below(6) == 0 => {
            let fleet = format!("fleet{}", rng.below(FLEETS));
            let mut f = Fleet::get(db, fleet.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            (Op::DeleteFleet { fleet }, outcome(f.delete(db).await))
        }
        4 => {
            let fleet = format!("fleet{}", rng.below(FLEETS));
            let f = Fleet {
                id: Some(Id::from(fleet.as_str())),
                name: fleet.clone(),
            };
            (
                Op::CreateFleet { fleet },
                outcome(f.create(db).await.map(|_| ())),
            )
        }
        12 => {
            let fleet = format!("fleet{}", rng.below(FLEETS));
            let f = Fleet::get(db, fleet.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            let s = Ship {
                id: Some(Id::from(ship.as_str())),
                name: ship.clone(),
                hull: 0,
                tag,
                fleet_id: None,
                specs: BTreeMap::new(),
            };
            let r = f.ships(db).create(s).await.map(|_| ());
            (Op::CreateShip { ship, fleet }, outcome(r))
        }
        5 | 13 => {
            let s = Ship::get(db, ship.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            let c = Crew {
                id: Some(Id::from(crew.as_str())),
                name: format!("new{tag}"),
                rank: 0,
                tag,
                ship_id: None,
            };
            let r = s.crews(db).create(c).await.map(|_| ());
            (Op::CreateCrew { ship }, outcome(r))
        }
        6 => {
            let s = Ship::get(db, ship.as_str()).await.unwrap()?;
            let mut c = Crew::get(db, crew.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            c.tag = tag;
            let r = s.crews(db).add(std::slice::from_mut(&mut c)).await;
            let doc = c.to_json().unwrap();
            (Op::AddCrew { ship, crew, doc }, outcome(r))
        }
        7 => {
            let s = Ship::get(db, ship.as_str()).await.unwrap()?;
            let mut c = Crew::get(db, crew.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            let r = s.crews(db).remove(std::slice::from_mut(&mut c)).await;
            (Op::RemoveCrew { ship, crew }, outcome(r.map(|_| ())))
        }
        8 => {
            let s = Ship::get(db, ship.as_str()).await.unwrap()?;
            let r = s.crews(db).clear().await;
            (Op::ClearCrew { ship }, outcome(r.map(|_| ())))
        }
        9 => {
            let mut c = Crew::get(db, crew.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            let r = c
                .update(db, |c| {
                    c.rank = tag;
                    c.tag = tag;
                })
                .await;
            (Op::UpdateCrew { crew }, outcome(r))
        }
        10 => {
            let mut c = Crew::get(db, crew.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            (Op::DeleteCrew { crew }, outcome(c.delete(db).await))
        }
        14 => {
            let s = Ship::get(db, ship.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            let r = s.away_team(db).relate(&[Id::from(crew.as_str())]).await;
            (Op::AwayRelate { ship, crew }, outcome(r))
        }
        _ => {
            let s = Ship::get(db, ship.as_str()).await.unwrap()?;
            let mut c = Crew::get(db, crew.as_str()).await.unwrap()?;
            tokio::task::yield_now().await;
            c.tag = tag;
            let r = s.away_team(db).add(std::slice::from_mut(&mut c)).await;
            let doc = c.to_json().unwrap();
            (Op::AwayAdd { ship, crew, doc }, outcome(r))
        }
    };
    Some(r)
}

async fn setup(db: &Database) {
    create_schema(db).await.unwrap();
    for f in 0..FLEETS {
        let fleet = Fleet {
            id: Some(Id::from(format!("fleet{f}"))),
            name: format!("fleet{f}"),
        };
        fleet.create(db).await.unwrap();
    }
    for s in 0..SHIPS {
        let ship = Ship {
            id: Some(Id::from(format!("ship{s}"))),
            name: format!("ship{s}"),
            hull: 0,
            tag: 0,
            fleet_id: Some(Id::from(format!("fleet{}", s % FLEETS))),
            specs: [("k0".to_string(), 1), ("k1".to_string(), 2)].into(),
        };
        ship.create(db).await.unwrap();
    }
    for c in 0..CREWS {
        let crew = Crew {
            id: Some(Id::from(format!("crew{c}"))),
            name: format!("crew{c}"),
            rank: 0,
            tag: 0,
            ship_id: Some(Id::from(format!("ship{}", c % SHIPS))),
        };
        crew.create(db).await.unwrap();
    }
}

/// A document without the fields named.
fn without(doc: &Value, fields: &[&str]) -> Value {
    let mut d = doc.clone();
    if let Value::Object(m) = &mut d {
        for f in fields {
            m.remove(*f);
        }
    }
    d
}

fn key_of(doc: &Value) -> String {
    doc["id"].as_str().unwrap().to_string()
}

type State = HashMap<(String, String), Value>;

/// Checks one committed change of `table` (`old` → `new`) against the operations, with
/// `after` the state once its whole commit is applied. Returns the tag of the operation it
/// carries out, if it introduces one.
fn check_change(
    table: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    after: &State,
    ops: &HashMap<u64, (Op, Outcome)>,
    notes: &HashMap<u64, (Op, Outcome)>,
) -> Option<u64> {
    let exists =
        |t: &str, k: &Value| !k.is_null() && after.contains_key(&(t.to_string(), k.to_string()));
    let tag = |d: &Value| d["tag"].as_u64().unwrap_or(0);
    let op_of = |t: u64| {
        let (op, out) = ops
            .get(&t)
            .unwrap_or_else(|| panic!("no operation has tag {t}"));
        assert_eq!(*out, Outcome::Done, "a refused operation {op:?} wrote");
        op.clone()
    };
    match (table, old, new) {
        ("crewmembers_ships" | "crews_ships", None, Some(n)) => {
            assert!(
                exists("ships", &n["ship_id"]),
                "link to a missing ship: {n}"
            );
            assert!(
                exists("crews", &n["crew_id"]),
                "link to a missing crew: {n}"
            );
            None
        }
        (_, None, Some(_)) if table.contains('_') => None,
        (t, Some(o), None) if t.contains('_') => {
            let gone = !exists("ships", &o["ship_id"]) || !exists("crews", &o["crew_id"]);
            assert!(gone, "a link was deleted while both ends exist: {o}");
            None
        }
        ("fleets", None, Some(n)) => {
            let by = ops.values().any(|(op, out)| {
                matches!(op, Op::CreateFleet { fleet } if *fleet == key_of(n))
                    && *out == Outcome::Done
            });
            assert!(by, "fleet {n} created by no one");
            None
        }
        ("ships", None, Some(n)) => {
            // Created through its fleet, or saved again (save is an upsert).
            match op_of(tag(n)) {
                Op::SaveShip { doc, .. } => assert_eq!(without(n, &["note"]), doc),
                Op::CreateShip { fleet, .. } => {
                    assert_eq!(n["fleet_id"], json!(fleet));
                    assert!(
                        exists("fleets", &n["fleet_id"]),
                        "created through a deleted fleet: {n}"
                    );
                }
                op => panic!("{op:?} created ship {n}"),
            }
            Some(tag(n))
        }
        ("ships", Some(o), Some(n)) if tag(o) != tag(n) => {
            match op_of(tag(n)) {
                Op::UpdateShip { .. } => {
                    assert_eq!(without(o, &["hull", "tag"]), without(n, &["hull", "tag"]))
                }
                Op::SaveShip { doc, .. } => {
                    assert_eq!(without(n, &["note"]), doc, "save wrote other fields");
                    assert_eq!(
                        o.get("note"),
                        n.get("note"),
                        "save reverted an unknown field"
                    );
                }
                op => panic!("{op:?} changed ship {o} to {n}"),
            }
            Some(tag(n))
        }
        ("ships" | "crews", Some(o), Some(n)) if without(o, &["note"]) == without(n, &["note"]) => {
            let t = n["note"].as_u64().expect("a note");
            assert!(notes.contains_key(&t), "note {t} was written by no one");
            None
        }
        ("ships", Some(o), None) => {
            // Deleted by its own delete, or by its fleet's.
            let by_fleet = !exists("fleets", &o["fleet_id"]);
            let by_delete = ops.values().any(|(op, out)| {
                matches!(op, Op::DeleteShip { ship } if *ship == key_of(o)) && *out == Outcome::Done
            });
            assert!(by_fleet || by_delete, "ship {o} deleted by no one");
            None
        }
        ("fleets", Some(o), None) => {
            let by_delete = ops.values().any(|(op, out)| {
                matches!(op, Op::DeleteFleet { fleet } if *fleet == key_of(o))
                    && *out == Outcome::Done
            });
            assert!(by_delete, "fleet {o} deleted by no one");
            None
        }
        ("crews", None, Some(n)) => {
            match op_of(tag(n)) {
                Op::CreateCrew { ship } => {
                    assert_eq!(n["ship_id"], json!(ship));
                    assert!(
                        exists("ships", &n["ship_id"]),
                        "created through a deleted ship: {n}"
                    );
                }
                op => panic!("{op:?} created crew {n}"),
            }
            Some(tag(n))
        }
        ("crews", Some(o), Some(n)) if tag(o) != tag(n) => {
            match op_of(tag(n)) {
                Op::UpdateCrew { .. } => {
                    assert_eq!(without(o, &["rank", "tag"]), without(n, &["rank", "tag"]))
                }
                Op::AddCrew { ship, doc, .. } => {
                    assert_eq!(n["ship_id"], json!(ship));
                    assert!(
                        exists("ships", &n["ship_id"]),
                        "added to a deleted ship: {n}"
                    );
                    assert_eq!(without(n, &["note"]), doc);
                    assert_eq!(
                        o.get("note"),
                        n.get("note"),
                        "add reverted an unknown field"
                    );
                }
                Op::AwayAdd { doc, .. } => {
                    assert_eq!(without(n, &["note"]), doc);
                    assert_eq!(
                        o.get("note"),
                        n.get("note"),
                        "add reverted an unknown field"
                    );
                }
                op => panic!("{op:?} changed crew {o} to {n}"),
            }
            Some(tag(n))
        }
        ("crews", Some(o), Some(n)) => {
            // Detached by remove or clear: only its ship changes.
            assert_eq!(n["ship_id"], Value::Null, "{o} -> {n}");
            assert_eq!(without(o, &["ship_id"]), without(n, &["ship_id"]));
            let ship = o["ship_id"].as_str().unwrap();
            let by = ops.values().any(|(op, out)| {
                *out == Outcome::Done
                    && match op {
                        Op::RemoveCrew { ship: s, crew } => s == ship && *crew == key_of(o),
                        Op::ClearCrew { ship: s } => s == ship,
                        _ => false,
                    }
            });
            assert!(by, "crew {o} detached by no one");
            None
        }
        ("crews", Some(o), None) => {
            let by_ship = !exists("ships", &o["ship_id"]);
            let by_delete = ops.values().any(|(op, out)| {
                matches!(op, Op::DeleteCrew { crew } if *crew == key_of(o)) && *out == Outcome::Done
            });
            assert!(by_ship || by_delete, "crew {o} deleted by no one");
            None
        }
        (t, o, n) => panic!("unexpected change of {t}: {o:?} -> {n:?}"),
    }
}

async fn run_races(seed: u64, tasks: usize, per_task: usize) {
    // On PostgreSQL when the suites run there (REMODEL_TEST_BACKEND=postgres), on the
    // in-memory engine with REMODEL_TEST_BACKEND=memory.
    let db = if remodel::postgres::suites_on_postgres() {
        remodel::postgres::suite_database().await
    } else if std::env::var("REMODEL_TEST_BACKEND").is_ok_and(|v| v == "memory") {
        remodel::Config::in_memory().open().await.unwrap()
    } else {
        Database::temporary().await.unwrap()
    };
    setup(&db).await;
    let join = db
        .table_names()
        .unwrap()
        .into_iter()
        .find(|t| t.contains('_'))
        .unwrap();
    let tables = ["fleets", "ships", "crews", join.as_str()];
    // The history: every change of every table, in commit order.
    let mut feeds = Vec::new();
    for t in tables {
        let feed = db.table(t).changes().queue_size(1 << 20).await.unwrap();
        feeds.push(feed);
    }
    let state0: State = {
        let mut s = State::new();
        for t in tables {
            for d in db.table(t).query().run().await.unwrap() {
                s.insert((t.to_string(), d["id"].to_string()), d);
            }
        }
        s
    };

    let done: Arc<Mutex<HashMap<u64, (Op, Outcome)>>> = Arc::default();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (db, done) = (db.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in 0..per_task {
                let tag = ((task * per_task + i) + 1) as u64;
                if let Some(r) = random_op(&db, &mut rng, tag).await {
                    done.lock().unwrap().insert(tag, r);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let ops = done.lock().unwrap().clone();

    // Read each feed up to a sentinel written after the workload.
    let mut history: Vec<(u64, &str, Option<Value>, Option<Value>)> = Vec::new();
    for (t, feed) in tables.iter().zip(feeds.iter_mut()) {
        db.table(*t)
            .insert(json!({"id": "sentinel"}))
            .await
            .unwrap()
            .check()
            .unwrap();
        while let Some(c) = feed.next().await {
            let c = c.unwrap();
            let new = c.new_val().cloned();
            if new.as_ref().is_some_and(|n| n["id"] == "sentinel") {
                break;
            }
            history.push((c.seq().unwrap(), *t, c.old_val().cloned(), new));
        }
    }
    history.sort_by_key(|h| h.0);

    let (notes, ops): (HashMap<_, _>, HashMap<_, _>) = ops
        .into_iter()
        .partition(|(_, (op, _))| matches!(op, Op::Note { .. }));
    let mut state = state0;
    let mut introduced: HashMap<u64, usize> = HashMap::new();
    // The tag of the write that last inserted each row (a row updated since keeps it).
    let mut inserted_by: HashMap<(String, String), u64> = HashMap::new();
    // Commit by commit: apply it, then check each change against the state after it.
    let mut i = 0;
    while i < history.len() {
        let seq = history[i].0;
        let end = i + history[i..].iter().take_while(|h| h.0 == seq).count();
        for (_, t, old, new) in &history[i..end] {
            let id = (
                t.to_string(),
                old.as_ref().or(new.as_ref()).unwrap()["id"].to_string(),
            );
            assert_eq!(
                state.get(&id),
                old.as_ref(),
                "the feed's old_val is the row as it was"
            );
            if let (None, Some(n)) = (old, new) {
                inserted_by.insert(id.clone(), n["tag"].as_u64().unwrap_or(0));
            }
            match new {
                Some(n) => state.insert(id, n.clone()),
                None => state.remove(&id),
            };
        }
        for (_, t, old, new) in &history[i..end] {
            if let Some(tag) = check_change(t, old.as_ref(), new.as_ref(), &state, &ops, &notes) {
                *introduced.entry(tag).or_default() += 1;
            }
        }
        i = end;
    }

    // Every acknowledged write that changes a row's tag did so exactly once.
    for (tag, (op, out)) in &ops {
        let writes_tag = matches!(
            op,
            Op::UpdateShip { .. }
                | Op::SaveShip { .. }
                | Op::CreateCrew { .. }
                | Op::CreateShip { .. }
                | Op::AddCrew { .. }
                | Op::UpdateCrew { .. }
                | Op::AwayAdd { .. }
        );
        if writes_tag {
            let expected = usize::from(*out == Outcome::Done);
            let seen = introduced.get(tag).copied().unwrap_or(0);
            // A write back of a row already carrying the same fields changes nothing.
            assert!(
                seen == expected || (seen == 0 && matches!(op, Op::AwayAdd { .. })),
                "{op:?} ({out:?}) is in the history {seen} times"
            );
        }
    }

    // The replayed history is the database: the tables re-read agree with it.
    for t in tables {
        let mut rows = db.table(t).query().run().await.unwrap();
        rows.retain(|d| d["id"] != "sentinel");
        let mut replayed: Vec<Value> = state
            .iter()
            .filter(|((table, _), _)| table == t)
            .map(|(_, d)| d.clone())
            .collect();
        let k = |d: &Value| d["id"].to_string();
        rows.sort_by_key(k);
        replayed.sort_by_key(k);
        assert_eq!(rows, replayed, "table {t}");
    }
    // No orphans: every reference points at a stored row. The one exception save allows is a
    // ship saved again after its fleet went (save is an upsert): the cascade took the ship, and
    // the save inserted it again; updates of it since then keep it.
    let has =
        |t: &str, k: &Value| !k.is_null() && state.contains_key(&(t.to_string(), k.to_string()));
    for (key @ (t, _), d) in &state {
        match t.as_str() {
            "crews" => assert!(
                d["ship_id"].is_null() || has("ships", &d["ship_id"]),
                "orphan {d}"
            ),
            "ships" if !has("fleets", &d["fleet_id"]) => {
                let saved = inserted_by.get(key).and_then(|tag| ops.get(tag));
                assert!(
                    matches!(saved, Some((Op::SaveShip { .. }, _))),
                    "orphan ship {d}"
                );
            }
            t if t.contains('_') => {
                assert!(
                    has("ships", &d["ship_id"]) && has("crews", &d["crew_id"]),
                    "orphan link {d}"
                )
            }
            _ => {}
        }
    }
    let refused = ops.values().filter(|(_, o)| *o == Outcome::Missing).count();
    eprintln!(
        "seed {seed}: {} operations ({refused} refused: a row was gone), {} changes",
        ops.len() + notes.len(),
        history.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_model_writes_replay_serially() {
    // On PostgreSQL every operation is a few round trips: fewer of them, same shapes.
    let (seeds, per_task) = match remodel::postgres::suites_on_postgres() {
        true => (2, 60),
        false => (6, 300),
    };
    for seed in 1..=seeds {
        run_races(0x5EED_0000 + seed, 8, per_task).await;
    }
}
