//! Every relation kind and option: has_many, belongs_to, has_one, has_and_belongs_to_many
//! (shared join table, self-referencing), two relations to the same model, on_delete
//! nullify / cascade / restrict, and the errors of unsaved parents.

// Two relations to the same model repeat its name in two attributes.
#![allow(clippy::duplicated_attributes)]

use remodel::model::{create_schema, Id, ModelError};
use remodel::{Database, Error, Model};
use serde::{Deserialize, Serialize};

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Crewmember))]
#[remodel(has_many(Crewmember, accessor = "trainees", foreign_key = "training_ship_id"))]
#[remodel(has_and_belongs_to_many(Crewmember, accessor = "away_team"))]
struct Starship {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Starship))]
#[remodel(belongs_to(Starship, accessor = "training_ship", foreign_key = "training_ship_id"))]
#[remodel(has_and_belongs_to_many(Starship, accessor = "away_missions"))]
struct Crewmember {
    id: Option<Id>,
    name: String,
    species: String,
    starship_id: Option<Id>,
    training_ship_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Vessel, on_delete = "cascade"))]
struct Fleet {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Fleet), has_many(Deck, on_delete = "cascade"))]
struct Vessel {
    id: Option<Id>,
    name: String,
    fleet_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Vessel))]
struct Deck {
    id: Option<Id>,
    number: u32,
    vessel_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Cadet, on_delete = "restrict"))]
struct Academy {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Academy))]
struct Cadet {
    id: Option<Id>,
    name: String,
    academy_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_one(Commander))]
struct Station {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Station))]
struct Commander {
    id: Option<Id>,
    name: String,
    station_id: Option<Id>,
}

/// A self-referencing many-to-many: `friends` and its inverse `followers` share one join
/// table (`people_people`).
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_and_belongs_to_many(Person, accessor = "friends"))]
#[remodel(has_and_belongs_to_many(
    Person,
    accessor = "followers",
    foreign_key = "related_person_id",
    association_foreign_key = "person_id"
))]
struct Person {
    id: Option<Id>,
    name: String,
}

/// A self-referencing has_many / belongs_to: a chain of command, deleted as a tree.
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(
    Officer,
    accessor = "reports",
    foreign_key = "superior_id",
    on_delete = "cascade"
))]
#[remodel(belongs_to(Officer, accessor = "superior", foreign_key = "superior_id"))]
struct Officer {
    id: Option<Id>,
    name: String,
    superior_id: Option<Id>,
}

fn crew(name: &str, species: &str) -> Crewmember {
    Crewmember {
        id: None,
        name: name.into(),
        species: species.into(),
        starship_id: None,
        training_ship_id: None,
    }
}

fn names<T>(rows: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|r| f(r).to_string()).collect();
    v.sort();
    v
}

async fn setup() -> remodel::Result<(Database, Starship, Starship)> {
    let db = Database::temporary().await?;
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

#[tokio::test]
async fn schema_creates_foreign_key_indexes_and_join_tables() -> remodel::Result<()> {
    let (db, _, _) = setup().await?;
    let tables = db.table_names()?;
    for t in [
        "starships",
        "crewmembers",
        "crewmembers_starships",
        "people",
        "people_people",
        "fleets",
        "vessels",
        "decks",
        "academies",
        "cadets",
        "stations",
        "commanders",
    ] {
        assert!(
            tables.contains(&t.to_string()),
            "missing table {t}: {tables:?}"
        );
    }
    assert_eq!(
        db.table("crewmembers").index_names()?,
        ["starship_id", "training_ship_id"]
    );
    assert_eq!(
        db.table("crewmembers_starships").index_names()?,
        ["crewmember_id", "starship_id"]
    );
    assert_eq!(
        db.table("people_people").index_names()?,
        ["person_id", "related_person_id"]
    );
    // Idempotent.
    create_schema(&db).await?;
    assert_eq!(db.table_names()?, tables);
    // And it drops what it created.
    remodel::model::drop_schema(&db).await?;
    assert!(db.table_names()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn has_many_all_filter_get_count_create_add_remove_clear() -> remodel::Result<()> {
    let (db, voyager, defiant) = setup().await?;
    let crew_v = voyager.crewmembers(&db);
    let mut members = vec![crew("Janeway", "human"), crew("Tuvok", "vulcan")];
    crew_v.add(&mut members).await?;
    assert!(members
        .iter()
        .all(|m| m.id.is_some() && m.starship_id == voyager.id));
    let kes = crew_v.create(crew("Kes", "ocampa")).await?;
    assert_eq!(crew_v.count().await?, 3);
    assert_eq!(
        names(&crew_v.all().await?, |m| &m.name),
        ["Janeway", "Kes", "Tuvok"]
    );
    let f = Crewmember::fields();
    let vulcans = crew_v.filter(f.species.eq("vulcan")).run().await?;
    assert_eq!(names(&vulcans, |m| &m.name), ["Tuvok"]);

    // get: only this parent's children.
    let mut sisko = defiant
        .crewmembers(&db)
        .create(crew("Sisko", "human"))
        .await?;
    assert!(crew_v.get(kes.id.clone().unwrap()).await?.is_some());
    assert!(crew_v.get(sisko.id.clone().unwrap()).await?.is_none());

    // remove only detaches rows of this parent.
    let detached = crew_v.remove(std::slice::from_mut(&mut sisko)).await?;
    assert_eq!(detached, 0);
    assert_eq!(sisko.starship_id, defiant.id);
    assert_eq!(defiant.crewmembers(&db).count().await?, 1);
    let mut tuvok = members.pop().unwrap();
    assert_eq!(crew_v.remove(std::slice::from_mut(&mut tuvok)).await?, 1);
    assert_eq!(tuvok.starship_id, None);
    let stored = Crewmember::get(&db, tuvok.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(stored.starship_id, None);

    // clear detaches all, deletes none.
    assert_eq!(crew_v.clear().await?, 2);
    assert_eq!(crew_v.count().await?, 0);
    assert_eq!(Crewmember::count(&db).await?, 4);
    Ok(())
}

#[tokio::test]
async fn has_many_set_replaces_the_children_atomically() -> remodel::Result<()> {
    let (db, voyager, _) = setup().await?;
    let crew_v = voyager.crewmembers(&db);
    let mut old = vec![crew("Janeway", "human"), crew("Neelix", "talaxian")];
    crew_v.add(&mut old).await?;
    let mut new = vec![old[0].clone(), crew("Seven", "human")];
    crew_v.set(&mut new).await?;
    assert_eq!(
        names(&crew_v.all().await?, |m| &m.name),
        ["Janeway", "Seven"]
    );
    let neelix = Crewmember::get(&db, old[1].id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(neelix.starship_id, None);
    Ok(())
}

#[tokio::test]
async fn belongs_to_fetches_sets_and_reports_unsaved_owners() -> remodel::Result<()> {
    let (db, voyager, defiant) = setup().await?;
    let mut member = crew("Worf", "klingon");
    assert!(member.starship(&db).await?.is_none());
    member.set_starship(Some(&defiant))?;
    let mut member = member.create(&db).await?;
    assert_eq!(member.starship(&db).await?.unwrap().name, "Defiant");
    member.set_starship(Some(&voyager))?;
    member.save(&db).await?;
    assert_eq!(member.starship(&db).await?.unwrap(), voyager);
    assert_eq!(voyager.crewmembers(&db).count().await?, 1);
    assert_eq!(defiant.crewmembers(&db).count().await?, 0);

    let unsaved = Starship {
        id: None,
        name: "Phoenix".into(),
    };
    let err = member.set_starship(Some(&unsaved)).unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::NotSaved { .. })),
        "{err}"
    );
    member.set_starship(None)?;
    assert_eq!(member.starship_id, None);
    Ok(())
}

#[tokio::test]
async fn relation_handles_need_a_saved_parent() -> remodel::Result<()> {
    let (db, _, _) = setup().await?;
    let unsaved = Starship {
        id: None,
        name: "Phoenix".into(),
    };
    let not_saved = |e: Error| matches!(e.as_model(), Some(ModelError::NotSaved { operation, .. }) if operation == "crewmembers");
    assert!(not_saved(unsaved.crewmembers(&db).all().await.unwrap_err()));
    assert!(not_saved(
        unsaved.crewmembers(&db).count().await.unwrap_err()
    ));
    assert!(not_saved(
        unsaved
            .crewmembers(&db)
            .create(crew("X", "y"))
            .await
            .unwrap_err()
    ));
    assert!(not_saved(
        unsaved.crewmembers(&db).changes().await.unwrap_err()
    ));
    assert!(unsaved.away_team(&db).all().await.is_err());
    assert!(unsaved.delete(&db).await.is_err());
    assert_eq!(Crewmember::count(&db).await?, 0);
    Ok(())
}

#[tokio::test]
async fn two_relations_to_the_same_model_keep_separate_keys() -> remodel::Result<()> {
    let (db, voyager, defiant) = setup().await?;
    let mut paris = crew("Paris", "human");
    paris.set_starship(Some(&voyager))?;
    paris.set_training_ship(Some(&defiant))?;
    let paris = paris.create(&db).await?;
    let kim = defiant.trainees(&db).create(crew("Kim", "human")).await?;

    assert_eq!(
        names(&voyager.crewmembers(&db).all().await?, |m| &m.name),
        ["Paris"]
    );
    assert!(voyager.trainees(&db).all().await?.is_empty());
    assert_eq!(
        names(&defiant.trainees(&db).all().await?, |m| &m.name),
        ["Kim", "Paris"]
    );
    assert!(defiant.crewmembers(&db).all().await?.is_empty());
    assert_eq!(paris.starship(&db).await?.unwrap().name, "Voyager");
    assert_eq!(paris.training_ship(&db).await?.unwrap().name, "Defiant");
    assert_eq!(kim.starship_id, None);

    // Batched loads of both relations stay apart too.
    let rows = vec![paris.clone(), kim.clone()];
    let ships = Crewmember::load_starship(&db, &rows).await?;
    let training = Crewmember::load_training_ship(&db, &rows).await?;
    assert_eq!(ships[0].as_ref().unwrap().name, "Voyager");
    assert!(ships[1].is_none());
    assert_eq!(training[0].as_ref().unwrap().name, "Defiant");
    assert_eq!(training[1].as_ref().unwrap().name, "Defiant");

    // Deleting Defiant nullifies the training key only.
    defiant.delete(&db).await?;
    let paris = Crewmember::get(&db, paris.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(paris.training_ship_id, None);
    assert_eq!(paris.starship_id, voyager.id);
    Ok(())
}

#[tokio::test]
async fn on_delete_nullify_is_the_default() -> remodel::Result<()> {
    let (db, voyager, _) = setup().await?;
    voyager
        .crewmembers(&db)
        .add(&mut [crew("Janeway", "human"), crew("Chakotay", "human")])
        .await?;
    voyager.delete(&db).await?;
    assert!(Starship::get(&db, voyager.id.clone().unwrap())
        .await?
        .is_none());
    let all = Crewmember::all(&db).await?;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|m| m.starship_id.is_none()));
    Ok(())
}

#[tokio::test]
async fn on_delete_cascade_deletes_children_and_grandchildren() -> remodel::Result<()> {
    let db = Database::temporary().await?;
    create_schema(&db).await?;
    let fleet = Fleet {
        id: None,
        name: "Seventh".into(),
    }
    .create(&db)
    .await?;
    let other = Fleet {
        id: None,
        name: "Ninth".into(),
    }
    .create(&db)
    .await?;
    let v1 = fleet
        .vessels(&db)
        .create(Vessel {
            id: None,
            name: "A".into(),
            fleet_id: None,
        })
        .await?;
    let v2 = other
        .vessels(&db)
        .create(Vessel {
            id: None,
            name: "B".into(),
            fleet_id: None,
        })
        .await?;
    for n in 1..=3 {
        v1.decks(&db)
            .create(Deck {
                id: None,
                number: n,
                vessel_id: None,
            })
            .await?;
    }
    v2.decks(&db)
        .create(Deck {
            id: None,
            number: 1,
            vessel_id: None,
        })
        .await?;
    fleet.delete(&db).await?;
    assert_eq!(Fleet::count(&db).await?, 1);
    assert_eq!(names(&Vessel::all(&db).await?, |v| &v.name), ["B"]);
    assert_eq!(Deck::count(&db).await?, 1);
    assert_eq!(v2.decks(&db).count().await?, 1);
    Ok(())
}

#[tokio::test]
async fn on_delete_restrict_refuses_and_writes_nothing() -> remodel::Result<()> {
    let db = Database::temporary().await?;
    create_schema(&db).await?;
    let academy = Academy {
        id: None,
        name: "Starfleet Academy".into(),
    }
    .create(&db)
    .await?;
    let mut cadet = academy
        .cadets(&db)
        .create(Cadet {
            id: None,
            name: "Nog".into(),
            academy_id: None,
        })
        .await?;
    let err = academy.delete(&db).await.unwrap_err();
    assert!(
        matches!(err, Error::Precondition(ref why) if why.contains("restrict")),
        "{err}"
    );
    assert_eq!(Academy::count(&db).await?, 1);
    assert_eq!(academy.cadets(&db).count().await?, 1);
    academy
        .cadets(&db)
        .remove(std::slice::from_mut(&mut cadet))
        .await?;
    academy.delete(&db).await?;
    assert_eq!(Academy::count(&db).await?, 0);
    Ok(())
}

#[tokio::test]
async fn has_one_gets_sets_and_clears() -> remodel::Result<()> {
    let db = Database::temporary().await?;
    create_schema(&db).await?;
    let ds9 = Station {
        id: None,
        name: "Deep Space Nine".into(),
    }
    .create(&db)
    .await?;
    assert!(ds9.commander(&db).await?.is_none());
    let mut kira = Commander {
        id: None,
        name: "Kira".into(),
        station_id: None,
    };
    ds9.commander(&db).set(&mut kira).await?;
    assert_eq!(ds9.commander(&db).await?.unwrap().name, "Kira");
    let mut sisko = Commander {
        id: None,
        name: "Sisko".into(),
        station_id: None,
    };
    ds9.commander(&db).set(&mut sisko).await?;
    assert_eq!(ds9.commander(&db).await?.unwrap().name, "Sisko");
    let kira = Commander::get(&db, kira.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(kira.station_id, None, "the previous child was detached");
    assert_eq!(sisko.station(&db).await?.unwrap().name, "Deep Space Nine");
    let loaded = Station::load_commander(&db, std::slice::from_ref(&ds9)).await?;
    assert_eq!(loaded[0].as_ref().unwrap().name, "Sisko");
    assert!(ds9.commander(&db).clear().await?);
    assert!(ds9.commander(&db).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn many_to_many_through_one_shared_join_table() -> remodel::Result<()> {
    let (db, voyager, defiant) = setup().await?;
    let mut team = vec![crew("Janeway", "human"), crew("Tuvok", "vulcan")];
    voyager.away_team(&db).add(&mut team).await?;
    let dax = defiant.away_team(&db).create(crew("Dax", "trill")).await?;
    // Tuvok is on both ships' away teams.
    defiant.away_team(&db).add(&mut team[1..]).await?;
    // Adding again changes nothing.
    defiant.away_team(&db).add(&mut team[1..]).await?;

    assert_eq!(
        names(&voyager.away_team(&db).all().await?, |m| &m.name),
        ["Janeway", "Tuvok"]
    );
    assert_eq!(
        names(&defiant.away_team(&db).all().await?, |m| &m.name),
        ["Dax", "Tuvok"]
    );
    assert_eq!(defiant.away_team(&db).count().await?, 2);
    // The other side reads the same join table.
    let missions = team[1].away_missions(&db).all().await?;
    assert_eq!(names(&missions, |s| &s.name), ["Defiant", "Voyager"]);
    assert_eq!(db.table("crewmembers_starships").count().await?, 4);
    let f = Crewmember::fields();
    let vulcans = voyager
        .away_team(&db)
        .filter(f.species.eq("vulcan"))
        .await?;
    assert_eq!(names(&vulcans, |m| &m.name), ["Tuvok"]);
    assert!(voyager
        .away_team(&db)
        .get(dax.id.clone().unwrap())
        .await?
        .is_none());
    assert!(defiant
        .away_team(&db)
        .get(dax.id.clone().unwrap())
        .await?
        .is_some());

    // Batched: every ship's away team in two queries.
    let ships = vec![voyager.clone(), defiant.clone()];
    let teams = Starship::load_away_team(&db, &ships).await?;
    assert_eq!(names(&teams[0], |m| &m.name), ["Janeway", "Tuvok"]);
    assert_eq!(names(&teams[1], |m| &m.name), ["Dax", "Tuvok"]);

    // set: exactly these.
    let mut only = vec![team[0].clone()];
    voyager.away_team(&db).set(&mut only).await?;
    assert_eq!(
        names(&voyager.away_team(&db).all().await?, |m| &m.name),
        ["Janeway"]
    );
    assert_eq!(
        names(&defiant.away_team(&db).all().await?, |m| &m.name),
        ["Dax", "Tuvok"]
    );

    // clear: only Defiant's links.
    assert_eq!(defiant.away_team(&db).clear().await?, 2);
    assert_eq!(voyager.away_team(&db).count().await?, 1);
    assert_eq!(
        Crewmember::count(&db).await?,
        3,
        "clear deletes links, not rows"
    );

    // Deleting a member deletes its links (declared on either side).
    team[0].delete(&db).await?;
    assert_eq!(db.table("crewmembers_starships").count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn self_referencing_many_to_many() -> remodel::Result<()> {
    let db = Database::temporary().await?;
    create_schema(&db).await?;
    let mut people = Vec::new();
    for n in ["Quark", "Rom", "Nog", "Odo"] {
        people.push(
            Person {
                id: None,
                name: n.into(),
            }
            .create(&db)
            .await?,
        );
    }
    let (quark, rest) = people.split_first_mut().unwrap();
    quark.friends(&db).add(&mut rest[..2]).await?;
    rest[2]
        .friends(&db)
        .add(std::slice::from_mut(quark))
        .await?;
    assert_eq!(
        names(&quark.friends(&db).all().await?, |p| &p.name),
        ["Nog", "Rom"]
    );
    assert_eq!(
        names(&quark.followers(&db).all().await?, |p| &p.name),
        ["Odo"]
    );
    assert_eq!(
        names(&rest[0].followers(&db).all().await?, |p| &p.name),
        ["Quark"]
    );
    assert!(rest[0].friends(&db).all().await?.is_empty());
    // A person related to themself.
    quark
        .friends(&db)
        .add(std::slice::from_mut(&mut quark.clone()))
        .await?;
    assert_eq!(quark.friends(&db).count().await?, 3);
    // Deleting Quark removes the links on both columns.
    quark.delete(&db).await?;
    assert_eq!(db.table("people_people").count().await?, 0);
    assert!(rest[2].friends(&db).all().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn self_referencing_has_many_cascades_down_the_tree() -> remodel::Result<()> {
    let db = Database::temporary().await?;
    create_schema(&db).await?;
    let officer = |n: &str| Officer {
        id: None,
        name: n.into(),
        superior_id: None,
    };
    let picard = officer("Picard").create(&db).await?;
    let riker = picard.reports(&db).create(officer("Riker")).await?;
    let data = riker.reports(&db).create(officer("Data")).await?;
    let _lal = data.reports(&db).create(officer("Lal")).await?;
    let janeway = officer("Janeway").create(&db).await?;
    assert_eq!(data.superior(&db).await?.unwrap().name, "Riker");
    assert_eq!(
        names(&picard.reports(&db).all().await?, |o| &o.name),
        ["Riker"]
    );
    riker.delete(&db).await?;
    let left = names(&Officer::all(&db).await?, |o| &o.name);
    assert_eq!(left, ["Janeway", "Picard"]);
    assert!(janeway.reports(&db).all().await?.is_empty());
    Ok(())
}
