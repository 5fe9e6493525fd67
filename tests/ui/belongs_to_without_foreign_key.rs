use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Starship {
    id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize)]
#[remodel(belongs_to(Starship))]
struct Crewmember {
    id: Option<Id>,
    name: String,
    ship: Option<Id>,
}

fn main() {}
