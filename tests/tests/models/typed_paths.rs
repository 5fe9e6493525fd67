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

/// Bulk updates by predicate run concurrently with moves and deletes of single rows. The
/// oracle is the commit history, read from a table feed: replayed in commit order, each bulk
/// update's commit changed exactly the rows that were on its ship at that commit (none
/// missed, none extra, no other field touched), each acknowledged bulk update is one commit
/// (or none when its ship was empty), and the replayed state equals the table at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulk_updates_select_their_rows_at_commit() -> remodel::Result<()> {
    use std::collections::HashMap;
    let db = db().await;
    let (ships, members) = three_ships_of_eight(&db).await?;
    let start = rows_by_id(&db).await?;
    let mut feed = Crewmember::table(&db)
        .changes()
        .queue_size(1_000_000)
        .await?;
    let f = Crewmember::fields();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (db, ships, members) = (db.clone(), ships.clone(), members.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut rng = t * 7919 + 3;
            for n in 0..30 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let ship = &ships[(rng >> 33) as usize % ships.len()];
                let member = &members[(rng >> 40) as usize % members.len()];
                match rng % 6 {
                    0..=2 => {
                        let tag = format!("bulk-{t}-{n}");
                        let count = Crewmember::filter(&db, f.starship_id.eq(ship.id.clone()))
                            .update(f.species.set(tag.as_str()))
                            .await
                            .unwrap();
                        acked.push((tag, ship.id.clone(), count));
                    }
                    3 | 4 => {
                        Crewmember::with_keys(&db, [member.id.clone().unwrap()])
                            .update(f.starship_id.set(ship.id.clone()))
                            .await
                            .unwrap();
                    }
                    _ => {
                        Crewmember::with_keys(&db, [member.id.clone().unwrap()])
                            .delete()
                            .await
                            .unwrap();
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let commits = commits_of(&mut feed).await?;
    let tags: HashMap<&str, (&Option<Id>, u64)> = acked
        .iter()
        .map(|(tag, ship, n)| (tag.as_str(), (ship, *n)))
        .collect();
    let mut state = start;
    let mut seen_tags = Vec::new();
    for (seq, items) in &commits {
        let tag = items[0]
            .new_val()
            .and_then(|v| v["species"].as_str())
            .filter(|s| s.starts_with("bulk-"))
            .filter(|s| items[0].old_val().and_then(|v| v["species"].as_str()) != Some(*s));
        if let Some(tag) = tag {
            let (ship, count) = tags
                .get(tag)
                .unwrap_or_else(|| panic!("commit {seq}: tag {tag} was never acknowledged"));
            let ship = serde_json::to_value(ship).unwrap();
            let on_ship: Vec<&String> = state
                .iter()
                .filter(|(_, d)| d["starship_id"] == ship)
                .map(|(k, _)| k)
                .collect();
            let changed: Vec<String> = items
                .iter()
                .map(|c| c.new_val().unwrap()["id"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                changed.len(),
                on_ship.len(),
                "commit {seq}: the bulk update {tag} changed {changed:?}, on its ship were {on_ship:?}"
            );
            assert_eq!(*count as usize, changed.len(), "{tag}: acknowledged count");
            for c in items {
                let (old, new) = (c.old_val().unwrap(), c.new_val().unwrap());
                let key = new["id"].as_str().unwrap();
                assert_eq!(state.get(key), Some(old), "commit {seq}: {key} as it was");
                assert_eq!(
                    new["starship_id"], ship,
                    "commit {seq}: {key} not on the ship"
                );
                let mut expect = old.clone();
                expect["species"] = serde_json::json!(tag);
                assert_eq!(new, &expect, "commit {seq}: another field changed");
            }
            seen_tags.push(tag.to_string());
        }
        replay(&mut state, items);
    }
    assert!(
        seen_tags.len() > 10,
        "too few bulk commits to check: {seen_tags:?}"
    );
    for (tag, _, count) in &acked {
        let commits_of = seen_tags.iter().filter(|s| *s == tag).count();
        assert_eq!(commits_of, usize::from(*count > 0), "{tag}: one commit");
    }
    assert_eq!(
        state,
        rows_by_id(&db).await?,
        "the replayed history is not the table"
    );
    Ok(())
}

/// Three ships with eight members each, `m0` to `m23` (member `i` on ship `i % 3`).
async fn three_ships_of_eight(db: &Database) -> remodel::Result<(Vec<Starship>, Vec<Crewmember>)> {
    let mut ships = Vec::new();
    for i in 0..3 {
        let ship = Starship {
            id: None,
            name: format!("ship{i}"),
        };
        ships.push(ship.create(db).await?);
    }
    let mut members = Vec::new();
    for i in 0..24 {
        let mut m = crew(&format!("m{i}"), "human");
        m.id = Some(Id::from(format!("m{i}")));
        m.starship_id = ships[i % 3].id.clone();
        members.push(m.create(db).await?);
    }
    Ok((ships, members))
}

/// The crew table's rows by id.
async fn rows_by_id(
    db: &Database,
) -> remodel::Result<std::collections::BTreeMap<String, serde_json::Value>> {
    Ok(Crewmember::query(db)
        .json()
        .await?
        .into_iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d))
        .collect())
}

/// Every commit a feed delivers until it is quiet for a moment, in order (items of one
/// commit share their position).
async fn commits_of(feed: &mut remodel::Feed) -> remodel::Result<Vec<(u64, Vec<remodel::Change>)>> {
    use futures::StreamExt;
    let mut commits: Vec<(u64, Vec<remodel::Change>)> = Vec::new();
    while let Ok(Some(item)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), feed.next()).await
    {
        let item = item?;
        let seq = item.seq().unwrap();
        match commits.last_mut() {
            Some((s, items)) if *s == seq => items.push(item),
            _ => commits.push((seq, vec![item])),
        }
    }
    Ok(commits)
}

/// Applies a commit's items to a state of rows by id.
fn replay(
    state: &mut std::collections::BTreeMap<String, serde_json::Value>,
    items: &[remodel::Change],
) {
    for c in items {
        match (c.old_val(), c.new_val()) {
            (_, Some(new)) => {
                state.insert(new["id"].as_str().unwrap().to_string(), new.clone());
            }
            (Some(old), None) => {
                state.remove(old["id"].as_str().unwrap());
            }
            (None, None) => {}
        }
    }
}

/// Bulk deletes by predicate race moves of single rows and creations of new ones. The
/// oracle is the commit history, read from a table feed: replayed in commit order, every
/// commit that deletes is a bulk delete that removed exactly the rows on its ship at that
/// commit (a selection made before the commit would miss a row moved in, or delete one moved
/// out); the acknowledged counts match those commits one to one (a delete of an empty ship
/// commits nothing), and the replayed state equals the table at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulk_deletes_select_their_rows_at_commit() -> remodel::Result<()> {
    let db = db().await;
    let (ships, _) = three_ships_of_eight(&db).await?;
    let start = rows_by_id(&db).await?;
    let mut feed = Crewmember::table(&db)
        .changes()
        .queue_size(1_000_000)
        .await?;
    let f = Crewmember::fields();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (db, ships) = (db.clone(), ships.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut rng = t * 7919 + 11;
            for n in 0..30 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let ship = &ships[(rng >> 33) as usize % ships.len()];
                match rng % 6 {
                    0 | 1 => {
                        let count = Crewmember::filter(&db, f.starship_id.eq(ship.id.clone()))
                            .delete()
                            .await
                            .unwrap();
                        acked.push((serde_json::to_string(&ship.id).unwrap(), count));
                    }
                    2 | 3 => {
                        // Any member, maybe deleted already (then nothing is written).
                        let member = format!("m{}", (rng >> 40) % 24);
                        Crewmember::with_keys(&db, [Id::from(member)])
                            .update(f.starship_id.set(ship.id.clone()))
                            .await
                            .unwrap();
                    }
                    _ => {
                        let mut m = crew(&format!("t{t}-{n}"), "human");
                        m.starship_id = ship.id.clone();
                        m.create(&db).await.unwrap();
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let commits = commits_of(&mut feed).await?;
    let mut state = start;
    let mut deleted = Vec::new();
    for (seq, items) in &commits {
        if items.iter().any(|c| c.new_val().is_none()) {
            assert!(
                items.iter().all(|c| c.new_val().is_none()),
                "commit {seq}: a bulk delete's commit writes nothing else"
            );
            let ship = items[0].old_val().unwrap()["starship_id"].clone();
            let gone: std::collections::BTreeSet<String> = items
                .iter()
                .map(|c| c.old_val().unwrap()["id"].as_str().unwrap().to_string())
                .collect();
            let on_ship: std::collections::BTreeSet<String> = state
                .iter()
                .filter(|(_, d)| d["starship_id"] == ship)
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(
                gone, on_ship,
                "commit {seq}: the bulk delete of {ship} took what was not on it at commit"
            );
            for c in items {
                let old = c.old_val().unwrap();
                assert_eq!(state.get(old["id"].as_str().unwrap()), Some(old));
            }
            deleted.push((ship.to_string(), items.len() as u64));
        }
        replay(&mut state, items);
    }
    let mut acknowledged: Vec<(String, u64)> = acked.into_iter().filter(|a| a.1 > 0).collect();
    acknowledged.sort();
    deleted.sort();
    assert!(
        deleted.len() > 5,
        "too few bulk deletes to check: {deleted:?}"
    );
    assert_eq!(
        deleted, acknowledged,
        "bulk deletes: commits vs acknowledged counts"
    );
    assert_eq!(
        state,
        rows_by_id(&db).await?,
        "the replayed history is not the table"
    );
    Ok(())
}
