use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Starship {
    #[serde(skip)]
    id: Option<Id>,
    name: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Engine {
    warp: f64,
}

#[derive(Model, Serialize, Deserialize)]
struct Shuttle {
    id: Option<Id>,
    #[serde(flatten)]
    engine: Engine,
}

fn main() {}
