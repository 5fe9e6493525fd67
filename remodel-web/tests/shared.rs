//! Shared results ([`remodel_web::Live::shared`]) against an oracle: every member of a busy
//! result ends at the query's rows with nothing more written (no member waits for a wake-up
//! that never comes), joiners get the rows as held, and keys equal as values are one row.

mod common;

use common::{by_id, start_with, Client};
use remodel::{json, Value};
use remodel_web::Limits;
use std::time::Duration;

/// The members as the `shared_members` publication shows them, read now.
async fn members(db: &remodel::Database) -> Vec<Value> {
    by_id(db.table("members").query().run().await.unwrap())
}

/// Reads `c` until subscription `sub` holds `want`, for at most `wait`.
async fn reaches(c: &mut Client, sub: u32, want: &[Value], wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while by_id(c.docs(sub)) != want {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_busy_shared_result_reaches_its_last_rows() {
    for (round, window) in [0u64, 5, 20].into_iter().enumerate() {
        let app = start_with(Limits::default(), Duration::from_millis(window)).await;
        let db = app.db.clone();
        let mut clients = Vec::new();
        for i in 0..24 {
            let mut c = Client::connect(&app, "kirk").await;
            // Pages number their subscriptions alike, or not.
            let sub = 1 + (i % 3);
            c.sub(sub, "shared_members", json!(null)).await;
            c.until(|v| v["sub"] == sub && v["t"] == "reset").await;
            clients.push((sub, c));
        }
        // Readers drain their sockets while a writer commits one change after another (each
        // a batch of its own, or a few).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for (sub, mut c) in clients {
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = tokio::time::timeout(Duration::from_millis(20), c.recv()).await;
                }
                (sub, c)
            }));
        }
        let ids = ["kirk", "spock", "uhura", "janeway"];
        for n in 0..600u64 {
            let id = ids[(n * 7 % 4) as usize];
            db.table("members")
                .get(id)
                .update(json!({"points": n, "w": n}))
                .await
                .unwrap();
            if n % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let want = members(&db).await;
        for reader in readers {
            let (sub, mut c) = reader.await.unwrap();
            // Nothing more is written: a member whose wake-up was lost stays where it was.
            assert!(
                reaches(&mut c, sub, &want, Duration::from_secs(5)).await,
                "round {round}: a member stopped at {:?}",
                by_id(c.docs(sub))
            );
        }
        // A page that joins now gets the rows as held, equal to the query.
        let mut late = Client::connect(&app, "spock").await;
        late.sub(9, "shared_members", json!(null)).await;
        late.until(|v| v["sub"] == 9 && v["t"] == "reset").await;
        assert_eq!(by_id(late.docs(9)), want, "round {round}");
        assert_eq!(app.web.stats().shared_results, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_equal_as_values_are_one_row_whatever_their_text() {
    for name in ["keyed", "shared_keyed"] {
        keys_equal_as_values(name).await;
    }
}

async fn keys_equal_as_values(name: &str) {
    let app = start_with(Limits::default(), Duration::from_millis(0)).await;
    let db = app.db.clone();
    let mut first = Client::connect(&app, "kirk").await;
    first.sub(1, name, json!(null)).await;
    first.until(|v| v["sub"] == 1 && v["t"] == "reset").await;
    // Kirk's key is written one way, then the other, then the first again.
    for points in [6, 7, 8, 9] {
        db.table("members")
            .get("kirk")
            .update(json!({"points": points}))
            .await
            .unwrap();
        first
            .until(|v| {
                v["t"] == "change"
                    && v["rows"]
                        .to_string()
                        .contains(&format!("\"points\":{points}"))
            })
            .await;
    }
    let mut late = Client::connect(&app, "spock").await;
    late.sub(1, name, json!(null)).await;
    late.until(|v| v["sub"] == 1 && v["t"] == "reset").await;
    assert_eq!(late.docs(1).len(), 4, "{name}: {:?}", late.docs(1));
    assert_eq!(first.docs(1).len(), 4, "{name}: {:?}", first.docs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_subscriber_to_go_stops_the_shared_result() {
    let app = start_with(Limits::default(), Duration::from_millis(0)).await;
    let mut pages = Vec::new();
    for user in ["kirk", "spock", "uhura"] {
        let mut c = Client::connect(&app, user).await;
        c.sub(1, "shared_members", json!(null)).await;
        c.sub(2, "shared_logs", json!({"member": user})).await;
        c.until(|v| v["sub"] == 2 && v["t"] == "reset").await;
        pages.push(c);
    }
    // One members' result, and each member's own log (a result per parameters).
    assert_eq!(app.web.stats().shared_results, 4);
    drop(pages);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.web.stats().shared_results > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            app.web.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_parameters_in_any_order_share_one_result() {
    let app = start_with(Limits::default(), Duration::from_millis(0)).await;
    let mut a = Client::connect(&app, "kirk").await;
    a.send(json!({"op": "sub", "id": 1, "name": "shared_points", "params": {"from": 6, "to": 9}}))
        .await;
    a.until(|v| v["sub"] == 1 && v["t"] == "reset").await;
    let mut b = Client::connect(&app, "spock").await;
    // The same parameters, written in the other order (the text a page sends varies).
    let text = r#"{"op":"sub","id":1,"name":"shared_points","params":{"to":9,"from":6}}"#;
    b.send_text(text).await;
    b.until(|v| v["sub"] == 1 && v["t"] == "reset").await;
    assert_eq!(by_id(a.docs(1)), by_id(b.docs(1)));
    assert_eq!(a.docs(1).len(), 2, "Uhura (7) and Janeway (8)");
    assert_eq!(app.web.stats().shared_results, 1);
    // Other parameters: a result of their own.
    let mut c = Client::connect(&app, "uhura").await;
    c.send(json!({"op": "sub", "id": 1, "name": "shared_points", "params": {"from": 0, "to": 9}}))
        .await;
    c.until(|v| v["sub"] == 1 && v["t"] == "reset").await;
    assert_eq!(app.web.stats().shared_results, 2);
}
