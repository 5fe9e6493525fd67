// A relation handle belongs to the model that declares it: a crew member has no
// `crewmembers`, and a ship's crew handle yields crew members, not ships.
use remodel::model::Id;
use remodel::{Database, Model};
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize)]
#[remodel(has_many(Crewmember))]
struct Starship {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize)]
#[remodel(belongs_to(Starship))]
struct Crewmember {
    id: Option<Id>,
    name: String,
    starship_id: Option<Id>,
}

async fn read(db: &Database, ship: Starship, member: Crewmember) -> remodel::Result<()> {
    member.crewmembers(db).all().await?;
    let ships: Vec<Starship> = ship.crewmembers(db).all().await?;
    let _ = ships;
    Ok(())
}

fn main() {
    let _ = read;
}
