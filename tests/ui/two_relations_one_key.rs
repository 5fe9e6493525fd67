use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Crewmember), has_many(Crewmember, accessor = "trainees"))]
struct Starship {
    id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize)]

struct Crewmember {
    id: Option<Id>,
    starship_id: Option<Id>,
}

fn main() {}
