//! The three crews loaded on first run.

use crate::models::{Crewmember, Starship};
use remodel::model::{Id, Transaction};
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
/// The seeded rows have fixed keys (`/ship/voyager`, `/member/janeway`); each ship is created
/// with its crew in one transaction, so a first start interrupted half-way creates the ships
/// still missing on the next start; the marker row is written last.
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
        // The ship and its crew in one transaction: a start interrupted before the marker
        // finds each ship whole with its crew, or absent.
        if Starship::get(db, key).await?.is_some() {
            continue;
        }
        let mut tx = Transaction::new(db);
        tx.save(&mut ship).await?;
        for (key, name, rank, species) in members {
            tx.create(Crewmember {
                id: Some(Id::from(key)),
                starship_id: ship.id.clone(),
                ..Crewmember::new(name, rank, species)
            })
            .await?;
        }
        tx.commit().await?;
    }
    meta.insert(json!({"id": "seeded"})).await?.check()?;
    Ok(true)
}
