//! Order: of results (by a field, by an index, ties broken by primary key, mixed types in
//! one index) and of values themselves. The total order of JSON values and its byte
//! encoding, as properties: `encode_value` sorts exactly like `compare`, decodes back to an
//! equal value, and is prefix-free (so that `encode(value) ++ encode(key)` sorts like the
//! tuple `(value, key)`). The strategies for JSON values are shared with `index_model`.

use crate::common::crew::{crew, ids, sids, NONE};
use crate::common::db;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use remodel::value::{compare, decode_value, encode_value};
use remodel::{asc, desc, field, json, Error, IndexSpec, Order, Value};
use serde_json::Number;
use std::cmp::Ordering;
use std::ops::Bound::{Excluded, Included};

#[tokio::test]
async fn order_by_a_field() {
    let db = db().await;
    let t = crew(&db).await;
    let o = |q: remodel::Query| async move { ids(&q.run().await.unwrap()) };
    // No order: primary key order.
    assert_eq!(o(t.query()).await, vec![1, 2, 3, 4, 5, 6, 7]);
    // Ascending; ties (4 and 7 are 45) by primary key; missing fields (5) last.
    assert_eq!(o(t.order_by(asc("age"))).await, vec![2, 3, 6, 4, 7, 1, 5]);
    // Descending reverses values and ties, missing fields stay last.
    assert_eq!(o(t.order_by(desc("age"))).await, vec![1, 7, 4, 6, 3, 2, 5]);
    assert_eq!(o(t.order_by(asc("name"))).await, vec![2, 6, 5, 1, 4, 3, 7]);
    assert_eq!(
        o(t.order_by(desc("home.planet"))).await,
        vec![2, 4, 1, 7, 6, 5, 3]
    );
    // Skip and limit (a limit after the sort keeps a bounded top-k).
    assert_eq!(o(t.order_by(asc("age")).limit(3)).await, vec![2, 3, 6]);
    assert_eq!(o(t.order_by(desc("age")).limit(2)).await, vec![1, 7]);
    assert_eq!(
        o(t.order_by(asc("age")).skip(1).limit(3)).await,
        vec![3, 6, 4]
    );
    assert_eq!(o(t.order_by(asc("age")).skip(5)).await, vec![1, 5]);
    assert_eq!(o(t.order_by(asc("age")).skip(9)).await, NONE);
    assert_eq!(o(t.order_by(asc("age")).limit(0)).await, NONE);
    assert_eq!(o(t.order_by(desc("age")).limit(100)).await.len(), 7);
    // Huge skips and limits do not overflow.
    assert_eq!(
        o(t.order_by(asc("id")).skip(usize::MAX).limit(usize::MAX)).await,
        NONE
    );
    assert_eq!(
        o(t.order_by(asc("id")).skip(6).limit(usize::MAX)).await,
        vec![7]
    );
    // Filter then order; limit then order.
    assert_eq!(
        o(t.filter(field("ship").eq("defiant")).order_by(desc("age"))).await,
        vec![7, 4, 5]
    );
    assert_eq!(
        o(t.query().limit(3).order_by(desc("id"))).await,
        vec![3, 2, 1]
    );
    // Without order_by: skip and limit on primary key order.
    assert_eq!(o(t.query().skip(2).limit(2)).await, vec![3, 4]);
    assert_eq!(o(t.query().skip(5)).await, vec![6, 7]);
    assert_eq!(o(t.query().limit(0)).await, NONE);
    // A later order wins.
    assert_eq!(
        o(t.order_by(asc("age")).order_by(asc("name"))).await,
        vec![2, 6, 5, 1, 4, 3, 7]
    );
}

#[tokio::test]
async fn ties_are_broken_by_primary_key() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("s", IndexSpec::field("s")).await.unwrap();
    t.insert_many((0..10).rev().map(|i| json!({"id": i, "s": i % 2})))
        .await
        .unwrap();
    assert_eq!(
        ids(&t.order_by(Order::index("s")).run().await.unwrap()),
        vec![0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    );
    assert_eq!(
        ids(&t.order_by(asc("s")).run().await.unwrap()),
        vec![0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    );
    assert_eq!(
        ids(&t.order_by(desc("s")).limit(3).run().await.unwrap()),
        vec![9, 7, 5]
    );
    assert_eq!(
        ids(&t
            .order_by(Order::index("s").desc())
            .limit(3)
            .run()
            .await
            .unwrap()),
        vec![9, 7, 5]
    );
}

#[tokio::test]
async fn order_by_an_index() {
    let db = db().await;
    let t = crew(&db).await;
    let o = |q: remodel::Query| async move { ids(&q.run().await.unwrap()) };
    // Rows lacking the field (5) are not in the index.
    assert_eq!(
        o(t.order_by(Order::index("age"))).await,
        vec![2, 3, 6, 4, 7, 1]
    );
    assert_eq!(
        o(t.order_by(Order::index("age").desc())).await,
        vec![1, 7, 4, 6, 3, 2]
    );
    assert_eq!(
        o(t.order_by(Order::index("age").desc().asc())).await,
        vec![2, 3, 6, 4, 7, 1]
    );
    assert_eq!(
        o(t.order_by(Order::index("age")).skip(2).limit(2)).await,
        vec![6, 4]
    );
    assert_eq!(
        o(t.order_by(Order::index("rank")).filter(field("age").gt(40))).await,
        vec![1, 4, 6, 7]
    );
    // The primary key as an index.
    assert_eq!(
        o(t.order_by(Order::index("id").desc())).await,
        vec![7, 6, 5, 4, 3, 2, 1]
    );
    // A multi index gives one row per element.
    assert_eq!(
        o(t.order_by(Order::index("tags"))).await,
        vec![4, 2, 3, 6, 7, 2, 1, 1, 4, 6]
    );
    assert_eq!(ids(&t.min_by_index("age").run().await.unwrap()), vec![2]);
    assert_eq!(ids(&t.max_by_index("age").run().await.unwrap()), vec![1]);
    // It must come first, and the error says so.
    assert!(matches!(
        t.filter(field("age").gt(1))
            .order_by(Order::index("age"))
            .run()
            .await,
        Err(Error::InvalidQuery(m)) if m.contains("first")
    ));
    assert!(matches!(
        t.get_all([1]).order_by(Order::index("age")).run().await,
        Err(Error::InvalidQuery(_))
    ));
    assert_eq!(
        t.order_by(Order::index("nope")).run().await,
        Err(Error::NoSuchIndex {
            table: "crew".into(),
            index: "nope".into()
        })
    );
}

#[tokio::test]
async fn one_index_orders_mixed_types() {
    let db = db().await;
    db.create_table("mixed").await.unwrap();
    let t = db.table("mixed");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    t.insert_many(vec![
        json!({"id": "a", "v": "str"}),
        json!({"id": "b", "v": {"k": 1}}),
        json!({"id": "c", "v": 42}),
        json!({"id": "d", "v": true}),
        json!({"id": "e", "v": [1, 2]}),
        json!({"id": "f", "v": null}),
        json!({"id": "g"}),
        json!({"id": "h", "v": false}),
        json!({"id": "i", "v": []}),
        json!({"id": "j", "v": -1.5}),
        json!({"id": "k", "v": ""}),
        json!({"id": "l", "v": {}}),
        json!({"id": "m", "v": [1, 2, 0]}),
        json!({"id": "n", "v": 42.0}),
    ])
    .await
    .unwrap();
    // arrays < booleans < numbers < objects < strings; null and missing are not indexed;
    // equal values (42 and 42.0) by primary key.
    let asc_order = vec!["i", "e", "m", "h", "d", "j", "c", "n", "l", "b", "k", "a"];
    assert_eq!(
        sids(&t.order_by(Order::index("v")).run().await.unwrap()),
        asc_order
    );
    let mut desc_order = asc_order.clone();
    desc_order.reverse();
    assert_eq!(
        sids(&t.order_by(Order::index("v").desc()).run().await.unwrap()),
        desc_order
    );
    assert_eq!(t.index_status().unwrap()[0].entries, 12);
    // Ranges cross types: from false up to (not including) the first object.
    assert_eq!(
        sids(
            &t.between(Included(json!(false)), Excluded(json!({})))
                .index("v")
                .run()
                .await
                .unwrap()
        ),
        vec!["h", "d", "j", "c", "n"]
    );
    assert_eq!(
        sids(&t.get_all([42]).index("v").run().await.unwrap()),
        vec!["c", "n"]
    );
    assert_eq!(
        sids(&t.get_all([json!([1, 2])]).index("v").run().await.unwrap()),
        vec!["e"]
    );
    // A field sort sees null (between booleans and numbers) and puts the missing field last.
    assert_eq!(
        sids(&t.order_by(asc("v")).run().await.unwrap()),
        vec!["i", "e", "m", "h", "d", "f", "j", "c", "n", "l", "b", "k", "a", "g"]
    );
    assert_eq!(t.query().min("v").await.unwrap().unwrap()["id"], "i");
    assert_eq!(t.query().max("v").await.unwrap().unwrap()["id"], "a");
}

/// Strings from a small alphabet (so that values often share prefixes), including NUL, bytes
/// around it, and multi-byte characters; sometimes any string at all.
fn arb_string() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[ab\u{0}\u{1}\u{7f}é\u{ff}日\u{10ffff}]{0,4}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// Numbers: small integers, integral doubles equal to them, the edges of i64/u64 and of the
/// exactly representable integers (2^53), arbitrary finite doubles.
fn arb_number() -> BoxedStrategy<Value> {
    let special = prop::sample::select(vec![
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.0,
        9007199254740992.0,     // 2^53
        9223372036854775808.0,  // 2^63
        -9223372036854775808.0, // -2^63
        18446744073709551616.0, // 2^64
        1e300,
        -1e300,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::MIN,
    ]);
    prop_oneof![
        4 => (-3i64..4).prop_map(Value::from),
        2 => (-3i64..4).prop_map(|i| json!(i as f64)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => ((1u64 << 53) - 3..(1u64 << 53) + 4).prop_map(Value::from),
        1 => ((1u64 << 53) - 3..(1u64 << 53) + 4).prop_map(|u| json!(u as f64)),
        1 => (u64::MAX - 3..=u64::MAX).prop_map(Value::from),
        1 => (i64::MIN..i64::MIN + 4).prop_map(Value::from),
        1 => (i64::MAX - 3..=i64::MAX).prop_map(Value::from),
        1 => any::<i64>().prop_map(|i| json!(i as f64)),
        2 => special.prop_map(|f| json!(f)),
        2 => any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
    ]
    .boxed()
}

fn arb_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => arb_number(),
        3 => arb_string().prop_map(Value::String),
    ]
    .boxed()
}

/// Object keys: few and short, so that objects often share keys.
fn arb_object_key() -> impl Strategy<Value = String> {
    "[ab\u{0}é]{0,2}"
}

/// Any JSON value, recursive with bounded depth and size.
pub(crate) fn arb_json() -> BoxedStrategy<Value> {
    arb_leaf()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                vec((arb_object_key(), inner), 0..4)
                    .prop_map(|kvs| Value::Object(kvs.into_iter().collect())),
            ]
        })
        .boxed()
}

pub(crate) fn runner_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 512,
        // Failures are reported in the test output; no regression files next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(runner_config(512))]

    /// Byte order of encodings is the total order of values, for every pair (the values share
    /// structure often enough, thanks to the small alphabets, to exercise deep ties).
    #[test]
    fn encoding_sorts_like_compare(values in vec(arb_json(), 1..6)) {
        for a in &values {
            let ea = encode_value(a);
            for b in &values {
                let eb = encode_value(b);
                prop_assert_eq!(ea.cmp(&eb), compare(a, b), "{} vs {}", a, b);
                // Antisymmetry of `compare` itself.
                prop_assert_eq!(compare(a, b), compare(b, a).reverse(), "{} vs {}", a, b);
                // No encoding is a proper prefix of another.
                if ea != eb {
                    prop_assert!(!eb.starts_with(&ea), "{} is a prefix of {}", a, b);
                }
            }
        }
    }

    /// Decoding gives back an equal value, reads exactly the bytes of one value (even with
    /// more bytes after it), and re-encodes to the same bytes.
    #[test]
    fn decoding_round_trips(a in arb_json(), next in arb_json()) {
        let enc = encode_value(&a);
        let (back, used) = decode_value(&enc).expect("decodes");
        prop_assert_eq!(used, enc.len(), "{}", a);
        prop_assert_eq!(compare(&back, &a), Ordering::Equal, "{} decoded as {}", a, back);
        prop_assert_eq!(encode_value(&back), enc.clone(), "{}", a);

        let mut longer = enc.clone();
        longer.extend_from_slice(&encode_value(&next));
        let (back2, used2) = decode_value(&longer).expect("decodes with a suffix");
        prop_assert_eq!(used2, enc.len(), "{} followed by {}", a, next);
        prop_assert_eq!(compare(&back2, &a), Ordering::Equal);
        let (back3, used3) = decode_value(&longer[used2..]).expect("decodes the suffix");
        prop_assert_eq!(used2 + used3, longer.len());
        prop_assert_eq!(compare(&back3, &next), Ordering::Equal);
    }

    /// `encode(a) ++ encode(k1)` vs `encode(b) ++ encode(k2)` orders like `(a, k1)` vs
    /// `(b, k2)`: how index keys break ties by primary key.
    #[test]
    fn concatenations_sort_like_tuples(pairs in vec((arb_json(), arb_json()), 2..6)) {
        for (a, k1) in &pairs {
            let mut x = encode_value(a);
            x.extend_from_slice(&encode_value(k1));
            for (b, k2) in &pairs {
                let mut y = encode_value(b);
                y.extend_from_slice(&encode_value(k2));
                let expected = compare(a, b).then_with(|| compare(k1, k2));
                prop_assert_eq!(x.cmp(&y), expected, "({}, {}) vs ({}, {})", a, k1, b, k2);
            }
        }
    }
}
