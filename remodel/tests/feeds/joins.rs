//! Live joins (`eq_join(..).changes()`): a right row's update reaches every joined left row;
//! a left row moving between two keys of one right row is one change; dropping either table
//! ends the feed; unwatchable joins are refused. The differential suite is
//! `feed_oracle/joins.rs`.

use futures::{FutureExt, StreamExt};
use remodel::{json, Durability, Error, IndexSpec, Value};

#[tokio::test]
async fn a_right_row_update_reaches_every_joined_left_row() {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table("crew").await.unwrap();
    db.create_table("ships").await.unwrap();
    let (crew, ships) = (db.table("crew"), db.table("ships"));
    ships
        .insert(json!({"id": "ncc-1701", "name": "Enterprise"}))
        .await
        .unwrap();
    for who in ["kirk", "spock", "mccoy"] {
        crew.insert(json!({"id": who, "ship": "ncc-1701"}))
            .await
            .unwrap();
    }
    let mut feed = crew
        .query()
        .eq_join("ship", "ships")
        .changes()
        .await
        .unwrap();
    ships
        .get("ncc-1701")
        .update(json!({"name": "Enterprise-A"}))
        .await
        .unwrap();
    let mut lefts = Vec::new();
    for _ in 0..3 {
        let c = feed.next().await.unwrap().unwrap();
        assert_eq!(c.old_val().unwrap()["right"]["name"], "Enterprise");
        assert_eq!(c.new_val().unwrap()["right"]["name"], "Enterprise-A");
        lefts.push(c.new_val().unwrap()["left"]["id"].clone());
    }
    lefts.sort_by_key(Value::to_string);
    assert_eq!(lefts, [json!("kirk"), json!("mccoy"), json!("spock")]);
    assert!(feed.next().now_or_never().is_none());
    // Unwatchable combinations are refused clearly.
    let cursor: remodel::Cursor = "1-0".parse().unwrap();
    let err = crew
        .query()
        .eq_join("ship", "ships")
        .changes()
        .resume_from(cursor)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unwatchable(_)), "{err:?}");
    let err = crew
        .query()
        .eq_join("ship", "nowhere")
        .changes()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchTable(_)), "{err:?}");
}

#[tokio::test]
async fn dropping_either_table_ends_the_join_feed() {
    for dropped in ["crew", "ships"] {
        let db = crate::common::open(remodel::Durability::Hard)
            .await
            .unwrap();
        db.create_table("crew").await.unwrap();
        db.create_table("ships").await.unwrap();
        db.table("ships").insert(json!({"id": 1})).await.unwrap();
        db.table("crew")
            .insert(json!({"id": "a", "ship": 1}))
            .await
            .unwrap();
        let mut feed = db
            .table("crew")
            .query()
            .eq_join("ship", "ships")
            .changes()
            .await
            .unwrap();
        db.drop_table(dropped).await.unwrap();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
            .await
            .expect("the feed ends");
        assert!(
            matches!(end, Some(Err(Error::FeedAborted(_)))),
            "{dropped}: {end:?}"
        );
        // Writes to the other table go on without the ended feed.
        let other = if dropped == "crew" { "ships" } else { "crew" };
        db.table(other).insert(json!({"id": 7})).await.unwrap();
    }
}

/// A left row moving between two join keys that one right row is under stays joined to it:
/// one change of the pair (not a removal and an addition), and the routes follow the move
/// (a later write to the right row reaches the pair once, under its new key).
#[tokio::test]
async fn moving_between_two_keys_of_one_right_row_is_one_change() {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table("crew").await.unwrap();
    db.create_table("ships").await.unwrap();
    let (crew, ships) = (db.table("crew"), db.table("ships"));
    ships
        .create_index("classes", IndexSpec::multi("classes"))
        .await
        .unwrap();
    ships
        .insert(json!({"id": 1, "classes": [0, 1], "name": "Defiant"}))
        .await
        .unwrap();
    crew.insert(json!({"id": "a", "cls": 0})).await.unwrap();
    let mut feed = crew
        .query()
        .eq_join("cls", "ships")
        .index("classes")
        .changes()
        .await
        .unwrap();
    crew.get("a").update(json!({"cls": 1})).await.unwrap();
    let c = feed.next().await.unwrap().unwrap();
    assert_eq!(c.kind(), remodel::ChangeKind::Change, "{c:?}");
    assert_eq!(c.old_val().unwrap()["left"]["cls"], 0);
    assert_eq!(c.new_val().unwrap()["left"]["cls"], 1);
    assert_eq!(c.new_val().unwrap()["right"]["name"], "Defiant");
    assert!(feed.next().now_or_never().is_none());
    // Key 0 has no left row any more; key 1 has "a": a rename reaches the pair once.
    ships
        .get(1)
        .update(json!({"name": "Defiant-A"}))
        .await
        .unwrap();
    let c = feed.next().await.unwrap().unwrap();
    assert_eq!(
        (
            c.old_val().unwrap()["right"]["name"].clone(),
            c.new_val().unwrap()["right"]["name"].clone()
        ),
        (json!("Defiant"), json!("Defiant-A"))
    );
    assert!(feed.next().now_or_never().is_none());
    // The ship leaves key 1: the pair goes.
    ships.get(1).update(json!({"classes": [0]})).await.unwrap();
    let c = feed.next().await.unwrap().unwrap();
    assert_eq!(c.kind(), remodel::ChangeKind::Remove, "{c:?}");
    assert!(feed.next().now_or_never().is_none());
}
