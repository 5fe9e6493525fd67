use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

// serde stores top-level keys `geo.lat` and `geo.lon`; indexes and predicates would read
// them as paths into a nested `geo` object.
#[derive(Model, Serialize, Deserialize)]
struct Dotted {
    id: Option<Id>,
    #[serde(rename = "geo.lat")]
    #[remodel(index(name = "geo_lat"))]
    lat: i64,
    #[serde(rename = "geo.lon")]
    lon: i64,
}

#[derive(Model, Serialize, Deserialize)]
struct Empty {
    id: Option<Id>,
    #[serde(rename = "")]
    name: String,
}

fn main() {}
