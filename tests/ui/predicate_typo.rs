use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Crewmember {
    id: Option<Id>,
    species: String,
}

fn main() {
    let _ = Crewmember::fields().speceis.eq("human");
}
