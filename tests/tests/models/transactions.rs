//! Transactions across models: every staged write commits, or none does; hooks can abort;
//! the writes are decided at commit against the rows as they are then; and concurrent
//! transactions end as a serial replay of those that committed.

use crate::common::{crew, Captain, Crewmember, Starship};
use remodel::model::{create_schema, ModelError, Transaction};
use remodel::{Database, Error, Model};
use serde_json::json;

async fn db() -> Database {
    let db = crate::common::db().await.unwrap();
    create_schema(&db).await.unwrap();
    db
}

fn ship(name: &str) -> Starship {
    Starship {
        id: None,
        name: name.into(),
    }
}

#[tokio::test]
async fn a_parent_and_its_children_in_one_commit() -> remodel::Result<()> {
    let db = db().await;
    let mut tx = Transaction::new(&db);
    let voyager = tx.create(ship("Voyager")).await?;
    assert!(voyager.id.is_some(), "the key is made when staged");
    let mut janeway = crew("Janeway", "human");
    janeway.starship_id = voyager.id.clone();
    let janeway = tx.create(janeway).await?;
    tx.create(Captain {
        id: None,
        name: "Janeway".into(),
        starship_id: voyager.id.clone(),
    })
    .await?;
    // Nothing is written before the commit.
    assert_eq!(Starship::count(&db).await?, 0);
    tx.commit().await?;
    assert_eq!(
        voyager.crewmembers(&db).all().await?,
        vec![Crewmember {
            seen_in_after_load: Some(format!("Janeway of {:?}", voyager.id)),
            ..janeway
        }]
    );
    assert_eq!(voyager.captain(&db).await?.unwrap().name, "Janeway");
    Ok(())
}

#[tokio::test]
async fn a_hook_error_aborts_and_nothing_is_written() -> remodel::Result<()> {
    let db = db().await;
    let mut tx = Transaction::new(&db);
    let voyager = tx.create(ship("Voyager")).await?;
    // Crewmember's before_save refuses an empty name.
    let err = tx.create(crew("", "human")).await.unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::Rejected(_))),
        "{err}"
    );
    drop(tx);
    assert_eq!(Starship::count(&db).await?, 0);
    assert!(Starship::get(&db, voyager.id.unwrap()).await?.is_none());

    // A refused write leaves the transaction as it was: the others still commit.
    let mut tx = Transaction::new(&db);
    tx.create(ship("Defiant")).await?;
    assert!(tx.create(crew("", "human")).await.is_err());
    tx.create(crew("Worf", "klingon")).await?;
    tx.commit().await?;
    assert_eq!(Starship::count(&db).await?, 1);
    assert_eq!(Crewmember::count(&db).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_write_that_fails_at_commit_fails_them_all() -> remodel::Result<()> {
    let db = db().await;
    let voyager = ship("Voyager").create(&db).await?;
    let mut stale = voyager.clone();
    voyager.clone().delete(&db).await?;

    let mut tx = Transaction::new(&db);
    tx.create(ship("Defiant")).await?;
    tx.update(&mut stale, |s| s.name = "Voyager-A".into())
        .await?;
    let err = tx.commit().await.unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::NotFound { ref model, .. }) if model == "Starship"),
        "{err}"
    );
    assert_eq!(Starship::count(&db).await?, 0, "the deleted row came back");

    // A taken key: KeyConflict, nothing written.
    let enterprise = ship("Enterprise").create(&db).await?;
    let mut tx = Transaction::new(&db);
    tx.create(crew("Picard", "human")).await?;
    tx.create(enterprise.clone()).await?;
    assert!(matches!(tx.commit().await, Err(Error::KeyConflict { .. })));
    assert_eq!(Crewmember::count(&db).await?, 0);
    Ok(())
}

#[tokio::test]
async fn saves_updates_deletes_and_relations_together() -> remodel::Result<()> {
    let db = db().await;
    let mut voyager = ship("Voyager").create(&db).await?;
    let mut defiant = ship("Defiant").create(&db).await?;
    let tuvok = voyager
        .crewmembers(&db)
        .create(crew("Tuvok", "vulcan"))
        .await?;
    let mut kim = crew("Kim", "human").create(&db).await?;
    // A field another program wrote, which the struct does not know.
    Starship::table(&db)
        .get(voyager.id.clone().unwrap())
        .update(json!({"registry": "NCC-74656"}))
        .await?;

    let mut tx = Transaction::new(&db);
    voyager.name = "USS Voyager".into();
    tx.save(&mut voyager).await?;
    tx.update(&mut kim, |k| k.rank = "ensign".into()).await?;
    tx.add(&voyager.crewmembers(&db), std::slice::from_mut(&mut kim))
        .await?;
    tx.relate(&voyager.away_team(&db), &[tuvok.id.clone().unwrap()])
        .await?;
    let doomed = defiant.clone();
    tx.delete(doomed).await?;
    tx.commit().await?;

    let stored = Starship::table(&db)
        .get(voyager.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(stored["name"], "USS Voyager");
    assert_eq!(stored["registry"], "NCC-74656", "an unknown field was lost");
    let kim = Crewmember::get(&db, kim.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(
        (kim.rank.as_str(), kim.starship_id.clone()),
        ("ensign", voyager.id.clone())
    );
    assert_eq!(
        voyager.away_team(&db).keys().await?,
        vec![tuvok.id.clone().unwrap()]
    );
    assert!(Starship::get(&db, defiant.id.take().unwrap())
        .await?
        .is_none());
    Ok(())
}

#[tokio::test]
async fn a_delete_whose_row_is_gone_fails_the_transaction() -> remodel::Result<()> {
    let db = db().await;
    let voyager = ship("Voyager").create(&db).await?;
    let copy = voyager.clone();
    voyager.clone().delete(&db).await?;
    let mut tx = Transaction::new(&db);
    tx.delete(copy).await?;
    let err = tx.commit().await.unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::NotFound { .. })),
        "{err}"
    );
    Ok(())
}

/// Many tasks run transactions that each move one crew member to a ship (tagging it with the
/// transaction's name), some deleting it and creating another in the same commit, against
/// rows other tasks delete meanwhile. The final state is what a serial replay of the
/// acknowledged transactions gives: each remaining member shows the ship and tag of one
/// acknowledged move (the last to commit), or none if none committed; every member an
/// acknowledged transaction deleted is gone, and every member it created is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_equal_a_serial_replay() -> remodel::Result<()> {
    let db = db().await;
    let mut ships = Vec::new();
    for i in 0..4 {
        ships.push(ship(&format!("ship{i}")).create(&db).await?);
    }
    let mut members = Vec::new();
    for i in 0..8 {
        members.push(crew(&format!("m{i}"), "human").create(&db).await?);
    }
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (db, ships, members) = (db.clone(), ships.clone(), members.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut rng = t * 7919 + 1;
            for _ in 0..25 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let m = (rng >> 33) as usize % members.len();
                let s = (rng >> 40) as usize % ships.len();
                // Read the member now, commit later: the update applies only the field it
                // changed, against the row as it is at commit.
                let Some(mut member) = Crewmember::get(&db, members[m].id.clone().unwrap())
                    .await
                    .unwrap()
                else {
                    continue;
                };
                tokio::task::yield_now().await;
                let mut tx = Transaction::new(&db);
                let to = ships[s].id.clone();
                let tag = format!("t{t}-{}", done.len());
                tx.update(&mut member, |c| {
                    c.starship_id = to.clone();
                    c.species = tag.clone();
                })
                .await
                .unwrap();
                if rng % 5 == 0 {
                    // Sometimes the member is deleted in the same transaction as a new one
                    // is created: both or neither.
                    tx.delete(member.clone()).await.unwrap();
                    let mut new = crew(&format!("n{t}-{}", done.len()), "human");
                    new.starship_id = to.clone();
                    let new = tx.create(new).await.unwrap();
                    match tx.commit().await {
                        Ok(_) => done.push((m, s, tag, Some(new.id.unwrap()))),
                        Err(Error::Model(ModelError::NotFound { .. })) => {}
                        Err(e) => panic!("{e}"),
                    }
                } else {
                    match tx.commit().await {
                        Ok(_) => done.push((m, s, tag, None)),
                        Err(Error::Model(ModelError::NotFound { .. })) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            done
        }));
    }
    let mut committed = Vec::new();
    for t in tasks {
        committed.extend(t.await.unwrap());
    }
    let all = Crewmember::all(&db).await?;
    let deleted: std::collections::HashSet<usize> = committed
        .iter()
        .filter(|c| c.3.is_some())
        .map(|c| c.0)
        .collect();
    for (m, s, _, new) in &committed {
        if let Some(id) = new {
            let row = all.iter().find(|c| c.id.as_ref() == Some(id));
            assert_eq!(
                row.map(|r| r.starship_id.clone()),
                Some(ships[*s].id.clone()),
                "a created member is missing or on the wrong ship"
            );
        }
        if deleted.contains(m) {
            assert!(
                all.iter().all(|c| c.id != members[*m].id),
                "a deleted member came back"
            );
        }
    }
    for (i, member) in members.iter().enumerate() {
        if deleted.contains(&i) {
            continue;
        }
        let row = all
            .iter()
            .find(|c| c.id == member.id)
            .expect("a member vanished");
        match committed.iter().find(|c| c.0 == i && c.2 == row.species) {
            Some((_, s, _, _)) => assert_eq!(
                row.starship_id, ships[*s].id,
                "the ship of one transaction with the tag of another"
            ),
            None => {
                assert!(
                    committed.iter().all(|c| c.0 != i),
                    "a member shows no acknowledged move although some committed"
                );
                assert_eq!((row.species.as_str(), &row.starship_id), ("human", &None));
            }
        }
    }
    assert_eq!(
        all.len(),
        members.len() - deleted.len() + committed.iter().filter(|c| c.3.is_some()).count()
    );
    Ok(())
}

#[tokio::test]
async fn relation_writes_to_rows_the_transaction_creates() -> remodel::Result<()> {
    let db = db().await;
    let mut tx = Transaction::new(&db);
    let voyager = tx.create(ship("Voyager")).await?;
    let mut crew_ = vec![crew("Janeway", "human"), crew("Tuvok", "vulcan")];
    // The parent is created by this same commit: not required to exist before it.
    tx.add(&voyager.crewmembers(&db), &mut crew_).await?;
    let paris = tx.create(crew("Paris", "human")).await?;
    tx.relate(&voyager.away_team(&db), &[paris.id.clone().unwrap()])
        .await?;
    tx.commit().await?;
    assert_eq!(voyager.crewmembers(&db).count().await?, 2);
    assert_eq!(
        voyager.away_team(&db).keys().await?,
        vec![paris.id.clone().unwrap()]
    );

    // A parent neither stored nor staged: NotFound, nothing written.
    let ghost = Starship {
        id: Some(remodel::model::Id::from("ghost")),
        name: "Ghost".into(),
    };
    let mut tx = Transaction::new(&db);
    tx.create(crew("Kes", "ocampa")).await?;
    tx.add(&ghost.crewmembers(&db), &mut [crew("Neelix", "talaxian")])
        .await?;
    assert!(matches!(
        tx.commit().await,
        Err(Error::Model(ModelError::NotFound { .. }))
    ));
    assert_eq!(Crewmember::count(&db).await?, 3);
    Ok(())
}

/// A member moved from a ship to another in the transaction that deletes the first ship
/// stays on the second (the delete's relations reach the rows as the transaction left them),
/// and one moved onto the deleted ship is reached like its crew.
#[tokio::test]
async fn a_delete_reaches_the_children_as_the_transaction_left_them() -> remodel::Result<()> {
    let db = db().await;
    let defiant = ship("Defiant").create(&db).await?;
    let voyager = ship("Voyager").create(&db).await?;
    let mut worf = defiant
        .crewmembers(&db)
        .create(crew("Worf", "klingon"))
        .await?;
    let mut kim = voyager
        .crewmembers(&db)
        .create(crew("Kim", "human"))
        .await?;

    let mut tx = Transaction::new(&db);
    tx.add(&voyager.crewmembers(&db), std::slice::from_mut(&mut worf))
        .await?;
    tx.update(&mut kim, |k| k.starship_id = defiant.id.clone())
        .await?;
    tx.delete(defiant.clone()).await?;
    tx.commit().await?;

    let worf = Crewmember::get(&db, worf.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(
        worf.starship_id, voyager.id,
        "the moved member lost his ship"
    );
    // Kim joined the deleted ship in the same commit: its on_delete reached him.
    let kim = Crewmember::get(&db, kim.id.clone().unwrap()).await?;
    assert!(
        kim.as_ref().is_none_or(|k| k.starship_id.is_none()),
        "a member refers to a deleted ship: {kim:?}"
    );
    Ok(())
}

/// `Transaction::require` is decided at commit: 8 tasks each read a captain, and while he is
/// one create a ship in a transaction that requires it; another task demotes him meanwhile.
/// Every committed ship comes before the demotion in commit order (none was created on a
/// rank he no longer had), every acknowledged one is stored, every refused one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requirement_is_checked_against_the_row_at_commit() -> remodel::Result<()> {
    use futures::StreamExt;
    let db = db().await;
    let mut kirk = crew("Kirk", "human");
    kirk.rank = "captain".into();
    let kirk = kirk.create(&db).await?;
    let mut ships = Starship::table(&db).changes().await?;
    let mut ranks = Crewmember::table(&db).changes().await?;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (db, key) = (db.clone(), kirk.id.clone().unwrap());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..40 {
                let seen = Crewmember::get(&db, key.clone()).await.unwrap().unwrap();
                if seen.rank != "captain" {
                    break;
                }
                let mut tx = Transaction::new(&db);
                tx.require(&seen, "no longer a captain", |now: &Crewmember| {
                    now.rank == "captain"
                })
                .unwrap();
                let name = format!("ship {t}-{i}");
                tx.create(ship(&name)).await.unwrap();
                outcomes.push((name, tx.commit().await));
            }
            outcomes
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut demoted = kirk.clone();
    demoted.update(&db, |k| k.rank = "admiral".into()).await?;
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    let demotion = ranks.next().await.unwrap()?;
    let demotion_seq = demotion.seq().expect("a committed change has its position");
    let stored: std::collections::HashSet<String> = Starship::all(&db)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut committed = 0;
    for (name, outcome) in &outcomes {
        match outcome {
            Ok(_) => {
                committed += 1;
                assert!(stored.contains(name), "{name} acknowledged, not stored");
            }
            Err(Error::Precondition(why)) => {
                assert_eq!(why, "no longer a captain");
                assert!(!stored.contains(name), "{name} refused, yet stored");
            }
            Err(e) => panic!("{name}: {e:?}"),
        }
    }
    assert_eq!(stored.len(), committed);
    for _ in 0..committed {
        let created = ships.next().await.unwrap()?;
        assert!(
            created.seq() < Some(demotion_seq),
            "a ship committed after its captain's demotion"
        );
    }
    Ok(())
}

/// A parent saved, deleted, then added to in one transaction: the add requires it at
/// commit (the delete took it out of the rows the transaction creates), so the commit fails
/// and no child is left referring to the deleted parent.
#[tokio::test]
async fn an_add_to_a_parent_saved_then_deleted_is_not_found() -> remodel::Result<()> {
    let db = db().await;
    let mut voyager = ship("Voyager").create(&db).await?;
    let mut tx = Transaction::new(&db);
    voyager.name = "USS Voyager".into();
    tx.save(&mut voyager).await?;
    tx.delete(voyager.clone()).await?;
    let mut kim = [crew("Kim", "human")];
    tx.add(&voyager.crewmembers(&db), &mut kim).await?;
    let committed = tx.commit().await;
    assert!(
        matches!(committed, Err(Error::Model(ModelError::NotFound { .. }))),
        "{committed:?}"
    );
    assert_eq!(Crewmember::count(&db).await?, 0);
    assert!(Starship::get(&db, voyager.id.clone().unwrap())
        .await?
        .is_some());
    Ok(())
}
