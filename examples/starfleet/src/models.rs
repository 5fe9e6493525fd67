//! The app's models: starships, their crews, away teams and holodeck scores.
//!
//! Each `#[derive(Model)]` gives a table (`starships`, `crewmembers`, `scores`), the indexes
//! its attributes ask for, and typed relation handles: `ship.crewmembers(&db)` (has_many,
//! through the `starship_id` index) and `ship.away_team(&db)` (many-to-many, through a join
//! table shared with `member.away_missions(&db)`), and `member.logs(&db)` (has_many: a
//! member's personal log, deleted with the member).

use remodel::model::Id;
use remodel::Model;
use serde::{Deserialize, Serialize};

/// A starship.
#[derive(Model, Serialize, Deserialize, Clone, Debug)]
#[remodel(
    has_many(Crewmember),
    has_and_belongs_to_many(Crewmember, accessor = "away_team")
)]
pub struct Starship {
    /// The key (generated on create).
    pub id: Option<Id>,
    /// The ship's name, e.g. "Voyager".
    #[remodel(index)]
    pub name: String,
    /// The ship's class, e.g. "Intrepid".
    pub category: String,
    /// Where the ship is on the sector map (0 to [`MAP_WIDTH`]; rows stored before the map
    /// existed read as 0 and are placed by the map page).
    #[serde(default)]
    pub x: f64,
    /// The map's other coordinate (0 to [`MAP_HEIGHT`]).
    #[serde(default)]
    pub y: f64,
}

/// The sector map's width, in map units.
pub const MAP_WIDTH: f64 = 800.0;
/// The sector map's height, in map units.
pub const MAP_HEIGHT: f64 = 500.0;

/// A member of a crew (or of none: `starship_id` empty).
#[derive(Model, Serialize, Deserialize, Clone, Debug)]
#[remodel(
    belongs_to(Starship),
    has_and_belongs_to_many(Starship, accessor = "away_missions"),
    has_many(Log, on_delete = "cascade")
)]
pub struct Crewmember {
    /// The key (generated on create).
    pub id: Option<Id>,
    /// The member's name.
    pub name: String,
    /// The rank, e.g. "captain" (indexed: the captains page reads through it).
    #[remodel(index)]
    pub rank: String,
    /// The species, e.g. "vulcan" (the species chart groups by it).
    pub species: String,
    /// The ship this member serves on (belongs_to: indexed for you).
    pub starship_id: Option<Id>,
}

/// A holodeck score.
#[derive(Model, Serialize, Deserialize, Clone, Debug)]
pub struct Score {
    /// The key (generated on create).
    pub id: Option<Id>,
    /// Who played.
    pub player: String,
    /// The points (indexed: the leaderboard is `order_by(points index).limit(5)`).
    #[remodel(index)]
    pub points: i64,
}

/// An entry of a member's personal log: only the member and their ship's captain read and
/// write it (the rules are in `publications.rs`).
#[derive(Model, Serialize, Deserialize, Clone, Debug)]
#[remodel(belongs_to(Crewmember))]
pub struct Log {
    /// The key (generated on create).
    pub id: Option<Id>,
    /// Whose log it is (belongs_to: indexed for you).
    pub crewmember_id: Option<Id>,
    /// Who wrote it: the member, or their captain.
    pub author: String,
    /// What was written.
    pub text: String,
    /// When, in milliseconds since 1970 (the log is shown newest first).
    pub at: u64,
}

impl Crewmember {
    /// A new member, not yet saved nor on a ship.
    pub fn new(name: &str, rank: &str, species: &str) -> Self {
        Crewmember {
            id: None,
            name: name.into(),
            rank: rank.into(),
            species: species.into(),
            starship_id: None,
        }
    }

    /// The key as text (empty for an unsaved member).
    pub fn id_str(&self) -> &str {
        self.id.as_ref().map(Id::as_str).unwrap_or_default()
    }
}

impl Starship {
    /// The key as text (empty for an unsaved ship).
    pub fn id_str(&self) -> &str {
        self.id.as_ref().map(Id::as_str).unwrap_or_default()
    }
}
