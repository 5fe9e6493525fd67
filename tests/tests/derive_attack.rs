//! Adversarial tests of `#[derive(Model)]` as a user would stretch it: serde attributes
//! (`rename` in both forms, dotted and raw names, `with`, `skip_serializing_if`,
//! `transparent`), unusual field types (big integers, `i128`, floats with `-0.0` / NaN /
//! infinities, `char`, `bool`, enums of every serde representation, `Vec` multi indexes with
//! duplicates, strings with NUL and unicode as keys), keys that are not `id`, relations whose
//! keys are renamed, and rows holding fields the struct does not know.
//!
//! Every query is checked against an oracle: the same question asked in plain Rust of every
//! row (`T::all`). A combination the model layer cannot follow must be a compile error
//! (`ui/attack_*.rs`) or a typed error, never a silently empty or wrong result.
//!
//! Every model here has a table of its own (`attack_*`) and each test creates only the
//! schema it needs (`SchemaSet`), so the models of one test cannot disturb another's.

// Two relations' attributes name the same model.
#![allow(clippy::duplicated_attributes)]

use remodel::model::{Id, ModelError, SchemaSet, Transaction};
use remodel::{Config, Database, Error, Model};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;

async fn db_with(set: SchemaSet) -> remodel::Result<Database> {
    let config = if std::env::var("REMODEL_TEST_BACKEND").is_ok_and(|v| v == "memory") {
        Config::in_memory()
    } else {
        Config::temporary()
    };
    let db = config.open().await?;
    set.create(&db).await?;
    Ok(db)
}

/// The keys of some models, sorted, to compare a query's rows with the oracle's.
fn keys<T: Model>(rows: &[T]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| r.key_value().expect("saved").to_string())
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// Renamed fields, raw identifiers, char and bool: every path uses the serialized name.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_items")]
#[remodel(index(name = "kind_name", fields(r#type, name)))]
pub struct Item {
    pub id: Option<Id>,
    #[serde(rename = "displayName")]
    #[remodel(index)]
    pub name: String,
    #[remodel(index)]
    pub r#type: String,
    #[remodel(index)]
    pub flag: bool,
    #[remodel(index)]
    pub letter: char,
    pub weight: i64,
}

#[tokio::test]
async fn renamed_fields_raw_identifiers_char_and_bool_use_the_stored_names() -> remodel::Result<()>
{
    assert_eq!(
        Item::schema().fields,
        ["id", "displayName", "type", "flag", "letter", "weight"]
    );
    let f = Item::fields();
    assert_eq!(f.name.name(), "displayName");
    assert_eq!(f.r#type.name(), "type");
    let ix: Vec<(&str, Vec<&str>)> = Item::schema()
        .indexes
        .iter()
        .map(|i| (i.name, i.paths.to_vec()))
        .collect();
    assert_eq!(
        ix,
        [
            ("displayName", vec!["displayName"]),
            ("type", vec!["type"]),
            ("flag", vec!["flag"]),
            ("letter", vec!["letter"]),
            ("kind_name", vec!["type", "displayName"]),
        ]
    );

    let db = db_with(SchemaSet::new().with::<Item>()).await?;
    let names = ["b", "a", "", "é", "a", "Z", "\u{0}x"];
    let kinds = ["tool", "weapon", "type"];
    let letters = ['a', 'é', '\u{0}', '🚀'];
    for i in 0..24usize {
        Item {
            id: None,
            name: names[i % names.len()].into(),
            r#type: kinds[i % kinds.len()].into(),
            flag: i.is_multiple_of(2),
            letter: letters[i % letters.len()],
            weight: i as i64 - 12,
        }
        .create(&db)
        .await?;
    }
    let all = Item::all(&db).await?;
    assert_eq!(all.len(), 24);
    let raw = Item::table(&db)
        .get(all[0].id.clone().unwrap())
        .await?
        .unwrap();
    let mut stored: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        ["displayName", "flag", "id", "letter", "type", "weight"]
    );

    for n in names {
        let expected: Vec<Item> = all.iter().filter(|i| i.name == n).cloned().collect();
        let got = Item::filter(&db, f.name.eq(n)).run().await?;
        assert_eq!(keys(&got), keys(&expected), "name == {n:?}");
        let got = Item::filter(&db, f.name.ge(n)).run().await?;
        let expected: Vec<Item> = all
            .iter()
            .filter(|i| i.name.as_str() >= n)
            .cloned()
            .collect();
        assert_eq!(keys(&got), keys(&expected), "name >= {n:?}");
    }
    for k in kinds {
        let expected: Vec<Item> = all.iter().filter(|i| i.r#type == k).cloned().collect();
        let got = Item::filter(&db, f.r#type.eq(k)).run().await?;
        assert_eq!(keys(&got), keys(&expected), "type == {k:?}");
    }
    for b in [true, false] {
        let expected: Vec<Item> = all.iter().filter(|i| i.flag == b).cloned().collect();
        assert_eq!(
            keys(&Item::filter(&db, f.flag.eq(b)).run().await?),
            keys(&expected)
        );
    }
    for c in letters {
        let expected: Vec<Item> = all.iter().filter(|i| i.letter == c).cloned().collect();
        assert_eq!(
            keys(&Item::filter(&db, f.letter.eq(c)).run().await?),
            keys(&expected),
            "letter == {c:?}"
        );
    }
    // The compound index over a raw identifier and a renamed field.
    let rows = Item::table(&db)
        .get_all([json!(["weapon", "a"])])
        .index("kind_name")
        .run()
        .await?;
    let expected = all
        .iter()
        .filter(|i| i.r#type == "weapon" && i.name == "a")
        .count();
    assert_eq!(rows.len(), expected);

    // Orders by the renamed field: in memory and through its index (strings by UTF-8 bytes,
    // as Rust orders them).
    let mut expected: Vec<String> = all.iter().map(|i| i.name.clone()).collect();
    expected.sort();
    for order in [f.name.asc(), f.name.index()] {
        let got: Vec<String> = Item::query(&db)
            .order_by(order)
            .run()
            .await?
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(got, expected);
    }
    let mut by_weight: Vec<i64> = all.iter().map(|i| i.weight).collect();
    by_weight.sort_by(|a, b| b.cmp(a));
    let got: Vec<i64> = Item::query(&db)
        .order_by(f.weight.desc())
        .run()
        .await?
        .into_iter()
        .map(|i| i.weight)
        .collect();
    assert_eq!(got, by_weight);

    // A bulk typed update writes the stored name, and the index follows it.
    let n = Item::filter(&db, f.r#type.eq("type"))
        .update(f.name.set("renamed"))
        .await?;
    assert_eq!(n, 8);
    assert_eq!(Item::filter(&db, f.name.eq("renamed")).count().await?, 8);
    for row in Item::table(&db).query().run().await? {
        assert!(row.get("name").is_none(), "{row}");
    }
    // update / save / delete round trips.
    let mut one = Item::find(&db, f.name.eq("renamed")).await?.unwrap();
    one.update(&db, |i| i.letter = 'ß').await?;
    assert_eq!(
        Item::find(&db, f.letter.eq('ß')).await?.as_ref(),
        Some(&one)
    );
    one.r#type = "saved".into();
    one.save(&db).await?;
    assert_eq!(
        Item::get(&db, one.id.clone().unwrap()).await?.as_ref(),
        Some(&one)
    );
    one.delete(&db).await?;
    assert_eq!(Item::filter(&db, f.r#type.eq("saved")).count().await?, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// serde's other spellings of rename.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_labels")]
pub struct Label {
    pub id: Option<Id>,
    #[serde(rename(serialize = "label", deserialize = "label"))]
    #[remodel(index)]
    pub name: String,
}

// The list form of rename is followed when both directions agree; two different names are a
// compile error (`ui/attack_rename_list.rs`).
#[tokio::test]
async fn rename_in_its_list_form_is_followed() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Label>()).await?;
    let saved = Label {
        id: None,
        name: "warp".into(),
    }
    .create(&db)
    .await?;
    let raw = Label::table(&db)
        .get(saved.id.clone().unwrap())
        .await?
        .unwrap();
    assert_eq!(raw["label"], "warp", "serde stores it as `label`");
    let f = Label::fields();
    // The oracle: every row whose name is "warp".
    let found = Label::filter(&db, f.name.eq("warp")).run().await?;
    assert_eq!(found, vec![saved], "the typed query finds the row");
    assert_eq!(f.name.name(), "label");
    assert_eq!(Label::schema().fields, ["id", "label"]);
    Ok(())
}

// A rename with a `.` (read as a nested path by indexes and predicates) or an empty one is a
// compile error at the rename: `ui/attack_dotted_rename.rs`.

// ---------------------------------------------------------------------------------------
// `#[serde(with = "..")]`, `serialize_with`, `deserialize_with`: the stored representation is
// not the Rust type's, so a key, a foreign key or an index of such a field is a compile error,
// and the field has no typed field name (a typed predicate on it does not compile):
// `ui/attack_serde_with.rs`. The field itself is stored and read back as serde does.
// ---------------------------------------------------------------------------------------

mod as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_stringly")]
pub struct Stringly {
    pub id: u64,
    #[serde(with = "as_string")]
    pub n: u64,
}

fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    // Reads a number, or a number written as text (rows of an older program).
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        v => serde_json::from_value(v).map_err(serde::de::Error::custom),
    }
}

/// `deserialize_with` only changes how a field is read: it is stored as its type writes
/// it, so it keeps its typed name and may be indexed (only `with` / `serialize_with`, which
/// change what is stored, are refused).
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_lenient")]
pub struct Lenient {
    pub id: u64,
    #[serde(deserialize_with = "lenient")]
    #[remodel(index)]
    pub n: u64,
}

#[tokio::test]
async fn a_field_read_by_a_function_keeps_its_typed_name_and_index() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Lenient>()).await?;
    Lenient { id: 1, n: 7 }.create(&db).await?;
    Lenient::table(&db)
        .insert(json!({"id": 2, "n": "7"}))
        .await?
        .check()?;
    let f = Lenient::fields();
    let found = Lenient::filter(&db, f.n.eq(7u64)).run().await?;
    assert_eq!(
        found.len(),
        1,
        "the typed lookup meets what is stored as a number"
    );
    assert_eq!(Lenient::get(&db, 2u64).await?.map(|l| l.n), Some(7));
    // The index holds what is stored: the number, then the text (numbers sort first).
    let by_index = Lenient::query(&db).order_by(f.n.index()).run().await?;
    let ids: Vec<u64> = by_index.iter().map(|l| l.id).collect();
    assert_eq!(ids, [1, 2]);
    Ok(())
}

#[tokio::test]
async fn a_field_with_a_custom_serializer_is_stored_as_serde_writes_it() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Stringly>()).await?;
    let mut s = Stringly { id: 5, n: 7 }.create(&db).await?;
    assert_eq!(Stringly::table(&db).get(5).await?.unwrap()["n"], "7");
    assert_eq!(Stringly::get(&db, 5).await?, Some(s.clone()));
    s.update(&db, |s| s.n = 8).await?;
    assert_eq!(Stringly::table(&db).get(5).await?.unwrap()["n"], "8");
    assert_eq!(Stringly::get(&db, 5).await?.map(|s| s.n), Some(8));
    // No typed field name: what is stored is queried untyped, as stored.
    assert_eq!(Stringly::schema().fields, ["id", "n"]);
    assert_eq!(
        Stringly::filter(&db, remodel::field("n").eq("8"))
            .count()
            .await?,
        1
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Option fields: None stored as null, as a missing field (skip_serializing_if), or missing
// in rows written by another program.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_probes")]
pub struct Probe {
    pub id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[remodel(index)]
    pub sector: Option<String>,
    #[serde(default)]
    #[remodel(index)]
    pub depth: Option<u32>,
    pub n: u32,
}

async fn probes(db: &Database) -> remodel::Result<Vec<Probe>> {
    for n in 0..12u32 {
        Probe {
            id: None,
            sector: match n % 3 {
                0 => None,
                1 => Some("a".into()),
                _ => Some("b".into()),
            },
            depth: (n % 4 != 0).then_some(n % 4),
            n,
        }
        .create(db)
        .await?;
    }
    // Rows of another program: `sector` null, `depth` missing.
    Probe::table(db)
        .insert(json!({"id": "raw-null", "sector": null, "n": 100}))
        .await?
        .check()?;
    Probe::table(db)
        .insert(json!({"id": "raw-missing", "n": 101}))
        .await?
        .check()?;
    Probe::all(db).await
}

#[tokio::test]
async fn option_fields_some_values_match_the_oracle() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Probe>()).await?;
    let all = probes(&db).await?;
    assert_eq!(all.len(), 14);
    let f = Probe::fields();
    for v in ["a", "b", "c"] {
        let expected: Vec<Probe> = all
            .iter()
            .filter(|p| p.sector.as_deref() == Some(v))
            .cloned()
            .collect();
        assert_eq!(
            keys(&Probe::filter(&db, f.sector.eq(v)).run().await?),
            keys(&expected)
        );
    }
    for d in 0..5u32 {
        let expected: Vec<Probe> = all.iter().filter(|p| p.depth == Some(d)).cloned().collect();
        assert_eq!(
            keys(&Probe::filter(&db, f.depth.eq(d)).run().await?),
            keys(&expected)
        );
    }
    // is_null / exists see null and missing alike.
    let none: Vec<Probe> = all.iter().filter(|p| p.sector.is_none()).cloned().collect();
    assert_eq!(
        keys(&Probe::filter(&db, f.sector.is_null()).run().await?),
        keys(&none)
    );
    let some: Vec<Probe> = all.iter().filter(|p| p.sector.is_some()).cloned().collect();
    assert_eq!(
        keys(&Probe::filter(&db, f.sector.exists()).run().await?),
        keys(&some)
    );
    // A row stored without the field keeps it out of the index.
    let raw = Probe::table(&db)
        .get(all.iter().find(|p| p.n == 0).unwrap().id.clone().unwrap())
        .await?
        .unwrap();
    assert!(raw.get("sector").is_none(), "{raw}");
    Ok(())
}

// `f.x.eq(None)` holds of every row that reads as `None`: null and missing alike.
/// `ne(v)` holds of every row `eq(v)` does not, those without the field included (they
/// read as `None`, which is not `v`), as the Rust view of the rows says.
#[tokio::test]
async fn option_fields_ne_holds_of_every_row_eq_does_not() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Probe>()).await?;
    let all = probes(&db).await?;
    let f = Probe::fields();
    for v in ["a", "b", "z"] {
        let want: Vec<_> = all
            .iter()
            .filter(|p| p.sector.as_deref() != Some(v))
            .cloned()
            .collect();
        let got = Probe::filter(&db, f.sector.ne(v)).run().await?;
        assert_eq!(keys(&got), keys(&want), "ne({v})");
        let eq = Probe::filter(&db, f.sector.eq(v)).count().await?;
        assert_eq!(eq + got.len() as u64, all.len() as u64);
    }
    Ok(())
}

#[tokio::test]
async fn option_fields_eq_none_matches_every_row_that_reads_none() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Probe>()).await?;
    let all = probes(&db).await?;
    let f = Probe::fields();
    let expected: Vec<Probe> = all.iter().filter(|p| p.sector.is_none()).cloned().collect();
    assert_eq!(
        keys(
            &Probe::filter(&db, f.sector.eq(None::<String>))
                .run()
                .await?
        ),
        keys(&expected),
        "sector == None"
    );
    let expected: Vec<Probe> = all.iter().filter(|p| p.depth.is_none()).cloned().collect();
    assert_eq!(
        keys(&Probe::filter(&db, f.depth.eq(None::<u32>)).run().await?),
        keys(&expected),
        "depth == None"
    );
    Ok(())
}

#[tokio::test]
async fn option_fields_set_to_none_leave_the_row_and_the_index() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Probe>()).await?;
    let all = probes(&db).await?;
    let f = Probe::fields();
    let mut p = all.iter().find(|p| p.n == 1).unwrap().clone();
    assert_eq!(p.sector.as_deref(), Some("a"));
    p.update(&db, |p| p.sector = None).await?;
    let raw = Probe::table(&db).get(p.id.clone().unwrap()).await?.unwrap();
    assert!(raw.get("sector").is_none(), "update removes it: {raw}");
    assert!(!keys(&Probe::filter(&db, f.sector.eq("a")).run().await?)
        .contains(&p.key_value().unwrap().to_string()));

    let mut q = all.iter().find(|p| p.n == 2).unwrap().clone();
    q.sector = None;
    q.save(&db).await?;
    let raw = Probe::table(&db).get(q.id.clone().unwrap()).await?.unwrap();
    assert!(raw.get("sector").is_none(), "save removes it: {raw}");
    assert_eq!(
        Probe::get(&db, q.id.clone().unwrap()).await?,
        Some(q.clone())
    );
    // And back to a value.
    q.update(&db, |p| p.sector = Some("z".into())).await?;
    assert_eq!(Probe::find(&db, f.sector.eq("z")).await?, Some(q));
    Ok(())
}

// Ordering by the index of an `Option` field leaves out the rows whose value is None (an
// index holds no null or missing value, as RethinkDB's); `Field::index` documents it, and
// `asc()` keeps every row.
#[tokio::test]
async fn option_fields_ordered_by_their_index_leave_out_none_as_documented() -> remodel::Result<()>
{
    let db = db_with(SchemaSet::new().with::<Probe>()).await?;
    let all = probes(&db).await?;
    let f = Probe::fields();
    let in_memory = Probe::query(&db).order_by(f.depth.asc()).run().await?;
    assert_eq!(keys(&in_memory), keys(&all), "asc keeps every row");
    let mut some: Vec<&Probe> = all.iter().filter(|p| p.depth.is_some()).collect();
    some.sort_by_key(|p| (p.depth, p.key_value().unwrap().to_string()));
    let by_index = Probe::query(&db).order_by(f.depth.index()).run().await?;
    assert_eq!(
        by_index.iter().map(|p| p.depth).collect::<Vec<_>>(),
        some.iter().map(|p| p.depth).collect::<Vec<_>>(),
        "the index order holds the rows with a value, in order"
    );
    assert!(by_index.iter().all(|p| p.depth.is_some()));
    Ok(())
}

#[tokio::test]
async fn option_fields_group_none_with_null_and_missing() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Probe>()).await?;
    let all = probes(&db).await?;
    let f = Probe::fields();
    let mut got = Probe::query(&db).group(f.sector).count().await?;
    got.sort();
    let mut expected: Vec<(Option<String>, u64)> = Vec::new();
    for p in &all {
        match expected.iter_mut().find(|(k, _)| *k == p.sector) {
            Some((_, n)) => *n += 1,
            None => expected.push((p.sector.clone(), 1)),
        }
    }
    expected.sort();
    assert_eq!(got, expected);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Numbers: u64 above i64::MAX (as keys and indexed values), i128, floats.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_bigs")]
pub struct Big {
    #[remodel(primary_key)]
    pub key: u64,
    #[remodel(index)]
    pub v: u64,
    #[remodel(index)]
    pub s: i64,
}

const BIGS: [u64; 10] = [
    0,
    1,
    (1 << 53) - 1,
    1 << 53,
    (1 << 53) + 1,
    i64::MAX as u64,
    (i64::MAX as u64) + 1,
    (i64::MAX as u64) + 2,
    u64::MAX - 1,
    u64::MAX,
];

#[tokio::test]
async fn u64_above_i64_max_as_keys_and_index_values() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Big>()).await?;
    for (i, k) in BIGS.iter().enumerate() {
        Big {
            key: *k,
            v: BIGS[BIGS.len() - 1 - i],
            s: if i.is_multiple_of(2) {
                i64::MIN + i as i64
            } else {
                i64::MAX - i as i64
            },
        }
        .create(&db)
        .await?;
    }
    let all = Big::all(&db).await?;
    assert_eq!(all.len(), BIGS.len());
    for k in BIGS {
        let got = Big::get(&db, k).await?.expect("every key is found");
        assert_eq!(got.key, k);
    }
    assert_eq!(
        Big::get_many(&db, BIGS)
            .await?
            .iter()
            .map(|b| b.key)
            .collect::<Vec<_>>(),
        BIGS
    );
    let f = Big::fields();
    for v in BIGS {
        let eq: Vec<u64> = Big::filter(&db, f.v.eq(v))
            .run()
            .await?
            .iter()
            .map(|b| b.v)
            .collect();
        assert_eq!(eq, [v], "v == {v}");
        let mut lt: Vec<u64> = Big::filter(&db, f.v.lt(v))
            .run()
            .await?
            .iter()
            .map(|b| b.v)
            .collect();
        lt.sort();
        let expected: Vec<u64> = BIGS.iter().copied().filter(|x| *x < v).collect();
        assert_eq!(lt, expected, "v < {v}");
    }
    let mut sorted = BIGS.to_vec();
    sorted.sort();
    for order in [f.v.index(), f.v.asc()] {
        let got: Vec<u64> = Big::query(&db)
            .order_by(order)
            .run()
            .await?
            .iter()
            .map(|b| b.v)
            .collect();
        assert_eq!(got, sorted);
    }
    let mut s_sorted: Vec<i64> = all.iter().map(|b| b.s).collect();
    s_sorted.sort();
    let got: Vec<i64> = Big::query(&db)
        .order_by(f.s.index())
        .run()
        .await?
        .iter()
        .map(|b| b.s)
        .collect();
    assert_eq!(got, s_sorted);
    // update / delete by a key above i64::MAX, and the neighbour stays.
    let mut top = Big::get(&db, u64::MAX).await?.unwrap();
    top.update(&db, |b| b.v = 3).await?;
    assert_eq!(Big::get(&db, u64::MAX).await?.unwrap().v, 3);
    assert_eq!(Big::get(&db, u64::MAX - 1).await?.unwrap().v, 1);
    top.delete(&db).await?;
    assert_eq!(Big::get(&db, u64::MAX).await?, None);
    assert!(Big::get(&db, u64::MAX - 1).await?.is_some());
    Ok(())
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_wides")]
pub struct Wide {
    pub id: Option<Id>,
    #[remodel(index)]
    pub w: i128,
}

#[tokio::test]
async fn i128_values_in_range_work_and_others_are_typed_errors() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Wide>()).await?;
    let fits = [i64::MIN as i128, -1, 0, u64::MAX as i128];
    for w in fits {
        Wide { id: None, w }.create(&db).await?;
    }
    for w in [i64::MIN as i128 - 1, u64::MAX as i128 + 1, i128::MAX] {
        let err = Wide { id: None, w }.create(&db).await.unwrap_err();
        assert!(
            matches!(err.as_model(), Some(ModelError::Invalid(_))),
            "{err}"
        );
    }
    assert_eq!(Wide::count(&db).await?, 4);
    let f = Wide::fields();
    for w in fits {
        assert_eq!(Wide::find(&db, f.w.eq(w)).await?.map(|x| x.w), Some(w));
    }
    Ok(())
}

// A predicate operand that JSON cannot hold (an i128 past u64, a NaN or infinite float) fails
// the query with a typed error, never compared as `null` (every number is greater than null).
#[tokio::test]
async fn unrepresentable_operands_are_not_compared_as_null() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Wide>().with::<Reading>()).await?;
    for w in [-5i128, 0, 7] {
        Wide { id: None, w }.create(&db).await?;
    }
    for x in [-1.5f64, 0.0, 2.5] {
        Reading {
            id: None,
            x,
            tag: 0,
        }
        .create(&db)
        .await?;
    }
    let (fw, fr) = (Wide::fields(), Reading::fields());
    let huge = u64::MAX as i128 + 1;
    let refused = |got: remodel::Result<u64>, what: &str| match got {
        Err(Error::InvalidQuery(m)) => eprintln!("{what}: {m}"),
        other => panic!("{what}: {other:?}"),
    };
    refused(Wide::filter(&db, fw.w.gt(huge)).count().await, "w > 2^64");
    refused(Wide::filter(&db, fw.w.lt(-huge)).count().await, "w < -2^64");
    refused(
        Reading::filter(&db, fr.x.ge(f64::INFINITY)).count().await,
        "x >= inf",
    );
    refused(
        Reading::filter(&db, fr.x.gt(f64::NAN)).count().await,
        "x > NaN",
    );
    refused(
        Reading::filter(&db, fr.x.ne(f64::NAN)).count().await,
        "x != NaN",
    );
    refused(
        Reading::filter(&db, fr.x.eq(1.0).or(fr.x.one_of([f64::NAN])))
            .count()
            .await,
        "nested",
    );
    // A bulk update to such a value is refused, and writes nothing.
    let err = Reading::query(&db)
        .update(fr.x.set(f64::NAN).and(fr.tag.set(9)))
        .await
        .unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::Invalid(_))),
        "{err}"
    );
    assert_eq!(Reading::filter(&db, fr.tag.eq(9)).count().await?, 0);
    Ok(())
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_readings")]
pub struct Reading {
    pub id: Option<Id>,
    #[remodel(index)]
    pub x: f64,
    pub tag: u32,
}

#[tokio::test]
async fn floats_negative_zero_and_extremes_match_the_oracle() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Reading>()).await?;
    let values = [
        0.0,
        -0.0,
        1.5,
        -1.5,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        1e-300,
        9007199254740993.0,
        0.1 + 0.2,
        0.3,
    ];
    for (i, x) in values.iter().enumerate() {
        Reading {
            id: None,
            x: *x,
            tag: i as u32,
        }
        .create(&db)
        .await?;
    }
    let all = Reading::all(&db).await?;
    for r in &all {
        assert_eq!(
            r.x.to_bits(),
            values[r.tag as usize].to_bits(),
            "round trip of {}",
            values[r.tag as usize]
        );
    }
    let f = Reading::fields();
    for x in values {
        let expected: Vec<Reading> = all.iter().filter(|r| r.x == x).cloned().collect();
        assert_eq!(
            keys(&Reading::filter(&db, f.x.eq(x)).run().await?),
            keys(&expected),
            "x == {x:?}"
        );
        let expected: Vec<Reading> = all.iter().filter(|r| r.x < x).cloned().collect();
        assert_eq!(
            keys(&Reading::filter(&db, f.x.lt(x)).run().await?),
            keys(&expected),
            "x < {x:?}"
        );
    }
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let got: Vec<f64> = Reading::query(&db)
        .order_by(f.x.index())
        .run()
        .await?
        .iter()
        .map(|r| r.x)
        .collect();
    // -0.0 and 0.0 tie (then by key): compare as numbers.
    assert!(
        got.iter().zip(&sorted).all(|(a, b)| a == b) && got.len() == sorted.len(),
        "{got:?}"
    );
    Ok(())
}

#[tokio::test]
async fn nan_and_infinity_are_refused_or_read_back() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Reading>()).await?;
    Reading {
        id: None,
        x: 1.0,
        tag: 0,
    }
    .create(&db)
    .await?;
    let mut stored = Reading {
        id: None,
        x: 2.0,
        tag: 2,
    };
    stored.save(&db).await?;
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let refused = (Reading {
            id: None,
            x,
            tag: 1,
        })
        .create(&db)
        .await;
        assert!(
            matches!(&refused, Err(e) if matches!(e.as_model(), Some(ModelError::Invalid(_)))),
            "{refused:?}"
        );
        // A save of a new one: refused, and it keeps no key it was never stored under.
        let mut new = Reading {
            id: None,
            x,
            tag: 1,
        };
        assert!(new.save(&db).await.is_err());
        assert_eq!(new.id, None);
        // In a transaction too, and an update of a stored one leaves it as it was.
        let mut tx = Transaction::new(&db);
        assert!(tx.save(&mut new).await.is_err());
        assert_eq!(new.id, None);
        let f = Reading::fields();
        assert!(Reading::filter(&db, f.tag.eq(2))
            .update(f.x.set(x))
            .await
            .is_err());
        // Even where no row matches: the answer does not depend on the rows.
        assert!(Reading::filter(&db, f.tag.eq(99))
            .update(f.x.set(x))
            .await
            .is_err());
        assert!(Reading::filter(&db, f.x.gt(x)).run().await.is_err());
        assert!(Reading::filter(&db, f.tag.eq(99).and(f.x.gt(x)))
            .run()
            .await
            .is_err());
    }
    // Nothing was written, and the table stays readable.
    let all = Reading::all(&db).await?;
    assert_eq!(all.len(), 2);
    assert_eq!(
        Reading::get(&db, stored.id.clone().unwrap())
            .await?
            .unwrap()
            .x,
        2.0
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Vec fields and multi indexes: duplicates, empty arrays, renamed and skipped-when-empty.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_posts")]
pub struct Post {
    pub id: Option<Id>,
    #[remodel(index(multi))]
    pub tags: Vec<String>,
    #[serde(rename = "cats", default, skip_serializing_if = "Vec::is_empty")]
    #[remodel(index(multi))]
    pub categories: Vec<u32>,
}

#[tokio::test]
async fn multi_indexes_with_duplicates_and_empty_arrays_match_the_oracle() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Post>()).await?;
    let tagsets: [&[&str]; 6] = [
        &[],
        &["a"],
        &["a", "a", "a"],
        &["a", "b", "a", "b"],
        &["", "\u{0}"],
        &["b"],
    ];
    for (i, t) in tagsets.iter().enumerate() {
        Post {
            id: None,
            tags: t.iter().map(|s| s.to_string()).collect(),
            categories: (0..i as u32).map(|c| c % 2).collect(),
        }
        .create(&db)
        .await?;
    }
    let all = Post::all(&db).await?;
    let f = Post::fields();
    for t in ["a", "b", "", "\u{0}", "c"] {
        let expected: Vec<Post> = all
            .iter()
            .filter(|p| p.tags.iter().any(|x| x == t))
            .cloned()
            .collect();
        let got = Post::filter(&db, f.tags.contains(t)).run().await?;
        assert_eq!(
            keys(&got),
            keys(&expected),
            "tags contains {t:?} (no row twice)"
        );
        assert_eq!(
            Post::filter(&db, f.tags.contains(t)).count().await?,
            expected.len() as u64
        );
    }
    for c in [0u32, 1, 2] {
        let expected: Vec<Post> = all
            .iter()
            .filter(|p| p.categories.contains(&c))
            .cloned()
            .collect();
        let got = Post::filter(&db, f.categories.contains(c)).run().await?;
        assert_eq!(keys(&got), keys(&expected), "cats contains {c}");
    }
    let empty: Vec<Post> = all.iter().filter(|p| p.tags.is_empty()).cloned().collect();
    assert_eq!(
        keys(
            &Post::filter(&db, f.tags.eq(Vec::<String>::new()))
                .run()
                .await?
        ),
        keys(&empty)
    );
    // Emptied by an update: out of the multi index.
    let mut p = all.iter().find(|p| p.tags.len() == 4).unwrap().clone();
    p.update(&db, |p| {
        p.tags.clear();
        p.categories.clear();
    })
    .await?;
    let raw = Post::table(&db).get(p.id.clone().unwrap()).await?.unwrap();
    assert!(raw.get("cats").is_none(), "{raw}");
    let got = Post::filter(&db, f.tags.contains("b")).run().await?;
    assert!(!got.iter().any(|x| x.id == p.id));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Enums of every serde representation as field and index values.
// ---------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Grade {
    Ensign,
    LieutenantCommander,
    Captain,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Posting {
    Ship(String),
    Station { name: String, deck: u8 },
    Leave,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Duty {
    BridgeStation { station: String },
    Engineering,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Badge {
    Num(u32),
    Text(String),
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_officers_enum")]
pub struct Officer {
    pub id: Option<Id>,
    #[remodel(index)]
    pub grade: Grade,
    #[remodel(index)]
    pub posting: Posting,
    #[remodel(index)]
    pub duty: Duty,
    #[remodel(index)]
    pub badge: Badge,
}

#[tokio::test]
async fn enums_of_every_representation_as_index_values() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Officer>()).await?;
    let grades = [Grade::Ensign, Grade::LieutenantCommander, Grade::Captain];
    let postings = [
        Posting::Ship("voyager".into()),
        Posting::Station {
            name: "ds9".into(),
            deck: 3,
        },
        Posting::Leave,
        Posting::Station {
            name: "ds9".into(),
            deck: 4,
        },
    ];
    let duties = [
        Duty::BridgeStation {
            station: "helm".into(),
        },
        Duty::Engineering,
    ];
    let badges = [Badge::Num(3), Badge::Text("3".into()), Badge::Num(4)];
    for i in 0..24 {
        Officer {
            id: None,
            grade: grades[i % 3],
            posting: postings[i % 4].clone(),
            duty: duties[i % 2].clone(),
            badge: badges[(i / 2) % 3].clone(),
        }
        .create(&db)
        .await?;
    }
    let all = Officer::all(&db).await?;
    assert_eq!(all.len(), 24);
    let f = Officer::fields();
    for g in grades {
        let expected: Vec<Officer> = all.iter().filter(|o| o.grade == g).cloned().collect();
        assert_eq!(
            keys(&Officer::filter(&db, f.grade.eq(g)).run().await?),
            keys(&expected)
        );
    }
    for p in &postings {
        let expected: Vec<Officer> = all.iter().filter(|o| o.posting == *p).cloned().collect();
        assert_eq!(
            keys(&Officer::filter(&db, f.posting.eq(p.clone())).run().await?),
            keys(&expected),
            "{p:?}"
        );
    }
    for d in &duties {
        let expected: Vec<Officer> = all.iter().filter(|o| o.duty == *d).cloned().collect();
        assert_eq!(
            keys(&Officer::filter(&db, f.duty.eq(d.clone())).run().await?),
            keys(&expected),
            "{d:?}"
        );
    }
    for b in &badges {
        let expected: Vec<Officer> = all.iter().filter(|o| o.badge == *b).cloned().collect();
        assert_eq!(
            keys(&Officer::filter(&db, f.badge.eq(b.clone())).run().await?),
            keys(&expected),
            "{b:?}"
        );
    }
    let groups = Officer::query(&db).group(f.grade).count().await?;
    let mut groups: Vec<(Grade, u64)> = groups;
    groups.sort();
    assert_eq!(
        groups,
        [
            (Grade::Ensign, 8),
            (Grade::LieutenantCommander, 8),
            (Grade::Captain, 8)
        ]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// String keys: empty, NUL, unicode.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_words")]
pub struct Word {
    #[remodel(primary_key)]
    pub text: String,
    #[remodel(index)]
    pub alt: String,
}

#[tokio::test]
async fn string_keys_with_nul_empty_and_unicode_round_trip() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Word>()).await?;
    let texts = [
        "", "\u{0}", "a\u{0}", "a", "a\u{0}b", "ab", "é", "e\u{301}", "日本", "🚀", "A", "a b",
    ];
    let mut stored = Vec::new();
    for t in texts {
        match (Word {
            text: t.into(),
            alt: t.chars().rev().collect(),
        })
        .create(&db)
        .await
        {
            Ok(w) => stored.push(w),
            // An empty key may be refused, as a typed error with nothing stored.
            Err(Error::InvalidKey { .. }) if t.is_empty() => {}
            Err(e) => return Err(e),
        }
    }
    assert_eq!(Word::count(&db).await?, stored.len() as u64);
    let f = Word::fields();
    for w in &stored {
        assert_eq!(Word::get(&db, w.text.as_str()).await?.as_ref(), Some(w));
        let expected: Vec<&Word> = stored.iter().filter(|x| x.alt == w.alt).collect();
        let got = Word::filter(&db, f.alt.eq(w.alt.as_str())).run().await?;
        assert_eq!(got.len(), expected.len(), "alt == {:?}", w.alt);
    }
    let mut expected: Vec<String> = stored.iter().map(|w| w.alt.clone()).collect();
    expected.sort();
    let got: Vec<String> = Word::query(&db)
        .order_by(f.alt.index())
        .run()
        .await?
        .into_iter()
        .map(|w| w.alt)
        .collect();
    assert_eq!(got, expected);
    // "a\0" and "a" stay two rows, deleting one leaves the other.
    let mut a0 = Word::get(&db, "a\u{0}").await?.unwrap();
    a0.delete(&db).await?;
    assert!(Word::get(&db, "a").await?.is_some());
    assert!(Word::get(&db, "a\u{0}").await?.is_none());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Keys: a field called `id` that is not the key, Option<u64> keys, newtype keys.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_badges")]
pub struct Registry {
    #[remodel(primary_key)]
    #[serde(rename = "regCode")]
    pub code: String,
    #[remodel(index)]
    pub id: u64,
    pub r#type: String,
}

#[tokio::test]
async fn a_field_called_id_that_is_not_the_key() -> remodel::Result<()> {
    assert_eq!(Registry::schema().primary_key, "regCode");
    let db = db_with(SchemaSet::new().with::<Registry>()).await?;
    assert_eq!(Registry::table(&db).primary_key()?, "regCode");
    let mut a = Registry {
        code: "NCC-1701".into(),
        id: 7,
        r#type: "ship".into(),
    }
    .create(&db)
    .await?;
    Registry {
        code: "NCC-74656".into(),
        id: 7,
        r#type: "ship".into(),
    }
    .create(&db)
    .await?;
    assert_eq!(Registry::get(&db, "NCC-1701").await?.as_ref(), Some(&a));
    let f = Registry::fields();
    assert_eq!(Registry::filter(&db, f.id.eq(7)).count().await?, 2);
    a.update(&db, |r| r.id = 8).await?;
    assert_eq!(Registry::find(&db, f.id.eq(8)).await?.as_ref(), Some(&a));
    let raw = Registry::table(&db).get("NCC-1701").await?.unwrap();
    assert_eq!(raw, json!({"regCode": "NCC-1701", "id": 8, "type": "ship"}));
    a.delete(&db).await?;
    assert_eq!(a.code, "NCC-1701", "a key that is not an Option stays");
    assert_eq!(Registry::count(&db).await?, 1);
    Ok(())
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_counters")]
pub struct Counter {
    pub id: Option<u64>,
    pub n: u32,
}

// A model with an `Option<u64>` key created without one: the key would be a generated UUID,
// which the field cannot hold; refused before anything is written.
#[tokio::test]
async fn an_option_u64_key_left_empty_is_refused_before_anything_is_written() -> remodel::Result<()>
{
    let db = db_with(SchemaSet::new().with::<Counter>()).await?;
    fn invalid<T>(r: &remodel::Result<T>) -> bool {
        matches!(r, Err(e) if matches!(e.as_model(), Some(ModelError::Invalid(_))))
    }
    let created = (Counter { id: None, n: 1 }).create(&db).await;
    assert!(invalid(&created), "{created:?}");
    let mut c = Counter { id: None, n: 2 };
    let saved = c.save(&db).await;
    assert!(invalid(&saved), "{saved:?}");
    // In a transaction: refused when staged, the same way.
    let mut tx = Transaction::new(&db);
    let staged = tx.create(Counter { id: None, n: 3 }).await;
    assert!(invalid(&staged), "{staged:?}");
    let staged = tx.save(&mut c).await;
    assert!(invalid(&staged), "{staged:?}");
    tx.commit().await?;
    assert_eq!(Counter::count(&db).await?, 0, "nothing stored");
    // Given its key, it is stored.
    Counter { id: Some(7), n: 4 }.create(&db).await?;
    assert_eq!(Counter::count(&db).await?, 1);
    Ok(())
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShipId(String);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct Registration {
    code: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_newtypes")]
pub struct Newtyped {
    pub id: Option<ShipId>,
    #[remodel(index)]
    pub reg: Registration,
}

#[tokio::test]
async fn newtype_and_transparent_field_types() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Newtyped>()).await?;
    let a = Newtyped {
        id: None,
        reg: Registration {
            code: "NX-01".into(),
        },
    }
    .create(&db)
    .await?;
    let key = a.id.clone().expect("a generated key in the newtype");
    assert_eq!(Newtyped::get(&db, &key).await?.as_ref(), Some(&a));
    let raw = Newtyped::table(&db).get(key.0.as_str()).await?.unwrap();
    assert_eq!(raw["reg"], "NX-01");
    let f = Newtyped::fields();
    assert_eq!(
        Newtyped::find(
            &db,
            f.reg.eq(Registration {
                code: "NX-01".into()
            })
        )
        .await?
        .as_ref(),
        Some(&a)
    );
    Ok(())
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
#[remodel(table = "attack_solos")]
pub struct Solo {
    pub id: String,
}

#[tokio::test]
async fn a_transparent_model_is_a_typed_error_and_stores_nothing() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Solo>()).await?;
    let err = Solo { id: "x".into() }.create(&db).await.unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::Invalid(_))),
        "{err}"
    );
    assert_eq!(Solo::count(&db).await?, 0);
    Solo::table(&db).insert(json!({"id": "y"})).await?.check()?;
    let err = Solo::get(&db, "y".to_string()).await.unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::Decode { .. })),
        "{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Field::index() resolves the field's own index.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_ranked")]
pub struct Ranked {
    pub id: Option<Id>,
    #[remodel(index(name = "by_rank"))]
    pub rank: u32,
    #[remodel(index(name = "score"))]
    pub points: u32,
    pub score: u32,
}

async fn ranked(db: &Database) -> remodel::Result<Vec<Ranked>> {
    for i in 0..6u32 {
        Ranked {
            id: None,
            rank: (i * 7) % 6,
            points: i,
            score: 10 - i,
        }
        .create(db)
        .await?;
    }
    Ranked::all(db).await
}

// `score` has no index of its own; `points`'s index is called `score`.
#[tokio::test]
async fn field_index_never_orders_by_another_fields_index() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Ranked>()).await?;
    let all = ranked(&db).await?;
    let f = Ranked::fields();
    // `score` has no index: refused (a typed error), never ordered by points.
    let err = Ranked::query(&db)
        .order_by(f.score.index())
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchIndex { index, .. } if index.starts_with("score ")),
        "{err}"
    );
    // `points` orders by its own index, called `score`.
    let mut by_points: Vec<u32> = all.iter().map(|r| r.points).collect();
    by_points.sort();
    let rows = Ranked::query(&db).order_by(f.points.index()).run().await?;
    assert_eq!(rows.iter().map(|r| r.points).collect::<Vec<_>>(), by_points);
    Ok(())
}

#[tokio::test]
async fn field_index_orders_by_the_fields_named_index() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Ranked>()).await?;
    let all = ranked(&db).await?;
    let f = Ranked::fields();
    let mut by_rank: Vec<u32> = all.iter().map(|r| r.rank).collect();
    by_rank.sort();
    let rows = Ranked::query(&db).order_by(f.rank.index()).run().await?;
    assert_eq!(rows.iter().map(|r| r.rank).collect::<Vec<_>>(), by_rank);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Compound index over a field serde skips.
// ---------------------------------------------------------------------------------------

// A compound index listing a field serde skips (never stored: the index would hold no row)
// is a compile error, as a simple index on one is: `ui/attack_compound_index.rs`.
#[test]
fn every_index_path_is_a_stored_field() {
    for s in [Item::schema(), Probe::schema(), Post::schema()] {
        for ix in s.indexes {
            for p in ix.paths {
                assert!(
                    s.fields.contains(p),
                    "{}: index `{}` reads `{p}`, which is not stored (fields: {:?})",
                    s.model,
                    ix.name,
                    s.fields
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Relations whose keys are renamed, non-`id` keys, u64 keys above i64::MAX.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_fleets", has_many(Vessel, foreign_key = "fleet_id"))]
pub struct Fleet {
    pub id: Option<Id>,
    pub name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_vessels", belongs_to(Fleet, foreign_key = "fleetRef"))]
pub struct Vessel {
    pub id: Option<Id>,
    pub name: String,
    #[serde(rename = "fleetRef")]
    pub fleet_id: Option<Id>,
}

// has_many names the foreign key by the target's Rust field name (`fleet_id`), belongs_to here by
// its stored name (`fleetRef`, the Rust name works too): both resolve to the field, and every
// runtime path reads and writes it as stored.
#[tokio::test]
async fn has_many_and_belongs_to_agree_on_a_renamed_foreign_key() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Fleet>().with::<Vessel>()).await?;
    let fleet = Fleet {
        id: None,
        name: "Home".into(),
    }
    .create(&db)
    .await?;
    // Through belongs_to.
    let mut a = Vessel {
        id: None,
        name: "a".into(),
        fleet_id: None,
    };
    a.set_fleet(Some(&fleet))?;
    let a = a.create(&db).await?;
    assert_eq!(a.fleet(&db).await?.as_ref(), Some(&fleet));
    // Through has_many.
    let b = fleet
        .vessels(&db)
        .create(Vessel {
            id: None,
            name: "b".into(),
            fleet_id: None,
        })
        .await?;
    assert_eq!(
        b.fleet_id, fleet.id,
        "create points the child's field at the parent"
    );
    let stored_b = Vessel::get(&db, b.id.clone().unwrap()).await?.unwrap();
    assert_eq!(stored_b.fleet(&db).await?.as_ref(), Some(&fleet));
    let mut names: Vec<String> = fleet
        .vessels(&db)
        .all()
        .await?
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"], "has_many sees both children");
    let loaded = Fleet::load_vessels(&db, std::slice::from_ref(&fleet)).await?;
    assert_eq!(loaded[0].len(), 2);
    Ok(())
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_docks")]
pub struct Dock {
    pub id: Option<Id>,
}

/// A belongs_to whose foreign key is stored as `dock_id` by a renamed field, beside an
/// unstored field of that Rust name: the stored one holds the key (a skipped field is never
/// it; this was refused as naming two fields).
#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_shuttles", belongs_to(Dock))]
pub struct Shuttle {
    pub id: Option<Id>,
    #[serde(rename = "dock_id")]
    pub berth: Option<Id>,
    #[serde(skip)]
    pub dock_id: Option<Id>,
}

#[tokio::test]
async fn a_foreign_key_is_never_an_unstored_field() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<Dock>().with::<Shuttle>()).await?;
    let dock = Dock { id: None }.create(&db).await?;
    let mut s = Shuttle {
        id: None,
        berth: None,
        dock_id: None,
    };
    s.set_dock(Some(&dock))?;
    assert_eq!(s.berth, dock.id);
    let s = s.create(&db).await?;
    assert_eq!(s.dock(&db).await?.as_ref(), Some(&dock));
    Ok(())
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_cadets", has_and_belongs_to_many(Course))]
pub struct Cadet {
    #[remodel(primary_key)]
    #[serde(rename = "cadetCode")]
    pub code: String,
    pub name: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(
    table = "attack_courses",
    has_and_belongs_to_many(Cadet),
    has_many(Lesson, on_delete = "cascade")
)]
pub struct Course {
    #[remodel(primary_key)]
    pub num: u64,
    pub title: String,
}

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_lessons", belongs_to(Course))]
pub struct Lesson {
    pub id: Option<Id>,
    pub course_id: Option<u64>,
    pub topic: String,
}

#[tokio::test]
async fn relations_through_renamed_keys_and_u64_keys_above_i64_max() -> remodel::Result<()> {
    let db = db_with(
        SchemaSet::new()
            .with::<Cadet>()
            .with::<Course>()
            .with::<Lesson>(),
    )
    .await?;
    let nums = [1u64, i64::MAX as u64, (i64::MAX as u64) + 1, u64::MAX];
    let mut courses = Vec::new();
    for n in nums {
        courses.push(
            Course {
                num: n,
                title: format!("c{n}"),
            }
            .create(&db)
            .await?,
        );
    }
    let mut cadets = Vec::new();
    for (i, name) in ["kirk", "spock", "é\u{0}"].iter().enumerate() {
        let c = Cadet {
            code: format!("{name}-{i}"),
            name: name.to_string(),
        }
        .create(&db)
        .await?;
        // Cadet i takes the courses after the i-th.
        c.courses(&db).relate(&nums[i..]).await?;
        cadets.push(c);
    }
    for (i, c) in cadets.iter().enumerate() {
        let mut got = c.courses(&db).keys().await?;
        got.sort();
        assert_eq!(got, nums[i..], "{} relates to its courses", c.code);
        let mut titles: Vec<u64> = c.courses(&db).all().await?.iter().map(|c| c.num).collect();
        titles.sort();
        assert_eq!(titles, nums[i..]);
    }
    let loaded = Cadet::load_courses(&db, &cadets).await?;
    for (i, l) in loaded.iter().enumerate() {
        let mut got: Vec<u64> = l.iter().map(|c| c.num).collect();
        got.sort();
        assert_eq!(got, nums[i..]);
    }
    for (j, course) in courses.iter().enumerate() {
        let expected: BTreeSet<String> = cadets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i <= j)
            .map(|(_, c)| c.code.clone())
            .collect();
        let got: BTreeSet<String> = course
            .cadets(&db)
            .all()
            .await?
            .into_iter()
            .map(|c| c.code)
            .collect();
        assert_eq!(got, expected, "cadets of course {}", course.num);
    }
    // has_many / belongs_to through a u64 key above i64::MAX, and a cascade by it.
    let top = &courses[3];
    let l = top
        .lessons(&db)
        .create(Lesson {
            id: None,
            course_id: None,
            topic: "warp".into(),
        })
        .await?;
    assert_eq!(l.course_id, Some(u64::MAX));
    assert_eq!(l.course(&db).await?.map(|c| c.num), Some(u64::MAX));
    courses[2]
        .lessons(&db)
        .create(Lesson {
            id: None,
            course_id: None,
            topic: "impulse".into(),
        })
        .await?;
    assert_eq!(top.lessons(&db).count().await?, 1);
    let mut top = top.clone();
    top.delete(&db).await?;
    assert_eq!(Lesson::count(&db).await?, 1);
    assert_eq!(courses[2].lessons(&db).count().await?, 1);
    let after = Cadet::load_courses(&db, &cadets).await?;
    assert!(after.iter().all(|cs| cs.iter().all(|c| c.num != u64::MAX)));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Unknown fields in stored rows (a newer program's) survive every write of the model.
// ---------------------------------------------------------------------------------------

#[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[remodel(table = "attack_logs")]
pub struct LogEntry {
    pub id: Option<Id>,
    #[serde(rename = "body")]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[tokio::test]
async fn unknown_fields_survive_update_save_and_transactions() -> remodel::Result<()> {
    let db = db_with(SchemaSet::new().with::<LogEntry>()).await?;
    let t = LogEntry::table(&db);
    t.insert(json!({"id": "e1", "body": "hi", "future": {"deep": [1, 2]}, "text": "old"}))
        .await?
        .check()?;
    let mut e = LogEntry::get(&db, "e1").await?.unwrap();
    assert_eq!(e.text, "hi");
    e.update(&db, |e| e.note = Some("n".into())).await?;
    let raw = t.get("e1").await?.unwrap();
    assert_eq!(
        raw["future"],
        json!({"deep": [1, 2]}),
        "update keeps it: {raw}"
    );
    assert_eq!(
        raw["text"], "old",
        "a stored `text` is not the struct's field: {raw}"
    );
    // Written by the newer program after this one read the row.
    t.get("e1").update(json!({"later": true})).await?.check()?;
    e.text = "saved".into();
    e.note = None;
    e.save(&db).await?;
    let raw = t.get("e1").await?.unwrap();
    assert_eq!(
        raw,
        json!({"id": "e1", "body": "saved", "future": {"deep": [1, 2]}, "text": "old", "later": true})
    );
    t.get("e1").update(json!({"latest": 1})).await?.check()?;
    let mut tx = Transaction::new(&db);
    e.text = "tx".into();
    tx.save(&mut e).await?;
    tx.commit().await?;
    let raw = t.get("e1").await?.unwrap();
    assert_eq!(raw["latest"], 1, "{raw}");
    assert_eq!(raw["later"], true, "{raw}");
    assert_eq!(raw["body"], "tx", "{raw}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Two models of the same name in two modules.
// ---------------------------------------------------------------------------------------

mod alpha {
    use super::*;

    #[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Yeoman {
        pub id: Option<Id>,
        pub name: String,
    }
}

mod beta {
    use super::*;

    #[derive(Model, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Yeoman {
        pub id: Option<Id>,
        pub name: String,
        #[serde(default)]
        pub clearance: u8,
    }
}

// Two models with the same struct name in different modules meet on one default table: the
// schema refuses them (sharing a table takes `table = ".."` on both, as schema evolution does).
#[tokio::test]
async fn same_named_models_in_two_modules_do_not_share_rows_silently() -> remodel::Result<()> {
    let db = Config::temporary().open().await?;
    let table = alpha::Yeoman::schema().table;
    assert_eq!(table, beta::Yeoman::schema().table);
    let err = SchemaSet::new()
        .with::<alpha::Yeoman>()
        .with::<beta::Yeoman>()
        .create(&db)
        .await
        .unwrap_err();
    assert!(
        matches!(err.as_model(), Some(ModelError::Invalid(m)) if m.contains(&format!("`{table}`"))),
        "{err}"
    );
    assert!(db.table_names()?.is_empty(), "nothing was created");
    // Each alone is fine.
    SchemaSet::new().with::<beta::Yeoman>().create(&db).await?;
    beta::Yeoman {
        id: None,
        name: "Rand".into(),
        clearance: 3,
    }
    .create(&db)
    .await?;
    assert_eq!(beta::Yeoman::count(&db).await?, 1);
    Ok(())
}
