//! A live leaderboard: the top five scores, pushed to the terminal as they change.
//!
//! `cargo run -p remodel --example leaderboard` (add `-- --rounds 200` for a longer show).
//!
//! Players post scores from three tasks; a fourth task watches
//! `order_by(index("score").desc()).limit(5)` and redraws the board from the feed's
//! offsets — no polling, no re-querying.

use futures::StreamExt;
use remodel::{json, Conflict, Database, Durability, IndexSpec, Order, Value};
use std::time::Duration;

const PLAYERS: [&str; 10] = [
    "Janeway", "Neelix", "Tuvok", "Picard", "Data", "Troi", "Sisko", "Dax", "Kira", "Worf",
];

#[tokio::main]
async fn main() -> Result<(), remodel::Error> {
    let rounds: u64 = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);

    let db = Database::temporary().await?;
    db.create_table("scores").await?;
    let scores = db.table("scores");
    scores
        .create_index("score", IndexSpec::field("score"))
        .await?;

    // The live top five: initial rows first, then one item per change of the top five.
    let mut top5 = scores
        .order_by(Order::index("score").desc())
        .limit(5)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .await?;

    let players: Vec<_> = (0..3u64)
        .map(|seed| {
            let scores = scores.clone();
            tokio::spawn(async move {
                let mut x = seed * 7919 + 17;
                for _ in 0..rounds {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let name = PLAYERS[(x >> 33) as usize % PLAYERS.len()];
                    let score = (x >> 40) % 1000;
                    scores
                        .insert(json!({"id": name, "score": score}))
                        .conflict(Conflict::Update)
                        .durability(Durability::Soft)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                Ok::<(), remodel::Error>(())
            })
        })
        .collect();

    let mut board: Vec<Value> = Vec::new();
    let mut updates = 0;
    let watcher = tokio::spawn(async move {
        while let Some(item) = top5.next().await {
            let change = item?;
            // Keep the list in order with the offsets: delete at old_offset, insert at new_offset.
            if let Some(i) = change.old_offset() {
                board.remove(i);
            }
            if let (Some(i), Some(row)) = (change.new_offset(), change.new_val()) {
                board.insert(i, row.clone());
            }
            updates += 1;
            let line: Vec<String> = board
                .iter()
                .map(|r| format!("{} {}", r["id"].as_str().unwrap_or("?"), r["score"]))
                .collect();
            println!("#{updates:<3} top 5: {}", line.join(" | "));
        }
        Ok::<(), remodel::Error>(())
    });

    for p in players {
        p.await.expect("player task")?;
    }
    db.close().await?;
    // Closing the database ends the feed with a "feed aborted" item.
    match watcher.await.expect("watcher task") {
        Err(remodel::Error::FeedAborted(why)) => println!("feed ended: {why}"),
        other => other?,
    }
    Ok(())
}
