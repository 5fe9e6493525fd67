use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Engine {
    id: Option<Id>,
    starship_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Engine))]
struct Starship {
    id: Option<Id>,
    name: String,
}

fn main() {}
