//! The Remodel tutorial, end to end: Starship and Crewmember, the schema, three ships and
//! their crews (one created with its crew in a transaction), queries through relations,
//! typed keys, batched loading, a typed group-count, and a typed live relation feed.

use futures::StreamExt;
use remodel::model::{create_schema, Id, Transaction};
use remodel::{ChangeKind, Database, Model};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Crewmember))]
struct Starship {
    id: Option<Id>,
    #[remodel(index)]
    name: String,
    category: String,
    registry: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Starship))]
struct Crewmember {
    id: Option<Id>,
    name: String,
    #[remodel(index)]
    rank: String,
    species: String,
    starship_id: Option<Id>,
}

fn ship(name: &str, category: &str, registry: &str) -> Starship {
    Starship {
        id: None,
        name: name.into(),
        category: category.into(),
        registry: registry.into(),
    }
}

fn member(name: &str, rank: &str, species: &str) -> Crewmember {
    Crewmember {
        id: None,
        name: name.into(),
        rank: rank.into(),
        species: species.into(),
        starship_id: None,
    }
}

async fn next<T: Model>(feed: &mut remodel::model::ModelFeed<T>) -> remodel::model::Change<T> {
    tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("a change within 5 s")
        .expect("the feed goes on")
        .expect("a change, not an error")
}

#[tokio::test]
async fn tutorial() -> remodel::Result<()> {
    let db = Database::temporary().await?;
    create_schema(&db).await?;
    // Idempotent: a second run changes nothing.
    create_schema(&db).await?;
    assert_eq!(db.table_names()?, ["crewmembers", "starships"]);
    assert_eq!(
        db.table("crewmembers").index_names()?,
        ["rank", "starship_id"]
    );

    let voyager = ship("Voyager", "Intrepid", "NCC-74656").create(&db).await?;
    let enterprise = ship("Enterprise", "Galaxy", "NCC-1701-D")
        .create(&db)
        .await?;
    assert!(voyager.id.is_some());

    voyager
        .crewmembers(&db)
        .add(&mut [
            member("Janeway", "captain", "human"),
            member("Neelix", "morale officer", "talaxian"),
            member("Tuvok", "lieutenant commander", "vulcan"),
        ])
        .await?;
    enterprise
        .crewmembers(&db)
        .add(&mut [
            member("Picard", "captain", "human"),
            member("Data", "lieutenant commander", "android"),
            member("Troi", "counselor", "betazoid"),
        ])
        .await?;
    // A ship and its crew in one commit: the transaction makes the ship's key first.
    let mut tx = Transaction::new(&db);
    let defiant = tx.create(ship("Defiant", "Defiant", "NX-74205")).await?;
    for (name, rank, species) in [
        ("Sisko", "captain", "human"),
        ("Dax", "lieutenant", "trill"),
        ("Kira", "major", "bajoran"),
    ] {
        let mut m = member(name, rank, species);
        m.starship_id = defiant.id.clone();
        tx.create(m).await?;
    }
    tx.commit().await?;
    assert_eq!(Crewmember::count(&db).await?, 9);

    // Keys are typed: a Starship's key is an `Id`.
    let key: Id = defiant.id.clone().unwrap();
    assert_eq!(Starship::get(&db, &key).await?.unwrap().name, "Defiant");

    // Voyager by name (through the `name` index).
    let s = Starship::fields();
    let found = Starship::find(&db, s.name.eq("Voyager")).await?.unwrap();
    assert_eq!(found, voyager);

    // Its human crew, through the relation.
    let c = Crewmember::fields();
    let humans = found
        .crewmembers(&db)
        .filter(c.species.eq("human"))
        .run()
        .await?;
    assert_eq!(
        humans.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["Janeway"]
    );

    // Every captain with the name of their ship, batched: one query for all ships.
    let captains = Crewmember::filter(&db, c.rank.eq("captain"))
        .order_by(c.name.asc())
        .run()
        .await?;
    let ships = Crewmember::load_starship(&db, &captains).await?;
    let pairs: Vec<(String, String)> = captains
        .iter()
        .zip(&ships)
        .map(|(m, s)| (m.name.clone(), s.as_ref().unwrap().name.clone()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("Janeway".to_string(), "Voyager".to_string()),
            ("Picard".to_string(), "Enterprise".to_string()),
            ("Sisko".to_string(), "Defiant".to_string()),
        ]
    );

    // Crew by species, typed: (species, count) pairs in the order of the species.
    let by_species: Vec<(String, u64)> = Crewmember::query(&db).group(c.species).count().await?;
    assert!(by_species.contains(&("human".to_string(), 3)));
    assert_eq!(by_species.len(), 7);

    // A live relation feed: a member added, updated and removed, typed.
    let mut feed = voyager.crewmembers(&db).changes().await?;
    // A write to another ship's crew is not in Voyager's feed.
    enterprise
        .crewmembers(&db)
        .create(member("Riker", "commander", "human"))
        .await?;
    let mut kim = voyager
        .crewmembers(&db)
        .create(member("Kim", "ensign", "human"))
        .await?;
    let added = next(&mut feed).await;
    assert_eq!(added.kind, ChangeKind::Add);
    assert_eq!(added.new.as_ref().unwrap().name, "Kim");
    assert!(added.old.is_none());

    kim.update(&db, |m| m.rank = "lieutenant".into()).await?;
    let updated = next(&mut feed).await;
    assert_eq!(updated.kind, ChangeKind::Change);
    assert_eq!(updated.old.unwrap().rank, "ensign");
    assert_eq!(updated.new.unwrap().rank, "lieutenant");

    voyager
        .crewmembers(&db)
        .remove(std::slice::from_mut(&mut kim))
        .await?;
    let removed = next(&mut feed).await;
    assert_eq!(removed.kind, ChangeKind::Remove);
    assert_eq!(removed.old.unwrap().name, "Kim");
    assert!(removed.new.is_none());
    assert!(added.seq < removed.seq);
    assert_eq!(kim.starship_id, None);

    // Kim is still stored, just no longer on Voyager.
    assert_eq!(voyager.crewmembers(&db).count().await?, 3);
    assert!(Crewmember::get(&db, kim.id.clone().unwrap())
        .await?
        .is_some());
    Ok(())
}
