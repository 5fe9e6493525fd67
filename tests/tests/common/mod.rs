//! The Starfleet models that the model tests share, in one place: `Starship`, `Crewmember`
//! and `Captain`, with every relation kind between them, and the fixtures that make them.
//! The binaries `models`, `relations`, `live` and `batched` include this module
//! (`#[path = "../common/mod.rs"] mod common;`, or `"common/mod.rs"` from `tests/*.rs`).
//!
//! Every `#[derive(Model)]` registers itself in the binary that links it, and
//! `create_schema` creates every registered model, so a binary has one shape per table:
//! these are the models of `starships`, `crewmembers`, `captains` and
//! `crewmembers_starships` wherever this module is included. A test that needs another
//! shape declares a model of its own, on a table of its own (the tutorial keeps the
//! README's models, `model_races` its fleet).

// Each binary uses a part of the fixtures.
#![allow(dead_code)]
// Two relations to the same model repeat its name in two attributes.
#![allow(clippy::duplicated_attributes)]

use remodel::model::{create_schema, Callbacks, Id, ModelError};
use remodel::{Database, Model};
use serde::{Deserialize, Serialize};

/// A starship: its crew and its trainees (two has_many to one model, by two foreign keys),
/// its captain (has_one), and an away team (has_and_belongs_to_many, through
/// `crewmembers_starships`).
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Crewmember), has_one(Captain))]
#[remodel(has_many(Crewmember, accessor = "trainees", foreign_key = "training_ship_id"))]
#[remodel(has_and_belongs_to_many(Crewmember, accessor = "away_team"))]
pub struct Starship {
    pub id: Option<Id>,
    pub name: String,
}

/// A crew member: of a starship, in training on another (two belongs_to to one model), and
/// on away missions (the other side of the away team). Its hooks refuse an empty name
/// (`before_save`) and record what `after_load` saw.
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(callbacks)]
#[remodel(belongs_to(Starship))]
#[remodel(belongs_to(Starship, accessor = "training_ship", foreign_key = "training_ship_id"))]
#[remodel(has_and_belongs_to_many(Starship, accessor = "away_missions"))]
pub struct Crewmember {
    pub id: Option<Id>,
    pub name: String,
    /// Empty where a test does not need it (rows written as raw JSON leave it out).
    #[serde(default)]
    pub rank: String,
    /// Empty where a test does not need it (rows written as raw JSON leave it out).
    #[serde(default)]
    pub species: String,
    pub starship_id: Option<Id>,
    pub training_ship_id: Option<Id>,
    /// Set by `after_load` from the other fields.
    #[serde(skip)]
    pub seen_in_after_load: Option<String>,
}

impl Callbacks for Crewmember {
    async fn before_save(&mut self, _db: &Database) -> remodel::Result<()> {
        if self.name.is_empty() {
            return Err(ModelError::Rejected("a crew member needs a name".into()).into());
        }
        Ok(())
    }
    fn after_load(&mut self) {
        self.seen_in_after_load = Some(format!("{} of {:?}", self.name, self.starship_id));
    }
}

/// A starship's captain (the other side of its has_one).
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Starship))]
pub struct Captain {
    pub id: Option<Id>,
    pub name: String,
    pub starship_id: Option<Id>,
}

/// An unsaved crew member of a species (rank left empty).
pub fn crew(name: &str, species: &str) -> Crewmember {
    Crewmember {
        id: None,
        name: name.into(),
        rank: String::new(),
        species: species.into(),
        starship_id: None,
        training_ship_id: None,
        seen_in_after_load: None,
    }
}

/// An unsaved crew member of a rank (species left empty).
pub fn member(name: &str, rank: &str) -> Crewmember {
    Crewmember {
        rank: rank.into(),
        ..crew(name, "")
    }
}

/// A temporary database; on PostgreSQL when the suites run there
/// (`REMODEL_TEST_BACKEND=postgres`, see `remodel::postgres::suite_database`).
pub async fn db() -> remodel::Result<Database> {
    if remodel::postgres::suites_on_postgres() {
        return Ok(remodel::postgres::suite_database().await);
    }
    temporary().open().await
}

/// The configuration of the suites' temporary databases: `Config::temporary()`, or with
/// `REMODEL_TEST_BACKEND=memory`, `Config::in_memory()` (the in-memory storage engine).
pub fn temporary() -> remodel::Config {
    if std::env::var("REMODEL_TEST_BACKEND").is_ok_and(|v| v == "memory") {
        remodel::Config::in_memory()
    } else {
        remodel::Config::temporary()
    }
}

/// A temporary database with the schema of every model of the binary, and two saved
/// starships: Voyager and Defiant.
pub async fn setup() -> remodel::Result<(Database, Starship, Starship)> {
    let db = db().await?;
    create_schema(&db).await?;
    let voyager = Starship {
        id: None,
        name: "Voyager".into(),
    }
    .create(&db)
    .await?;
    let defiant = Starship {
        id: None,
        name: "Defiant".into(),
    }
    .create(&db)
    .await?;
    Ok((db, voyager, defiant))
}

/// The names of rows (read with `f`), sorted.
pub fn names<T>(rows: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| f(r).to_string()).collect();
    v.sort();
    v
}

/// A random test's seed: `var` from the environment (to replay a run), else the clock's
/// nanoseconds; printed either way.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{var}={seed}");
    seed
}

/// splitmix64: a small seeded generator for the random tests.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Task `task`'s generator of a run seeded with `seed`.
    pub fn for_task(seed: u64, task: u64) -> Rng {
        Rng(seed ^ task.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `v`, if any.
    pub fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.below(v.len() as u64) as usize].clone())
    }
}
