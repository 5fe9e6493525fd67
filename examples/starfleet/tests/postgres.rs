//! Starfleet on PostgreSQL: two app instances on one shared database. A crew member posted
//! to one appears live in a ship page's stream served by the other, and a browser that
//! reconnects to the other instance resumes from the cursor the first one gave it.

use remodel::postgres::TestCluster;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_posted_to_one_instance_is_live_in_the_other() {
    let Some(cluster) = TestCluster::shared_or_skip("starfleet on postgres") else {
        return;
    };
    let pg = cluster.create_database().await.unwrap();
    let a = app_on(starfleet::open_postgres(pg.url()).await.unwrap());
    let b = app_on(starfleet::open_postgres(pg.url()).await.unwrap());
    // The second instance found the crews the first one loaded.
    assert!(b.get("/ship/voyager").await.body.contains("Janeway"));

    let mut on_a = open_stream(&a, "/ship/voyager/events", None).await;
    let mut on_b = open_stream(&b, "/ship/voyager/events", None).await;
    let (mut buf_a, mut buf_b) = (String::new(), String::new());
    assert_eq!(next_of(&mut on_a, &mut buf_a, "crew").await.0, "crew-reset");
    assert_eq!(next_of(&mut on_b, &mut buf_b, "crew").await.0, "crew-reset");

    let r = a
        .post("/ship/voyager/crew", "name=Kes&rank=ensign&species=ocampa")
        .await;
    assert!(r.status.is_redirection(), "{}", r.body);
    let (name, cursor_b, data) = next_of(&mut on_b, &mut buf_b, "crew").await;
    assert_eq!(name, "crew-rows");
    assert!(data.contains("Kes"), "{data}");
    let (_, cursor_a, data_a) = next_of(&mut on_a, &mut buf_a, "crew").await;
    assert!(data_a.contains("Kes"));
    assert_eq!(cursor_a, cursor_b, "one position in every process");

    // A browser of instance A that saw Kes reconnects to instance B: it gets what came
    // after, posted to B.
    drop(on_a);
    b.post(
        "/ship/voyager/crew",
        "name=Neelix&rank=chef&species=talaxian",
    )
    .await;
    let mut resumed = open_stream(&b, "/ship/voyager/events", cursor_a.as_deref()).await;
    let mut buf = String::new();
    let (name, _, data) = next_of(&mut resumed, &mut buf, "crew").await;
    assert_eq!(name, "crew-rows");
    assert!(data.contains("Neelix") && !data.contains("Kes"), "{data}");
}
