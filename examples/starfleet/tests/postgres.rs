//! Starfleet on PostgreSQL: two app instances on one shared database. A crew member posted
//! to one appears live on a page connected to the other, and a page that reconnects to the
//! other instance resumes from the cursor the first one gave it.

use remodel::postgres::TestCluster;
use serde_json::json;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_posted_to_one_instance_is_live_in_the_other() {
    let Some(cluster) = TestCluster::shared_or_skip("starfleet on postgres") else {
        return;
    };
    let pg = cluster.create_database().await.unwrap();
    let a = app_on(starfleet::open_postgres(pg.url()).await.unwrap()).await;
    let b = app_on(starfleet::open_postgres(pg.url()).await.unwrap()).await;
    // The second instance found the crews the first one loaded, and signs sessions alike.
    assert!(b.get("/ship/voyager").await.body.contains("Janeway"));
    let cookie = a.cookie_of("tuvok").await;
    assert!(b.get_as("/", &cookie).await.body.contains("Signed in as"));
    let (addr_a, addr_b) = (a.serve().await, b.serve().await);

    let mut on_a = Live::connect(addr_a, None).await;
    let mut on_b = Live::connect(addr_b, None).await;
    for page in [&mut on_a, &mut on_b] {
        page.sub(1, "crew", json!({"ship": "voyager"}), None).await;
        page.until(1, |rows| rows.len() == 3).await;
    }
    let r = a
        .post_by(
            "janeway",
            "/ship/voyager/crew",
            "name=Kes&rank=ensign&species=ocampa",
        )
        .await;
    assert!(r.status.is_redirection(), "{}", r.body);
    on_b.until(1, |rows| rows.iter().any(|m| m["name"] == "Kes"))
        .await;
    on_a.until(1, |rows| rows.iter().any(|m| m["name"] == "Kes"))
        .await;
    assert_eq!(
        on_a.cursor(1),
        on_b.cursor(1),
        "one position in every process"
    );

    // A page of instance A that saw Kes reconnects to instance B: it gets what came after,
    // posted to B.
    let cursor = on_a.cursor(1).unwrap();
    drop(on_a);
    b.post_by(
        "janeway",
        "/ship/voyager/crew",
        "name=Neelix2&rank=chef&species=talaxian",
    )
    .await;
    let mut resumed = Live::connect(addr_b, None).await;
    resumed
        .sub(1, "crew", json!({"ship": "voyager"}), Some(&cursor))
        .await;
    let v = resumed.frame_of(1, |_| true).await;
    assert_eq!(v["t"], "change", "resumed: {v}");
    let rows = v["rows"].to_string();
    assert!(rows.contains("Neelix2") && !rows.contains("Kes"), "{rows}");

    // The sector map: a ship dragged on instance A moves on a map of instance B.
    let mut map_b = Live::connect(addr_b, None).await;
    map_b.sub(1, "map", json!({}), None).await;
    map_b.until(1, |rows| rows.len() == 3).await;
    let mut map_a = Live::connect(addr_a, None).await;
    for (i, x) in [100.0, 200.0, 300.0].into_iter().enumerate() {
        let params = json!({"ship": "defiant", "x": x, "y": 50.0});
        map_a
            .send(json!({"op": "call", "id": i, "name": "move_ship", "params": params}))
            .await;
        // One at a time: calls in flight together commit in any order.
        let v = loop {
            let v = map_a.next().await;
            if v["t"] == "result" {
                break v;
            }
        };
        assert!(v.get("error").is_none(), "{v}");
    }
    map_b
        .until(1, |rows| {
            rows.iter()
                .any(|s| s["id"] == "defiant" && s["x"] == 300.0 && s["y"] == 50.0)
        })
        .await;
}
