//! Aggregates and joins: count, sum, avg, min and max; groups by a field and by an index
//! (a multi index counts numerically equal elements once); `eq_join` and `zip`.

use crate::common::crew::{crew, crew_docs, groups, sids};
use crate::common::db;
use remodel::{field, json, Error, IndexSpec, Value};

#[tokio::test]
async fn count_sum_avg_min_max() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(t.count().await.unwrap(), 7);
    assert_eq!(t.query().count().await.unwrap(), 7);
    assert_eq!(
        t.filter(field("rank").eq("captain")).count().await.unwrap(),
        3
    );
    assert_eq!(t.get_all([1, 1, 9]).count().await.unwrap(), 2);
    assert_eq!(t.get_all(["tea"]).index("tags").count().await.unwrap(), 3);
    // Rows without the field are skipped.
    assert_eq!(t.query().sum("age").await.unwrap(), 255.0);
    assert_eq!(t.query().avg("age").await.unwrap(), Some(42.5));
    assert_eq!(
        t.filter(field("ship").eq("defiant"))
            .avg("age")
            .await
            .unwrap(),
        Some(45.0)
    );
    assert_eq!(t.query().sum("nope").await.unwrap(), 0.0);
    assert_eq!(t.query().avg("nope").await.unwrap(), None);
    // No rows at all: the average is None too.
    assert_eq!(
        t.filter(field("id").gt(100)).avg("age").await.unwrap(),
        None
    );
    assert_eq!(
        t.query().min("age").await.unwrap(),
        Some(crew_docs()[1].clone())
    );
    assert_eq!(
        t.query().max("age").await.unwrap(),
        Some(crew_docs()[0].clone())
    );
    // Ties keep the first row read.
    assert_eq!(
        t.filter(field("age").eq(45)).max("age").await.unwrap(),
        Some(crew_docs()[3].clone())
    );
    assert_eq!(t.query().max("name").await.unwrap().unwrap()["id"], 7);
    assert_eq!(t.query().min("nope").await.unwrap(), None);
    assert_eq!(
        t.query().min("home.planet").await.unwrap().unwrap()["id"],
        1
    );
    // Summing something that is not a number is an invalid query that says so.
    assert!(matches!(
        t.query().sum("name").await,
        Err(Error::InvalidQuery(m)) if m.contains("not a number")
    ));
    assert!(matches!(
        t.query().avg("tags").await,
        Err(Error::InvalidQuery(_))
    ));
}

#[tokio::test]
async fn group_by_field_and_index() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(
        groups(t.query().group("rank").count().await.unwrap()),
        vec![
            (json!("captain"), json!(3)),
            (json!("commander"), json!(3)),
            (json!("major"), json!(1)),
        ]
    );
    assert_eq!(
        groups(t.query().group("rank").sum("age").await.unwrap()),
        vec![
            (json!("captain"), json!(145.0)),
            (json!("commander"), json!(110.0)),
            (json!("major"), json!(0.0)),
        ]
    );
    assert_eq!(
        groups(t.query().group("ship").avg("age").await.unwrap()),
        vec![
            (json!("defiant"), json!(45.0)),
            (json!("enterprise"), json!(124.0 / 3.0)),
            (json!("voyager"), json!(41.0)),
        ]
    );
    assert_eq!(
        groups(t.query().group("rank").avg("age").await.unwrap())[2],
        (json!("major"), Value::Null)
    );
    // Rows without the field form the group null (ordered before strings).
    assert_eq!(
        groups(t.query().group("home.planet").count().await.unwrap()),
        vec![
            (Value::Null, json!(4)),
            (json!("earth"), json!(2)),
            (json!("omicron theta"), json!(1)),
        ]
    );
    // min / max give the row.
    assert_eq!(
        groups(t.query().group("ship").max("age").await.unwrap()),
        vec![
            (json!("defiant"), crew_docs()[3].clone()),
            (json!("enterprise"), crew_docs()[0].clone()),
            (json!("voyager"), crew_docs()[5].clone()),
        ]
    );
    // After a filter.
    assert_eq!(
        groups(
            t.filter(field("age").gt(40))
                .group("ship")
                .count()
                .await
                .unwrap()
        ),
        vec![
            (json!("defiant"), json!(2)),
            (json!("enterprise"), json!(1)),
            (json!("voyager"), json!(1)),
        ]
    );
    // A multi index puts a row in one group per element; rows with no element are in none.
    assert_eq!(
        groups(t.query().group_by_index("tags").count().await.unwrap()),
        vec![
            (json!("baseball"), json!(1)),
            (json!("cats"), json!(1)),
            (json!("chocolate"), json!(1)),
            (json!("coffee"), json!(1)),
            (json!("opera"), json!(1)),
            (json!("poetry"), json!(1)),
            (json!("shakespeare"), json!(1)),
            (json!("tea"), json!(3)),
        ]
    );
    assert_eq!(
        groups(t.query().group_by_index("tags").sum("age").await.unwrap())[7],
        (json!("tea"), json!(145.0))
    );
    assert_eq!(
        groups(t.query().group_by_index("ship_rank").count().await.unwrap()),
        vec![
            (json!(["defiant", "captain"]), json!(1)),
            (json!(["defiant", "commander"]), json!(1)),
            (json!(["defiant", "major"]), json!(1)),
            (json!(["enterprise", "captain"]), json!(1)),
            (json!(["enterprise", "commander"]), json!(2)),
            (json!(["voyager", "captain"]), json!(1)),
        ]
    );
    assert_eq!(
        t.query().group_by_index("nope").count().await,
        Err(Error::NoSuchIndex {
            table: "crew".into(),
            index: "nope".into()
        })
    );
}

#[tokio::test]
async fn group_by_a_multi_index_counts_numerically_equal_elements_once() {
    // A multi index has one entry per distinct element, in the total order where 1 == 1.0;
    // grouping by it must put the row in group 1 once, as the index itself does.
    let db = db().await;
    db.create_table("m").await.unwrap();
    let t = db.table("m");
    t.create_index("xs", IndexSpec::multi("xs")).await.unwrap();
    t.insert_many(vec![
        json!({"id": "a", "xs": [1, 1.0, 2]}),
        json!({"id": "b", "xs": [1]}),
    ])
    .await
    .unwrap();
    assert_eq!(t.index_status().unwrap()[0].entries, 3);
    assert_eq!(
        sids(&t.get_all([1]).index("xs").run().await.unwrap()),
        vec!["a", "b"]
    );
    assert_eq!(
        groups(t.query().group_by_index("xs").count().await.unwrap()),
        vec![(json!(1), json!(2)), (json!(2), json!(1))]
    );
}

#[tokio::test]
async fn eq_join_and_zip() {
    let db = db().await;
    let crew = crew(&db).await;
    db.create_table("ships").await.unwrap();
    let ships = db.table("ships");
    ships
        .insert_many(vec![
            json!({"id": "enterprise", "class": "galaxy", "captain": 1}),
            json!({"id": "defiant", "class": "defiant", "captain": 4}),
            json!({"id": "stargazer", "class": "constellation", "captain": 1}),
        ])
        .await
        .unwrap();
    ships
        .create_index("captain", IndexSpec::field("captain"))
        .await
        .unwrap();

    // On the other table's primary key: rows without a match (voyager) are dropped.
    let joined = crew
        .filter(field("rank").eq("captain").or(field("id").eq(5)))
        .eq_join("ship", "ships")
        .run()
        .await
        .unwrap();
    assert_eq!(
        joined,
        vec![
            json!({"left": crew_docs()[0], "right": {"id": "enterprise", "class": "galaxy", "captain": 1}}),
            json!({"left": crew_docs()[3], "right": {"id": "defiant", "class": "defiant", "captain": 4}}),
            json!({"left": crew_docs()[4], "right": {"id": "defiant", "class": "defiant", "captain": 4}}),
        ]
    );
    // On a secondary index of the other table: one row per match.
    let joined = crew
        .query()
        .eq_join("id", "ships")
        .index("captain")
        .run()
        .await
        .unwrap();
    assert_eq!(
        joined
            .iter()
            .map(|j| (j["left"]["id"].clone(), j["right"]["id"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (json!(1), json!("enterprise")),
            (json!(1), json!("stargazer")),
            (json!(4), json!("defiant")),
        ]
    );
    // zip merges the right row into the left one (the right one's fields win).
    let zipped = crew
        .get_all([1])
        .eq_join("ship", "ships")
        .zip()
        .await
        .unwrap();
    assert_eq!(
        zipped,
        vec![
            json!({"id": "enterprise", "name": "Picard", "rank": "captain", "age": 59,
                    "ship": "enterprise", "tags": ["tea", "shakespeare"],
                    "home": {"planet": "earth", "city": "La Barre"},
                    "class": "galaxy", "captain": 1})
        ]
    );
    let zipped = crew
        .get_all([4])
        .eq_join("id", "ships")
        .index("captain")
        .zip()
        .await
        .unwrap();
    assert_eq!(zipped.len(), 1);
    assert_eq!(zipped[0]["id"], "defiant");
    assert_eq!(zipped[0]["name"], "Sisko");
    assert_eq!(zipped[0]["class"], "defiant");
    // Errors: missing table or index.
    assert_eq!(
        crew.query().eq_join("ship", "nope").run().await,
        Err(Error::NoSuchTable("nope".into()))
    );
    assert_eq!(
        crew.query()
            .eq_join("id", "ships")
            .index("nope")
            .run()
            .await,
        Err(Error::NoSuchIndex {
            table: "ships".into(),
            index: "nope".into()
        })
    );
}
