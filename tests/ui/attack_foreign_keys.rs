use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

// has_many names the target's field by its Rust name; not an identifier, it names nothing.
#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Vessel, foreign_key = "fleet-ref"))]
struct Fleet {
    id: Option<Id>,
}

// The stored name is not a Rust field of the target: the error lists the fields there are.
#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Vessel, foreign_key = "fleetRef"))]
struct Armada {
    id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize)]
struct Vessel {
    id: Option<Id>,
    #[serde(rename = "fleetRef")]
    fleet_id: Option<Id>,
    armada_id: Option<Id>,
}

// `armada_id` is one field's Rust name and another's stored name.
#[derive(Model, Serialize, Deserialize)]
#[remodel(belongs_to(Armada, foreign_key = "armada_id"))]
struct Escort {
    id: Option<Id>,
    #[serde(rename = "armadaRef")]
    armada_id: Option<Id>,
    #[serde(rename = "armada_id")]
    old_armada: Option<Id>,
}

fn main() {}
