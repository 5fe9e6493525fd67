//! Every relation kind: has_many (`all`, `filter`, `get`, `count`, `create`, `add`,
//! `remove`, `clear`, `set`), belongs_to, has_one, has_and_belongs_to_many (through one shared
//! join table, and self-referencing), two relations to the same model, the errors of
//! unsaved parents, and the schema they create (foreign-key indexes, join tables).

// Two relations to the same model repeat its name in two attributes.
#![allow(clippy::duplicated_attributes)]

use crate::common::{crew, names, setup, Crewmember, Starship};
use remodel::model::{create_schema, Id, ModelError};
use remodel::{Error, Model};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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

fn name_set(rows: &[Crewmember]) -> BTreeSet<String> {
    rows.iter().map(|m| m.name.clone()).collect()
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

/// The Python Remodel cleared a relation before validating the replacement, losing the old
/// children when a new one was invalid.
#[tokio::test]
async fn a_refused_replacement_leaves_the_relation_as_it_was() -> remodel::Result<()> {
    let (db, a, _) = setup().await?;
    a.crewmembers(&db)
        .add(&mut [crew("Janeway", ""), crew("Chakotay", "")])
        .await?;
    let mut replacement = vec![crew("Seven", ""), crew("", "")];
    let err = a.crewmembers(&db).set(&mut replacement).await.unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::Rejected(_))),
        "{err}"
    );
    let kept = name_set(&a.crewmembers(&db).all().await?);
    assert_eq!(
        kept,
        BTreeSet::from(["Chakotay".to_string(), "Janeway".to_string()])
    );
    assert_eq!(
        Crewmember::count(&db).await?,
        2,
        "Seven was not created either"
    );
    let err = a.away_team(&db).set(&mut replacement).await.unwrap_err();
    assert!(matches!(err.as_model(), Some(ModelError::Rejected(_))));
    Ok(())
}

/// The Python Remodel looked foreign keys up without an index (a table scan per lookup).
#[tokio::test]
async fn relation_lookups_read_through_the_foreign_key_index() -> remodel::Result<()> {
    let (db, a, b) = setup().await?;
    let mut many: Vec<Crewmember> = (0..200).map(|i| crew(&format!("crew {i}"), "")).collect();
    b.crewmembers(&db).add(&mut many).await?;
    a.crewmembers(&db).create(crew("Kim", "")).await?;
    let q = a.crewmembers(&db).query().raw()?;
    assert!(
        format!("{q:?}").contains("index: Some(\"starship_id\")"),
        "{q:?}"
    );
    let reads = || async {
        let rows = db
            .stats()
            .filter(remodel::field("table").eq("crewmembers"))
            .run()
            .await
            .unwrap();
        rows[0]["reads_total"].as_u64().unwrap()
    };
    let before = reads().await;
    assert_eq!(a.crewmembers(&db).all().await?.len(), 1);
    assert_eq!(reads().await - before, 1, "one row read, not a scan of 201");
    // A model filter on a foreign key uses its index too.
    let f = Crewmember::fields();
    let before = reads().await;
    let on_a = Crewmember::filter(&db, f.starship_id.eq(a.id.clone()))
        .run()
        .await?;
    assert_eq!(on_a.len(), 1);
    assert_eq!(reads().await - before, 1, "through the starship_id index");
    // An equality with null is not read through the index (indexes leave nulls out), so it
    // still finds every member without a training ship.
    assert_eq!(
        Crewmember::filter(&db, f.training_ship_id.eq(None::<Id>))
            .count()
            .await?,
        201
    );
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
    let mut unsaved = Starship {
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
    let (db, voyager, mut defiant) = setup().await?;
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

/// The Python Remodel cached relation data per target model, so two relations to the same model
/// read each other's rows.
#[tokio::test]
async fn two_relations_to_one_model_share_no_cache() -> remodel::Result<()> {
    let (db, a, b) = setup().await?;
    let mut m = crew("Paris", "");
    m.set_starship(Some(&a))?;
    m.set_training_ship(Some(&b))?;
    let m = m.create(&db).await?;
    // Read one relation, then the other: each returns its own owner.
    assert_eq!(m.starship(&db).await?.unwrap().name, "Voyager");
    assert_eq!(m.training_ship(&db).await?.unwrap().name, "Defiant");
    assert_eq!(a.crewmembers(&db).count().await?, 1);
    assert_eq!(a.trainees(&db).count().await?, 0);
    assert_eq!(b.trainees(&db).count().await?, 1);
    assert_eq!(b.crewmembers(&db).count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn has_one_gets_sets_and_clears() -> remodel::Result<()> {
    let db = crate::common::db().await?;
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
        .run()
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

/// The Python Remodel's many-to-many `remove` detached the target from every parent.
#[tokio::test]
async fn many_to_many_remove_detaches_from_this_parent_only() -> remodel::Result<()> {
    let (db, a, b) = setup().await?;
    let mut tuvok = vec![crew("Tuvok", "")];
    a.away_team(&db).add(&mut tuvok).await?;
    b.away_team(&db).add(&mut tuvok).await?;
    assert_eq!(a.away_team(&db).remove(&mut tuvok).await?, 1);
    assert!(a.away_team(&db).all().await?.is_empty());
    assert_eq!(
        name_set(&b.away_team(&db).all().await?),
        BTreeSet::from(["Tuvok".to_string()])
    );
    Ok(())
}

#[tokio::test]
async fn self_referencing_many_to_many() -> remodel::Result<()> {
    let db = crate::common::db().await?;
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
async fn relate_links_stored_rows_without_writing_them() -> remodel::Result<()> {
    let (db, voyager, _defiant) = setup().await?;
    let mut team = vec![crew("Janeway", "human"), crew("Tuvok", "vulcan")];
    voyager.crewmembers(&db).add(&mut team).await?;
    let (mut janeway, tuvok) = (team[0].clone(), team[1].clone());
    // Someone else edits Tuvok meanwhile: relating him keeps that edit (add would write the
    // copy read earlier back).
    let key = tuvok.key().unwrap();
    db.table("crewmembers")
        .get(key.clone())
        .update(remodel::json!({"species": "romulan?"}))
        .await?;
    voyager
        .away_team(&db)
        .relate(std::slice::from_ref(&key))
        .await?;
    voyager
        .away_team(&db)
        .relate(std::slice::from_ref(&key))
        .await?; // twice: one link
    assert_eq!(voyager.away_team(&db).count().await?, 1);
    let stored = Crewmember::get(&db, key.clone()).await?.unwrap();
    assert_eq!(stored.species, "romulan?");
    // A row that is gone: Missing, and nothing more is linked.
    let janeway_key = janeway.key().unwrap();
    janeway.delete(&db).await?;
    let both = [tuvok.key().unwrap(), janeway_key];
    let err = voyager.away_team(&db).relate(&both).await.unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::NotFound { .. })),
        "{err}"
    );
    assert_eq!(voyager.away_team(&db).count().await?, 1);
    Ok(())
}

/// Both to-many handles: `get_or_create` is one commit, so concurrent calls make one row;
/// and `changes()` is typed on both (a many-to-many feed gives the related models).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_many_handles_share_get_or_create_and_typed_changes() -> remodel::Result<()> {
    use futures::StreamExt;
    let (db, voyager, _) = setup().await?;
    let f = Crewmember::fields();

    // has_many: eight concurrent calls, one row.
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (db, voyager) = (db.clone(), voyager.clone());
        calls.push(tokio::spawn(async move {
            voyager
                .crewmembers(&db)
                .get_or_create(f.name.eq("Tuvok"), || crew("Tuvok", "vulcan"))
                .await
        }));
    }
    let mut created = 0;
    for c in calls {
        let (tuvok, made) = c.await.unwrap()?;
        assert_eq!(tuvok.starship_id, voyager.id);
        created += made as usize;
    }
    assert_eq!(created, 1);
    assert_eq!(voyager.crewmembers(&db).count().await?, 1);

    // many-to-many: the same, and the typed feed sees the row arrive.
    let mut feed = voyager.away_team(&db).changes().await?;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (db, voyager) = (db.clone(), voyager.clone());
        calls.push(tokio::spawn(async move {
            voyager
                .away_team(&db)
                .get_or_create(f.name.eq("Neelix"), || crew("Neelix", "talaxian"))
                .await
        }));
    }
    let mut made = Vec::new();
    for c in calls {
        let (neelix, new) = c.await.unwrap()?;
        if new {
            made.push(neelix);
        }
    }
    assert_eq!(made.len(), 1, "two concurrent calls created two rows");
    assert_eq!(voyager.away_team(&db).count().await?, 1);
    let c = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .expect("the typed many-to-many feed saw nothing")
        .unwrap()?;
    assert_eq!(c.new.as_ref().map(|m| m.name.as_str()), Some("Neelix"));
    assert_eq!(c.key(), made[0].id);
    Ok(())
}

/// A many-to-many handle's `query()` chains like a has_many's: filter, order, limit, count,
/// bulk update, typed aggregates; its keys are read from the join table when it runs.
#[tokio::test]
async fn a_many_to_many_query_chains_like_a_has_many_one() -> remodel::Result<()> {
    let (db, voyager, defiant) = setup().await?;
    let f = Crewmember::fields();
    let mut team = vec![
        crew("Tuvok", "vulcan"),
        crew("Paris", "human"),
        crew("Kim", "human"),
    ];
    voyager.away_team(&db).add(&mut team).await?;
    defiant
        .away_team(&db)
        .add(&mut [crew("Worf", "klingon")])
        .await?;
    let humans = voyager
        .away_team(&db)
        .filter(f.species.eq("human"))
        .order_by(f.name.asc())
        .run()
        .await?;
    assert_eq!(names(&humans, |m| &m.name), ["Kim", "Paris"]);
    assert_eq!(
        voyager
            .away_team(&db)
            .query()
            .order_by(f.name.desc())
            .limit(1)
            .run()
            .await?[0]
            .name,
        "Tuvok"
    );
    assert_eq!(
        voyager
            .away_team(&db)
            .filter(f.species.eq("human"))
            .count()
            .await?,
        2
    );
    let by_species: Vec<(String, u64)> = voyager
        .away_team(&db)
        .query()
        .group(f.species)
        .count()
        .await?;
    assert_eq!(by_species, vec![("human".into(), 2), ("vulcan".into(), 1)]);
    // A bulk update reaches only this parent's related rows.
    let n = voyager
        .away_team(&db)
        .query()
        .update(f.rank.set("ensign"))
        .await?;
    assert_eq!(n, 3);
    assert_eq!(
        Crewmember::filter(&db, f.rank.eq("ensign")).count().await?,
        3
    );
    // A filtered many-to-many feed is refused with a reason; the whole one is typed.
    assert!(matches!(
        voyager
            .away_team(&db)
            .filter(f.species.eq("human"))
            .changes()
            .await,
        Err(Error::Unwatchable(_))
    ));
    let mut whole = voyager
        .away_team(&db)
        .changes()
        .include_initial(true)
        .await?;
    use futures::StreamExt;
    let first = whole.next().await.unwrap()?;
    assert!(first.new.is_some());
    Ok(())
}

/// A batched load equals one get per row, whatever the keys: owners read in key order (not
/// the rows' order), rows sharing an owner, owners never made or deleted, keys close together
/// and far apart in the table, rows with no owner; and `get_many` (which reads repeated keys
/// as given) equals one get per key.
#[tokio::test]
async fn batched_belongs_to_equals_one_get_per_row() -> remodel::Result<()> {
    let (db, _, _) = setup().await?;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let key = |i: u64| Id::from(format!("ship {i:04}").as_str());
    for i in 0..300 {
        Starship {
            id: Some(key(i)),
            name: format!("ship {i}"),
        }
        .create(&db)
        .await?;
    }
    for i in 0..300 {
        if next(10) < 3 {
            Starship::get(&db, key(i))
                .await?
                .unwrap()
                .delete(&db)
                .await?;
        }
    }
    // `get_many` over the same table: keys in any order, repeated, missing or deleted give
    // what one get per key gives, in the keys' order, missing ones left out.
    for _ in 0..20 {
        let keys: Vec<Id> = (0..next(100)).map(|_| key(next(400))).collect();
        let mut expected = Vec::new();
        for k in &keys {
            expected.extend(Starship::get(&db, k.clone()).await?);
        }
        assert_eq!(Starship::get_many(&db, keys).await?, expected);
    }
    for round in 0..20 {
        // Some rounds pick owners from a narrow span (neighbours in the tree), others from
        // the whole table and beyond it (keys of ships never made).
        let span = if round % 2 == 0 { 20 } else { 400 };
        let base = next(300);
        let rows: Vec<Crewmember> = (0..next(200))
            .map(|i| {
                let mut c = crew(&format!("crew {i}"), "human");
                c.starship_id = (next(10) > 0).then(|| key(base + next(span)));
                c
            })
            .collect();
        let loaded = Crewmember::load_starship(&db, &rows).await?;
        assert_eq!(loaded.len(), rows.len());
        for (row, owner) in rows.iter().zip(loaded) {
            let expected = match &row.starship_id {
                Some(id) => Starship::get(&db, id.clone()).await?,
                None => None,
            };
            assert_eq!(owner, expected, "round {round}, row {}", row.name);
        }
    }
    Ok(())
}
