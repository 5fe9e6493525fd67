//! A database for one feed, and the items a feed has queued.

use futures::{FutureExt, StreamExt};
use remodel::{json, Change, Config, Database, Durability, Error, Feed, IndexSpec, Value};

/// A temporary database with one table, `table`, and soft durability (on PostgreSQL when
/// the suites run there).
pub async fn db_with(table: &str) -> Database {
    let db = super::soft_db().await;
    db.create_table(table).await.unwrap();
    db
}

/// As [`db_with`], always embedded: for tests that run on a paused clock, which a network
/// connection cannot (what they check, feed timers, is the same on every backend).
pub async fn paused_db_with(table: &str) -> Database {
    let db = Config::temporary()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap();
    db.create_table(table).await.unwrap();
    db
}

/// A database with a table `scores` of four rows, `a` to `d`, with 10 to 40 `points`
/// (indexed).
pub async fn scores_table() -> Database {
    let db = db_with("scores").await;
    let t = db.table("scores");
    t.create_index("points", IndexSpec::field("points"))
        .await
        .unwrap();
    t.insert_many(vec![
        json!({"id": "a", "points": 10}),
        json!({"id": "b", "points": 20}),
        json!({"id": "c", "points": 30}),
        json!({"id": "d", "points": 40}),
    ])
    .await
    .unwrap();
    db
}

/// The items a feed has queued, without waiting (the write path delivers synchronously, so
/// after a write returns its items are queued).
pub fn drain(feed: &mut Feed) -> Vec<Result<Change, Error>> {
    let mut out = Vec::new();
    while let Some(Some(item)) = feed.next().now_or_never() {
        out.push(item);
    }
    out
}

/// The changes a feed has queued, without waiting; an error item fails the test.
pub fn drain_changes(feed: &mut Feed) -> Vec<Change> {
    drain(feed)
        .into_iter()
        .map(|item| item.expect("a change, not an error"))
        .collect()
}

/// `(old_val, new_val)` of a change, as JSON (`null` for none).
pub fn pair(c: &Change) -> (Value, Value) {
    (
        c.old_val().cloned().unwrap_or(Value::Null),
        c.new_val().cloned().unwrap_or(Value::Null),
    )
}

/// `(old_val, new_val)` of the queued items, as JSON (`null` for none).
pub fn pairs(feed: &mut Feed) -> Vec<(Value, Value)> {
    drain_changes(feed).iter().map(pair).collect()
}
