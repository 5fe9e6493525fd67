//! Batches: several tables in one atomic commit, all or nothing; queries in a batch that
//! select their rows under the commit lock (cascading deletes and updates, up to 100,000
//! rows); and the typed error of a batch that lists too many writes.

use crate::common::crew::{crew, ids};
use crate::common::db;
use futures::StreamExt;
use remodel::{field, json, Change, Durability, Error, IndexSpec, Patch, Value};

#[tokio::test]
async fn a_batch_over_several_tables_commits_all_or_nothing() {
    let db = db().await;
    crew(&db).await;
    db.create_table("ships").await.unwrap();
    db.table("ships")
        .insert(json!({"id": "enterprise", "crew": 3}))
        .await
        .unwrap();
    let mut crew_feed = db.table("crew").changes().await.unwrap();
    let mut ship_feed = db.table("ships").changes().await.unwrap();

    // Moving Data to a new ship: three writes in two tables, one commit.
    let r = db
        .batch()
        .insert("ships", json!({"id": "sutherland", "crew": 1}))
        .update(
            "ships",
            "enterprise",
            Patch::with(|s| Ok(json!({"crew": s["crew"].as_i64().unwrap() - 1}))),
        )
        .update("crew", 2, json!({"ship": "sutherland"}))
        .delete("crew", 99) // missing: skipped, not a failure
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!((r.inserted, r.replaced, r.skipped, r.errors), (1, 2, 1, 0));
    assert_eq!(r.changes.len(), 3);
    assert_eq!(
        db.table("ships").get("enterprise").await.unwrap().unwrap()["crew"],
        2
    );
    assert_eq!(
        db.table("crew").get(2).await.unwrap().unwrap()["ship"],
        "sutherland"
    );

    // One failing write (a key conflict) and nothing is written at all.
    let failed = db
        .batch()
        .delete("ships", "enterprise")
        .update("crew", 1, json!({"ship": "none"}))
        .insert("crew", json!({"id": 3, "name": "duplicate"}))
        .await;
    assert_eq!(
        failed,
        Err(Error::KeyConflict {
            table: "crew".into(),
            key: json!(3)
        })
    );
    assert!(db.table("ships").get("enterprise").await.unwrap().is_some());
    assert_eq!(
        db.table("crew").get(1).await.unwrap().unwrap()["ship"],
        "enterprise"
    );

    // Bad input is refused before anything is written.
    assert!(matches!(
        db.batch()
            .insert("ships", json!({"id": "x"}))
            .insert("nope", json!({}))
            .await,
        Err(Error::NoSuchTable(_))
    ));
    assert!(matches!(
        db.batch()
            .insert("ships", json!({"id": "y"}))
            .insert("ships", json!(1))
            .await,
        Err(Error::InvalidDocument { .. })
    ));
    assert!(db.table("ships").get("x").await.unwrap().is_none());

    // Feeds saw the committed batch, in commit order, and nothing of the failed one.
    let crew_items: Vec<Change> = std::iter::from_fn(|| {
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut crew_feed)).flatten()
    })
    .map(|c| c.unwrap())
    .collect();
    let ship_items: Vec<Change> = std::iter::from_fn(|| {
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut ship_feed)).flatten()
    })
    .map(|c| c.unwrap())
    .collect();
    assert_eq!(crew_items.len(), 1);
    assert_eq!(ship_items.len(), 2);
    // One commit: one position for every item, ordered inside it across tables.
    let places: Vec<(u64, u32)> = ship_items
        .iter()
        .chain(&crew_items)
        .map(|c| (c.seq().unwrap(), c.position_in_commit().unwrap()))
        .collect();
    assert!(
        places.iter().all(|p| p.0 == places[0].0),
        "one commit position: {places:?}"
    );
    let mut inside: Vec<u32> = places.iter().map(|p| p.1).collect();
    inside.sort_unstable();
    assert_eq!(
        inside,
        [0, 1, 2],
        "one commit order across tables: {places:?}"
    );
}

#[tokio::test]
async fn batches_select_under_the_commit_lock_for_cascades_and_checks() {
    let db = db().await;
    let crew = crew(&db).await;
    db.create_table("ships").await.unwrap();
    db.table("ships")
        .insert_many(vec![
            json!({"id": "enterprise"}),
            json!({"id": "defiant"}),
            json!({"id": "voyager"}),
        ])
        .await
        .unwrap();
    crew.create_index("ship", IndexSpec::field("ship"))
        .await
        .unwrap();
    let aboard = |ship: &str| crew.get_all([ship]).index("ship");

    // restrict: refused while a crew is aboard, and nothing is written.
    let refused = db
        .batch()
        .require_empty(&aboard("defiant"), "the defiant still has a crew")
        .delete("ships", "defiant")
        .await;
    assert_eq!(
        refused,
        Err(Error::Precondition("the defiant still has a crew".into()))
    );
    assert!(db.table("ships").get("defiant").await.unwrap().is_some());

    // nullify: the crew loses its ship, in the same commit as the ship's deletion.
    let r = db
        .batch()
        .update_where(&aboard("defiant"), json!({"ship": null}))
        .delete("ships", "defiant")
        .await
        .unwrap();
    assert_eq!((r.replaced, r.deleted), (3, 1));
    assert_eq!(
        crew.filter(field("ship").eq(Value::Null))
            .count()
            .await
            .unwrap(),
        3
    );
    assert!(db.table("ships").get("defiant").await.unwrap().is_none());

    // cascade: the crew goes with the ship.
    let r = db
        .batch()
        .delete_where(&aboard("enterprise"))
        .delete("ships", "enterprise")
        .await
        .unwrap();
    assert_eq!(r.deleted, 4);
    assert_eq!(ids(&crew.run().await.unwrap()), vec![4, 5, 6, 7]);

    // An empty selection is fine (a batch over the read-only `stats` table is refused: see
    // `stats_rows_are_queryable_and_read_only`).
    let r = db
        .batch()
        .require_empty(&aboard("enterprise"), "gone")
        .delete("ships", "voyager")
        .await
        .unwrap();
    assert_eq!(r.deleted, 1);
    assert_eq!(db.table("ships").count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_cascades_to_100k_children_is_one_batch() {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table("ships").await.unwrap();
    db.create_table("crew").await.unwrap();
    let crew = db.table("crew");
    crew.create_index("ship_id", IndexSpec::field("ship_id"))
        .await
        .unwrap();
    db.table("ships")
        .insert_many(vec![json!({"id": "voyager"}), json!({"id": "defiant"})])
        .await
        .unwrap();
    let n = 100_000u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        crew.insert_many(chunk.iter().map(|i| json!({"id": i, "ship_id": "voyager"})))
            .await
            .unwrap();
    }
    crew.insert(json!({"id": "sisko", "ship_id": "defiant"}))
        .await
        .unwrap();
    let mut feed = crew.changes().await.unwrap();
    let children = crew.get_all(["voyager"]).index("ship_id");
    let r = db
        .batch()
        .delete("ships", "voyager")
        .delete_where(&children)
        .await;
    if remodel::postgres::suites_on_postgres() {
        // On PostgreSQL an atomic commit holds at most 4,096 changes (README, Limits).
        assert!(
            matches!(r, Err(remodel::Error::TooLarge { limit: 4096, .. })),
            "{r:?}"
        );
        assert_eq!(crew.count().await.unwrap(), n + 1);
        return;
    }
    let r = r.unwrap();
    assert_eq!(r.deleted, n + 1);
    assert_eq!(crew.count().await.unwrap(), 1);
    // One commit: every change of it carries a number of the same commit, in order, and the
    // feed saw exactly the deleted rows.
    let mut seen = 0;
    while seen < n {
        let c = feed.next().await.unwrap().unwrap();
        assert!(c.new_val().is_none());
        seen += 1;
    }
    assert_eq!(
        crew.filter(field("ship_id").eq("voyager"))
            .count()
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_batch_listing_too_many_writes_is_refused_with_its_own_error() {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table("t").await.unwrap();
    let batch = (0..4097).fold(db.batch(), |b, i| b.insert("t", json!({"id": i})));
    assert!(matches!(
        batch.await,
        Err(Error::BatchTooLarge {
            max: 4096,
            got: 4097
        })
    ));
    assert_eq!(db.table("t").count().await.unwrap(), 0);
}

/// A cascade in a batch selects the rows that refer to what it deletes as the batch's
/// earlier steps leave them (every action): a row moved away from the deleted row earlier in
/// the batch is left alone, a row moved onto it or inserted referring to it is reached.
#[tokio::test]
async fn a_cascade_sees_the_rows_as_the_batch_left_them() {
    use remodel::{ReferenceAction, References};
    let db = db().await;
    db.create_table("ships").await.unwrap();
    db.create_table("crew").await.unwrap();
    db.table("crew")
        .create_index("ship", IndexSpec::field("ship"))
        .await
        .unwrap();
    for s in ["a", "b", "c", "d"] {
        db.table("ships").insert(json!({"id": s})).await.unwrap();
    }
    let people = [("worf", "a"), ("troi", "a"), ("data", "b"), ("riker", "c")];
    for (id, ship) in people {
        db.table("crew")
            .insert(json!({"id": id, "ship": ship}))
            .await
            .unwrap();
    }
    let ship_of = |id: &'static str| {
        let db = db.clone();
        async move {
            db.table("crew")
                .get(id)
                .run()
                .await
                .unwrap()
                .map(|d| d["ship"].clone())
        }
    };
    let refs = |action: ReferenceAction| {
        let mut refs = References::new();
        refs.add("ships", "crew", "ship", action);
        refs
    };

    // Worf moves to b, then a goes with its crew: Troi goes, Worf stays on b; Data, moved
    // onto a before the delete, goes; Wesley, inserted onto a, goes.
    db.batch()
        .update("crew", "worf", json!({"ship": "b"}))
        .update("crew", "data", json!({"ship": "a"}))
        .insert("crew", json!({"id": "wesley", "ship": "a"}))
        .delete_cascading("ships", "a", &refs(ReferenceAction::Delete))
        .await
        .unwrap();
    assert_eq!(ship_of("worf").await, Some(json!("b")));
    assert_eq!(ship_of("troi").await, None);
    assert_eq!(ship_of("data").await, None);
    assert_eq!(ship_of("wesley").await, None);

    // Nullify: Riker, moved from c to d first, keeps d; Worf, moved onto c, is nulled.
    db.batch()
        .update("crew", "riker", json!({"ship": "d"}))
        .update("crew", "worf", json!({"ship": "c"}))
        .delete_cascading("ships", "c", &refs(ReferenceAction::Nullify))
        .await
        .unwrap();
    assert_eq!(ship_of("riker").await, Some(json!("d")));
    assert_eq!(ship_of("worf").await, Some(Value::Null));

    // Restrict: d is free once Riker left it in the same batch; b is not once Worf joined.
    let restrict = refs(ReferenceAction::Restrict {
        why: "crew aboard".into(),
    });
    db.batch()
        .update("crew", "riker", json!({"ship": "b"}))
        .delete_cascading("ships", "d", &restrict)
        .await
        .unwrap();
    assert_eq!(ship_of("riker").await, Some(json!("b")));
    db.table("ships").insert(json!({"id": "e"})).await.unwrap();
    let refused = db
        .batch()
        .update("crew", "riker", json!({"ship": "e"}))
        .update("crew", "worf", json!({"ship": "e"}))
        .delete_cascading("ships", "b", &restrict)
        .await;
    assert!(refused.is_ok(), "b has no crew once both left: {refused:?}");
    let refused = db
        .batch()
        .update("crew", "worf", json!({"ship": "e"}))
        .delete_cascading("ships", "e", &restrict)
        .await;
    assert!(
        matches!(refused, Err(Error::Restricted { rows: 2, .. })),
        "{refused:?}"
    );
    // Nothing of the refused batch was written.
    assert_eq!(ship_of("worf").await, Some(json!("e")));
    assert!(db.table("ships").get("e").run().await.unwrap().is_some());
}
