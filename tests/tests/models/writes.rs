//! Model writes are decided when they commit, against the row as it is then: one test per
//! defect the outside checks found (update, save, add and cascades acting on a stale copy;
//! a second delete; relation writes that merged or skipped hooks). The concurrent class
//! test is `model_races.rs`.

use remodel::model::{create_schema, Callbacks, Id, ModelError};
use remodel::{Database, Error, Model};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

static DELETED: AtomicUsize = AtomicUsize::new(0);
static SAVED: AtomicUsize = AtomicUsize::new(0);

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(
    has_many(Officer),
    has_and_belongs_to_many(Officer, accessor = "away_team")
)]
#[remodel(callbacks)]
struct Vessel {
    id: Option<Id>,
    name: String,
}

impl Callbacks for Vessel {
    fn after_delete(&self) {
        DELETED.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(
    belongs_to(Vessel),
    has_and_belongs_to_many(Vessel, accessor = "missions")
)]
#[remodel(callbacks)]
struct Officer {
    id: Option<Id>,
    name: String,
    vessel_id: Option<Id>,
    /// Set by `before_save`: how many saves the struct went through.
    saves: u32,
    medals: BTreeMap<String, u32>,
}

impl Callbacks for Officer {
    async fn before_save(&mut self, _db: &Database) -> remodel::Result<()> {
        SAVED.fetch_add(1, Ordering::SeqCst);
        self.saves += 1;
        Ok(())
    }
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Dock, on_delete = "cascade"))]
struct Yard {
    id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Yard), has_many(Part, on_delete = "restrict"))]
struct Dock {
    id: Option<Id>,
    yard_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Dock))]
struct Part {
    id: Option<Id>,
    dock_id: Option<Id>,
}

fn officer(name: &str) -> Officer {
    Officer {
        id: None,
        name: name.into(),
        vessel_id: None,
        saves: 0,
        medals: [("valor".to_string(), 1), ("service".to_string(), 2)].into(),
    }
}

async fn db() -> Database {
    let db = crate::common::db().await.unwrap();
    create_schema(&db).await.unwrap();
    db
}

fn is_missing(r: &remodel::Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(e) if matches!(e.as_model(), Some(ModelError::NotFound { .. })))
}

#[tokio::test]
async fn update_of_a_deleted_row_is_missing_and_does_not_bring_it_back() {
    let db = db().await;
    let mut o = officer("Worf").create(&db).await.unwrap();
    let mut copy = o.clone();
    copy.delete(&db).await.unwrap();
    // A field that merges and one written whole: neither brings the row back.
    let r = o.update(&db, |o| o.name = "Worf, son of Mogh".into()).await;
    assert!(is_missing(&r), "{r:?}");
    let r = o.update(&db, |o| o.medals.clear()).await;
    assert!(is_missing(&r), "{r:?}");
    assert_eq!(Officer::count(&db).await.unwrap(), 0);
}

#[tokio::test]
async fn update_keeps_fields_written_since_the_model_was_read() {
    let db = db().await;
    let mut o = officer("Kira").create(&db).await.unwrap();
    let key = o.id.clone().unwrap();
    // Another writer changes a known and an unknown field after `o` was read.
    db.table("officers")
        .get(key.as_str())
        .update(json!({"name": "Nerys", "note": "bajoran"}))
        .await
        .unwrap();
    o.update(&db, |o| {
        o.medals.remove("valor");
    })
    .await
    .unwrap();
    let stored = db
        .table("officers")
        .get(key.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored["name"], "Nerys",
        "update wrote back a field it did not change"
    );
    assert_eq!(stored["note"], "bajoran");
    assert_eq!(stored["medals"], json!({"service": 2}));
}

#[tokio::test]
async fn save_keeps_unknown_fields_as_they_are_at_commit() {
    let db = db().await;
    let mut o = officer("Odo").create(&db).await.unwrap();
    let key = o.id.clone().unwrap();
    db.table("officers")
        .get(key.as_str())
        .update(json!({"shape": "bucket"}))
        .await
        .unwrap();
    o.name = "Constable Odo".into();
    o.medals.remove("valor");
    o.save(&db).await.unwrap();
    let stored = db
        .table("officers")
        .get(key.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored["shape"], "bucket",
        "save reverted a field the struct does not know"
    );
    assert_eq!(stored["name"], "Constable Odo");
    assert_eq!(stored["medals"], json!({"service": 2}));
}

#[tokio::test]
async fn add_of_a_deleted_child_is_missing_and_does_not_recreate_it() {
    let db = db().await;
    let ship = Vessel {
        id: None,
        name: "Defiant".into(),
    }
    .create(&db)
    .await
    .unwrap();
    let mut o = officer("Nog").create(&db).await.unwrap();
    o.clone().delete(&db).await.unwrap();
    let r = ship.officers(&db).add(std::slice::from_mut(&mut o)).await;
    assert!(is_missing(&r), "{r:?}");
    let r = ship.away_team(&db).add(std::slice::from_mut(&mut o)).await;
    assert!(is_missing(&r), "{r:?}");
    let r = ship.officers(&db).set(std::slice::from_mut(&mut o)).await;
    assert!(is_missing(&r), "{r:?}");
    assert_eq!(Officer::count(&db).await.unwrap(), 0);
    assert_eq!(
        ship.away_team(&db).count().await.unwrap(),
        0,
        "no link to a missing row"
    );
}

#[tokio::test]
async fn nothing_is_created_through_a_deleted_parent() {
    let db = db().await;
    let ship = Vessel {
        id: None,
        name: "Valiant".into(),
    }
    .create(&db)
    .await
    .unwrap();
    ship.clone().delete(&db).await.unwrap();
    let r = ship.officers(&db).create(officer("Karuk")).await;
    assert!(is_missing(&r), "{r:?}");
    let r = ship.away_team(&db).create(officer("Collins")).await;
    assert!(is_missing(&r), "{r:?}");
    let mut o = officer("Farris").create(&db).await.unwrap();
    let r = ship.officers(&db).add(std::slice::from_mut(&mut o)).await;
    assert!(is_missing(&r), "{r:?}");
    assert_eq!(Officer::count(&db).await.unwrap(), 1);
    let stored = Officer::get(&db, o.id.clone().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.vessel_id, None);
}

#[tokio::test]
async fn relation_writes_store_the_child_as_save_does() {
    let db = db().await;
    let ship = Vessel {
        id: None,
        name: "Rio Grande".into(),
    }
    .create(&db)
    .await
    .unwrap();
    let mut o = officer("Dax").create(&db).await.unwrap();
    let key = o.id.clone().unwrap();
    db.table("officers")
        .get(key.as_str())
        .update(json!({"host": "Jadzia"}))
        .await
        .unwrap();
    // A map entry the program removed stays removed (it merged before).
    o.medals.remove("valor");
    ship.officers(&db)
        .add(std::slice::from_mut(&mut o))
        .await
        .unwrap();
    let stored = db
        .table("officers")
        .get(key.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored["medals"], json!({"service": 2}));
    assert_eq!(stored["host"], "Jadzia");
    o.medals.remove("service");
    ship.away_team(&db)
        .add(std::slice::from_mut(&mut o))
        .await
        .unwrap();
    let stored = db
        .table("officers")
        .get(key.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored["medals"], json!({}));
    o.medals.insert("honor".into(), 3);
    ship.officers(&db)
        .set(std::slice::from_mut(&mut o))
        .await
        .unwrap();
    let stored = db
        .table("officers")
        .get(key.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored["medals"], json!({"honor": 3}));
    assert_eq!(stored["host"], "Jadzia");
}

#[tokio::test]
async fn a_second_delete_is_missing_and_runs_no_hook() {
    let db = db().await;
    let mut ship = Vessel {
        id: None,
        name: "Enterprise".into(),
    }
    .create(&db)
    .await
    .unwrap();
    let mut copy = ship.clone();
    let before = DELETED.load(Ordering::SeqCst);
    ship.delete(&db).await.unwrap();
    assert_eq!(DELETED.load(Ordering::SeqCst), before + 1);
    // The deleted model's key is cleared: it is no longer saved.
    assert_eq!(ship.id, None);
    let r = ship.delete(&db).await;
    assert!(
        matches!(r, Err(Error::Model(ModelError::NotSaved { .. }))),
        "{r:?}"
    );
    // A copy read before the delete still has the key: NotFound, and no hook runs.
    let r = copy.delete(&db).await;
    assert!(is_missing(&r), "{r:?}");
    assert!(copy.id.is_some(), "a failed delete keeps the key");
    assert_eq!(
        DELETED.load(Ordering::SeqCst),
        before + 1,
        "after_delete ran again"
    );
}

#[tokio::test]
async fn remove_and_clear_run_the_childrens_before_save() {
    let db = db().await;
    let ship = Vessel {
        id: None,
        name: "Voyager".into(),
    }
    .create(&db)
    .await
    .unwrap();
    let mut crew = vec![officer("Paris"), officer("Kim"), officer("Torres")];
    ship.officers(&db).add(&mut crew).await.unwrap();
    assert!(crew.iter().all(|o| o.saves == 1));
    let removed = ship.officers(&db).remove(&mut crew[..1]).await.unwrap();
    assert_eq!(removed, 1);
    assert_eq!(crew[0].saves, 2, "remove did not run before_save");
    assert_eq!(crew[0].vessel_id, None);
    let stored = Officer::get(&db, crew[0].id.clone().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.saves, stored.vessel_id),
        (2, None),
        "what the hook left is written"
    );
    let calls = SAVED.load(Ordering::SeqCst);
    assert_eq!(ship.officers(&db).clear().await.unwrap(), 2);
    assert!(
        SAVED.load(Ordering::SeqCst) >= calls + 2,
        "clear did not run before_save"
    );
    for o in &crew[1..] {
        let stored = Officer::get(&db, o.id.clone().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((stored.saves, stored.vessel_id), (2, None));
    }
}

/// A restrict below a cascade holds against a child created while the cascade commits:
/// either the delete fails, or the child's creation does; never a part of a deleted dock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_selects_its_rows_in_its_own_commit() {
    let db = db().await;
    let mut outcomes = [0usize; 4];
    for _ in 0..200 {
        let yard = Yard { id: None }.create(&db).await.unwrap();
        let dock = yard
            .docks(&db)
            .create(Dock {
                id: None,
                yard_id: None,
            })
            .await
            .unwrap();
        let d = db.clone();
        let mut y = yard.clone();
        let deleting = tokio::spawn(async move { y.delete(&d).await });
        let d = db.clone();
        let creating = tokio::spawn(async move {
            // A new dock, then a part in it: the part restricts the dock's delete.
            let dock2 = yard
                .docks(&d)
                .create(Dock {
                    id: None,
                    yard_id: None,
                })
                .await?;
            dock2
                .parts(&d)
                .create(Part {
                    id: None,
                    dock_id: None,
                })
                .await?;
            Ok::<_, Error>(())
        });
        let (deleted, created) = (deleting.await.unwrap(), creating.await.unwrap());
        outcomes[usize::from(deleted.is_ok()) * 2 + usize::from(created.is_ok())] += 1;
        let _ = dock;
        // No row refers to a missing one.
        for p in Part::all(&db).await.unwrap() {
            let dock = Dock::get(&db, p.dock_id.clone().unwrap()).await.unwrap();
            assert!(
                dock.is_some(),
                "part {p:?} of a deleted dock ({deleted:?}, {created:?})"
            );
        }
        for d in Dock::all(&db).await.unwrap() {
            let yard = Yard::get(&db, d.yard_id.clone().unwrap()).await.unwrap();
            assert!(
                yard.is_some(),
                "dock {d:?} of a deleted yard ({deleted:?}, {created:?})"
            );
        }
    }
    assert_eq!(
        outcomes[3], 0,
        "both the cascade and the restricted child succeeded"
    );
    eprintln!("outcomes (delete ok, create ok): {outcomes:?}");
}
