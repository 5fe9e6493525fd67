//! Live models: typed `Change<T>` feeds on a table, one instance, has_many / has_one /
//! belongs_to relations and model queries (including an `order_by(index).limit(5)`
//! leaderboard), with the changefeed options.
//!
//! The Starfleet models (`Starship`, `Crewmember`, `Captain`) are in `common/`.

#[path = "common/mod.rs"]
mod common;

use common::{member, setup, Captain, Crewmember, Starship};
use futures::StreamExt;
use remodel::model::{create_schema, Change, Id, ModelError, ModelFeed};
use remodel::{json, ChangeKind, Error, FeedState, Model};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Score {
    id: Option<Id>,
    player: String,
    #[remodel(index)]
    points: i64,
}

async fn next<T: Model>(feed: &mut ModelFeed<T>) -> remodel::Result<Change<T>> {
    tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("an item within 5 s")
        .expect("the feed goes on")
}

async fn quiet<T: Model + std::fmt::Debug>(feed: &mut ModelFeed<T>) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
        panic!("expected no item, got {item:?}");
    }
}

#[tokio::test]
async fn table_and_instance_feeds() -> remodel::Result<()> {
    let (db, voyager, _) = setup().await?;
    let mut table = Starship::changes(&db)
        .include_initial(true)
        .include_states(true)
        .await?;
    let mut one = voyager.watch(&db).include_types(true).await?;
    let first = next(&mut table).await?;
    assert_eq!(first.state, Some(FeedState::Initializing));
    let mut initial = Vec::new();
    for _ in 0..2 {
        let c = next(&mut table).await?;
        assert_eq!(c.kind, ChangeKind::Initial);
        initial.push(c.new.unwrap().name);
    }
    initial.sort();
    assert_eq!(initial, ["Defiant", "Voyager"]);
    assert_eq!(next(&mut table).await?.state, Some(FeedState::Ready));

    let mut v = voyager.clone();
    v.update(&db, |s| s.name = "USS Voyager".into()).await?;
    let c = next(&mut one).await?;
    assert_eq!(c.kind, ChangeKind::Change);
    assert_eq!(c.to_json()["type"], "change");
    assert_eq!(c.old.unwrap().name, "Voyager");
    assert_eq!(c.new.unwrap().name, "USS Voyager");
    let t = next(&mut table).await?;
    assert_eq!(t.new.unwrap().name, "USS Voyager");

    Starship {
        id: None,
        name: "Enterprise".into(),
    }
    .create(&db)
    .await?;
    assert_eq!(next(&mut table).await?.kind, ChangeKind::Add);
    quiet(&mut one).await;

    let unsaved = Starship {
        id: None,
        name: "Phoenix".into(),
    };
    assert!(matches!(
        unsaved.watch(&db).await.unwrap_err().as_model(),
        Some(ModelError::NotSaved { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn has_many_feed_sees_members_move_in_and_out() -> remodel::Result<()> {
    let (db, mut voyager, defiant) = setup().await?;
    let mut v_feed = voyager.crewmembers(&db).changes().await?;
    let mut d_feed = defiant
        .crewmembers(&db)
        .changes()
        .include_initial(true)
        .await?;
    let mut worf = defiant
        .crewmembers(&db)
        .create(member("Worf", "lieutenant"))
        .await?;
    assert_eq!(next(&mut d_feed).await?.new.unwrap().name, "Worf");
    quiet(&mut v_feed).await;

    // Moving Worf: he leaves Defiant's feed and enters Voyager's.
    worf.set_starship(Some(&voyager))?;
    worf.save(&db).await?;
    let left = next(&mut d_feed).await?;
    assert_eq!((left.kind, left.new.is_none()), (ChangeKind::Remove, true));
    let entered = next(&mut v_feed).await?;
    assert_eq!(entered.kind, ChangeKind::Add);
    assert_eq!(entered.new.unwrap().starship_id, voyager.id);
    assert_eq!(left.seq, entered.seq, "one write, one commit");

    // Deleting the ship nullifies the crew: the member leaves the feed.
    voyager.delete(&db).await?;
    let gone = next(&mut v_feed).await?;
    assert_eq!(gone.kind, ChangeKind::Remove);
    assert_eq!(gone.old.unwrap().name, "Worf");
    Ok(())
}

#[tokio::test]
async fn has_one_and_belongs_to_feeds() -> remodel::Result<()> {
    let (db, voyager, _) = setup().await?;
    let mut captain_feed = voyager.captain(&db).changes().await?;
    let mut janeway = Captain {
        id: None,
        name: "Janeway".into(),
        starship_id: None,
    };
    voyager.captain(&db).set(&mut janeway).await?;
    let c = next(&mut captain_feed).await?;
    assert_eq!(c.new.unwrap().name, "Janeway");

    let mut ship_feed = janeway.starship(&db).changes().await?;
    let mut v = voyager.clone();
    v.update(&db, |s| s.name = "Voyager-A".into()).await?;
    let c = next(&mut ship_feed).await?;
    assert_eq!(c.new.unwrap().name, "Voyager-A");

    let drifter = Captain {
        id: None,
        name: "Nobody".into(),
        starship_id: None,
    };
    assert!(matches!(
        drifter
            .starship(&db)
            .changes()
            .await
            .unwrap_err()
            .as_model(),
        Some(ModelError::NoOwner { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn a_top_five_leaderboard_feed() -> remodel::Result<()> {
    let db = common::db().await?;
    create_schema(&db).await?;
    for (p, s) in [
        ("ana", 10),
        ("bo", 20),
        ("cy", 30),
        ("di", 40),
        ("ed", 50),
        ("fy", 5),
    ] {
        Score {
            id: None,
            player: p.into(),
            points: s,
        }
        .create(&db)
        .await?;
    }
    let f = Score::fields();
    let mut top = Score::query(&db)
        .order_by(f.points.index().desc())
        .limit(5)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .await?;
    let mut board: Vec<Score> = Vec::new();
    for _ in 0..5 {
        let c = next(&mut top).await?;
        board.insert(c.new_offset.unwrap(), c.new.unwrap());
    }
    let players = |b: &[Score]| b.iter().map(|s| s.player.clone()).collect::<Vec<_>>();
    assert_eq!(players(&board), ["ed", "di", "cy", "bo", "ana"]);

    // A score entering the top five evicts the last one.
    Score {
        id: None,
        player: "gus".into(),
        points: 45,
    }
    .create(&db)
    .await?;
    let c = next(&mut top).await?;
    assert_eq!(c.old.as_ref().unwrap().player, "ana");
    assert_eq!(c.new.as_ref().unwrap().player, "gus");
    board.remove(c.old_offset.unwrap());
    board.insert(c.new_offset.unwrap(), c.new.unwrap());
    assert_eq!(players(&board), ["ed", "gus", "di", "cy", "bo"]);

    // A write below the boundary is not reported.
    Score {
        id: None,
        player: "hal".into(),
        points: 1,
    }
    .create(&db)
    .await?;
    quiet(&mut top).await;

    // A filtered leaderboard: the filter applies to the rows in index order.
    let not_ed = Score::filter(&db, f.player.ne("ed"))
        .order_by(f.points.index().desc())
        .limit(2);
    let best: Vec<String> = not_ed.run().await?.into_iter().map(|s| s.player).collect();
    assert_eq!(best, ["gus", "di"]);
    let mut live = not_ed.changes().include_initial(true).await?;
    assert_eq!(next(&mut live).await?.new.unwrap().player, "gus");
    Ok(())
}

#[tokio::test]
async fn query_feeds_with_options_and_lazy_decoding() -> remodel::Result<()> {
    let (db, voyager, _) = setup().await?;
    let f = Crewmember::fields();
    let mut ensigns = Crewmember::filter(&db, f.rank.eq("ensign"))
        .changes()
        .squash(true)
        .queue_size(1000)
        .await?;
    let mut kim = voyager
        .crewmembers(&db)
        .create(member("Kim", "ensign"))
        .await?;
    kim.update(&db, |m| m.name = "Harry Kim".into()).await?;
    // Squashed: one add with the newest value (the consumer was not reading).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = next(&mut ensigns).await?;
    assert_eq!(c.kind, ChangeKind::Add);
    assert_eq!(c.new.unwrap().name, "Harry Kim");

    // A row that does not fit the struct is an error item for this consumer; the feed goes on.
    db.table("crewmembers")
        .insert(json!({"id": "broken", "name": 7, "rank": "ensign"}))
        .await?;
    match next(&mut ensigns).await.as_ref().map_err(Error::as_model) {
        Err(Some(ModelError::Decode { key, field, .. })) => {
            assert_eq!((&**key, field.as_str()), (&json!("broken"), "name"));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    voyager
        .crewmembers(&db)
        .create(member("Rollins", "ensign"))
        .await?;
    assert_eq!(next(&mut ensigns).await?.new.unwrap().name, "Rollins");
    Ok(())
}

#[tokio::test]
async fn many_relation_feeds_only_receive_their_own_rows() -> remodel::Result<()> {
    let db = common::db().await?;
    create_schema(&db).await?;
    let mut ships = Vec::new();
    let mut feeds = Vec::new();
    for i in 0..50 {
        let s = Starship {
            id: None,
            name: format!("ship {i}"),
        }
        .create(&db)
        .await?;
        feeds.push(s.crewmembers(&db).changes().await?);
        ships.push(s);
    }
    ships[7]
        .crewmembers(&db)
        .create(member("Seven", "ensign"))
        .await?;
    let c = next(&mut feeds[7]).await?;
    assert_eq!(c.new.unwrap().name, "Seven");
    for (i, f) in feeds.iter_mut().enumerate() {
        if i != 7 {
            assert!(
                tokio::time::timeout(Duration::from_millis(5), f.next())
                    .await
                    .is_err(),
                "feed {i} got another ship's change"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn many_to_many_link_feed() -> remodel::Result<()> {
    let (db, voyager, defiant) = setup().await?;
    let mut links = voyager.away_team(&db).link_changes()?.await?;
    let mut team = vec![member("Tuvok", "lieutenant commander")];
    voyager.away_team(&db).add(&mut team).await?;
    defiant.away_team(&db).add(&mut team).await?;
    let c = tokio::time::timeout(Duration::from_secs(5), links.next())
        .await
        .unwrap()
        .unwrap()?;
    assert_eq!(c.kind(), ChangeKind::Add);
    assert_eq!(c.new_val().unwrap()["crewmember_id"], json!(team[0].id));
    voyager.away_team(&db).remove(&mut team).await?;
    let c = tokio::time::timeout(Duration::from_secs(5), links.next())
        .await
        .unwrap()
        .unwrap()?;
    assert_eq!(c.kind(), ChangeKind::Remove);
    // Defiant's link was not in Voyager's feed.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), links.next())
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn a_typed_feed_resumes_from_a_cursor() -> remodel::Result<()> {
    // (A replica of PostgreSQL keeps a resumable log of what it followed.)
    let db = if remodel::postgres::suites_on_postgres() {
        common::db().await?
    } else {
        common::temporary()
            .change_log(remodel::ChangeLogRetention::default())
            .open()
            .await?
    };
    create_schema(&db).await?;
    let voyager = Starship {
        id: None,
        name: "Voyager".into(),
    }
    .create(&db)
    .await?;
    let mut feed = voyager.crewmembers(&db).changes().await?;
    voyager
        .crewmembers(&db)
        .create(member("Kim", "ensign"))
        .await?;
    let first = next(&mut feed).await?;
    let cursor = first.cursor().expect("a live change has a cursor");
    drop(feed);
    // Missed while disconnected:
    voyager
        .crewmembers(&db)
        .create(member("Paris", "lieutenant"))
        .await?;
    let mut resumed = voyager
        .crewmembers(&db)
        .changes()
        .resume_from(cursor)
        .await?;
    let missed = next(&mut resumed).await?;
    assert_eq!(missed.new.unwrap().name, "Paris");
    quiet(&mut resumed).await;
    Ok(())
}

/// Initial rows then changes, applied to a map by key, always equal the relation re-read:
/// no gap and no duplicate, under concurrent writes (members added, moved in and out,
/// renamed and deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_rows_and_changes_rebuild_the_relation() -> remodel::Result<()> {
    use std::collections::BTreeMap;
    let (db, voyager, defiant) = setup().await?;
    let mut seed: Vec<Crewmember> = (0..20)
        .map(|i| member(&format!("m{i}"), "ensign"))
        .collect();
    voyager.crewmembers(&db).add(&mut seed[..10]).await?;
    defiant.crewmembers(&db).add(&mut seed[10..]).await?;

    let writer = {
        let (db, voyager, defiant) = (db.clone(), voyager.clone(), defiant.clone());
        let mut members = seed.clone();
        tokio::spawn(async move {
            for round in 0..200usize {
                let m = &mut members[round % 20];
                match round % 4 {
                    0 => {
                        let to = if m.starship_id == voyager.id {
                            &defiant
                        } else {
                            &voyager
                        };
                        m.set_starship(Some(to))?;
                        m.save(&db).await?;
                    }
                    1 => {
                        m.update(&db, |m| m.name = format!("{} ({round})", m.name))
                            .await?
                    }
                    2 => {
                        voyager
                            .crewmembers(&db)
                            .create(member(&format!("new {round}"), "cadet"))
                            .await?;
                    }
                    _ => {
                        m.delete(&db).await?;
                        m.id = None;
                        m.save(&db).await?;
                    }
                }
            }
            Ok::<_, remodel::Error>(())
        })
    };
    let mut feed = voyager
        .crewmembers(&db)
        .changes()
        .include_initial(true)
        .include_states(true)
        .await?;
    let mut map: BTreeMap<String, Crewmember> = BTreeMap::new();
    let mut ready = false;
    let mut done = false;
    loop {
        if !done && writer.is_finished() {
            done = true;
            // A marker written after the writer: once it arrives, everything before it has.
            voyager
                .crewmembers(&db)
                .create(member("marker", "none"))
                .await?;
        }
        let Ok(item) = tokio::time::timeout(Duration::from_millis(50), feed.next()).await else {
            continue;
        };
        let c = item.expect("the feed goes on")?;
        if c.kind == ChangeKind::State {
            ready = c.state == Some(FeedState::Ready);
            continue;
        }
        if let Some(old) = &c.old {
            map.remove(old.id.as_ref().unwrap().as_str());
        }
        if let Some(new) = c.new {
            let marker = new.name == "marker";
            map.insert(new.id.clone().unwrap().to_string(), new);
            if marker && done {
                break;
            }
        }
    }
    writer.await.unwrap()?;
    assert!(ready);
    let mut expected: BTreeMap<String, Crewmember> = BTreeMap::new();
    for m in voyager.crewmembers(&db).all().await? {
        expected.insert(m.id.clone().unwrap().to_string(), m);
    }
    assert_eq!(map, expected);
    Ok(())
}
