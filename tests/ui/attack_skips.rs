use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct WriteOnly {
    id: Option<Id>,
    #[serde(skip_serializing)]
    #[remodel(index)]
    hidden: u32,
}

#[derive(Model, Serialize, Deserialize)]
struct ReadOnlyKey {
    #[serde(skip_deserializing)]
    id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize)]
#[remodel(belongs_to(ReadOnlyKey))]
struct SkippedForeignKey {
    id: Option<Id>,
    #[serde(skip)]
    read_only_key_id: Option<Id>,
}

fn main() {}
