use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Crewmember, on_delete = "cascade"))]
#[remodel(has_many(Crewmember))]
#[remodel(belongs_to(Starship, on_delete = "cascade"))]
struct Starship {
    id: Option<Id>,
    starship_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize)]
struct Crewmember {
    id: Option<Id>,
    starship_id: Option<Id>,
}

fn main() {}
