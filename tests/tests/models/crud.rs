//! CRUD, typed queries, naming rules, decode errors, unknown fields, get_or_create,
//! registration errors and callbacks; two databases in one process are independent.

use crate::common::{crew, setup, Crewmember, Starship};
use futures::StreamExt;
use remodel::model::{create_schema, Callbacks, Id, ModelError, SchemaSet};
use remodel::{json, Database, Error, Model};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Person {
    id: Option<Id>,
    #[remodel(index)]
    name: String,
    age: u32,
    #[remodel(index(multi))]
    tags: Vec<String>,
    #[remodel(index(path = "city"))]
    address: Address,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Address {
    city: String,
    zip: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Toy))]
struct FavoriteCub {
    id: Option<Id>,
    name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(FavoriteCub))]
struct Toy {
    id: Option<Id>,
    name: String,
    favorite_cub_id: Option<Id>,
}

/// A custom table and primary key, and a compound index.
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(
    table = "registry",
    index(name = "class_number", fields(class, number))
)]
struct Registration {
    #[remodel(primary_key)]
    code: String,
    class: String,
    number: u32,
}

static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOADS: AtomicUsize = AtomicUsize::new(0);

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(callbacks)]
struct Log {
    id: Option<Id>,
    text: String,
    #[serde(default)]
    loaded_with: String,
}

impl Callbacks for Log {
    async fn before_save(&mut self, _db: &Database) -> remodel::Result<()> {
        EVENTS
            .lock()
            .unwrap()
            .push(format!("before_save {}", self.text));
        if self.text.contains("forbidden") {
            return Err(ModelError::Rejected("forbidden text".into()).into());
        }
        self.text = self.text.trim().to_string();
        Ok(())
    }
    fn after_save(&self) {
        EVENTS
            .lock()
            .unwrap()
            .push(format!("after_save {}", self.text));
    }
    async fn before_delete(&mut self, _db: &Database) -> remodel::Result<()> {
        EVENTS
            .lock()
            .unwrap()
            .push(format!("before_delete {}", self.text));
        if self.text == "keep" {
            return Err(ModelError::Rejected("kept".into()).into());
        }
        Ok(())
    }
    fn after_delete(&self) {
        EVENTS
            .lock()
            .unwrap()
            .push(format!("after_delete {}", self.text));
    }
    fn after_load(&mut self) {
        // Runs with every field set: it can read them.
        self.loaded_with = self.text.clone();
        LOADS.fetch_add(1, Ordering::SeqCst);
    }
}

fn person(name: &str, age: u32, city: &str) -> Person {
    Person {
        id: None,
        name: name.into(),
        age,
        tags: vec!["crew".into()],
        address: Address {
            city: city.into(),
            zip: "00000".into(),
        },
    }
}

async fn db() -> remodel::Result<Database> {
    let db = crate::common::db().await?;
    create_schema(&db).await?;
    Ok(db)
}

#[test]
fn naming_rules() {
    assert_eq!(Person::schema().table, "people");
    assert_eq!(FavoriteCub::schema().table, "favorite_cubs");
    assert_eq!(Toy::schema().table, "toys");
    assert_eq!(Toy::schema().relations[0].foreign_key, "favorite_cub_id");
    assert_eq!(
        FavoriteCub::schema().relations[0].foreign_key,
        "favorite_cub_id"
    );
    assert_eq!(FavoriteCub::schema().relations[0].accessor, "toys");
    assert_eq!(Toy::schema().relations[0].accessor, "favorite_cub");
    assert_eq!(Registration::schema().table, "registry");
    assert_eq!(Registration::schema().primary_key, "code");
    let ix: Vec<&str> = Person::schema().indexes.iter().map(|i| i.name).collect();
    assert_eq!(ix, ["name", "tags", "address_city"]);
}

#[tokio::test]
async fn crud() -> remodel::Result<()> {
    let db = db().await?;
    let mut odo = person("Odo", 300, "Bajor").create(&db).await?;
    let key = odo.id.clone().expect("create returns the key");
    assert_eq!(Person::get(&db, key.clone()).await?, Some(odo.clone()));
    assert_eq!(Person::get(&db, "nobody").await?, None);

    odo.age = 301;
    odo.save(&db).await?;
    assert_eq!(Person::get(&db, key.clone()).await?.unwrap().age, 301);

    odo.update(&db, |p| p.address.city = "DS9".into()).await?;
    let stored = Person::get(&db, key.clone()).await?.unwrap();
    assert_eq!(
        stored.address,
        Address {
            city: "DS9".into(),
            zip: "00000".into()
        }
    );

    // save of a new model inserts it.
    let mut quark = person("Quark", 40, "Ferenginar");
    quark.save(&db).await?;
    assert!(quark.id.is_some());
    assert_eq!(Person::count(&db).await?, 2);

    // create with an existing key is a conflict.
    let dup = odo.clone().create(&db).await.unwrap_err();
    assert!(matches!(dup, Error::KeyConflict { .. }), "{dup}");

    let stale = odo.clone();
    odo.delete(&db).await?;
    assert_eq!(Person::get(&db, key.clone()).await?, None);
    // A deleted model no longer looks saved: its key is cleared.
    assert_eq!(odo.id, None);
    let err = odo.update(&db, |p| p.age = 1).await.unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::NotSaved { .. })),
        "{err}"
    );
    let mut odo = stale;
    // An update of a deleted row (through a copy read before the delete) is an error, and
    // does not bring it back (either path).
    let err = odo.update(&db, |p| p.age = 1).await.unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::NotFound { .. })),
        "{err}"
    );
    let err = odo
        .update(&db, |p| p.address.zip = "1".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::NotFound { .. })),
        "{err}"
    );
    assert_eq!(Person::get(&db, key).await?, None);
    assert_eq!(Person::all(&db).await?, vec![quark.clone()]);
    let many = Person::get_many(&db, [quark.id.clone().unwrap(), Id::from("missing")]).await?;
    assert_eq!(many, vec![quark]);
    Ok(())
}

#[tokio::test]
async fn custom_primary_key_and_compound_index() -> remodel::Result<()> {
    let db = db().await?;
    assert_eq!(db.table("registry").primary_key()?, "code");
    assert_eq!(db.table("registry").index_names()?, ["class_number"]);
    let r = Registration {
        code: "NCC-1701".into(),
        class: "Constitution".into(),
        number: 1701,
    }
    .create(&db)
    .await?;
    assert_eq!(Registration::get(&db, "NCC-1701").await?, Some(r));
    let by_compound = Registration::table(&db)
        .get_all([json!(["Constitution", 1701])])
        .index("class_number")
        .run()
        .await?;
    assert_eq!(by_compound.len(), 1);
    Ok(())
}

#[tokio::test]
async fn typed_queries_use_indexes() -> remodel::Result<()> {
    let db = db().await?;
    for (n, age, city) in [
        ("Odo", 300, "Bajor"),
        ("Kira", 30, "Bajor"),
        ("Rom", 45, "Ferenginar"),
    ] {
        person(n, age, city).create(&db).await?;
    }
    let f = Person::fields();
    // An equality on an indexed field reads through the index.
    let q = Person::filter(&db, f.name.eq("Kira"));
    assert!(format!("{q:?}").contains("GetAll"), "{q:?}");
    assert_eq!(q.run().await?[0].age, 30);
    let q = Person::filter(&db, f.tags.contains("crew")).filter(f.age.gt(40));
    assert!(format!("{q:?}").contains("tags"), "{q:?}");
    assert_eq!(q.count().await?, 2);
    let bajorans = Person::filter(&db, f.address.path("city").eq("Bajor"))
        .order_by(f.age.asc())
        .run()
        .await?;
    assert_eq!(
        bajorans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["Kira", "Odo"]
    );
    let oldest = Person::query(&db)
        .order_by(f.age.desc())
        .limit(1)
        .first()
        .await?;
    assert_eq!(oldest.unwrap().name, "Odo");
    let json_rows = Person::filter(&db, f.age.lt(50)).json().await?;
    assert_eq!(json_rows.len(), 2);
    let as_models: Vec<Person> = json_rows
        .into_iter()
        .map(Person::from_json)
        .collect::<remodel::Result<_>>()?;
    assert!(as_models.iter().all(|p| p.age < 50));
    assert_eq!(Person::find(&db, f.name.eq("Rom")).await?.unwrap().age, 45);
    assert_eq!(Person::find(&db, f.name.eq("Worf")).await?, None);
    // The raw query builder of the model's table, read back as models.
    let grouped = Person::table(&db)
        .query()
        .group("address.city")
        .count()
        .await?;
    assert_eq!(grouped.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_document_that_does_not_fit_names_table_key_and_field() -> remodel::Result<()> {
    let db = db().await?;
    db.table("people")
        .insert(json!({"id": "bad", "name": "Garak", "age": "unknown", "tags": [], "address": {"city": "Cardassia", "zip": "1"}}))
        .await?;
    db.table("people")
        .insert(
            json!({"id": "partial", "name": "Weyoun", "tags": [], "address": {"city": "Kurill"}}),
        )
        .await?;
    match Person::get(&db, "bad")
        .await
        .as_ref()
        .map_err(Error::as_model)
    {
        Err(Some(ModelError::Decode {
            table, key, field, ..
        })) => {
            assert_eq!(
                (table.as_str(), &**key, field.as_str()),
                ("people", &json!("bad"), "age")
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    match Person::get(&db, "partial")
        .await
        .as_ref()
        .map_err(Error::as_model)
    {
        Err(Some(ModelError::Decode { key, field, .. })) => {
            assert_eq!(**key, json!("partial"));
            assert!(field == "age" || field == "address.zip", "{field}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let err = Person::all(&db).await.unwrap_err();
    assert!(err.to_string().contains("people"), "{err}");
    Ok(())
}

#[tokio::test]
async fn save_and_update_keep_fields_the_struct_does_not_know() -> remodel::Result<()> {
    let db = db().await?;
    db.table("people")
        .insert(json!({"id": "sisko", "name": "Sisko", "age": 40, "tags": [], "address": {"city": "New Orleans", "zip": "70112"}, "emissary": true}))
        .await?;
    let mut sisko = Person::get(&db, "sisko").await?.unwrap();
    sisko.age = 41;
    sisko.save(&db).await?;
    let raw = db.table("people").get("sisko").await?.unwrap();
    assert_eq!(raw["emissary"], true);
    assert_eq!(raw["age"], 41);
    sisko.update(&db, |p| p.tags.push("captain".into())).await?;
    sisko
        .update(&db, |p| p.address.zip = "70113".into())
        .await?;
    let raw = db.table("people").get("sisko").await?.unwrap();
    assert_eq!(raw["emissary"], true);
    assert_eq!(raw["tags"], json!(["captain"]));
    assert_eq!(raw["address"]["zip"], "70113");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_create_creates_one_row_under_concurrency() -> remodel::Result<()> {
    let db = db().await?;
    let f = Person::fields();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            Person::get_or_create(&db, f.name.eq("Morn"), || person("Morn", 50, "Mak'ala")).await
        }));
    }
    let mut created = 0;
    let mut keys = Vec::new();
    for t in tasks {
        let (p, new) = t.await.unwrap()?;
        created += new as usize;
        keys.push(p.id.unwrap());
    }
    assert_eq!(created, 1);
    assert_eq!(Person::filter(&db, f.name.eq("Morn")).count().await?, 1);
    keys.dedup();
    assert_eq!(keys.len(), 1, "every call returns the same row");
    Ok(())
}

#[tokio::test]
async fn a_relation_to_an_unlisted_model_is_an_error_when_the_schema_is_created(
) -> remodel::Result<()> {
    let db = crate::common::db().await?;
    let err = SchemaSet::new()
        .with::<Toy>()
        .create(&db)
        .await
        .unwrap_err();
    match err.as_model() {
        Some(ModelError::Unregistered {
            model,
            referenced_by,
            relation,
        }) => {
            assert_eq!(
                (model.as_str(), referenced_by.as_str(), relation.as_str()),
                ("FavoriteCub", "Toy", "favorite_cub")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(db.table_names()?.is_empty(), "nothing was created");
    // Every registered model is in the registry.
    let registered: Vec<&str> = remodel::model::registered()
        .iter()
        .map(|s| s.model)
        .collect();
    for m in ["Person", "FavoriteCub", "Toy", "Registration", "Log"] {
        assert!(
            registered.contains(&m),
            "{m} not registered: {registered:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn callbacks_run_in_order_and_before_hooks_abort() -> remodel::Result<()> {
    let db = db().await?;
    EVENTS.lock().unwrap().clear();
    let mut log = Log {
        id: None,
        text: "  hello ".into(),
        loaded_with: String::new(),
    }
    .create(&db)
    .await?;
    assert_eq!(log.text, "hello", "before_save may change the model");
    let err = Log {
        id: None,
        text: "forbidden".into(),
        loaded_with: String::new(),
    }
    .create(&db)
    .await
    .unwrap_err();
    assert!(matches!(err.as_model(), Some(ModelError::Rejected(_))));
    assert_eq!(Log::count(&db).await?, 1, "a refused save writes nothing");

    let err = log
        .update(&db, |l| l.text = "forbidden now".into())
        .await
        .unwrap_err();
    assert!(matches!(err.as_model(), Some(ModelError::Rejected(_))));
    let mut stored = Log::get(&db, log.id.clone().unwrap()).await?.unwrap();
    assert_eq!(stored.text, "hello", "a refused update writes nothing");
    assert_eq!(stored.loaded_with, "hello", "after_load sees every field");

    let mut keep = Log {
        id: None,
        text: "keep".into(),
        loaded_with: String::new(),
    }
    .create(&db)
    .await?;
    assert!(keep.delete(&db).await.is_err());
    assert!(
        Log::get(&db, keep.id.clone().unwrap()).await?.is_some(),
        "a refused delete deletes nothing"
    );
    stored.delete(&db).await?;
    let events = EVENTS.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            "before_save   hello ",
            "after_save hello",
            "before_save forbidden",
            "before_save forbidden now",
            "before_save keep",
            "after_save keep",
            "before_delete keep",
            "before_delete hello",
            "after_delete hello",
        ]
    );
    assert!(LOADS.load(Ordering::SeqCst) >= 2);
    Ok(())
}

#[tokio::test]
async fn schema_conflicts_are_errors_not_silent_changes() -> remodel::Result<()> {
    // A table of the same name with another primary key.
    let db = crate::common::db().await?;
    db.create_table_with_key("registry", "serial").await?;
    let err = create_schema(&db).await.unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::Invalid(m)) if m.contains("serial")),
        "{err}"
    );
    // An index of the same name with another definition.
    let db = crate::common::db().await?;
    db.create_table("people").await?;
    db.table("people")
        .create_index("name", remodel::IndexSpec::field("nickname"))
        .await?;
    let err = create_schema(&db).await.unwrap_err();
    assert!(matches!(err, Error::IndexExists { .. }), "{err}");
    Ok(())
}

/// Fields serde skips are not stored: no typed field name, not in the schema's fields, and
/// `save` leaves a stored field of that name alone (it is unknown to the model).
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Cached {
    id: Option<Id>,
    #[serde(rename = "title")]
    name: String,
    #[serde(skip)]
    memo: Option<String>,
}

#[tokio::test]
async fn renamed_and_skipped_fields() -> remodel::Result<()> {
    assert_eq!(Cached::schema().fields, ["id", "title"]);
    assert_eq!(Cached::fields().name.name(), "title");
    let db = db().await?;
    let mut c = Cached {
        id: None,
        name: "a".into(),
        memo: Some("not stored".into()),
    }
    .create(&db)
    .await?;
    let raw = db
        .table("cacheds")
        .get(c.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(raw, json!({"id": c.id, "title": "a"}));
    assert_eq!(
        Cached::find(&db, Cached::fields().name.eq("a"))
            .await?
            .unwrap()
            .memo,
        None
    );
    c.name = "b".into();
    c.save(&db).await?;
    assert_eq!(
        Cached::get(&db, c.id.clone().unwrap()).await?.unwrap().name,
        "b"
    );
    Ok(())
}

/// The Python Remodel kept one global connection and registry, patched into the driver. Here
/// models are static descriptions and every call names its database: two databases in one
/// process are independent.
#[tokio::test]
async fn no_global_connection_two_databases_stay_apart() -> remodel::Result<()> {
    let (db1, ship1, _) = setup().await?;
    let db2 = crate::common::db().await?;
    assert!(
        db2.table_names()?.is_empty(),
        "creating db1's schema touched nothing else"
    );
    create_schema(&db2).await?;
    ship1.crewmembers(&db1).create(crew("Janeway", "")).await?;
    assert_eq!(Crewmember::count(&db1).await?, 1);
    assert_eq!(Crewmember::count(&db2).await?, 0);
    assert!(Starship::get(&db2, ship1.id.clone().unwrap())
        .await?
        .is_none());
    Ok(())
}

/// The Python Remodel's `filter([])` returned every row. Empty key lists and empty alternatives
/// match nothing here.
#[tokio::test]
async fn an_empty_filter_list_matches_nothing() -> remodel::Result<()> {
    let (db, a, _) = setup().await?;
    a.crewmembers(&db)
        .add(&mut [crew("Janeway", ""), crew("Tuvok", "")])
        .await?;
    let f = Crewmember::fields();
    assert_eq!(
        Crewmember::filter(&db, f.name.one_of(Vec::<String>::new()))
            .count()
            .await?,
        0
    );
    assert!(Crewmember::get_many(&db, Vec::<Id>::new())
        .await?
        .is_empty());
    assert!(Crewmember::load_starship(&db, &[]).await?.is_empty());
    assert!(Starship::load_crewmembers(&db, &[]).await?.is_empty());
    assert_eq!(a.away_team(&db).remove(&mut []).await?, 0);
    assert_eq!(Crewmember::count(&db).await?, 2);
    Ok(())
}

/// The Python Remodel ran hooks on objects whose fields were not loaded yet. `after_load` runs
/// on the complete model, on every path that decodes one.
#[tokio::test]
async fn after_load_sees_every_field() -> remodel::Result<()> {
    let (db, a, _) = setup().await?;
    let mut feed = a.crewmembers(&db).changes().await?;
    let m = a.crewmembers(&db).create(crew("Neelix", "")).await?;
    let expected = format!("Neelix of {:?}", a.id);
    let got = Crewmember::get(&db, m.id.clone().unwrap()).await?.unwrap();
    assert_eq!(got.seen_in_after_load.as_deref(), Some(expected.as_str()));
    let via_relation = a.crewmembers(&db).all().await?;
    assert_eq!(
        via_relation[0].seen_in_after_load.as_deref(),
        Some(expected.as_str())
    );
    let via_load = Starship::load_crewmembers(&db, std::slice::from_ref(&a)).await?;
    assert_eq!(
        via_load[0][0].seen_in_after_load.as_deref(),
        Some(expected.as_str())
    );
    let via_feed = feed.next().await.unwrap()?.new.unwrap();
    assert_eq!(
        via_feed.seen_in_after_load.as_deref(),
        Some(expected.as_str())
    );
    Ok(())
}
