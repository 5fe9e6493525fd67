use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Camel {
    id: Option<Id>,
    warp_factor: f64,
}

#[derive(Model, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
struct Kebab {
    id: Option<Id>,
    warp_factor: f64,
}

#[derive(Model, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
struct AlreadySnake {
    id: Option<Id>,
    warp_factor: f64,
}

#[derive(Model, Serialize, Deserialize)]
#[serde(rename_all(serialize = "PascalCase"))]
struct SerializeOnly {
    id: Option<Id>,
    warp_factor: f64,
}

#[derive(Model, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all(deserialize = "lowercase", serialize = "lowercase")
)]
struct Both {
    id: Option<Id>,
    warp_factor: f64,
}

fn main() {}
