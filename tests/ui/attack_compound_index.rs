use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

// `memo` is never stored: a compound index over it would hold no row.
#[derive(Model, Serialize, Deserialize)]
#[remodel(index(name = "a_memo", fields(a, memo)))]
struct Memo {
    id: Option<Id>,
    a: u32,
    #[serde(skip)]
    memo: u32,
}

fn main() {}
