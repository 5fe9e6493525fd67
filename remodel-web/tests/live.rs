//! Live results against an oracle: after random writes, the rows a client rebuilt from its
//! frames equal the publication's query re-run through its rules; a client that reconnects
//! with its cursors resumes exactly.

mod common;

use common::{by_id, start, start_with, Client, Rng};
use remodel::{json, Order, Value};
use remodel_web::Limits;
use std::time::{Duration, Instant};

const OWNERS: [&str; 3] = ["kirk", "spock", "uhura"];

/// One random write to the logs: insert, update (possibly to another owner) or delete.
async fn random_write(db: &remodel::Database, rng: &mut Rng, n: u64) {
    let id = format!("l{}", rng.below(40));
    let owner = OWNERS[rng.below(3) as usize];
    let t = db.table("logs");
    match rng.below(4) {
        0 | 1 => {
            let doc =
                json!({"id": id, "owner": owner, "text": format!("t{n}"), "at": n, "secret": n});
            t.insert(doc)
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }
        2 => {
            t.get(id.as_str())
                .update(json!({"owner": owner, "at": n}))
                .await
                .unwrap();
        }
        _ => {
            t.get(id.as_str()).delete().await.unwrap();
        }
    }
}

/// The oracle: `member`'s log as `viewer` may see it, read now.
async fn expected(db: &remodel::Database, member: &str, viewer: &str) -> Vec<Value> {
    let rows = db.table("logs").query().run().await.unwrap();
    by_id(
        rows.into_iter()
            .filter(|r| r["owner"] == member)
            .map(|mut r| {
                if viewer != member {
                    r.as_object_mut().unwrap().remove("secret");
                }
                r
            })
            .collect(),
    )
}

/// Writes a marker row of `member` and reads until the client's subscription has it: every
/// write before it has then been delivered.
async fn settle(db: &remodel::Database, c: &mut Client, sub: u32, member: &str, n: u64) {
    let id = format!("marker{n}");
    db.table("logs")
        .insert(json!({"id": id, "owner": member, "at": n}))
        .await
        .unwrap();
    while !c.results.contains(sub, &json!(id)) {
        c.recv().await.expect("open");
    }
    db.table("logs").get(id.as_str()).delete().await.unwrap();
    while c.results.contains(sub, &json!(id)) {
        c.recv().await.expect("open");
    }
}

/// The feeds open on `db` now.
async fn open_feeds(db: &remodel::Database) -> u64 {
    let rows = db.stats().run().await.unwrap();
    let row = rows.iter().find(|r| r["type"] == "database").unwrap();
    row["feeds"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_results_equal_the_query_through_the_rules() {
    for (seed, name) in (1..=4u64).flat_map(|s| [(s, "logs"), (s, "shared_logs")]) {
        let app = start_with(Limits::default(), Duration::from_millis(5 * seed)).await;
        let db = app.db.clone();
        let mut rng = Rng(0x9E37_79B9 ^ seed);
        // Kirk watches his own log and (as captain) Spock's; Spock his own.
        let mut kirk = Client::connect(&app, "kirk").await;
        kirk.sub(1, name, json!({"member": "kirk"})).await;
        kirk.sub(2, name, json!({"member": "spock"})).await;
        let mut spock = Client::connect(&app, "spock").await;
        spock.sub(1, name, json!({"member": "spock"})).await;
        let mut n = 0;
        for round in 0..6 {
            for _ in 0..40 {
                n += 1;
                random_write(&db, &mut rng, n).await;
            }
            n += 1;
            settle(&db, &mut kirk, 1, "kirk", n).await;
            settle(&db, &mut kirk, 2, "spock", n + 1000).await;
            settle(&db, &mut spock, 1, "spock", n + 2000).await;
            assert_eq!(
                by_id(kirk.docs(1)),
                expected(&db, "kirk", "kirk").await,
                "{name}: seed {seed} round {round}"
            );
            assert_eq!(
                by_id(kirk.docs(2)),
                expected(&db, "spock", "kirk").await,
                "{name}: seed {seed} round {round}"
            );
            assert_eq!(
                by_id(spock.docs(1)),
                expected(&db, "spock", "spock").await,
                "{name}: seed {seed} round {round}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_resumes_each_subscription_exactly() {
    for name in ["logs", "shared_logs"] {
        resume_exactly(name, false).await;
    }
    // Another page of Kirk's keeps the shared results running: the one that reconnects
    // follows them again from the batches they kept.
    resume_exactly("shared_logs", true).await;
}

async fn resume_exactly(name: &str, kept_alive: bool) {
    let app = start(Limits::default()).await;
    let db = app.db.clone();
    let mut rng = Rng(77);
    let mut other_page = Client::connect(&app, "kirk").await;
    if kept_alive {
        other_page.sub(1, name, json!({"member": "kirk"})).await;
        other_page.sub(2, name, json!({"member": "spock"})).await;
    }
    let mut kirk = Client::connect(&app, "kirk").await;
    kirk.sub(1, name, json!({"member": "kirk"})).await;
    kirk.sub(2, name, json!({"member": "spock"})).await;
    let mut n = 0;
    for cut in 0..5 {
        for _ in 0..30 {
            n += 1;
            random_write(&db, &mut rng, n).await;
        }
        n += 1;
        settle(&db, &mut kirk, 1, "kirk", n).await;
        settle(&db, &mut kirk, 2, "spock", n + 1000).await;
        // The connection drops; writes go on meanwhile.
        let before = kirk.results.clone();
        let feeds_before = open_feeds(&db).await;
        drop(kirk);
        for _ in 0..30 {
            n += 1;
            random_write(&db, &mut rng, n).await;
        }
        kirk = Client::connect(&app, "kirk").await;
        kirk.results = before.clone();
        for sub in [1u32, 2] {
            let member = if sub == 1 { "kirk" } else { "spock" };
            let cursor = before.cursor(sub).expect("a cursor");
            kirk.send(json!({"op": "sub", "id": sub, "name": name, "params": {"member": member}, "cursor": cursor}))
                .await;
        }
        n += 1;
        settle(&db, &mut kirk, 1, "kirk", n).await;
        settle(&db, &mut kirk, 2, "spock", n + 1000).await;
        for sub in [1, 2] {
            let resets = (kirk.results.resets(sub), before.resets(sub));
            assert_eq!(resets.0, resets.1, "{name} cut {cut}: resumed, not reset");
        }
        if kept_alive {
            // Followed from the shared results' kept batches: no feed of its own.
            assert_eq!(open_feeds(&db).await, feeds_before, "cut {cut}");
        }
        assert_eq!(
            by_id(kirk.docs(1)),
            expected(&db, "kirk", "kirk").await,
            "cut {cut}"
        );
        assert_eq!(
            by_id(kirk.docs(2)),
            expected(&db, "spock", "kirk").await,
            "cut {cut}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_n_result_follows_the_query_and_resets_on_reconnect() {
    let app = start(Limits::default()).await;
    let db = app.db.clone();
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "top", json!(null)).await;
    let reset = c.until(|v| v["t"] == "reset").await;
    assert_eq!(reset["order"], json!([["points", "desc"]]));
    let mut rng = Rng(5);
    let members = db.table("members");
    for i in 0..200u64 {
        let who = ["kirk", "spock", "uhura", "janeway"][rng.below(4) as usize];
        members
            .get(who)
            .update(json!({"points": rng.below(50)}))
            .await
            .unwrap();
        if i % 40 == 39 {
            members
                .get("kirk")
                .update(json!({"mark": i}))
                .await
                .unwrap();
            let top = members
                .order_by(Order::index("points").desc())
                .limit(3)
                .run()
                .await
                .unwrap();
            // Wait until the client shows this state (its frames come in commit order).
            let want = by_id(top);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while by_id(c.docs(1)) != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?} != {want:?}",
                    c.docs(1)
                );
                let _ = tokio::time::timeout(Duration::from_millis(200), c.recv()).await;
            }
        }
    }
    // A top-N cannot resume: a reconnect with its cursor gets the whole result again.
    let cursor = c.cursor(1);
    drop(c);
    let mut c = Client::connect(&app, "kirk").await;
    c.send(json!({"op": "sub", "id": 1, "name": "top", "params": null, "cursor": cursor.unwrap_or_default()}))
        .await;
    let v = c.until(|v| v["sub"] == 1).await;
    assert_eq!(v["t"], "reset");
    assert_eq!(c.docs(1).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_ends_its_subscriptions() {
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "logs", json!({"member": "kirk"})).await;
    c.until(|v| v["t"] == "reset").await;
    app.db.drop_table("logs").await.unwrap();
    let v = c.until(|v| v["t"] == "end").await;
    assert_eq!(v["error"]["code"], "aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_comes_whole_in_frames_of_bounded_size() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = start(Limits::default()).await;
    let rows: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("l{i:03}"), "owner": "kirk", "at": i, "text": "x".repeat(100)}))
        .collect();
    app.db.table("logs").insert_many(rows).await.unwrap();
    let mut c = common::handshake(app.addr, Some("kirk"), None)
        .await
        .unwrap();
    use futures::SinkExt;
    let sub = json!({"op": "sub", "id": 1, "name": "logs", "params": {"member": "kirk"}});
    c.send(Message::text(sub.to_string())).await.unwrap();
    let (mut frames, mut ids) = (Vec::new(), Vec::new());
    loop {
        let Some(Ok(Message::Text(t))) = c.next().await else {
            panic!("the connection closed")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["t"] == "hello" {
            continue;
        }
        assert!(t.len() < 4096, "a frame of {} bytes", t.len());
        for r in v["rows"].as_array().unwrap() {
            ids.push(r[0].as_str().unwrap().to_string());
        }
        let more = v["more"] == true;
        frames.push(v);
        if !more {
            break;
        }
    }
    assert!(frames.len() > 10, "{} frames", frames.len());
    assert_eq!(frames[0]["t"], "reset");
    assert!(frames[0]["cursor"].is_string());
    assert!(frames[1..]
        .iter()
        .all(|f| f["t"] == "more" && f["sub"] == 1));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "every row once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_change_comes_in_frames_of_bounded_size_with_one_cursor() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = start(Limits::default()).await;
    let mut c = common::handshake(app.addr, Some("kirk"), None)
        .await
        .unwrap();
    let sub = json!({"op": "sub", "id": 1, "name": "logs", "params": {"member": "kirk"}});
    c.send(Message::text(sub.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = c.next().await else {
            panic!("closed")
        };
        if serde_json::from_str::<Value>(&t).unwrap()["t"] == "reset" {
            break;
        }
    }
    // One commit of 300 rows.
    let rows: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("l{i:03}"), "owner": "kirk", "at": i, "text": "x".repeat(100)}))
        .collect();
    app.db.table("logs").insert_many(rows).await.unwrap();
    let (mut frames, mut messages) = (Vec::new(), 0);
    loop {
        let Some(Ok(Message::Text(t))) = c.next().await else {
            panic!("closed")
        };
        // Its parts go several to a message (a batch), each message at most 4 KB.
        assert!(t.len() <= 4096, "a message of {} bytes", t.len());
        messages += 1;
        let v: Value = serde_json::from_str(&t).unwrap();
        let got = match v["t"] == "batch" {
            true => v["frames"].as_array().unwrap().clone(),
            false => vec![v],
        };
        let last = got.last().unwrap()["more"] != true;
        frames.extend(got);
        if last {
            break;
        }
    }
    assert!(frames.len() > 10, "{} frames", frames.len());
    assert!(
        messages < frames.len(),
        "{messages} messages for {} frames",
        frames.len()
    );
    assert!(frames.iter().all(|f| f["t"] == "change"));
    let (parts, last) = frames.split_at(frames.len() - 1);
    assert!(
        parts.iter().all(|f| f.get("cursor").is_none()),
        "parts carry no cursor"
    );
    assert!(last[0]["cursor"].is_string(), "the last carries the cursor");
    let n: usize = frames
        .iter()
        .map(|f| f["rows"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 300);
}

/// Kirk's connection follows the members, the top 3 and his log. The first change after a
/// quiet spell goes at once; a further change of the same subscription within the window
/// waits for its end; a change of a subscription that has not sent within the window goes
/// at once, and a held one's pending change goes along in the same message (a `batch`).
/// His results then equal the queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_within_a_window_come_in_one_message() {
    let window = Duration::from_millis(1500);
    let app = start_with(Limits::default(), window).await;
    let db = app.db.clone();
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "members", json!(null)).await;
    c.sub(2, "top", json!(null)).await;
    c.sub(3, "logs", json!({"member": "kirk"})).await;
    for _ in 0..3 {
        c.until(|v| v["t"] == "reset").await;
    }
    let has = |rows: Vec<Value>, id: &str, field: &str, v: Value| {
        rows.iter().any(|r| r["id"] == id && r[field] == v)
    };
    // Quiet: the first change goes at once (well within the window), alone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (messages, started) = (c.messages, Instant::now());
    let members = db.table("members");
    // (Not one in the top 3, and not Kirk, whose row guards his log's subscription.)
    let chekov = json!({"id": "chekov", "name": "Chekov", "ship": "enterprise", "points": 1});
    members.insert(chekov).await.unwrap();
    c.until(|v| v["t"] == "change" && v["sub"] == 1).await;
    assert!(
        started.elapsed() < window * 2 / 3,
        "the first change after a quiet spell took {:?}",
        started.elapsed()
    );
    assert_eq!(c.messages, messages + 1, "one message");
    // The members again, within the window: held until it ends.
    let during = Instant::now();
    let rename = json!({"name": "Pavel"});
    members.get("chekov").update(rename).await.unwrap();
    while !has(c.docs(1), "chekov", "name", json!("Pavel")) {
        c.recv().await.expect("open");
    }
    assert!(
        during.elapsed() >= window / 2,
        "a change within the window came after {:?}",
        during.elapsed()
    );
    // A window is open again, the members held: a change of the members waits,
    // then one of his log (which has not sent) goes at once, the members' change with it.
    let (messages, batches, during) = (c.messages, c.batches, Instant::now());
    let rename = json!({"name": "P. Chekov"});
    members.get("chekov").update(rename).await.unwrap();
    let log = json!({"id": "w1", "owner": "kirk", "at": 1, "text": "one"});
    db.table("logs").insert(log).await.unwrap();
    while c.docs(3).is_empty() || !has(c.docs(1), "chekov", "name", json!("P. Chekov")) {
        c.recv().await.expect("open");
    }
    assert!(
        during.elapsed() < window,
        "the log's change took {:?}",
        during.elapsed()
    );
    assert_eq!(c.messages, messages + 1, "both changes in one message");
    assert_eq!(c.batches, batches + 1, "as a batch");
    // Nothing else is coming: the results equal the queries.
    let all = by_id(members.query().run().await.unwrap());
    assert_eq!(by_id(c.docs(1)), all);
    let mut top = all.clone();
    top.sort_by_key(|m| std::cmp::Reverse(m["points"].as_i64()));
    assert_eq!(by_id(c.docs(2)), by_id(top[..3].to_vec()));
    assert_eq!(by_id(c.docs(3)), expected(&db, "kirk", "kirk").await);
}

/// A connection whose two subscriptions' changes keep coming gets one message per window
/// (not one per subscription and window): every change still arrives, the last state equal
/// to the queries'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_gets_one_message_per_window() {
    let window = Duration::from_millis(100);
    let app = start_with(Limits::default(), window).await;
    let db = app.db.clone();
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "logs", json!({"member": "kirk"})).await;
    c.sub(2, "members", json!(null)).await;
    for _ in 0..2 {
        c.until(|v| v["t"] == "reset").await;
    }
    let messages = c.messages;
    // 2 s of writes, one every 10 ms, to his log and to Uhura's row in turn: 20 windows of
    // 100 ms, each with changes of both subscriptions.
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0;
            while started.elapsed() < Duration::from_secs(2) {
                n += 1;
                if n % 2 == 0 {
                    let doc = json!({"id": format!("b{}", n % 7), "owner": "kirk", "at": n});
                    db.table("logs")
                        .insert(doc)
                        .conflict(remodel::Conflict::Replace)
                        .await
                        .unwrap();
                } else {
                    let points = json!({"points": n});
                    db.table("members")
                        .get("uhura")
                        .update(points)
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    let n = writer.await.unwrap();
    // Every write arrives (the last ones show their `n`).
    let (log_n, uhura_n) = if n % 2 == 0 { (n, n - 1) } else { (n - 1, n) };
    let last = json!(format!("b{}", log_n % 7));
    loop {
        let log = c
            .docs(1)
            .iter()
            .any(|r| r["id"] == last && r["at"] == log_n);
        let uhura = c
            .docs(2)
            .iter()
            .any(|r| r["id"] == "uhura" && r["points"] == uhura_n);
        if log && uhura {
            break;
        }
        c.recv().await.expect("open");
    }
    let got = c.messages - messages;
    // 1 at once, then one per window: ~21 (one per subscription and window would be ~40).
    assert!(
        got <= 26,
        "{got} messages for 2 s of changes of 2 subscriptions with a 100 ms window"
    );
    assert!(c.batches > 0);
    assert_eq!(by_id(c.docs(1)), expected(&db, "kirk", "kirk").await);
    let members = by_id(db.table("members").query().run().await.unwrap());
    assert_eq!(by_id(c.docs(2)), members);
}
