use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

// Written under one name, read from another: a model stores each field under one name.
#[derive(Model, Serialize, Deserialize)]
struct Label {
    id: Option<Id>,
    #[serde(rename(serialize = "label", deserialize = "tag"))]
    name: String,
}

// Only one direction renamed: the other keeps the field's own name.
#[derive(Model, Serialize, Deserialize)]
struct Badge {
    id: Option<Id>,
    #[serde(rename(serialize = "badge"))]
    name: String,
}

fn main() {}
