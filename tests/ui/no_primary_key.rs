use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Starship {
    name: String,
    registry: String,
}

fn main() {}
