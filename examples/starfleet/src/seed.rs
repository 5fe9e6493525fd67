//! The three crews loaded on first run.

use crate::models::{Crewmember, Starship};
use remodel::model::Id;
use remodel::{Database, Model};
use serde_json::json;

/// The table that remembers that the crews were loaded, so that a restart never loads them
/// twice (a member deleted by a visitor stays deleted).
const META_TABLE: &str = "starfleet_meta";

/// `(ship key, name, class, [(member key, name, rank, species)])`
type Crew = (
    &'static str,
    &'static str,
    &'static str,
    [(&'static str, &'static str, &'static str, &'static str); 3],
);

const CREWS: [Crew; 3] = [
    (
        "voyager",
        "Voyager",
        "Intrepid",
        [
            ("janeway", "Kathryn Janeway", "captain", "human"),
            ("neelix", "Neelix", "morale officer", "talaxian"),
            ("tuvok", "Tuvok", "lieutenant commander", "vulcan"),
        ],
    ),
    (
        "enterprise",
        "Enterprise",
        "Galaxy",
        [
            ("picard", "Jean-Luc Picard", "captain", "human"),
            ("data", "Data", "lieutenant commander", "android"),
            ("troi", "Deanna Troi", "commander", "betazoid"),
        ],
    ),
    (
        "defiant",
        "Defiant",
        "Defiant",
        [
            ("sisko", "Benjamin Sisko", "captain", "human"),
            ("dax", "Jadzia Dax", "lieutenant commander", "trill"),
            ("kira", "Kira Nerys", "major", "bajoran"),
        ],
    ),
];

/// Loads the crews unless they were loaded before. Returns whether it loaded them.
///
/// The seeded rows have fixed keys (`/ship/voyager`, `/member/janeway`), so a first start
/// interrupted half-way saves the ships again and creates the crews still missing on the next
/// start; the marker row is written last.
pub async fn seed_once(db: &Database) -> remodel::Result<bool> {
    db.ensure_table(META_TABLE).await?;
    let meta = db.table(META_TABLE);
    if meta.get("seeded").await?.is_some() {
        return Ok(false);
    }
    for (i, (key, name, category, members)) in CREWS.into_iter().enumerate() {
        let mut ship = Starship {
            id: Some(Id::from(key)),
            name: name.into(),
            category: category.into(),
            // Spread over the sector map.
            x: 160.0 + 240.0 * i as f64,
            y: 150.0 + 100.0 * (i % 2) as f64,
        };
        ship.save(db).await?;
        let mut crew: Vec<Crewmember> = members
            .iter()
            .map(|(key, name, rank, species)| Crewmember {
                id: Some(Id::from(*key)),
                ..Crewmember::new(name, rank, species)
            })
            .collect();
        // One atomic commit per crew: a start interrupted before the marker finds each crew
        // whole or absent.
        if ship.crewmembers(db).count().await? == 0 {
            ship.crewmembers(db).create_many(&mut crew).await?;
        }
    }
    meta.insert(json!({"id": "seeded"})).await?.check()?;
    Ok(true)
}
