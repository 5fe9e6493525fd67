//! Batches whose queries select many rows (cascading deletes and updates) and the typed
//! error of a batch that lists too many writes.

use futures::StreamExt;
use remodel::{field, json, Config, Durability, Error, IndexSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_cascades_to_100k_children_is_one_batch() {
    let db = Config::temporary()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap();
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
        .await
        .unwrap();
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
    let db = Config::temporary()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap();
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
