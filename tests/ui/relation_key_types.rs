// Relation handles are typed: a many-to-many relates keys of its target model, and a
// has_many's `get` takes the child's key type.
use remodel::model::Id;
use remodel::{Database, Model};
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Crewmember), has_and_belongs_to_many(Crewmember, accessor = "away_team"))]
struct Starship {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize)]
struct Crewmember {
    id: Option<Id>,
    name: String,
    starship_id: Option<Id>,
}

async fn write(db: &Database, ship: Starship) -> remodel::Result<()> {
    ship.away_team(db).relate(&[serde_json::json!("tuvok")]).await?;
    ship.crewmembers(db).get(5u64).await?;
    Ok(())
}

fn main() {
    let _ = write;
}
