use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
#[remodel(tabel = "ships")]
struct Starship {
    id: Option<Id>,
    #[remodel(indx)]
    name: String,
}

fn main() {}
