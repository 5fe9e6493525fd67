//! Schema evolution: what happens to stored rows when a model changes. Each test has two
//! versions of one model on one table (the program before and after the change), and their
//! schema sets are created one after the other, as two deployments would.
//!
//! - A field added with `#[serde(default)]`: old rows read with the default, and any write of
//!   the model stores it. Without a default, an old row is a `Decode` error naming the field.
//! - A field renamed, with `#[serde(alias = "old")]`: old rows read, and any write of the
//!   model stores the new name and removes the old one.
//! - An index added: `create` builds it from the rows already there.
//! - An index removed: `create` leaves it (writes keep it up to date); `prune_indexes` drops
//!   it, only when asked.

use remodel::model::{Id, ModelError, SchemaSet};
use remodel::{Database, Error, Model};
use serde::{Deserialize, Serialize};
use serde_json::json;

async fn db() -> Database {
    crate::common::db().await.unwrap()
}

mod v1 {
    use super::*;

    #[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[remodel(table = "evolving_ships")]
    pub struct Ship {
        pub id: Option<Id>,
        pub name: String,
        #[remodel(index)]
        pub class: String,
        pub registry: String,
    }
}

mod v2 {
    use super::*;

    /// v1 plus a defaulted field, `name` renamed to `title`, the `class` index removed and
    /// one on `registry` added.
    #[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[remodel(table = "evolving_ships")]
    pub struct Ship {
        pub id: Option<Id>,
        #[serde(alias = "name")]
        pub title: String,
        pub class: String,
        #[remodel(index)]
        pub registry: String,
        #[serde(default)]
        pub crew: u64,
    }

    /// v1 plus a field without a default.
    #[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[remodel(table = "evolving_ships")]
    pub struct Strict {
        pub id: Option<Id>,
        pub name: String,
        pub class: String,
        pub registry: String,
        pub warp: f64,
    }
}

async fn old_rows(db: &Database) -> remodel::Result<Vec<v1::Ship>> {
    SchemaSet::new().with::<v1::Ship>().create(db).await?;
    let mut out = Vec::new();
    for (name, class) in [("Defiant", "escort"), ("Voyager", "intrepid")] {
        out.push(
            v1::Ship {
                id: None,
                name: name.into(),
                class: class.into(),
                registry: format!("NX-{name}"),
            }
            .create(db)
            .await?,
        );
    }
    Ok(out)
}

#[tokio::test]
async fn an_added_field_with_a_default_and_a_renamed_field_read_old_rows() -> remodel::Result<()> {
    let db = db().await;
    let old = old_rows(&db).await?;
    SchemaSet::new().with::<v2::Ship>().create(&db).await?;
    let key = old[0].id.clone().unwrap();
    let mut ship = v2::Ship::get(&db, &key).await?.unwrap();
    assert_eq!((ship.title.as_str(), ship.crew), ("Defiant", 0));

    // save stores the new shape: `title`, `crew`, and no `name`.
    ship.save(&db).await?;
    let row = v2::Ship::table(&db).get(key.clone()).await?.unwrap();
    assert_eq!(
        row,
        json!({"id": key, "title": "Defiant", "class": "escort", "registry": "NX-Defiant", "crew": 0})
    );

    // update does too, even for a field it did not touch.
    let key = old[1].id.clone().unwrap();
    let mut voyager = v2::Ship::get(&db, &key).await?.unwrap();
    voyager
        .update(&db, |s| s.class = "intrepid-refit".into())
        .await?;
    let row = v2::Ship::table(&db).get(key.clone()).await?.unwrap();
    assert_eq!(
        row,
        json!({"id": key, "title": "Voyager", "class": "intrepid-refit", "registry": "NX-Voyager", "crew": 0})
    );
    Ok(())
}

#[tokio::test]
async fn an_added_field_without_a_default_is_a_decode_error_naming_it() -> remodel::Result<()> {
    let db = db().await;
    let old = old_rows(&db).await?;
    let err = v2::Strict::get(&db, old[0].id.clone().unwrap())
        .await
        .unwrap_err();
    match err {
        Error::Model(ModelError::Decode {
            table, field, key, ..
        }) => {
            assert_eq!((table.as_str(), field.as_str()), ("evolving_ships", "warp"));
            assert_eq!(*key, json!(old[0].id));
        }
        e => panic!("{e}"),
    }
    Ok(())
}

#[tokio::test]
async fn indexes_added_are_built_and_removed_ones_dropped_only_when_asked() -> remodel::Result<()> {
    let db = db().await;
    old_rows(&db).await?;
    let v2 = SchemaSet::new().with::<v2::Ship>();
    v2.create(&db).await?;
    let table = v2::Ship::table(&db);
    // The new index was built from the rows already there.
    let f = <v2::Ship as Model>::fields();
    let found = v2::Ship::filter(&db, f.registry.eq("NX-Voyager"))
        .run()
        .await?;
    assert_eq!(found.len(), 1);
    assert_eq!(
        table
            .get_all(["NX-Defiant"])
            .index("registry")
            .count()
            .await?,
        1
    );

    // The index v2 no longer declares is still there, and kept up to date.
    let mut names = table.index_names()?;
    names.sort();
    assert_eq!(names, vec!["class", "registry"]);
    v2::Ship {
        id: None,
        title: "Enterprise".into(),
        class: "galaxy".into(),
        registry: "NCC-1701-D".into(),
        crew: 1014,
    }
    .create(&db)
    .await?;
    assert_eq!(table.get_all(["galaxy"]).index("class").count().await?, 1);
    // Dropped when asked, and only that one.
    assert_eq!(
        v2.prune_indexes(&db).await?,
        vec![("evolving_ships".to_string(), "class".to_string())]
    );
    assert_eq!(table.index_names()?, vec!["registry"]);
    assert_eq!(v2.prune_indexes(&db).await?, vec![]);
    Ok(())
}
