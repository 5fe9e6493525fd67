//! The three ways a program writes back a model it read (`save`, `update`, a has_many's
//! `add`, and the same three staged in a `Transaction`) store the same document for the
//! same model: the struct's fields as it serializes them (fields it leaves out, such as a
//! `None` skipped by serde, removed), stored fields it does not know kept, fields missing
//! from the stored row but given a default by the struct written. A differential test on
//! random rows with unknown fields and missing defaulted fields.

use remodel::model::{create_schema, Id, Transaction};
use remodel::Model;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(has_many(Probe))]
struct Bench {
    id: Option<Id>,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(belongs_to(Bench))]
struct Probe {
    id: Option<Id>,
    count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    nested: Map<String, Value>,
    bench_id: Option<Id>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.next() as usize % of.len()]
    }
}

/// A stored row: some known fields (a defaulted one sometimes missing), unknown ones.
fn stored_row(rng: &mut Rng, key: &str, bench: &Id) -> Value {
    let mut doc = Map::new();
    doc.insert("id".into(), json!(key));
    doc.insert("count".into(), json!(rng.next() % 100));
    doc.insert("bench_id".into(), json!(bench));
    if rng.next().is_multiple_of(2) {
        doc.insert("label".into(), json!(rng.pick(&["a", "b", "c"])));
    }
    if rng.next().is_multiple_of(2) {
        doc.insert("tags".into(), json!([rng.pick(&["x", "y"])]));
    }
    if rng.next().is_multiple_of(3) {
        doc.insert("nested".into(), json!({"deep": rng.next() % 5}));
    }
    for name in ["legacy", "added_by_v2", "notes"] {
        if rng.next().is_multiple_of(2) {
            doc.insert(name.into(), json!(rng.next() % 10));
        }
    }
    Value::Object(doc)
}

/// What a program does to the model it read.
fn edit(rng: &mut Rng, p: &mut Probe) {
    match rng.next() % 4 {
        0 => p.count += 1,
        1 => p.label = None,
        2 => p.label = Some(rng.pick(&["d", "e"]).into()),
        _ => p.tags.push("z".into()),
    }
    if rng.next().is_multiple_of(3) {
        p.nested.insert("k".into(), json!(1));
    }
}

#[tokio::test]
async fn save_update_add_and_transactions_store_the_same_document() -> remodel::Result<()> {
    let db = crate::common::db().await?;
    create_schema(&db).await?;
    let bench = Bench { id: None }.create(&db).await?;
    let bench_id = bench.id.clone().unwrap();
    let paths = ["save", "update", "add", "tx_save", "tx_update", "tx_add"];
    for case in 0..150u64 {
        let mut rng = Rng(case * 2654435761 + 7);
        let row_seed = rng.next();
        let edit_seed = rng.next();
        let mut stored = Vec::new();
        for path in paths {
            let key = format!("{case}-{path}");
            let row = stored_row(&mut Rng(row_seed), &key, &bench_id);
            Probe::table(&db).insert(row).await?;
            let mut p = Probe::get(&db, key.as_str()).await?.unwrap();
            let mut r = Rng(edit_seed);
            match path {
                "save" => {
                    edit(&mut r, &mut p);
                    p.save(&db).await?;
                }
                "update" => p.update(&db, |p| edit(&mut r, p)).await?,
                "add" => {
                    edit(&mut r, &mut p);
                    bench.probes(&db).add(std::slice::from_mut(&mut p)).await?;
                }
                "tx_save" => {
                    edit(&mut r, &mut p);
                    let mut tx = Transaction::new(&db);
                    tx.save(&mut p).await?;
                    tx.commit().await?;
                }
                "tx_update" => {
                    let mut tx = Transaction::new(&db);
                    tx.update(&mut p, |p| edit(&mut r, p)).await?;
                    tx.commit().await?;
                }
                _ => {
                    edit(&mut r, &mut p);
                    let mut tx = Transaction::new(&db);
                    tx.add(&bench.probes(&db), std::slice::from_mut(&mut p))
                        .await?;
                    tx.commit().await?;
                }
            }
            let mut doc = Probe::table(&db).get(key.as_str()).await?.unwrap();
            doc.as_object_mut().unwrap().remove("id");
            stored.push((path, doc));
        }
        for (path, doc) in &stored[1..] {
            assert_eq!(
                doc, &stored[0].1,
                "case {case}: `{path}` stored another document than `save`"
            );
        }
        // And that document is the struct's fields plus the unknown ones.
        let doc = &stored[0].1;
        for unknown in ["legacy", "added_by_v2", "notes"] {
            let row = stored_row(&mut Rng(row_seed), "k", &bench_id);
            assert_eq!(
                doc.get(unknown),
                row.get(unknown),
                "case {case}: `{unknown}`"
            );
        }
        for known in ["count", "tags", "nested", "bench_id"] {
            assert!(doc.get(known).is_some(), "case {case}: `{known}` missing");
        }
    }
    Ok(())
}
