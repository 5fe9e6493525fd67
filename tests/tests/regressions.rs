//! One regression test for each known mistake of the Python Remodel: a global connection and
//! registry, a many-to-many `remove` that detached from every parent, relation caches shared
//! between two relations to one model, unindexed foreign-key lookups, one write per detached
//! child, clearing a relation before validating its replacement, `filter([])` matching every
//! row, and hooks that saw an object before its fields were loaded (each test's doc comment
//! names its mistake).

// Two relations to the same model repeat its name in two attributes.
#![allow(clippy::duplicated_attributes)]

use futures::StreamExt;
use remodel::model::{create_schema, Callbacks, Id, ModelError};
use remodel::{Database, Error, Model};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Crewmember))]
#[remodel(has_many(Crewmember, accessor = "trainees", foreign_key = "training_ship_id"))]
#[remodel(has_and_belongs_to_many(Crewmember, accessor = "away_team"))]
struct Starship {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(callbacks)]
#[remodel(belongs_to(Starship))]
#[remodel(belongs_to(Starship, accessor = "training_ship", foreign_key = "training_ship_id"))]
struct Crewmember {
    id: Option<Id>,
    name: String,
    starship_id: Option<Id>,
    training_ship_id: Option<Id>,
    /// Set by `after_load` from the other fields.
    #[serde(skip)]
    seen_in_after_load: Option<String>,
}

impl Callbacks for Crewmember {
    fn before_save(&mut self) -> remodel::Result<()> {
        if self.name.is_empty() {
            return Err(ModelError::Rejected("a crew member needs a name".into()).into());
        }
        Ok(())
    }
    fn after_load(&mut self) {
        self.seen_in_after_load = Some(format!("{} of {:?}", self.name, self.starship_id));
    }
}

/// Nullified students and a restricting teacher: an all-or-nothing delete shows that the
/// children's writes are part of the owner's commit.
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Student), has_many(Teacher, on_delete = "restrict"))]
struct School {
    id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Student {
    id: Option<Id>,
    school_id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Teacher {
    id: Option<Id>,
    school_id: Option<Id>,
}

fn crew(name: &str) -> Crewmember {
    Crewmember {
        id: None,
        name: name.into(),
        starship_id: None,
        training_ship_id: None,
        seen_in_after_load: None,
    }
}

fn names(rows: &[Crewmember]) -> BTreeSet<String> {
    rows.iter().map(|m| m.name.clone()).collect()
}

async fn setup() -> remodel::Result<(Database, Starship, Starship)> {
    let db = Database::temporary().await?;
    create_schema(&db).await?;
    let a = Starship {
        id: None,
        name: "Voyager".into(),
    }
    .create(&db)
    .await?;
    let b = Starship {
        id: None,
        name: "Defiant".into(),
    }
    .create(&db)
    .await?;
    Ok((db, a, b))
}

/// Remodel kept one global connection and registry, patched into the driver. Here models are
/// static descriptions and every call names its database: two databases in one process are
/// independent.
#[tokio::test]
async fn no_global_connection_two_databases_stay_apart() -> remodel::Result<()> {
    let (db1, ship1, _) = setup().await?;
    let db2 = Database::temporary().await?;
    assert!(
        db2.table_names()?.is_empty(),
        "creating db1's schema touched nothing else"
    );
    create_schema(&db2).await?;
    ship1.crewmembers(&db1).create(crew("Janeway")).await?;
    assert_eq!(Crewmember::count(&db1).await?, 1);
    assert_eq!(Crewmember::count(&db2).await?, 0);
    assert!(Starship::get(&db2, ship1.id.clone().unwrap())
        .await?
        .is_none());
    Ok(())
}

/// Remodel's many-to-many `remove` detached the target from every parent.
#[tokio::test]
async fn many_to_many_remove_detaches_from_this_parent_only() -> remodel::Result<()> {
    let (db, a, b) = setup().await?;
    let mut tuvok = vec![crew("Tuvok")];
    a.away_team(&db).add(&mut tuvok).await?;
    b.away_team(&db).add(&mut tuvok).await?;
    assert_eq!(a.away_team(&db).remove(&tuvok).await?, 1);
    assert!(a.away_team(&db).all().await?.is_empty());
    assert_eq!(
        names(&b.away_team(&db).all().await?),
        BTreeSet::from(["Tuvok".to_string()])
    );
    Ok(())
}

/// Remodel cached relation data per target model, so two relations to the same model read
/// each other's rows.
#[tokio::test]
async fn two_relations_to_one_model_share_no_cache() -> remodel::Result<()> {
    let (db, a, b) = setup().await?;
    let mut m = crew("Paris");
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

/// Remodel looked foreign keys up without an index (a table scan per lookup).
#[tokio::test]
async fn relation_lookups_read_through_the_foreign_key_index() -> remodel::Result<()> {
    let (db, a, b) = setup().await?;
    let mut many: Vec<Crewmember> = (0..200).map(|i| crew(&format!("crew {i}"))).collect();
    b.crewmembers(&db).add(&mut many).await?;
    a.crewmembers(&db).create(crew("Kim")).await?;
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

/// Remodel detached children with one write per child. Here deleting the owner and
/// nullifying every child is one commit: all or nothing, every change at one commit position.
#[tokio::test]
async fn detaching_children_is_one_commit() -> remodel::Result<()> {
    let (db, a, _) = setup().await?;
    let mut many: Vec<Crewmember> = (0..100).map(|i| crew(&format!("crew {i}"))).collect();
    a.crewmembers(&db).add(&mut many).await?;
    let mut feed = Crewmember::changes(&db).await?;
    a.delete(&db).await?;
    let mut seqs = Vec::new();
    for _ in 0..100 {
        let c = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .unwrap()
            .unwrap()?;
        assert_eq!(c.new.unwrap().starship_id, None);
        seqs.push(c.seq.unwrap());
    }
    assert!(
        seqs.iter().all(|s| *s == seqs[0]),
        "one commit: every change has its position"
    );

    // All or nothing: a restricting relation refuses the delete, and the students that the
    // same delete would have nullified keep their school.
    let school = School { id: None }.create(&db).await?;
    let mut students: Vec<Student> = (0..50)
        .map(|_| Student {
            id: None,
            school_id: None,
        })
        .collect();
    school.students(&db).add(&mut students).await?;
    let mut teacher = school
        .teachers(&db)
        .create(Teacher {
            id: None,
            school_id: None,
        })
        .await?;
    let err = school.delete(&db).await.unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    assert_eq!(school.students(&db).count().await?, 50);
    assert!(School::get(&db, school.id.clone().unwrap())
        .await?
        .is_some());
    school
        .teachers(&db)
        .remove(std::slice::from_mut(&mut teacher))
        .await?;
    school.delete(&db).await?;
    assert_eq!(
        Student::filter(&db, Student::fields().school_id.is_null())
            .count()
            .await?,
        50
    );
    Ok(())
}

/// Remodel cleared a relation before validating the replacement, losing the old children
/// when a new one was invalid.
#[tokio::test]
async fn a_refused_replacement_leaves_the_relation_as_it_was() -> remodel::Result<()> {
    let (db, a, _) = setup().await?;
    a.crewmembers(&db)
        .add(&mut [crew("Janeway"), crew("Chakotay")])
        .await?;
    let mut replacement = vec![crew("Seven"), crew("")];
    let err = a.crewmembers(&db).set(&mut replacement).await.unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::Rejected(_))),
        "{err}"
    );
    let kept = names(&a.crewmembers(&db).all().await?);
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

/// Remodel's `filter([])` returned every row. Empty key lists and empty alternatives match
/// nothing here.
#[tokio::test]
async fn an_empty_filter_list_matches_nothing() -> remodel::Result<()> {
    let (db, a, _) = setup().await?;
    a.crewmembers(&db)
        .add(&mut [crew("Janeway"), crew("Tuvok")])
        .await?;
    let f = Crewmember::fields();
    assert_eq!(
        Crewmember::filter(&db, f.name.one_of(Vec::<String>::new()))
            .count()
            .await?,
        0
    );
    assert!(Crewmember::get_many(&db, Vec::<Id>::new())
        .await?
        .is_empty());
    assert!(Crewmember::load_starship(&db, &[]).await?.is_empty());
    assert!(Starship::load_crewmembers(&db, &[]).await?.is_empty());
    assert_eq!(a.away_team(&db).remove(&[]).await?, 0);
    assert_eq!(Crewmember::count(&db).await?, 2);
    Ok(())
}

/// Remodel ran hooks on objects whose fields were not loaded yet. `after_load` runs on the
/// complete model, on every path that decodes one.
#[tokio::test]
async fn after_load_sees_every_field() -> remodel::Result<()> {
    let (db, a, _) = setup().await?;
    let mut feed = a.crewmembers(&db).changes().await?;
    let m = a.crewmembers(&db).create(crew("Neelix")).await?;
    let expected = format!("Neelix of {:?}", a.id);
    let got = Crewmember::get(&db, m.id.clone().unwrap()).await?.unwrap();
    assert_eq!(got.seen_in_after_load.as_deref(), Some(expected.as_str()));
    let via_relation = a.crewmembers(&db).all().await?;
    assert_eq!(
        via_relation[0].seen_in_after_load.as_deref(),
        Some(expected.as_str())
    );
    let via_load = Starship::load_crewmembers(&db, std::slice::from_ref(&a)).await?;
    assert_eq!(
        via_load[0][0].seen_in_after_load.as_deref(),
        Some(expected.as_str())
    );
    let via_feed = feed.next().await.unwrap()?.new.unwrap();
    assert_eq!(
        via_feed.seen_in_after_load.as_deref(),
        Some(expected.as_str())
    );
    Ok(())
}
