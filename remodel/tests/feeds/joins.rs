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

/// Commits that write both tables of a join, their changes interleaved (left, right, left,
/// ...): the join's items of one commit come in `position_in_commit` order, and each item's
/// `old_val` is the pair as the item before it left it (a consumer that applies the items of
/// a commit in their positions' order rebuilds the join). They came table by table: the
/// right table's items after (or before) every left one, whichever table the commit
/// published first, so positions went backwards.
#[tokio::test]
async fn items_of_a_commit_that_writes_both_tables_come_in_commit_order() {
    join_items_in_commit_order("crew", "ships").await;
}

/// The same for a join of a table with itself (a crew member's mentor), in commits that
/// also write another table (so that the commit is published as one of several tables).
#[tokio::test]
async fn a_self_join_in_commits_of_several_tables_keeps_commit_order() {
    join_items_in_commit_order("crew", "crew").await;
}

async fn join_items_in_commit_order(left: &str, right: &str) {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table(left).await.unwrap();
    if right != left {
        db.create_table(right).await.unwrap();
    }
    db.create_table("log").await.unwrap();
    let join = || db.table(left).query().eq_join("ship", right);
    let mut feed = join().changes().await.unwrap();
    // Pairs by (left id, right id), as the items left them.
    let mut pairs: std::collections::BTreeMap<(String, String), Value> = Default::default();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for round in 0..60 {
        let mut batch = db.batch();
        if next(2) == 0 {
            batch = batch.insert_with("log", json!({"id": round}), remodel::Conflict::Replace);
        }
        for i in 0..6 {
            // Left rows c0..c3 name a ship s0..s2 (in a self-join, a row of the same table).
            let ship = if left == right {
                format!("c{}", next(4))
            } else {
                format!("s{}", next(3))
            };
            batch = if next(2) == 0 {
                let who = format!("c{}", next(4));
                match next(4) {
                    0 => batch.delete(left, who),
                    _ => batch.insert_with(
                        left,
                        json!({"id": who, "ship": ship, "r": round, "i": i}),
                        remodel::Conflict::Replace,
                    ),
                }
            } else {
                let id = if left == right {
                    format!("c{}", next(4))
                } else {
                    ship
                };
                match next(5) {
                    0 => batch.delete(right, id),
                    _ => batch.insert_with(
                        right,
                        json!({"id": id, "r": round, "i": i, "ship": format!("c{}", next(4))}),
                        remodel::Conflict::Replace,
                    ),
                }
            };
        }
        batch.await.unwrap();
    }
    let id = |v: &Value, side: &str| v[side]["id"].as_str().unwrap().to_string();
    let mut failures = Vec::new();
    let mut last: Option<(u64, u32)> = None;
    while let Some(Some(item)) = feed.next().now_or_never() {
        let c = item.unwrap();
        let at = (c.seq().unwrap(), c.position_in_commit().unwrap());
        if last.is_some_and(|l| at < l) {
            failures.push(format!("item at {at:?} after one at {last:?}"));
        }
        last = Some(at);
        let pair = c.old_val().or(c.new_val()).unwrap();
        let key = (id(pair, "left"), id(pair, "right"));
        if pairs.get(&key) != c.old_val() {
            failures.push(format!(
                "at {at:?} the pair {key:?} was {:?} but the item says it was {:?}",
                pairs.get(&key),
                c.old_val()
            ));
        }
        match c.new_val() {
            Some(v) => pairs.insert(key, v.clone()),
            None => pairs.remove(&key),
        };
    }
    // The pairs rebuilt from the items are the join re-run.
    let want: std::collections::BTreeMap<(String, String), Value> = join()
        .run()
        .await
        .unwrap()
        .into_iter()
        .map(|p| ((id(&p, "left"), id(&p, "right")), p))
        .collect();
    if pairs != want {
        failures.push(format!("rebuilt {pairs:?}\n  re-run {want:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
