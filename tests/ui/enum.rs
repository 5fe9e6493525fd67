use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
enum Rank {
    Captain,
    Ensign,
}

fn main() {}
