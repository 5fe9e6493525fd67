//! What deleting an owner does to its children: nullify (the default), cascade (down to
//! grandchildren, and down a self-referencing tree), restrict (refused, nothing written);
//! all of it in the owner's one commit.

use crate::common::{crew, names, setup, Crewmember, Starship};
use futures::StreamExt;
use remodel::model::{create_schema, Id, ModelError};
use remodel::{Error, Model};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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

#[tokio::test]
async fn on_delete_nullify_is_the_default() -> remodel::Result<()> {
    let (db, mut voyager, _) = setup().await?;
    voyager
        .crewmembers(&db)
        .add(&mut [crew("Janeway", "human"), crew("Chakotay", "human")])
        .await?;
    let key = voyager.id.clone().unwrap();
    voyager.delete(&db).await?;
    assert!(Starship::get(&db, key).await?.is_none());
    let all = Crewmember::all(&db).await?;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|m| m.starship_id.is_none()));
    Ok(())
}

#[tokio::test]
async fn on_delete_cascade_deletes_children_and_grandchildren() -> remodel::Result<()> {
    let db = crate::common::db().await?;
    create_schema(&db).await?;
    let mut fleet = Fleet {
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
    let db = crate::common::db().await?;
    create_schema(&db).await?;
    let mut academy = Academy {
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
    // A typed refusal naming the relation and how many children block it.
    assert!(
        matches!(err, Error::Model(ModelError::Restricted { ref model, ref relation, children: 1 })
            if model == "Academy" && relation == "cadets"),
        "{err:?}"
    );
    assert!(err.to_string().contains("restrict"), "{err}");
    assert!(academy.id.is_some(), "a refused delete keeps the key");
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
async fn self_referencing_has_many_cascades_down_the_tree() -> remodel::Result<()> {
    let db = crate::common::db().await?;
    create_schema(&db).await?;
    let officer = |n: &str| Officer {
        id: None,
        name: n.into(),
        superior_id: None,
    };
    let picard = officer("Picard").create(&db).await?;
    let mut riker = picard.reports(&db).create(officer("Riker")).await?;
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

/// The Python Remodel detached children with one write per child. Here deleting the owner and
/// nullifying every child is one commit: all or nothing, every change at one commit position.
#[tokio::test]
async fn detaching_children_is_one_commit() -> remodel::Result<()> {
    let (db, mut a, _) = setup().await?;
    let mut many: Vec<Crewmember> = (0..100).map(|i| crew(&format!("crew {i}"), "")).collect();
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
    let mut school = School { id: None }.create(&db).await?;
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
    assert!(
        matches!(
            err,
            Error::Model(ModelError::Restricted { children: 1, .. })
        ),
        "{err}"
    );
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
