// A `u64`-keyed model's get takes a `u64`: a string key is a compile error.
use remodel::{Database, Model};
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Deck {
    id: u64,
    name: String,
}

async fn read(db: &Database) -> remodel::Result<Option<Deck>> {
    Deck::get(db, "7").await
}

fn main() {
    let _ = read;
}
