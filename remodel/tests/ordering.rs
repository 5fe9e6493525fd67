//! Properties: the key encoding preserves the total order of arbitrary JSON values, and every
//! index agrees with a full scan after random writes.

mod common;

use proptest::prelude::*;
use remodel::value::{compare, decode_value, encode_value};
use remodel::{json, Config, Conflict, Durability, IndexSpec, Order, Value};
use std::cmp::Ordering;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (1u64 << 53..=u64::MAX).prop_map(Value::from),
        (-1e15f64..1e15).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-c\u{0}é]{0,4}".prop_map(Value::from),
        ".{0,6}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]{0,2}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn encoding_preserves_the_total_order(a in json_value(), b in json_value()) {
        let (ea, eb) = (encode_value(&a), encode_value(&b));
        prop_assert_eq!(ea.cmp(&eb), compare(&a, &b), "{} vs {}", a, b);
    }

    #[test]
    fn encoding_round_trips(a in json_value()) {
        let enc = encode_value(&a);
        let (back, used) = decode_value(&enc).unwrap();
        prop_assert_eq!(used, enc.len());
        prop_assert_eq!(compare(&back, &a), Ordering::Equal);
    }

    #[test]
    fn concatenations_sort_like_tuples(a in json_value(), k1 in scalar(), b in json_value(), k2 in scalar()) {
        // Index keys are encode(value) ++ encode(primary key): they must sort by value, then key.
        let mut x = encode_value(&a);
        x.extend(encode_value(&k1));
        let mut y = encode_value(&b);
        y.extend(encode_value(&k2));
        let tuple = compare(&a, &b).then_with(|| compare(&k1, &k2));
        prop_assert_eq!(x.cmp(&y), tuple);
    }
}

#[derive(Debug, Clone)]
enum Write {
    Upsert(i64, Value),
    Patch(i64, Value),
    Delete(i64),
    DeleteWhere(i64),
}

fn field_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (0i64..5).prop_map(|n| Some(json!(n))),
        "[ab]{1,2}".prop_map(|s| Some(json!(s))),
        prop::collection::vec(0i64..4, 0..4).prop_map(|v| Some(json!(v))),
        any::<bool>().prop_map(|b| Some(json!(b))),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    (field_value(), field_value(), field_value(), field_value()).prop_map(|(v, city, a, tags)| {
        let mut d = json!({"address": {}});
        for (name, val) in [("v", v), ("a", a), ("tags", tags)] {
            if let Some(val) = val {
                d[name] = val;
            }
        }
        if let Some(city) = city {
            d["address"]["city"] = city;
        }
        d
    })
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => (0i64..12, document()).prop_map(|(k, d)| Write::Upsert(k, d)),
        2 => (0i64..12, document()).prop_map(|(k, d)| Write::Patch(k, d)),
        1 => (0i64..12).prop_map(Write::Delete),
        1 => (0i64..5).prop_map(Write::DeleteWhere),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn indexes_agree_with_a_full_scan_after_random_writes(writes in prop::collection::vec(write(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = Config::temporary().durability(Durability::Soft).open().await.unwrap();
            db.create_table("t").await.unwrap();
            let t = db.table("t");
            let specs = [
                ("v", IndexSpec::field("v")),
                ("city", IndexSpec::field("address.city")),
                ("pair", IndexSpec::compound(["v", "a"])),
                ("tags", IndexSpec::multi("tags")),
            ];
            // Half the indexes exist before the writes, half are built (backfilled) after.
            for (name, spec) in &specs[..2] {
                t.create_index(name, spec.clone()).await.unwrap();
            }
            for w in &writes {
                match w {
                    Write::Upsert(k, d) => {
                        let mut d = d.clone();
                        d["id"] = json!(k);
                        t.insert(d).conflict(Conflict::Replace).await.unwrap().check().unwrap();
                    }
                    Write::Patch(k, d) => drop(t.get(*k).update(d.clone()).await.unwrap().check().unwrap()),
                    Write::Delete(k) => drop(t.get(*k).delete().await.unwrap()),
                    Write::DeleteWhere(v) => drop(t.filter(remodel::field("v").eq(*v)).delete().await.unwrap()),
                }
            }
            for (name, spec) in &specs[2..] {
                t.create_index(name, spec.clone()).await.unwrap();
            }
            let docs = t.run().await.unwrap();
            let status = t.index_status().unwrap();
            for (name, spec) in &specs {
                let want: Vec<Value> = common::expected_index_entries(&docs, spec).into_iter().map(|(_, id)| id).collect();
                let got: Vec<Value> = t.order_by(Order::index(*name)).run().await.unwrap().into_iter().map(|d| d["id"].clone()).collect();
                assert_eq!(got, want, "index {name}");
                let entries = status.iter().find(|s| s.name == *name).unwrap().entries;
                assert_eq!(entries, want.len(), "index {name} entries");
            }
        });
    }
}
