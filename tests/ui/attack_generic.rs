use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Cargo<T> {
    id: Option<Id>,
    item: T,
}

#[derive(Model, Serialize, Deserialize)]
struct Manifest<'a> {
    id: Option<Id>,
    #[serde(borrow)]
    name: &'a str,
}

#[derive(Model, Serialize, Deserialize)]
struct Hold<const N: usize>
where
    [u8; N]: Sized,
{
    id: Option<Id>,
}

fn main() {}
