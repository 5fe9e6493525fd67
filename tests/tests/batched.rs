//! Batched loading takes a constant number of store queries, whatever the number of rows:
//! counted by the model layer (`store_queries`) and by the store's stats table.
//!
//! One test in this binary, so that the process-wide query counter counts only it.

#[path = "common/mod.rs"]
mod common;

use common::{Crewmember, Starship};
// A diagnostic of the model layer, for this test only (not a public API).
use remodel::model::__private::store_queries;
use remodel::model::{create_schema, Id};
use remodel::{field, Database, Durability, Model};

async fn reads_of(db: &Database, table: &str) -> u64 {
    let rows = db
        .stats()
        .filter(field("table").eq(table))
        .run()
        .await
        .unwrap();
    rows[0]["reads_total"].as_u64().unwrap()
}

#[tokio::test]
async fn batched_loading_takes_a_constant_number_of_queries() -> remodel::Result<()> {
    let db = if remodel::postgres::suites_on_postgres() {
        common::db().await?
    } else {
        common::temporary()
            .durability(Durability::Soft)
            .open()
            .await?
    };
    create_schema(&db).await?;
    // 1,000 ships, each with one captain; and 3 of them with 1,000 more crew between them.
    let mut ships = Vec::new();
    let mut batch = db.batch();
    for i in 0..1000 {
        let id = Id::generate();
        batch = batch.insert(
            "starships",
            serde_json::json!({"id": id, "name": format!("ship {i}")}),
        );
        batch = batch.insert(
            "crewmembers",
            serde_json::json!({"id": format!("captain {i}"), "name": format!("captain {i}"), "starship_id": id}),
        );
        ships.push(id);
    }
    batch.await?.check()?;
    let mut batch = db.batch();
    for i in 0..1000 {
        batch = batch.insert(
            "crewmembers",
            serde_json::json!({"id": format!("crew {i}"), "name": format!("crew {i}"), "starship_id": ships[i % 3]}),
        );
    }
    batch.await?.check()?;

    let captains = Crewmember::filter(&db, Crewmember::fields().name.starts_with("captain"))
        .run()
        .await?;
    assert_eq!(captains.len(), 1000);

    // Every captain with their starship: one query.
    let before = store_queries();
    let ship_reads = reads_of(&db, "starships").await;
    let loaded = Crewmember::load_starship(&db, &captains).await?;
    assert_eq!(store_queries() - before, 1);
    assert_eq!(
        reads_of(&db, "starships").await - ship_reads,
        1000,
        "each ship read once"
    );
    for (c, s) in captains.iter().zip(&loaded) {
        assert_eq!(s.as_ref().unwrap().id, c.starship_id);
    }
    // Ten captains: still one query.
    let before = store_queries();
    Crewmember::load_starship(&db, &captains[..10]).await?;
    assert_eq!(store_queries() - before, 1);

    // The same through one get per row: 1,000 queries.
    let before = store_queries();
    for c in &captains {
        c.starship(&db).await?;
    }
    assert_eq!(store_queries() - before, 1000);

    // Every ship with its crew: one query through the foreign-key index.
    let all_ships = Starship::all(&db).await?;
    let before = store_queries();
    let crews = Starship::load_crewmembers(&db, &all_ships).await?;
    assert_eq!(store_queries() - before, 1);
    let total: usize = crews.iter().map(Vec::len).sum();
    assert_eq!(total, 2000);
    assert_eq!(crews.iter().map(Vec::len).max(), Some(335));

    // Many captains of three ships: each ship is read once, not once per captain.
    let crew_rows = Crewmember::filter(&db, Crewmember::fields().name.starts_with("crew "))
        .run()
        .await?;
    let ship_reads = reads_of(&db, "starships").await;
    let loaded = Crewmember::load_starship(&db, &crew_rows).await?;
    assert_eq!(reads_of(&db, "starships").await - ship_reads, 3);
    assert!(loaded.iter().all(Option::is_some));
    Ok(())
}
