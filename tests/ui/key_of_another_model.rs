// Keys are typed per model: an `Id` of one model is not the `u64` key of another, and a
// `u64` is not an `Id`.
use remodel::model::Id;
use remodel::{Database, Model};
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Starship {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize)]
struct Deck {
    id: u64,
    name: String,
}

async fn read(db: &Database, ship: Starship) -> remodel::Result<()> {
    let key: Id = ship.key().unwrap();
    Deck::get(db, key).await?;
    Starship::get(db, 7u64).await?;
    Ok(())
}

fn main() {
    let _ = read;
}
