use remodel::Model;
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
struct Registry(String, u32);

fn main() {}
