// Aggregates take fields of the queried model, and sums take numbers.
use remodel::model::Id;
use remodel::{Database, Model};
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Shuttle {
    id: Option<Id>,
    bay: String,
    seats: u32,
}

#[derive(Model, Serialize, Deserialize)]
struct Deck {
    id: Option<Id>,
    level: u32,
}

async fn sums(db: &Database) -> remodel::Result<()> {
    Shuttle::query(db).sum(Deck::fields().level).await?;
    Shuttle::query(db).sum(Shuttle::fields().bay).await?;
    Shuttle::query(db).update(Deck::fields().level.set(3u32)).await?;
    Ok(())
}

fn main() {
    let _ = sums;
}
