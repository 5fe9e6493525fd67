//! Typed paths for what used to need JSON: a set of keys plus a predicate, bulk updates and
//! deletes by predicate (decided in one commit, relations applied), and sums, averages,
//! extremes and groups on typed fields with typed results.

use crate::common::{crew, Crewmember, Starship};
use remodel::model::{create_schema, Id, ModelError};
use remodel::{Database, Error, Model};

async fn db() -> Database {
    let db = crate::common::db().await.unwrap();
    create_schema(&db).await.unwrap();
    db
}

async fn fleet(db: &Database) -> remodel::Result<(Starship, Vec<Crewmember>)> {
    let voyager = Starship {
        id: None,
        name: "Voyager".into(),
    }
    .create(db)
    .await?;
    let mut members = Vec::new();
    for (name, species, rank) in [
        ("Janeway", "human", "captain"),
        ("Tuvok", "vulcan", "commander"),
        ("Kim", "human", "ensign"),
        ("Seven", "borg", "crewman"),
    ] {
        let mut m = crew(name, species);
        m.rank = rank.into();
        members.push(voyager.crewmembers(db).create(m).await?);
    }
    Ok((voyager, members))
}

#[tokio::test]
async fn keys_and_a_predicate() -> remodel::Result<()> {
    let db = db().await;
    let (_, members) = fleet(&db).await?;
    let f = Crewmember::fields();
    let keys: Vec<Id> = members
        .iter()
        .take(3)
        .map(|m| m.id.clone().unwrap())
        .collect();
    let humans = Crewmember::with_keys(&db, &keys)
        .filter(f.species.eq("human"))
        .run()
        .await?;
    let mut names: Vec<_> = humans.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["Janeway", "Kim"]);
    assert_eq!(
        Crewmember::with_keys(&db, Vec::<Id>::new()).count().await?,
        0
    );
    assert_eq!(
        Crewmember::with_keys(&db, [Id::from("nobody")])
            .count()
            .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn bulk_update_and_delete_by_predicate() -> remodel::Result<()> {
    let db = db().await;
    let (voyager, members) = fleet(&db).await?;
    let f = Crewmember::fields();
    let promoted = Crewmember::filter(&db, f.species.eq("human"))
        .update(
            f.rank
                .set("commander")
                .and(f.training_ship_id.set(voyager.id.clone())),
        )
        .await?;
    assert_eq!(promoted, 2);
    let commanders = Crewmember::filter(&db, f.rank.eq("commander"))
        .count()
        .await?;
    assert_eq!(commanders, 3);
    let kim = Crewmember::get(&db, members[2].id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(kim.training_ship_id, voyager.id);

    // Deleting ships by predicate applies their relations in the same commit: the crew's
    // foreign key is nullified (Starship's has_many nullifies), the away team unlinked.
    voyager
        .away_team(&db)
        .relate(&[members[1].id.clone().unwrap()])
        .await?;
    let s = Starship::fields();
    // Two rows: the ship and its away-team link (a cascade's deletes are counted too).
    assert_eq!(
        Starship::filter(&db, s.name.eq("Voyager")).delete().await?,
        2
    );
    assert_eq!(Starship::count(&db).await?, 0);
    let orphans = Crewmember::filter(&db, f.starship_id.is_null())
        .count()
        .await?;
    assert_eq!(orphans, 4);
    assert_eq!(db.table("crewmembers_starships").count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_restricted_bulk_delete_is_typed_and_writes_nothing() -> remodel::Result<()> {
    use serde::{Deserialize, Serialize};
    #[derive(Model, Serialize, Deserialize, Clone, Debug)]
    #[remodel(has_many(Recruit, on_delete = "restrict"))]
    struct Outpost {
        id: Option<Id>,
        sector: u32,
    }
    #[derive(Model, Serialize, Deserialize, Clone, Debug)]
    #[remodel(belongs_to(Outpost))]
    struct Recruit {
        id: Option<Id>,
        outpost_id: Option<Id>,
    }
    let db = db().await;
    let a = Outpost {
        id: None,
        sector: 1,
    }
    .create(&db)
    .await?;
    Outpost {
        id: None,
        sector: 1,
    }
    .create(&db)
    .await?;
    a.recruits(&db)
        .create(Recruit {
            id: None,
            outpost_id: None,
        })
        .await?;
    let f = Outpost::fields();
    let err = Outpost::filter(&db, f.sector.eq(1))
        .delete()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::Restricted { ref relation, children: 1, .. }) if relation == "recruits"),
        "{err:?}"
    );
    assert_eq!(
        Outpost::count(&db).await?,
        2,
        "a partial delete was written"
    );
    Ok(())
}

#[tokio::test]
async fn sums_averages_extremes_and_groups_are_typed() -> remodel::Result<()> {
    use serde::{Deserialize, Serialize};
    #[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Shuttle {
        id: Option<Id>,
        bay: String,
        seats: u32,
        warp: Option<f64>,
    }
    let db = db().await;
    for (bay, seats, warp) in [
        ("one", 2, Some(1.0)),
        ("one", 6, None),
        ("two", 4, Some(3.0)),
    ] {
        Shuttle {
            id: None,
            bay: bay.into(),
            seats,
            warp,
        }
        .create(&db)
        .await?;
    }
    let f = Shuttle::fields();
    let q = Shuttle::query(&db);
    assert_eq!(q.sum(f.seats).await?, 12.0);
    assert_eq!(q.avg(f.warp).await?, Some(2.0));
    assert_eq!(q.max(f.seats).await?.unwrap().seats, 6);
    assert_eq!(q.min(f.seats).await?.unwrap().seats, 2);
    assert_eq!(
        q.group(f.bay).count().await?,
        vec![("one".to_string(), 2), ("two".to_string(), 1)]
    );
    assert_eq!(
        q.group(f.bay).sum(f.seats).await?,
        vec![("one".to_string(), 8.0), ("two".to_string(), 4.0)]
    );
    assert_eq!(
        q.group(f.bay).avg(f.warp).await?,
        vec![
            ("one".to_string(), Some(1.0)),
            ("two".to_string(), Some(3.0))
        ]
    );
    let by_seats: Vec<(u32, u64)> = q.filter(f.bay.eq("one")).group(f.seats).count().await?;
    assert_eq!(by_seats, vec![(2, 1), (6, 1)]);
    Ok(())
}
