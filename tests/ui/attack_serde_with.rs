use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

mod as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn as_text<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    as_string::deserialize(d)
}

// A key stored as "5" would never be found by `get(5)`; an index of "7" never by `eq(7)`.
#[derive(Model, Serialize, Deserialize)]
#[remodel(index(name = "n_m", fields(n, m)))]
struct Stringly {
    #[serde(with = "as_string")]
    id: u64,
    #[serde(serialize_with = "as_text")]
    #[remodel(index)]
    n: u64,
    #[serde(serialize_with = "as_text")]
    m: u64,
}

#[derive(Model, Serialize, Deserialize)]
#[remodel(belongs_to(Owner))]
struct Owned {
    id: Option<Id>,
    #[serde(with = "as_string")]
    owner_id: u64,
}

#[derive(Model, Serialize, Deserialize)]
struct Owner {
    id: Option<u64>,
}

// Not indexed, not a key: stored as serde writes it, with no typed field name.
#[derive(Model, Serialize, Deserialize)]
struct Counted {
    id: Option<Id>,
    #[serde(with = "as_string")]
    n: u64,
}

// A has_many whose foreign key is stored by a `with` function: it has no typed field name.
#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Counted, foreign_key = "n"))]
struct Tally {
    id: Option<Id>,
}

fn main() {
    let _ = Counted::fields().n.eq(7);
}
