//! Adversarial suite: heterogeneous and edge-case VALUES against queries, live feeds and
//! live aggregates, checked against an oracle written here in plain Rust from the documented
//! rules (README's design section, `value/order.rs`, `value/encoding.rs`, `IndexSpec`,
//! `Predicate`, `Order`, `Query::min`/`group`):
//!
//! - total order: arrays < booleans < null < numbers < objects < strings; numbers as doubles
//!   (-0.0 == 0), integers rounding to the same double told apart by their exact value;
//!   strings by UTF-8 bytes; arrays lexicographically; objects as key-sorted pairs;
//! - a comparison on a missing field is false (`ne` too); `null` is a value;
//! - an index holds no missing/null value; multi: each distinct non-null element; compound:
//!   every field present and non-null; index reads in (value, primary key) order;
//! - `order_by(field)`: (value, key), rows lacking the field last; desc reverses both, the
//!   rows lacking the field stay last;
//! - sums exact, rounded once; min/max in the total order, ties to the smaller key; groups
//!   shown as the canonical value of their key (`1` for `1` and `1.0`).
//!
//! Documents mix types across rows in every field: integers at the edges of i64/u64 and of
//! 2^53, doubles (-0.0, subnormals, 1e300), strings (empty, NUL, multi-byte, long), booleans,
//! null, missing fields, arrays (nested, empty) and objects. Primary keys mix types too.
//!
//! The same queries run on the embedded store and on PostgreSQL (when a throwaway cluster can
//! be started) must give identical answers; live feeds under random type-changing writes
//! must rebuild to the query's answer and the oracle's; refused values get a typed error and
//! write nothing.

mod common;

use futures::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::{
    asc, desc, field, has_fields, json, Conflict, Database, Error, Feed, IndexSpec, Order, Patch,
    Predicate, Query, Table, Value,
};
use serde_json::{Map, Number};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

// ---------------------------------------------------------------------------------------------
// The oracle: the documented total order, written independently of the store
// ---------------------------------------------------------------------------------------------

fn rank(v: &Value) -> u8 {
    match v {
        Value::Array(_) => 0,
        Value::Bool(_) => 1,
        Value::Null => 2,
        Value::Number(_) => 3,
        Value::Object(_) => 4,
        Value::String(_) => 5,
    }
}

/// A number as its double (-0.0 as 0.0) and its exact value, which decides between numbers
/// of the same double (only integers, or integral doubles, can tie with another number).
fn num_parts(n: &Number) -> (f64, i128) {
    if let Some(i) = n.as_i64() {
        (i as f64, i as i128)
    } else if let Some(u) = n.as_u64() {
        (u as f64, u as i128)
    } else {
        let f = n.as_f64().unwrap();
        let f = if f == 0.0 { 0.0 } else { f };
        let exact = if f.fract() == 0.0 && f.abs() < 1e30 {
            f as i128
        } else {
            0
        };
        (f, exact)
    }
}

fn ord(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = ord(p, q);
                if o.is_ne() {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Number(x), Value::Number(y)) => {
            let (fx, ex) = num_parts(x);
            let (fy, ey) = num_parts(y);
            fx.partial_cmp(&fy).unwrap().then(ex.cmp(&ey))
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
            ys.sort_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
            for (p, q) in xs.iter().zip(&ys) {
                let o =
                    p.0.as_bytes()
                        .cmp(q.0.as_bytes())
                        .then_with(|| ord(p.1, q.1));
                if o.is_ne() {
                    return o;
                }
            }
            xs.len().cmp(&ys.len())
        }
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The canonical value a group is shown with: whole numbers that fit an integer as that
/// integer (`1.0` and `-0.0` show as `1` and `0`), recursively.
fn canon(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap();
            if f.fract() == 0.0 {
                if (-9223372036854775808.0..9223372036854775808.0).contains(&f) {
                    return json!(f as i64);
                }
                if (0.0..18446744073709551616.0).contains(&f) {
                    return json!(f as u64);
                }
            }
            json!(f)
        }
        Value::Array(a) => Value::Array(a.iter().map(canon).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), canon(v))).collect()),
        v => v.clone(),
    }
}

/// A strict printing: object keys sorted, numbers as stored (`1` vs `1.0`, `-0.0`).
fn text(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut kv: Vec<_> = m.iter().collect();
            kv.sort_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
            let parts: Vec<String> = kv
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), text(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(text).collect();
            format!("[{}]", parts.join(","))
        }
        v => v.to_string(),
    }
}

fn short(s: &str) -> String {
    if s.len() > 700 {
        let mut end = 700;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &s[..end], s.len())
    } else {
        s.to_string()
    }
}

fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |d, s| d.as_object()?.get(s))
}

/// Merge as documented: nested objects merge, other values (null included) replace.
fn merge(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => {
            for (k, v) in p {
                match d.get_mut(k) {
                    Some(old) if old.is_object() && v.is_object() => merge(old, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (d, p) => *d = p.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Indexes, predicates and the model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ix {
    /// `IndexSpec::field("v")`
    V,
    /// `IndexSpec::multi("tags")`
    Tags,
    /// `IndexSpec::compound(["v", "w"])`
    Vw,
    /// `IndexSpec::field("o.a")`
    Oa,
    /// The primary key.
    Id,
}

impl Ix {
    fn name(self) -> &'static str {
        match self {
            Ix::V => "v",
            Ix::Tags => "tags",
            Ix::Vw => "vw",
            Ix::Oa => "oa",
            Ix::Id => "id",
        }
    }

    /// The values under which `doc` is in the index, as documented.
    fn values(self, doc: &Value) -> Vec<Value> {
        let present = |p: &str| get(doc, p).filter(|v| !v.is_null()).cloned();
        match self {
            Ix::V => present("v").into_iter().collect(),
            Ix::Oa => present("o.a").into_iter().collect(),
            Ix::Id => vec![doc["id"].clone()],
            Ix::Vw => match (present("v"), present("w")) {
                (Some(v), Some(w)) => vec![json!([v, w])],
                _ => vec![],
            },
            Ix::Tags => match present("tags") {
                None => vec![],
                Some(Value::Array(items)) => {
                    let mut out: Vec<Value> = Vec::new();
                    for i in items.iter().filter(|i| !i.is_null()) {
                        if !out.iter().any(|o| ord(o, i).is_eq()) {
                            out.push(i.clone());
                        }
                    }
                    out
                }
                Some(v) => vec![v],
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum C {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

const OPS: [C; 6] = [C::Eq, C::Ne, C::Lt, C::Le, C::Gt, C::Ge];

#[derive(Clone, Debug)]
enum P {
    Cmp(&'static str, C, Value),
    Contains(&'static str, Value),
    Has(Vec<&'static str>),
    Starts(&'static str, &'static str),
    Not(Box<P>),
    And(Vec<P>),
    Or(Vec<P>),
}

impl P {
    fn build(&self) -> Predicate {
        match self {
            P::Cmp(f, c, v) => {
                let f = field(*f);
                let v = v.clone();
                match c {
                    C::Eq => f.eq(v),
                    C::Ne => f.ne(v),
                    C::Lt => f.lt(v),
                    C::Le => f.le(v),
                    C::Gt => f.gt(v),
                    C::Ge => f.ge(v),
                }
            }
            P::Contains(f, v) => field(*f).contains(v.clone()),
            P::Has(fs) => has_fields(fs.clone()),
            P::Starts(f, s) => field(*f).starts_with(*s),
            P::Not(p) => !p.build(),
            P::And(ps) => Predicate::And {
                all: ps.iter().map(P::build).collect(),
            },
            P::Or(ps) => Predicate::Or {
                any: ps.iter().map(P::build).collect(),
            },
        }
    }

    fn eval(&self, doc: &Value) -> bool {
        match self {
            P::Cmp(f, c, x) => {
                let Some(v) = get(doc, f) else { return false };
                let o = ord(v, x);
                match c {
                    C::Eq => o.is_eq(),
                    C::Ne => o.is_ne(),
                    C::Lt => o.is_lt(),
                    C::Le => o.is_le(),
                    C::Gt => o.is_gt(),
                    C::Ge => o.is_ge(),
                }
            }
            P::Contains(f, x) => match get(doc, f) {
                Some(Value::Array(items)) => items.iter().any(|i| ord(i, x).is_eq()),
                _ => false,
            },
            P::Has(fs) => fs.iter().all(|f| get(doc, f).is_some_and(|v| !v.is_null())),
            P::Starts(f, s) => get(doc, f)
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with(s)),
            P::Not(p) => !p.eval(doc),
            P::And(ps) => ps.iter().all(|p| p.eval(doc)),
            P::Or(ps) => ps.iter().any(|p| p.eval(doc)),
        }
    }
}

fn in_bounds(v: &Value, lo: &Bound<Value>, hi: &Bound<Value>) -> bool {
    let above = match lo {
        Bound::Unbounded => true,
        Bound::Included(l) => ord(v, l).is_ge(),
        Bound::Excluded(l) => ord(v, l).is_gt(),
    };
    above
        && match hi {
            Bound::Unbounded => true,
            Bound::Included(h) => ord(v, h).is_le(),
            Bound::Excluded(h) => ord(v, h).is_lt(),
        }
}

/// The documents, as the oracle holds them.
#[derive(Clone, Default)]
struct Model {
    docs: Vec<Value>,
}

impl Model {
    /// The rows in primary key order.
    fn rows(&self) -> Vec<Value> {
        let mut rows = self.docs.clone();
        rows.sort_by(|a, b| ord(&a["id"], &b["id"]));
        rows
    }

    fn find(&self, key: &Value) -> Option<usize> {
        self.docs.iter().position(|d| ord(&d["id"], key).is_eq())
    }

    /// Inserts or replaces the document with the key of `doc` (a key equal in the order,
    /// such as `2.0` for `2`, is the same key: the stored document keeps what was written).
    fn put(&mut self, doc: Value) {
        match self.find(&doc["id"]) {
            Some(i) => self.docs[i] = doc,
            None => self.docs.push(doc),
        }
    }

    fn delete(&mut self, key: &Value) {
        if let Some(i) = self.find(key) {
            self.docs.remove(i);
        }
    }

    fn update(&mut self, key: &Value, patch: &Value) {
        if let Some(i) = self.find(key) {
            merge(&mut self.docs[i], patch);
        }
    }

    /// The index entries `(value, doc)` in index order (value, then primary key).
    fn entries(&self, ix: Ix) -> Vec<(Value, Value)> {
        let mut out: Vec<(Value, Value)> = Vec::new();
        for d in &self.docs {
            for v in ix.values(d) {
                out.push((v, d.clone()));
            }
        }
        out.sort_by(|a, b| ord(&a.0, &b.0).then_with(|| ord(&a.1["id"], &b.1["id"])));
        out
    }

    fn range(&self, ix: Ix, lo: &Bound<Value>, hi: &Bound<Value>, desc: bool) -> Vec<Value> {
        let mut rows: Vec<Value> = self
            .entries(ix)
            .into_iter()
            .filter(|(v, _)| in_bounds(v, lo, hi))
            .map(|(_, d)| d)
            .collect();
        if desc {
            rows.reverse();
        }
        rows
    }

    fn get_all(&self, ix: Ix, values: &[Value]) -> Vec<Value> {
        let entries = self.entries(ix);
        let mut out = Vec::new();
        for v in values {
            out.extend(
                entries
                    .iter()
                    .filter(|(e, _)| ord(e, v).is_eq())
                    .map(|(_, d)| d.clone()),
            );
        }
        out
    }

    /// `order_by(asc|desc(path))`: (value, key), rows lacking the field last (in key order
    /// reversed too when descending).
    fn order_by_field(&self, path: &str, desc: bool) -> Vec<Value> {
        let rows = self.rows();
        let (mut with, mut without): (Vec<Value>, Vec<Value>) =
            rows.into_iter().partition(|d| get(d, path).is_some());
        with.sort_by(|a, b| {
            ord(get(a, path).unwrap(), get(b, path).unwrap()).then_with(|| ord(&a["id"], &b["id"]))
        });
        if desc {
            with.reverse();
            without.reverse();
        }
        with.extend(without);
        with
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregates, in the oracle
// ---------------------------------------------------------------------------------------------

/// The correctly rounded sum of doubles (Shewchuk's exact partials, as Python's
/// `math.fsum`), whatever their order; `None` when a partial overflows (the oracle then does
/// not know the answer).
fn exact_sum(xs: &[f64]) -> Option<f64> {
    let mut partials: Vec<f64> = Vec::new();
    for &x0 in xs {
        let mut x = x0;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            if !hi.is_finite() {
                return None;
            }
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    let mut n = partials.len();
    let mut hi = 0.0;
    if n > 0 {
        n -= 1;
        hi = partials[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = partials[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
    }
    // The exact sum of zeros (-0.0 included) is zero: +0.0, as is the empty sum.
    let hi = if hi == 0.0 { 0.0 } else { hi };
    hi.is_finite().then_some(hi)
}

#[derive(Clone, Copy, Debug)]
enum Red {
    Count,
    Sum(&'static str),
    Avg(&'static str),
    Min(&'static str),
    Max(&'static str),
}

/// The reduction of `rows` (with their number of contributions), or an error text.
fn reduce(rows: &[Value], red: Red) -> Result<Value, String> {
    match red {
        Red::Count => Ok(json!(rows.len() as u64)),
        Red::Sum(f) | Red::Avg(f) => {
            let mut xs = Vec::new();
            for r in rows {
                match get(r, f) {
                    None | Some(Value::Null) => {}
                    Some(Value::Number(n)) => xs.push(n.as_f64().unwrap()),
                    Some(_) => return Err("InvalidQuery".into()),
                }
            }
            let Some(s) = exact_sum(&xs) else {
                return Err("Unknown".into());
            };
            Ok(match red {
                Red::Sum(_) => json!(s),
                _ if xs.is_empty() => Value::Null,
                _ => json!(s / xs.len() as f64),
            })
        }
        Red::Min(f) | Red::Max(f) => {
            let mut best: Option<&Value> = None;
            for r in rows {
                let Some(v) = get(r, f) else { continue };
                let better = match best {
                    None => true,
                    Some(b) => {
                        let o = ord(v, get(b, f).unwrap());
                        let want = if matches!(red, Red::Min(_)) {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        };
                        o == want || (o.is_eq() && ord(&r["id"], &b["id"]).is_lt())
                    }
                };
                if better {
                    best = Some(r);
                }
            }
            Ok(best.cloned().unwrap_or(Value::Null))
        }
    }
}

/// Groups as `[{group, reduction}]` in group order: by a field (missing: `null`) or by an
/// index's values.
fn grouped(rows: &[Value], by: Result<&'static str, Ix>, red: Red) -> Result<Value, String> {
    let mut groups: Vec<(Value, Vec<Value>)> = Vec::new();
    for r in rows {
        let keys = match by {
            Ok(f) => vec![get(r, f).cloned().unwrap_or(Value::Null)],
            Err(ix) => ix.values(r),
        };
        for k in keys {
            match groups.iter_mut().find(|(g, _)| ord(g, &k).is_eq()) {
                Some((_, members)) => members.push(r.clone()),
                None => groups.push((k, vec![r.clone()])),
            }
        }
    }
    groups.sort_by(|a, b| ord(&a.0, &b.0));
    let mut out = Vec::new();
    let mut unknown = false;
    for (g, members) in groups {
        match reduce(&members, red) {
            Ok(r) => out.push(json!({"group": canon(&g), "reduction": r})),
            Err(e) if e == "Unknown" => unknown = true,
            Err(e) => return Err(e),
        }
    }
    if unknown {
        return Err("Unknown".into());
    }
    Ok(Value::Array(out))
}

// ---------------------------------------------------------------------------------------------
// Values and documents
// ---------------------------------------------------------------------------------------------

fn long_string() -> String {
    let mut s = "x".repeat(3000);
    s.push('\u{0}');
    s.push_str("tail");
    s
}

/// Values of every type and edge.
fn value_pool() -> Vec<Value> {
    vec![
        json!(null),
        json!(false),
        json!(true),
        json!(0),
        json!(-0.0),
        json!(0.0),
        json!(1),
        json!(1.0),
        json!(-1),
        json!(2.5),
        json!(5e-324),
        json!(-5e-324),
        json!(1e300),
        json!(-1e300),
        json!(f64::MAX),
        json!(f64::MIN),
        json!(9007199254740991i64),
        json!(9007199254740992i64),
        json!(9007199254740992.0),
        json!(9007199254740993u64),
        json!(-9007199254740993i64),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(9223372036854775808u64),
        json!(u64::MAX),
        json!(9223372036854775808.0),
        json!(-9223372036854775808.0),
        json!(18446744073709551616.0),
        json!(""),
        json!("a"),
        json!("a\u{0}"),
        json!("a\u{0}b"),
        json!("\u{0}"),
        json!("é"),
        json!("日本"),
        json!("\u{10ffff}"),
        json!("Z"),
        json!(long_string()),
        json!([]),
        json!([null]),
        json!([1]),
        json!([1.0, "a"]),
        json!([[]]),
        json!([[1], [2]]),
        json!([false, [true]]),
        json!({}),
        json!({"a": 1}),
        json!({"a": 1.0}),
        json!({"a": null}),
        json!({"b": [1]}),
        json!({"a": {"b": []}}),
        json!({"": 0}),
        json!({"a\u{0}": 1}),
        json!({"b": 1, "a": 2}),
    ]
}

/// Operands of comparisons and bounds: one or more of each class and edge.
fn operands() -> Vec<Value> {
    vec![
        json!(null),
        json!(false),
        json!(true),
        json!(0),
        json!(-0.0),
        json!(1.0),
        json!(2.5),
        json!(-1e300),
        json!(9007199254740992.0),
        json!(9007199254740993u64),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(18446744073709551616.0),
        json!(""),
        json!("a"),
        json!("a\u{0}"),
        json!("é"),
        json!([]),
        json!([1]),
        json!([1.0, "a"]),
        json!({}),
        json!({"a": 1.0}),
        json!({"b": [1]}),
    ]
}

/// Primary keys of mixed types, distinct in the order.
fn key_pool() -> Vec<Value> {
    let mut k: Vec<Value> = (0..16).map(|i| json!(i)).collect();
    k.extend([
        json!(-7),
        json!(1.5),
        json!(-0.5),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(9007199254740993u64),
        json!(9007199254740992.0),
        json!(""),
        json!("a"),
        json!("a\u{0}"),
        json!("a\u{0}b"),
        json!("b"),
        json!("é"),
        json!("日本"),
        json!("\u{10ffff}"),
        json!(true),
        json!(false),
        json!([]),
        json!([1, "a"]),
        json!([[0]]),
        json!(["a"]),
        json!("k".repeat(300)),
    ]);
    k
}

/// Numbers a sum takes: multiples of 2^-20, some whose sum a running double would round
/// (1e20 + 2^-20 - 1e20).
fn summable() -> Vec<Value> {
    vec![
        json!(0),
        json!(-0.0),
        json!(1),
        json!(1.0),
        json!(-3),
        json!(0.5),
        json!(-0.25),
        json!(1024.75),
        json!(1e15),
        json!(1e20),
        json!(-1e20),
        json!(9.5367431640625e-7),
        json!(4503599627370497i64),
        json!(null),
    ]
}

fn group_pool() -> Vec<Value> {
    vec![
        json!(1),
        json!(1.0),
        json!(0),
        json!(-0.0),
        json!("x"),
        json!(true),
        json!(null),
        json!([1]),
        json!([1.0]),
        json!({"k": 1}),
        json!({"k": 1.0}),
        json!(9007199254740993u64),
        json!(9007199254740992.0),
        json!(1e300),
        json!(9223372036854775808.0),
    ]
}

fn pick(rng: &mut StdRng, pool: &[Value]) -> Value {
    pool[rng.gen_range(0..pool.len())].clone()
}

fn random_tags(rng: &mut StdRng) -> Option<Value> {
    let small = [
        json!(1),
        json!(1.0),
        json!(null),
        json!("a"),
        json!([1]),
        json!(-0.0),
        json!(0),
    ];
    match rng.gen_range(0..10) {
        0..=1 => None,
        2 => Some(pick(rng, &value_pool())),
        _ => {
            let n = rng.gen_range(0..5);
            let items: Vec<Value> = (0..n)
                .map(|_| {
                    if rng.gen_bool(0.6) {
                        pick(rng, &small)
                    } else {
                        pick(rng, &value_pool())
                    }
                })
                .collect();
            Some(Value::Array(items))
        }
    }
}

fn random_field(rng: &mut StdRng, name: &str) -> Option<Value> {
    match name {
        "v" => rng.gen_bool(0.85).then(|| pick(rng, &value_pool())),
        "w" => rng.gen_bool(0.6).then(|| {
            pick(
                rng,
                &[
                    json!(1),
                    json!(1.0),
                    json!("x"),
                    json!(null),
                    json!(true),
                    json!([0]),
                    json!(-0.0),
                ],
            )
        }),
        "tags" => random_tags(rng),
        "n" => rng.gen_bool(0.8).then(|| pick(rng, &summable())),
        "g" => rng.gen_bool(0.85).then(|| pick(rng, &group_pool())),
        "o" => match rng.gen_range(0..10) {
            0..=1 => None,
            2 => Some(pick(rng, &value_pool())),
            3 => Some(json!({})),
            _ => Some(json!({"a": pick(rng, &value_pool())})),
        },
        _ => unreachable!(),
    }
}

const FIELDS: [&str; 6] = ["v", "w", "tags", "n", "g", "o"];

fn random_doc(rng: &mut StdRng, id: Value) -> Value {
    let mut d = Map::new();
    d.insert("id".into(), id);
    for f in FIELDS {
        if let Some(v) = random_field(rng, f) {
            d.insert(f.into(), v);
        }
    }
    Value::Object(d)
}

async fn make_indexes(t: &Table) {
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    t.create_index("vw", IndexSpec::compound(["v", "w"]))
        .await
        .unwrap();
    t.create_index("oa", IndexSpec::field("o.a")).await.unwrap();
}

/// A table `t` of random mixed documents (half before the indexes exist: backfilled), and
/// the model of it.
async fn load(db: &Database, seed: u64) -> (Table, Model) {
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = key_pool();
    let mut model = Model::default();
    let docs: Vec<Value> = keys
        .iter()
        .map(|k| random_doc(&mut rng, k.clone()))
        .collect();
    let (first, second) = docs.split_at(docs.len() / 2);
    t.insert_many(first.to_vec())
        .await
        .unwrap()
        .check()
        .unwrap();
    make_indexes(&t).await;
    t.insert_many(second.to_vec())
        .await
        .unwrap()
        .check()
        .unwrap();
    for d in docs {
        model.put(d);
    }
    (t, model)
}

// ---------------------------------------------------------------------------------------------
// Recording and checking answers
// ---------------------------------------------------------------------------------------------

/// The kind of an error, for comparing answers (`Query`, `TooDeep`, ...).
fn kind(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

enum Want {
    /// Rows in this order.
    List(Vec<Value>),
    /// Rows in any order.
    Bag(Vec<Value>),
    /// One value.
    One(Value),
    /// An error of this kind.
    Err(&'static str),
    /// Anything (the oracle does not know): only compared across backends.
    Any,
}

#[derive(Default)]
struct Run {
    /// Every answer, by name, as text (compared across backends).
    results: Vec<(String, String)>,
    fails: Vec<String>,
}

fn rows_text(rows: &[Value], sorted: bool) -> String {
    let mut t: Vec<String> = rows.iter().map(text).collect();
    if sorted {
        t.sort();
    }
    format!("[{}]", t.join(", "))
}

impl Run {
    fn rows(&mut self, name: String, got: remodel::Result<Vec<Value>>, want: Want) {
        let sorted = matches!(want, Want::Bag(_));
        let got = got.map(|rows| rows_text(&rows, sorted));
        self.check(name, got, want)
    }

    fn one(&mut self, name: String, got: remodel::Result<Value>, want: Want) {
        self.check(name, got.map(|v| text(&v)), want)
    }

    fn check(&mut self, name: String, got: remodel::Result<String>, want: Want) {
        let got = got.map_err(|e| kind(&e));
        let want_text = match &want {
            Want::List(rows) => Ok(rows_text(rows, false)),
            Want::Bag(rows) => Ok(rows_text(rows, true)),
            Want::One(v) => Ok(text(v)),
            Want::Err(k) => Err(k.to_string()),
            Want::Any => got.clone(),
        };
        if got != want_text {
            self.fails.push(format!(
                "{name}:\n    got  {}\n    want {}",
                short(&format!("{got:?}")),
                short(&format!("{want_text:?}"))
            ));
        }
        self.results.push((
            name,
            match got {
                Ok(t) => t,
                Err(k) => format!("error {k}"),
            },
        ));
    }

    fn finish(self, what: &str) {
        if !self.fails.is_empty() {
            let n = self.fails.len();
            let shown: Vec<String> = self.fails.into_iter().take(12).collect();
            panic!(
                "{what}: {n} answers differ from the oracle (first {}):\n{}",
                shown.len(),
                shown.join("\n")
            );
        }
    }
}

fn bound_name(b: &Bound<Value>) -> String {
    match b {
        Bound::Unbounded => "Unbounded".into(),
        Bound::Included(v) => format!("Included({})", short(&text(v))),
        Bound::Excluded(v) => format!("Excluded({})", short(&text(v))),
    }
}

// ---------------------------------------------------------------------------------------------
// The query areas (each records its answers in a Run)
// ---------------------------------------------------------------------------------------------

async fn area_filters(t: &Table, m: &Model, r: &mut Run) {
    let rows = m.rows();
    let mut preds: Vec<P> = Vec::new();
    for f in ["v", "o.a", "tags"] {
        for x in operands() {
            for c in OPS {
                preds.push(P::Cmp(f, c, x.clone()));
            }
        }
    }
    preds.extend([
        P::Cmp("nope", C::Ne, json!(1)),
        P::Not(Box::new(P::Cmp("v", C::Eq, json!(1)))),
        P::Not(Box::new(P::Cmp("nope", C::Lt, json!(1)))),
        P::And(vec![
            P::Cmp("v", C::Ge, json!(0)),
            P::Cmp("v", C::Lt, json!("")),
        ]),
        P::And(vec![
            P::Cmp("v", C::Gt, json!(null)),
            P::Cmp("v", C::Lt, json!({})),
        ]),
        P::Or(vec![
            P::Cmp("v", C::Eq, json!(null)),
            P::Not(Box::new(P::Has(vec!["v"]))),
        ]),
        P::Contains("tags", json!(1)),
        P::Contains("tags", json!(null)),
        P::Contains("tags", json!(-0.0)),
        P::Contains("tags", json!([1])),
        P::Contains("v", json!(1)),
        P::Has(vec!["v", "o.a"]),
        P::Has(vec!["w"]),
        P::Starts("v", "a"),
        P::Starts("v", ""),
        P::Starts("o.a", "a\u{0}"),
        P::And(vec![]),
        P::Or(vec![]),
        P::Cmp("v", C::Eq, json!(long_string())),
        P::Cmp("v", C::Gt, json!("x".repeat(3000))),
        P::Cmp("o", C::Eq, json!({"a": 1})),
        P::Cmp("o", C::Ge, json!({"a": 1, "b": 0})),
    ]);
    for p in preds {
        let want: Vec<Value> = rows.iter().filter(|d| p.eval(d)).cloned().collect();
        let name = short(&format!("filter {p:?}"));
        let n = want.len() as u64;
        r.rows(
            name.clone(),
            t.filter(p.build()).run().await,
            Want::List(want),
        );
        r.one(
            format!("{name}.count()"),
            t.filter(p.build()).count().await.map(|c| json!(c)),
            Want::One(json!(n)),
        );
    }
}

fn bound_pairs() -> Vec<(Bound<Value>, Bound<Value>)> {
    let pts = [
        json!(null),
        json!(false),
        json!(true),
        json!(-0.0),
        json!(1),
        json!(9007199254740992.0),
        json!(9007199254740993u64),
        json!(u64::MAX),
        json!(""),
        json!("a\u{0}"),
        json!([]),
        json!([1]),
        json!({}),
        json!({"a": 1.0}),
    ];
    let mut out = Vec::new();
    for lo in &pts {
        for hi in &pts {
            out.push((Bound::Included(lo.clone()), Bound::Included(hi.clone())));
            out.push((Bound::Excluded(lo.clone()), Bound::Excluded(hi.clone())));
        }
        out.push((Bound::Included(lo.clone()), Bound::Excluded(lo.clone())));
        out.push((Bound::Included(lo.clone()), Bound::Unbounded));
        out.push((Bound::Excluded(lo.clone()), Bound::Unbounded));
        out.push((Bound::Unbounded, Bound::Included(lo.clone())));
        out.push((Bound::Unbounded, Bound::Excluded(lo.clone())));
    }
    out.push((Bound::Unbounded, Bound::Unbounded));
    out
}

async fn area_index_reads(t: &Table, m: &Model, r: &mut Run) {
    // Whole index orders, both directions.
    for ix in [Ix::V, Ix::Tags, Ix::Vw, Ix::Oa, Ix::Id] {
        for d in [false, true] {
            let o = if d {
                Order::index(ix.name()).desc()
            } else {
                Order::index(ix.name())
            };
            let want = m.range(ix, &Bound::Unbounded, &Bound::Unbounded, d);
            r.rows(
                format!("order_by(index {} desc={d})", ix.name()),
                t.order_by(o.clone()).run().await,
                Want::List(want.clone()),
            );
            for (skip, limit) in [(0, 0), (0, 1), (0, 5), (3, 4), (40, 100)] {
                let want: Vec<Value> = want.iter().skip(skip).take(limit).cloned().collect();
                r.rows(
                    format!(
                        "order_by(index {} desc={d}).skip({skip}).limit({limit})",
                        ix.name()
                    ),
                    t.order_by(o.clone()).skip(skip).limit(limit).run().await,
                    Want::List(want),
                );
            }
        }
    }
    // Ranges on the simple, nested and primary indexes; some on the multi and compound ones.
    for (lo, hi) in bound_pairs() {
        for ix in [Ix::V, Ix::Oa, Ix::Id, Ix::Tags] {
            if matches!(ix, Ix::Id | Ix::Tags | Ix::Oa) && !matches!(lo, Bound::Included(_)) {
                continue;
            }
            let name = format!(
                "between({}, {}).index({})",
                bound_name(&lo),
                bound_name(&hi),
                ix.name()
            );
            let asc = m.range(ix, &lo, &hi, false);
            r.rows(
                name.clone(),
                t.between(lo.clone(), hi.clone())
                    .index(ix.name())
                    .run()
                    .await,
                Want::Bag(asc.clone()),
            );
            r.rows(
                format!("{name}.order_by(index desc)"),
                t.between(lo.clone(), hi.clone())
                    .index(ix.name())
                    .order_by(Order::index(ix.name()).desc())
                    .run()
                    .await,
                Want::List(m.range(ix, &lo, &hi, true)),
            );
            if ix == Ix::V {
                r.rows(
                    format!("{name}.order_by(index).limit(3)"),
                    t.between(lo.clone(), hi.clone())
                        .index(ix.name())
                        .order_by(Order::index(ix.name()))
                        .limit(3)
                        .run()
                        .await,
                    Want::List(asc.into_iter().take(3).collect()),
                );
            }
        }
    }
    let compound_pts = [
        json!([]),
        json!([1]),
        json!([1, "x"]),
        json!([1.0, null]),
        json!([1, true]),
        json!([null]),
        json!(["a"]),
        json!([[], 0]),
        json!([{}]),
        json!(["a\u{0}", "x"]),
        json!(null),
        json!(true),
    ];
    for lo in &compound_pts {
        for hi in &compound_pts {
            let (lo, hi) = (Bound::Included(lo.clone()), Bound::Excluded(hi.clone()));
            r.rows(
                format!(
                    "between({}, {}).index(vw)",
                    bound_name(&lo),
                    bound_name(&hi)
                ),
                t.between(lo.clone(), hi.clone())
                    .index("vw")
                    .order_by(Order::index("vw"))
                    .run()
                    .await,
                Want::List(m.range(Ix::Vw, &lo, &hi, false)),
            );
        }
    }
    // get_all on every type, duplicates and ties (1 and 1.0, 0 and -0.0) included.
    for ix in [Ix::V, Ix::Tags, Ix::Oa, Ix::Vw] {
        let mut lists: Vec<Vec<Value>> = value_pool().into_iter().map(|v| vec![v]).collect();
        lists.push(vec![
            json!(1),
            json!(1.0),
            json!(1),
            json!(null),
            json!([1]),
        ]);
        lists.push(vec![
            json!(-0.0),
            json!("a\u{0}"),
            json!(9007199254740992.0),
        ]);
        lists.push(vec![json!([1, "x"]), json!([1.0, 1]), json!([true, true])]);
        lists.push(vec![]);
        for vals in lists {
            let want = m.get_all(ix, &vals);
            r.rows(
                format!(
                    "get_all({}).index({})",
                    short(&text(&json!(vals))),
                    ix.name()
                ),
                t.get_all(vals.clone()).index(ix.name()).run().await,
                Want::List(want),
            );
        }
    }
    // get_all by primary key: mixed, missing, duplicated, equal keys of another type.
    let mut key_lists: Vec<Vec<Value>> = key_pool().into_iter().map(|k| vec![k]).collect();
    key_lists.push(vec![
        json!(2.0),
        json!(-0.0),
        json!(2),
        json!("nope"),
        json!(2),
    ]);
    key_lists.push(vec![json!(9007199254740992i64), json!(9007199254740993u64)]);
    key_lists.push(vec![json!(1.5), json!([1, "a"]), json!([1.0, "a"])]);
    for keys in key_lists {
        let rows = m.rows();
        let want: Vec<Value> = keys
            .iter()
            .flat_map(|k| rows.iter().filter(|d| ord(&d["id"], k).is_eq()).cloned())
            .collect();
        r.rows(
            format!("get_all({})", short(&text(&json!(keys)))),
            t.get_all(keys.clone()).run().await,
            Want::List(want),
        );
    }
    // Point reads of every key, and of keys equal to them in another representation.
    for k in key_pool()
        .into_iter()
        .chain([json!(2.0), json!(-0.0), json!(9007199254740992i64)])
    {
        let want = m.find(&k).map(|i| m.docs[i].clone()).unwrap_or(Value::Null);
        r.one(
            format!("get({})", short(&text(&k))),
            t.get(k.clone()).await.map(|d| d.unwrap_or(Value::Null)),
            Want::One(want),
        );
    }
}

async fn area_order_by_field(t: &Table, m: &Model, r: &mut Run) {
    for path in ["v", "o.a", "tags", "g", "w", "nope", "id", "o"] {
        for d in [false, true] {
            let o = if d { desc(path) } else { asc(path) };
            let want = m.order_by_field(path, d);
            r.rows(
                format!("order_by({path} desc={d})"),
                t.order_by(o.clone()).run().await,
                Want::List(want.clone()),
            );
            for (skip, limit) in [(0, 0), (0, 1), (0, 7), (3, 5), (0, 1000)] {
                r.rows(
                    format!("order_by({path} desc={d}).skip({skip}).limit({limit})"),
                    t.order_by(o.clone()).skip(skip).limit(limit).run().await,
                    Want::List(want.iter().skip(skip).take(limit).cloned().collect()),
                );
            }
            r.rows(
                format!("order_by({path} desc={d}).skip(30)"),
                t.order_by(o.clone()).skip(30).run().await,
                Want::List(want.iter().skip(30).cloned().collect()),
            );
            // A filter, then the order.
            let p = P::Cmp("v", C::Lt, json!(""));
            r.rows(
                format!("filter(v < \"\").order_by({path} desc={d}).limit(4)"),
                t.filter(p.build()).order_by(o.clone()).limit(4).run().await,
                Want::List(want.iter().filter(|x| p.eval(x)).take(4).cloned().collect()),
            );
        }
    }
}

fn want_of(v: Result<Value, String>) -> Want {
    match v {
        Ok(v) => Want::One(v),
        Err(e) if e == "Unknown" => Want::Any,
        Err(_) => Want::Err("InvalidQuery"),
    }
}

async fn area_aggregates(t: &Table, m: &Model, r: &mut Run) {
    let rows = m.rows();
    let sources: Vec<(String, Query, Vec<Value>)> = vec![
        ("table".into(), t.query(), rows.clone()),
        (
            "filter(g ne 1)".into(),
            t.filter(field("g").ne(1)),
            rows.iter()
                .filter(|d| P::Cmp("g", C::Ne, json!(1)).eval(d))
                .cloned()
                .collect(),
        ),
        (
            "between(false, \"\").index(v)".into(),
            t.between(Bound::Included(json!(false)), Bound::Excluded(json!("")))
                .index("v"),
            m.range(
                Ix::V,
                &Bound::Included(json!(false)),
                &Bound::Excluded(json!("")),
                false,
            ),
        ),
        (
            "get_all(1, \"a\", [1]).index(tags)".into(),
            t.get_all([json!(1), json!("a"), json!([1])]).index("tags"),
            m.get_all(Ix::Tags, &[json!(1), json!("a"), json!([1])]),
        ),
    ];
    for (sname, q, rows) in &sources {
        r.one(
            format!("{sname}.count()"),
            q.count().await.map(|c| json!(c)),
            Want::One(json!(rows.len() as u64)),
        );
        for f in ["n", "v", "nope"] {
            r.one(
                format!("{sname}.sum({f})"),
                q.sum(f).await.map(|s| json!(s)),
                want_of(reduce(rows, Red::Sum(f))),
            );
            r.one(
                format!("{sname}.avg({f})"),
                q.avg(f).await.map(|s| json!(s)),
                want_of(reduce(rows, Red::Avg(f))),
            );
        }
        for f in ["v", "tags", "o.a", "g", "w", "n", "nope", "id"] {
            r.one(
                format!("{sname}.min({f})"),
                q.min(f).await.map(|v| v.unwrap_or(Value::Null)),
                want_of(reduce(rows, Red::Min(f))),
            );
            r.one(
                format!("{sname}.max({f})"),
                q.max(f).await.map(|v| v.unwrap_or(Value::Null)),
                want_of(reduce(rows, Red::Max(f))),
            );
        }
        let reds = [
            Red::Count,
            Red::Sum("n"),
            Red::Avg("n"),
            Red::Min("v"),
            Red::Max("v"),
            Red::Max("o.a"),
            Red::Sum("v"),
        ];
        for by in ["g", "v", "w", "o.a", "tags", "nope", "id", "o"] {
            for red in reds {
                let g = q.group(by);
                let a = match red {
                    Red::Count => g.count(),
                    Red::Sum(f) => g.sum(f),
                    Red::Avg(f) => g.avg(f),
                    Red::Min(f) => g.min(f),
                    Red::Max(f) => g.max(f),
                };
                r.one(
                    format!("{sname}.group({by}).{red:?}"),
                    a.await.map(|gs| serde_json::to_value(gs).unwrap()),
                    want_of(grouped(rows, Ok(by), red)),
                );
            }
        }
        for ix in [Ix::Tags, Ix::Vw, Ix::V, Ix::Oa] {
            for red in reds {
                let g = q.group_by_index(ix.name());
                let a = match red {
                    Red::Count => g.count(),
                    Red::Sum(f) => g.sum(f),
                    Red::Avg(f) => g.avg(f),
                    Red::Min(f) => g.min(f),
                    Red::Max(f) => g.max(f),
                };
                r.one(
                    format!("{sname}.group_by_index({}).{red:?}", ix.name()),
                    a.await.map(|gs| serde_json::to_value(gs).unwrap()),
                    want_of(grouped(rows, Err(ix), red)),
                );
            }
        }
    }
}

async fn all_areas(t: &Table, m: &Model, r: &mut Run) {
    area_filters(t, m, r).await;
    area_index_reads(t, m, r).await;
    area_order_by_field(t, m, r).await;
    area_aggregates(t, m, r).await;
}

const SEEDS: [u64; 2] = [7, 1234];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_with_every_operator_across_types() {
    for seed in SEEDS {
        let db = common::db().await;
        let (t, m) = load(&db, seed).await;
        let mut r = Run::default();
        area_filters(&t, &m, &mut r).await;
        r.finish(&format!("seed {seed}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_orders_ranges_and_get_all_across_types() {
    for seed in SEEDS {
        let db = common::db().await;
        let (t, m) = load(&db, seed).await;
        let mut r = Run::default();
        area_index_reads(&t, &m, &mut r).await;
        r.finish(&format!("seed {seed}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_a_field_of_mixed_types() {
    for seed in SEEDS {
        let db = common::db().await;
        let (t, m) = load(&db, seed).await;
        let mut r = Run::default();
        area_order_by_field(&t, &m, &mut r).await;
        r.finish(&format!("seed {seed}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_and_groups_over_mixed_and_missing_values() {
    for seed in SEEDS {
        let db = common::db().await;
        let (t, m) = load(&db, seed).await;
        let mut r = Run::default();
        area_aggregates(&t, &m, &mut r).await;
        r.finish(&format!("seed {seed}"));
    }
}

/// Every document reads back exactly as written (`1.0` stays a double, `-0.0` keeps its
/// sign, big integers stay exact, NUL and long strings whole), by key, by scan, through
/// each index and in a feed's initial rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_round_trip_exactly() {
    let db = common::db().await;
    let (t, m) = load(&db, 99).await;
    let mut r = Run::default();
    let rows = m.rows();
    r.rows(
        "scan".into(),
        t.query().run().await,
        Want::List(rows.clone()),
    );
    let mut feed = t.changes().include_initial(true).await.unwrap();
    let mut initial = Vec::new();
    while initial.len() < rows.len() {
        let c = tokio::time::timeout(std::time::Duration::from_secs(20), feed.next())
            .await
            .expect("initial rows")
            .unwrap()
            .unwrap();
        initial.extend(c.new_val().cloned());
    }
    r.rows("initial rows".into(), Ok(initial), Want::Bag(rows.clone()));
    for d in &rows {
        r.one(
            format!("get({})", short(&text(&d["id"]))),
            t.get(d["id"].clone())
                .await
                .map(|x| x.unwrap_or(Value::Null)),
            Want::One(d.clone()),
        );
    }
    r.finish("round trip");
}

// ---------------------------------------------------------------------------------------------
// Embedded vs PostgreSQL: the same answers
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "postgres")]
async fn pg_database(test: &str) -> Option<(Database, remodel::postgres::TestDatabase)> {
    let cluster = remodel::postgres::TestCluster::shared_or_skip(test)?;
    let pg = cluster.create_database().await.expect("a test database");
    let db = Database::connect(pg.url()).await.expect("connects");
    Some((db, pg))
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_and_postgres_give_identical_answers() {
    let Some((pg, _keep)) = pg_database("embedded_and_postgres_give_identical_answers").await
    else {
        return;
    };
    let embedded = remodel::Config::temporary().open().await.unwrap();
    let seed = 4242;
    let mut runs = Vec::new();
    for db in [&embedded, &pg] {
        let (t, m) = load(db, seed).await;
        let mut r = Run::default();
        all_areas(&t, &m, &mut r).await;
        runs.push(r);
    }
    let pg_run = runs.pop().unwrap();
    let emb_run = runs.pop().unwrap();
    assert_eq!(emb_run.results.len(), pg_run.results.len());
    let diffs: Vec<String> = emb_run
        .results
        .iter()
        .zip(&pg_run.results)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| {
            format!(
                "{}:\n    embedded {}\n    postgres {}",
                a.0,
                short(&a.1),
                short(&b.1)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{} answers differ between the backends (first 10):\n{}",
        diffs.len(),
        diffs.into_iter().take(10).collect::<Vec<_>>().join("\n")
    );
    pg_run.finish("postgres");
    emb_run.finish("embedded");
}

// ---------------------------------------------------------------------------------------------
// Live feeds and aggregates under random type-changing writes
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum FeedSpec {
    Filter(P),
    Between(Ix, Bound<Value>, Bound<Value>),
    GetAll(Ix, Vec<Value>),
    /// `get_all` by primary keys.
    Keys(Vec<Value>),
    /// `get(key)`.
    Point(Value),
    TopN {
        ix: Ix,
        desc: bool,
        n: usize,
        range: Option<(Bound<Value>, Bound<Value>)>,
        filter: Option<P>,
    },
    /// The rows of a rows spec (`None`: the table) through `pluck`.
    Pluck(Option<Box<FeedSpec>>, Vec<&'static str>),
    /// The rows of a rows spec (`None`: the table) through `without`.
    Without(Option<Box<FeedSpec>>, Vec<&'static str>),
    /// An aggregate of the rows of a rows spec (`None`: the table).
    Agg(Option<Box<FeedSpec>>, Red),
    Group(Option<Box<FeedSpec>>, &'static str, Red),
    GroupIx(Option<Box<FeedSpec>>, Ix, Red),
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    /// Rows as a sorted multiset.
    Bag(Vec<String>),
    /// Rows in order.
    List(Vec<String>),
    /// Group -> reduction.
    Groups(BTreeMap<String, String>),
    One(String),
}

fn feed_specs() -> Vec<FeedSpec> {
    use Bound::{Excluded, Included, Unbounded};
    let mut v = vec![
        FeedSpec::Filter(P::Cmp("v", C::Eq, json!(1))),
        FeedSpec::Filter(P::Cmp("v", C::Eq, json!(-0.0))),
        FeedSpec::Filter(P::Cmp("v", C::Eq, json!(9007199254740992.0))),
        FeedSpec::Filter(P::Cmp("v", C::Eq, json!([1]))),
        FeedSpec::Filter(P::Cmp("v", C::Eq, json!({"a": 1}))),
        FeedSpec::Filter(P::Cmp("v", C::Eq, json!("a\u{0}"))),
        FeedSpec::Filter(P::Cmp("v", C::Eq, json!(null))),
        FeedSpec::Filter(P::Cmp("o.a", C::Eq, json!(1.0))),
        FeedSpec::Filter(P::Cmp("o", C::Eq, json!({"a": 1.0}))),
        FeedSpec::Filter(P::Cmp("id", C::Eq, json!(2))),
        FeedSpec::Filter(P::And(vec![
            P::Cmp("g", C::Eq, json!(1.0)),
            P::Cmp("v", C::Ne, json!(null)),
        ])),
        FeedSpec::Filter(P::Cmp("v", C::Lt, json!(null))),
        FeedSpec::Filter(P::Cmp("v", C::Ge, json!(""))),
        FeedSpec::Filter(P::Cmp("v", C::Ne, json!(1))),
        FeedSpec::Filter(P::Not(Box::new(P::Cmp("v", C::Eq, json!(0))))),
        FeedSpec::Filter(P::Contains("tags", json!(1))),
        FeedSpec::Between(Ix::V, Included(json!(-0.0)), Excluded(json!("a"))),
        FeedSpec::Between(Ix::V, Excluded(json!(1)), Included(json!(u64::MAX))),
        FeedSpec::Between(Ix::V, Unbounded, Included(json!(null))),
        FeedSpec::Between(Ix::V, Included(json!([])), Excluded(json!(true))),
        FeedSpec::Between(Ix::V, Included(json!({})), Unbounded),
        FeedSpec::Between(
            Ix::V,
            Included(json!(9007199254740992.0)),
            Included(json!(9007199254740992i64)),
        ),
        // Empty and inverted ranges.
        FeedSpec::Between(Ix::V, Excluded(json!(1)), Excluded(json!(1.0))),
        FeedSpec::Between(Ix::V, Excluded(json!(1)), Included(json!(1))),
        FeedSpec::Between(Ix::V, Included(json!("a")), Excluded(json!(1))),
        FeedSpec::Between(Ix::Id, Included(json!("b")), Excluded(json!(1))),
        FeedSpec::Between(Ix::Id, Excluded(json!(2)), Excluded(json!(2.0))),
        FeedSpec::Between(Ix::Tags, Included(json!(0)), Included(json!(1))),
        FeedSpec::Between(Ix::Vw, Included(json!([1])), Excluded(json!([1, "y"]))),
        FeedSpec::Between(Ix::Id, Included(json!(3)), Excluded(json!("b"))),
        FeedSpec::Between(Ix::Id, Excluded(json!(-0.0)), Included(json!(2))),
        FeedSpec::GetAll(
            Ix::V,
            vec![
                json!(1),
                json!("a\u{0}"),
                json!([1]),
                json!(true),
                json!(1.0),
            ],
        ),
        FeedSpec::GetAll(Ix::Tags, vec![json!(1), json!([1]), json!(-0.0)]),
        FeedSpec::GetAll(Ix::Oa, vec![json!(null), json!({"b": []}), json!(2.5)]),
        FeedSpec::Keys(vec![
            json!(2),
            json!(2.0),
            json!(-0.0),
            json!("a\u{0}"),
            json!("nope"),
        ]),
        FeedSpec::Point(json!(2)),
        FeedSpec::Point(json!(-0.0)),
        FeedSpec::Point(json!(u64::MAX)),
        FeedSpec::Pluck(
            Some(Box::new(FeedSpec::Filter(P::Cmp("v", C::Ge, json!(null))))),
            vec!["v", "o.a", "id"],
        ),
        FeedSpec::Without(
            Some(Box::new(FeedSpec::Between(
                Ix::V,
                Included(json!(false)),
                Unbounded,
            ))),
            vec!["tags", "o.a"],
        ),
        FeedSpec::Pluck(None, vec!["o.a.b", "w"]),
    ];
    for (ix, n) in [
        (Ix::V, 4),
        (Ix::Tags, 3),
        (Ix::Id, 3),
        (Ix::Vw, 2),
        (Ix::Oa, 3),
    ] {
        for d in [false, true] {
            v.push(FeedSpec::TopN {
                ix,
                desc: d,
                n,
                range: None,
                filter: None,
            });
        }
    }
    let top = |ix, desc, n, range, filter| FeedSpec::TopN {
        ix,
        desc,
        n,
        range,
        filter,
    };
    v.extend([
        top(
            Ix::V,
            true,
            3,
            Some((Included(json!(false)), Excluded(json!({})))),
            None,
        ),
        top(Ix::V, false, 2, Some((Excluded(json!(0)), Unbounded)), None),
        top(Ix::V, false, 0, None, None),
        top(
            Ix::V,
            true,
            3,
            Some((Included(json!("a")), Excluded(json!(1)))),
            None,
        ),
        top(
            Ix::Id,
            false,
            2,
            Some((Excluded(json!(-0.0)), Excluded(json!("a")))),
            None,
        ),
        top(Ix::V, false, 3, None, Some(P::Cmp("g", C::Ne, json!(1)))),
        top(Ix::V, true, 2, None, Some(P::Cmp("v", C::Lt, json!(null)))),
    ]);
    let sources: Vec<Option<Box<FeedSpec>>> = vec![
        None,
        Some(Box::new(FeedSpec::Filter(P::Cmp("v", C::Ne, json!(null))))),
        Some(Box::new(FeedSpec::Between(
            Ix::V,
            Included(json!(false)),
            Excluded(json!("")),
        ))),
        Some(Box::new(FeedSpec::Between(
            Ix::Tags,
            Included(json!(0)),
            Unbounded,
        ))),
        Some(Box::new(FeedSpec::GetAll(
            Ix::Tags,
            vec![json!(1), json!("a"), json!([1])],
        ))),
        Some(Box::new(FeedSpec::Pluck(
            None,
            vec!["v", "g", "n", "o.a", "tags", "w", "id"],
        ))),
    ];
    for src in &sources {
        for red in [
            Red::Count,
            Red::Sum("n"),
            Red::Avg("n"),
            Red::Min("v"),
            Red::Max("v"),
            Red::Min("o.a"),
            Red::Max("o.a"),
        ] {
            v.push(FeedSpec::Agg(src.clone(), red));
            v.push(FeedSpec::Group(src.clone(), "g", red));
        }
        for red in [Red::Count, Red::Min("v"), Red::Max("v")] {
            v.push(FeedSpec::Group(src.clone(), "v", red));
            v.push(FeedSpec::Group(src.clone(), "tags", red));
        }
        for red in [Red::Count, Red::Sum("n"), Red::Max("v"), Red::Min("v")] {
            v.push(FeedSpec::GroupIx(src.clone(), Ix::Tags, red));
            v.push(FeedSpec::GroupIx(src.clone(), Ix::Vw, red));
        }
    }
    v
}

fn rows_query(t: &Table, s: &FeedSpec) -> Query {
    match s {
        FeedSpec::Filter(p) => t.filter(p.build()),
        FeedSpec::Between(ix, lo, hi) => t.between(lo.clone(), hi.clone()).index(ix.name()),
        FeedSpec::GetAll(ix, vals) => t.get_all(vals.clone()).index(ix.name()),
        FeedSpec::Keys(keys) => t.get_all(keys.clone()),
        FeedSpec::TopN {
            ix,
            desc,
            n,
            range,
            filter,
        } => {
            let o = if *desc {
                Order::index(ix.name()).desc()
            } else {
                Order::index(ix.name())
            };
            let q = match range {
                Some((lo, hi)) => t.between(lo.clone(), hi.clone()).index(ix.name()),
                None => t.query(),
            };
            let q = q.order_by(o);
            let q = match filter {
                Some(p) => q.filter(p.build()),
                None => q,
            };
            q.limit(*n)
        }
        FeedSpec::Agg(src, _) | FeedSpec::Group(src, ..) | FeedSpec::GroupIx(src, ..) => {
            match src {
                Some(s) => rows_query(t, s),
                None => t.query(),
            }
        }
        FeedSpec::Pluck(src, paths) => match src {
            Some(s) => rows_query(t, s),
            None => t.query(),
        }
        .pluck(paths.clone()),
        FeedSpec::Without(src, paths) => match src {
            Some(s) => rows_query(t, s),
            None => t.query(),
        }
        .without(paths.clone()),
        FeedSpec::Point(_) => unreachable!("point feeds are not queries"),
    }
}

fn red_of(g: remodel::Grouped, red: Red) -> remodel::Aggregate<Vec<remodel::Group>> {
    match red {
        Red::Count => g.count(),
        Red::Sum(f) => g.sum(f),
        Red::Avg(f) => g.avg(f),
        Red::Min(f) => g.min(f),
        Red::Max(f) => g.max(f),
    }
}

fn groups_state(v: &Value) -> State {
    State::Groups(
        v.as_array()
            .unwrap()
            .iter()
            .map(|g| (text(&g["group"]), text(&g["reduction"])))
            .collect(),
    )
}

async fn open_feed(t: &Table, s: &FeedSpec) -> remodel::Result<Feed> {
    if let FeedSpec::Point(k) = s {
        return t.get(k.clone()).changes().include_initial(true).await;
    }
    let q = rows_query(t, s);
    match s {
        FeedSpec::TopN { .. } => {
            q.changes()
                .include_initial(true)
                .include_offsets(true)
                .await
        }
        FeedSpec::Agg(_, red) => {
            let c = match red {
                Red::Count => q.count().changes(),
                Red::Sum(f) => q.sum(f).changes(),
                Red::Avg(f) => q.avg(f).changes(),
                Red::Min(f) => q.min(f).changes(),
                Red::Max(f) => q.max(f).changes(),
            };
            c.include_initial(true).await
        }
        FeedSpec::Group(_, by, red) => {
            red_of(q.group(by), *red)
                .changes()
                .include_initial(true)
                .await
        }
        FeedSpec::GroupIx(_, ix, red) => {
            red_of(q.group_by_index(ix.name()), *red)
                .changes()
                .include_initial(true)
                .await
        }
        _ => q.changes().include_initial(true).await,
    }
}

fn bag_of(rows: &[Value]) -> State {
    let mut t: Vec<String> = rows.iter().map(text).collect();
    t.sort();
    State::Bag(t)
}

async fn rerun(t: &Table, s: &FeedSpec) -> Result<State, String> {
    let e = |e: Error| kind(&e);
    if let FeedSpec::Point(k) = s {
        let row = t.get(k.clone()).await.map_err(e)?;
        return Ok(bag_of(&row.into_iter().collect::<Vec<_>>()));
    }
    let q = rows_query(t, s);
    Ok(match s {
        FeedSpec::TopN { .. } => State::List(q.run().await.map_err(e)?.iter().map(text).collect()),
        FeedSpec::Agg(_, red) => State::One(text(&match red {
            Red::Count => json!(q.count().await.map_err(e)?),
            Red::Sum(f) => json!(q.sum(f).await.map_err(e)?),
            Red::Avg(f) => json!(q.avg(f).await.map_err(e)?),
            Red::Min(f) => json!(q.min(f).await.map_err(e)?),
            Red::Max(f) => json!(q.max(f).await.map_err(e)?),
        })),
        FeedSpec::Group(_, by, red) => groups_state(
            &serde_json::to_value(red_of(q.group(by), *red).await.map_err(e)?).unwrap(),
        ),
        FeedSpec::GroupIx(_, ix, red) => groups_state(
            &serde_json::to_value(red_of(q.group_by_index(ix.name()), *red).await.map_err(e)?)
                .unwrap(),
        ),
        _ => bag_of(&q.run().await.map_err(e)?),
    })
}

/// The rows of a rows spec, as the oracle sees them (with their multiplicity).
fn oracle_rows(m: &Model, s: &FeedSpec) -> Vec<Value> {
    match s {
        FeedSpec::Filter(p) => m.rows().into_iter().filter(|d| p.eval(d)).collect(),
        FeedSpec::Between(ix, lo, hi) => m.range(*ix, lo, hi, false),
        FeedSpec::GetAll(ix, vals) => m.get_all(*ix, vals),
        FeedSpec::Keys(keys) => m.get_all(Ix::Id, keys),
        FeedSpec::Point(k) => m.get_all(Ix::Id, std::slice::from_ref(k)),
        FeedSpec::TopN {
            ix,
            desc,
            n,
            range,
            filter,
        } => {
            let (lo, hi) = range
                .clone()
                .unwrap_or((Bound::Unbounded, Bound::Unbounded));
            m.range(*ix, &lo, &hi, *desc)
                .into_iter()
                .filter(|d| filter.as_ref().is_none_or(|p| p.eval(d)))
                .take(*n)
                .collect()
        }
        FeedSpec::Agg(src, _) | FeedSpec::Group(src, ..) | FeedSpec::GroupIx(src, ..) => {
            match src {
                Some(s) => oracle_rows(m, s),
                None => m.rows(),
            }
        }
        FeedSpec::Pluck(src, paths) => {
            let rows = match src {
                Some(s) => oracle_rows(m, s),
                None => m.rows(),
            };
            rows.iter().map(|d| pluck(d, paths)).collect()
        }
        FeedSpec::Without(src, paths) => {
            let rows = match src {
                Some(s) => oracle_rows(m, s),
                None => m.rows(),
            };
            rows.iter().map(|d| without(d, paths)).collect()
        }
    }
}

/// `pluck`: the fields at the paths that exist, nested as in the document.
fn pluck(doc: &Value, paths: &[&str]) -> Value {
    let mut out = json!({});
    for p in paths {
        let Some(v) = get(doc, p) else { continue };
        let segs: Vec<&str> = p.split('.').collect();
        let mut cur = &mut out;
        for s in &segs[..segs.len() - 1] {
            let m = cur.as_object_mut().unwrap();
            let e = m.entry(s.to_string()).or_insert_with(|| json!({}));
            if !e.is_object() {
                *e = json!({});
            }
            cur = e;
        }
        cur.as_object_mut()
            .unwrap()
            .insert(segs[segs.len() - 1].to_string(), v.clone());
    }
    out
}

/// `without`: the document less the fields at the paths.
fn without(doc: &Value, paths: &[&str]) -> Value {
    let mut out = doc.clone();
    for p in paths {
        let segs: Vec<&str> = p.split('.').collect();
        let mut cur = Some(&mut out);
        for s in &segs[..segs.len() - 1] {
            cur = cur
                .and_then(|c| c.as_object_mut())
                .and_then(|m| m.get_mut(*s));
        }
        if let Some(m) = cur.and_then(|c| c.as_object_mut()) {
            m.remove(segs[segs.len() - 1]);
        }
    }
    out
}

fn oracle(m: &Model, s: &FeedSpec) -> Result<State, String> {
    let rows = oracle_rows(m, s);
    Ok(match s {
        FeedSpec::TopN { .. } => State::List(rows.iter().map(text).collect()),
        FeedSpec::Agg(_, red) => State::One(text(&reduce(&rows, *red)?)),
        FeedSpec::Group(_, by, red) => groups_state(&grouped(&rows, Ok(by), *red)?),
        FeedSpec::GroupIx(_, ix, red) => groups_state(&grouped(&rows, Err(*ix), *red)?),
        _ => bag_of(&rows),
    })
}

struct Live {
    spec: FeedSpec,
    feed: Feed,
    state: State,
    /// The first problem seen (later steps of this feed are not checked).
    broken: Option<String>,
}

impl Live {
    fn empty(spec: &FeedSpec) -> State {
        match spec {
            FeedSpec::TopN { .. } => State::List(vec![]),
            FeedSpec::Agg(..) => State::One("<nothing>".into()),
            FeedSpec::Group(..) | FeedSpec::GroupIx(..) => State::Groups(BTreeMap::new()),
            _ => State::Bag(vec![]),
        }
    }

    /// Applies every queued item; `Err` says why one cannot be applied.
    fn drain(&mut self) -> Result<(), String> {
        while let Some(Some(item)) = self.feed.next().now_or_never() {
            let c = item.map_err(|e| format!("error item {e:?}"))?;
            let old = c.old_val().map(text);
            let new = c.new_val().map(text);
            match &mut self.state {
                State::Bag(rows) => {
                    if let Some(o) = &old {
                        let i = rows
                            .iter()
                            .position(|r| r == o)
                            .ok_or_else(|| format!("old_val {} not held", short(o)))?;
                        rows.remove(i);
                    }
                    if let Some(n) = new {
                        rows.push(n);
                        rows.sort();
                    }
                }
                State::List(rows) => {
                    if let Some(o) = &old {
                        let i = c.old_offset().ok_or("old_val without old_offset")?;
                        if rows.get(i) != Some(o) {
                            return Err(format!("old_offset {i} does not hold {}", short(o)));
                        }
                        rows.remove(i);
                    }
                    if let Some(n) = new {
                        let i = c.new_offset().ok_or("new_val without new_offset")?;
                        if i > rows.len() {
                            return Err(format!("new_offset {i} past the end"));
                        }
                        rows.insert(i, n);
                    }
                }
                State::Groups(groups) => {
                    let split = |v: &Value| (text(&v["group"]), text(&v["reduction"]));
                    if let Some(o) = c.old_val() {
                        let (g, r) = split(o);
                        if groups.get(&g) != Some(&r) {
                            return Err(format!(
                                "old_val of group {g}: {r}, held {:?}",
                                groups.get(&g)
                            ));
                        }
                        groups.remove(&g);
                    }
                    if let Some(n) = c.new_val() {
                        let (g, r) = split(n);
                        groups.insert(g, r);
                    }
                }
                State::One(v) => {
                    if let Some(n) = new {
                        *v = n;
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum LiveOp {
    Put(Value),
    Set(Value, &'static str, Value),
    Unset(Value, &'static str),
    /// `get(key).replace(doc)`, the key possibly in another representation.
    Replace(Value, Value),
    Delete(Value),
    UpdateWhere(P, Value),
    DeleteWhere(P),
    Batch(Vec<(Value, Option<Value>)>),
}

fn live_keys() -> Vec<Value> {
    vec![
        json!(0),
        json!(1),
        json!(2.0),
        json!(-7),
        json!(1.5),
        json!(u64::MAX),
        json!("a"),
        json!("a\u{0}"),
        json!(""),
        json!(true),
        json!([1, "a"]),
        json!("日本"),
        json!(2),
        json!(-0.0),
    ]
}

/// The key, or sometimes another representation of it (`2` for `2.0`, `-0.0` for `0`).
fn alt(rng: &mut StdRng, k: &Value) -> Value {
    if !rng.gen_bool(0.5) {
        return k.clone();
    }
    let f = k.as_f64();
    if f == Some(0.0) {
        pick(rng, &[json!(0), json!(-0.0), json!(0.0)])
    } else if f == Some(2.0) {
        pick(rng, &[json!(2), json!(2.0)])
    } else {
        k.clone()
    }
}

fn random_op(rng: &mut StdRng) -> LiveOp {
    let keys = live_keys();
    let key = pick(rng, &keys);
    match rng.gen_range(0..20) {
        0..=4 => LiveOp::Put(random_doc(rng, key)),
        5..=10 => {
            let f = FIELDS[rng.gen_range(0..FIELDS.len())];
            let key = alt(rng, &key);
            match random_field(rng, f) {
                Some(v) => LiveOp::Set(key, f, v),
                None => LiveOp::Unset(key, f),
            }
        }
        11..=12 => {
            let get = alt(rng, &key);
            LiveOp::Replace(get, random_doc(rng, key))
        }
        13..=14 => LiveOp::Delete(alt(rng, &key)),
        15..=16 => {
            let p = P::Cmp("v", OPS[rng.gen_range(0..6)], pick(rng, &operands()));
            let f = ["g", "v", "n"][rng.gen_range(0..3)];
            let v = random_field(rng, f).unwrap_or(Value::Null);
            let mut patch = Map::new();
            patch.insert(f.into(), v);
            LiveOp::UpdateWhere(p, Value::Object(patch))
        }
        17 => LiveOp::DeleteWhere(P::Cmp("g", C::Eq, pick(rng, &group_pool()))),
        _ => {
            let n = rng.gen_range(1..4);
            LiveOp::Batch(
                (0..n)
                    .map(|_| {
                        let k = pick(rng, &keys);
                        let doc = rng.gen_bool(0.7).then(|| random_doc(rng, k.clone()));
                        (k, doc)
                    })
                    .collect(),
            )
        }
    }
}

async fn apply_op(db: &Database, t: &Table, m: &mut Model, op: &LiveOp) {
    match op {
        LiveOp::Put(doc) => {
            t.insert(doc.clone())
                .conflict(Conflict::Replace)
                .await
                .unwrap()
                .check()
                .unwrap();
            m.put(doc.clone());
        }
        LiveOp::Set(k, f, v) => {
            let mut patch = Map::new();
            patch.insert(f.to_string(), v.clone());
            let patch = Value::Object(patch);
            t.get(k.clone())
                .update(patch.clone())
                .await
                .unwrap()
                .check()
                .unwrap();
            m.update(k, &patch);
        }
        LiveOp::Unset(k, f) => {
            let Some(i) = m.find(k) else { return };
            let mut doc = m.docs[i].clone();
            doc.as_object_mut().unwrap().remove(*f);
            t.get(k.clone())
                .replace(doc.clone())
                .await
                .unwrap()
                .check()
                .unwrap();
            m.docs[i] = doc;
        }
        LiveOp::Replace(get, doc) => {
            t.get(get.clone())
                .replace(doc.clone())
                .await
                .unwrap()
                .check()
                .unwrap();
            if m.find(&doc["id"]).is_some() {
                m.put(doc.clone());
            }
        }
        LiveOp::Delete(k) => {
            t.get(k.clone()).delete().await.unwrap().check().unwrap();
            m.delete(k);
        }
        LiveOp::UpdateWhere(p, patch) => {
            t.filter(p.build())
                .update(patch.clone())
                .await
                .unwrap()
                .check()
                .unwrap();
            for d in m.docs.iter_mut().filter(|d| p.eval(d)) {
                merge(d, patch);
            }
        }
        LiveOp::DeleteWhere(p) => {
            t.filter(p.build()).delete().await.unwrap().check().unwrap();
            m.docs.retain(|d| !p.eval(d));
        }
        LiveOp::Batch(ws) => {
            let mut b = db.batch();
            for (k, doc) in ws {
                b = match doc {
                    Some(d) => b.insert_with("t", d.clone(), Conflict::Replace),
                    None => b.delete("t", k.clone()),
                };
            }
            b.await.unwrap();
            for (k, doc) in ws {
                match doc {
                    Some(d) => m.put(d.clone()),
                    None => m.delete(k),
                }
            }
        }
    }
}

/// Opens every feed on `db`, runs `steps` random writes of `seed`, and after each compares
/// what each feed's consumer holds with the query re-run and with the oracle. Returns the
/// problems found (one per feed at most).
async fn live_scenario(db: &Database, seed: u64, steps: usize, pg: bool) -> Vec<String> {
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    make_indexes(&t).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = Model::default();
    for k in live_keys().into_iter().take(6) {
        let op = LiveOp::Put(random_doc(&mut rng, k));
        apply_op(db, &t, &mut m, &op).await;
    }
    let mut problems = Vec::new();
    let mut lives = Vec::new();
    for spec in feed_specs() {
        match open_feed(&t, &spec).await {
            Ok(feed) => lives.push(Live {
                state: Live::empty(&spec),
                spec,
                feed,
                broken: None,
            }),
            // Top-N on a multi index is refused (Unwatchable), which the docs leave open.
            Err(Error::Unwatchable(_)) if matches!(spec, FeedSpec::TopN { ix: Ix::Tags, .. }) => {}
            Err(e) => problems.push(format!("seed {seed}: {spec:?} could not open: {e:?}")),
        }
    }
    let mut ops: Vec<String> = Vec::new();
    for step in 0..=steps {
        if step > 0 {
            let op = random_op(&mut rng);
            ops.push(short(&format!("{op:?}")));
            apply_op(db, &t, &mut m, &op).await;
        }
        if pg {
            db.sync().await.unwrap();
        }
        for l in lives.iter_mut().filter(|l| l.broken.is_none()) {
            let drained = l.drain();
            let want = oracle(&m, &l.spec);
            let again = rerun(&t, &l.spec).await;
            let why = match drained {
                Err(why) => Some(why),
                Ok(()) if again != want => Some(format!(
                    "the query {} differs from the oracle {}",
                    short(&format!("{again:?}")),
                    short(&format!("{want:?}"))
                )),
                Ok(()) if Ok(&l.state) != want.as_ref() => Some(format!(
                    "the feed holds {}, the oracle says {}",
                    short(&format!("{:?}", l.state)),
                    short(&format!("{want:?}"))
                )),
                Ok(()) => None,
            };
            if let Some(why) = why {
                let last: Vec<&String> = ops.iter().rev().take(3).collect();
                let msg = format!(
                    "seed {seed} step {step}: {:?}: {why}\n    last ops (newest first): {last:?}",
                    l.spec
                );
                l.broken = Some(msg.clone());
                problems.push(msg);
            }
        }
    }
    problems
}

fn report(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} feeds went wrong (first 8):\n{}",
        problems.len(),
        problems.into_iter().take(8).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_and_aggregates_follow_type_changing_writes() {
    let seeds: &[u64] = if remodel::postgres::suites_on_postgres() {
        &[11]
    } else {
        &[11, 12, 13]
    };
    let mut problems = Vec::new();
    for &seed in seeds {
        let db = common::soft_db().await;
        problems
            .extend(live_scenario(&db, seed, 32, remodel::postgres::suites_on_postgres()).await);
    }
    report(problems);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_on_postgres_follow_type_changing_writes() {
    let Some((db, _keep)) = pg_database("live_feeds_on_postgres_follow_type_changing_writes").await
    else {
        return;
    };
    report(live_scenario(&db, 21, 25, true).await);
}

// ---------------------------------------------------------------------------------------------
// Values the store must refuse
// ---------------------------------------------------------------------------------------------

/// Arrays and objects nested `depth` levels around a leaf.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for i in 0..depth {
        v = if i % 2 == 0 {
            Value::Array(vec![v])
        } else {
            let mut m = Map::new();
            m.insert("k".into(), v);
            Value::Object(m)
        };
    }
    v
}

fn with_v(id: Value, v: Value) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), id);
    m.insert("v".into(), v);
    Value::Object(m)
}

/// The kind of error a write got (its own `Err`, or the first per-document error).
fn write_error(r: remodel::Result<remodel::WriteResult>) -> Option<String> {
    match r {
        Err(e) => Some(kind(&e)),
        Ok(w) => w.first_error.as_ref().map(kind),
    }
}

async fn refusals(db: &Database, pg: bool) -> Vec<String> {
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    make_indexes(&t).await;
    let base = vec![
        json!({"id": 1, "v": 1, "tags": [1, 2]}),
        json!({"id": "s", "v": "a\u{0}", "w": -0.0}),
        json!({"id": 2.5, "v": [], "o": {"a": u64::MAX}}),
    ];
    t.insert_many(base.clone()).await.unwrap().check().unwrap();
    let mut feed = t.changes().await.unwrap();
    let fails = std::cell::RefCell::new(Vec::new());
    let expect = |what: &str, got: Option<String>, want: &str| {
        if got.as_deref() != Some(want) {
            fails
                .borrow_mut()
                .push(format!("{what}: got {got:?}, want {want}"));
        }
    };
    // Depth: the document counts as one level.
    let at_limit = with_v(json!("deep"), nested(99));
    expect(
        "one level past the limit",
        write_error(t.insert(with_v(json!("deep"), nested(100))).await),
        "TooDeep",
    );
    expect(
        "insert_many with one too deep",
        write_error(
            t.insert_many(vec![
                json!({"id": "ok1"}),
                with_v(json!("deep"), nested(100)),
            ])
            .await,
        ),
        "TooDeep",
    );
    expect(
        "batch with one too deep",
        write_error(
            db.batch()
                .insert("t", json!({"id": "ok2"}))
                .insert("t", with_v(json!("deep"), nested(100)))
                .await,
        ),
        "TooDeep",
    );
    let deep_patch = with_v(json!(1), nested(100));
    expect(
        "Patch::with returning one level too deep",
        write_error(
            t.get(1)
                .update(Patch::with(move |_| Ok(deep_patch.clone())))
                .await,
        ),
        "TooDeep",
    );
    expect(
        "replace_with returning one level too deep",
        write_error(
            t.get(1)
                .replace_with(|_| Ok(with_v(json!(1), nested(100))))
                .await,
        ),
        "TooDeep",
    );
    expect(
        "conflict_with returning one level too deep",
        write_error(
            t.insert(json!({"id": 1}))
                .conflict_with(|_, _| Ok(with_v(json!(1), nested(100))))
                .await,
        ),
        "TooDeep",
    );
    expect(
        "update by query, one level too deep",
        write_error(t.query().update(json!({"v": nested(100)})).await),
        "TooDeep",
    );
    // Keys: null, objects, arrays holding them, encodings past 1,024 bytes (a string of n
    // bytes encodes to n + 3, a NUL to two bytes).
    for (what, key) in [
        ("null key", json!(null)),
        ("object key", json!({"a": 1})),
        ("array key holding null", json!([1, null])),
        ("array key holding an object", json!([{}])),
        ("1,025-byte key", json!("k".repeat(1022))),
        ("NUL key past the limit", json!("\u{0}".repeat(511))),
    ] {
        expect(
            what,
            write_error(t.insert(json!({"id": key})).await),
            "InvalidKey",
        );
    }
    // Not documents.
    for (what, doc) in [
        ("a number", json!(5)),
        ("an array", json!([{"id": 9}])),
        ("a string", json!("doc")),
        ("null", json!(null)),
    ] {
        let got = write_error(t.insert(doc).await);
        if got.is_none() || got.as_deref() == Some("Storage") {
            fails
                .borrow_mut()
                .push(format!("inserting {what}: {got:?}"));
        }
    }
    // A multi-indexed array past MAX_MULTI_ELEMENTS.
    let big: Vec<Value> = (0..=remodel::MAX_MULTI_ELEMENTS)
        .map(|i| json!(i))
        .collect();
    expect(
        "10,001 tags",
        write_error(t.insert(json!({"id": "big", "tags": big})).await),
        "TooLarge",
    );
    // Reads with bad operands.
    let deep_pred = (0..101).fold(field("v").eq(1), |p, _| !p);
    expect(
        "predicate nested 101 levels",
        t.filter(deep_pred).run().await.err().map(|e| kind(&e)),
        "TooDeep",
    );
    expect(
        "operand one level too deep",
        t.filter(field("v").eq(nested(101)))
            .run()
            .await
            .err()
            .map(|e| kind(&e)),
        "TooDeep",
    );
    expect(
        "between bound too deep",
        t.between(Bound::Included(nested(101)), Bound::Unbounded)
            .index("v")
            .run()
            .await
            .err()
            .map(|e| kind(&e)),
        "TooDeep",
    );
    expect(
        "bad path",
        t.filter(field("a..b").eq(1))
            .run()
            .await
            .err()
            .map(|e| kind(&e)),
        "InvalidName",
    );
    expect(
        "sum of a string",
        t.query().sum("v").await.err().map(|e| kind(&e)),
        "InvalidQuery",
    );
    let mut fails = fails.into_inner();
    // Nothing of the above was written: the rows are the three, the feed saw nothing.
    if pg {
        db.sync().await.unwrap();
    }
    let rows = t.query().run().await.unwrap();
    let mut want: Vec<Value> = base.clone();
    want.sort_by(|a, b| ord(&a["id"], &b["id"]));
    if rows_text(&rows, false) != rows_text(&want, false) {
        fails.push(format!(
            "the table changed: {}",
            short(&rows_text(&rows, false))
        ));
    }
    let seen: Vec<String> = std::iter::from_fn(|| feed.next().now_or_never().flatten())
        .map(|c| short(&format!("{c:?}")))
        .collect();
    if !seen.is_empty() {
        fails.push(format!("the feed saw refused writes: {seen:?}"));
    }
    for ix in ["v", "tags", "vw", "oa"] {
        let n = t.order_by(Order::index(ix)).run().await.unwrap().len();
        let want = Model { docs: base.clone() }
            .entries(match ix {
                "v" => Ix::V,
                "tags" => Ix::Tags,
                "vw" => Ix::Vw,
                _ => Ix::Oa,
            })
            .len();
        if n != want {
            fails.push(format!("index {ix} has {n} entries, want {want}"));
        }
    }
    // What is at the limits is accepted and reads back.
    for (what, doc) in [
        ("a document of depth 100", at_limit.clone()),
        ("a 1,024-byte key", json!({"id": "k".repeat(1021)})),
        (
            "a NUL key of 1,023 bytes",
            json!({"id": "\u{0}".repeat(510)}),
        ),
        (
            "10,000 tags",
            json!({"id": "tags", "tags": (0..remodel::MAX_MULTI_ELEMENTS).collect::<Vec<_>>()}),
        ),
    ] {
        match t.insert(doc.clone()).await {
            Ok(w) if w.inserted == 1 => {
                let back = t.get(doc["id"].clone()).await.unwrap();
                if back.as_ref().map(text) != Some(text(&doc)) {
                    fails.push(format!("{what}: read back differs"));
                }
            }
            other => fails.push(format!(
                "{what}: refused: {:?}",
                other.map(|w| w.first_error)
            )),
        }
    }
    fails
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_values_get_a_typed_error_and_write_nothing() {
    let db = common::db().await;
    let fails = refusals(&db, remodel::postgres::suites_on_postgres()).await;
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_values_on_postgres_get_a_typed_error_and_write_nothing() {
    let Some((db, _keep)) =
        pg_database("refused_values_on_postgres_get_a_typed_error_and_write_nothing").await
    else {
        return;
    };
    let fails = refusals(&db, true).await;
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Targeted edges
// ---------------------------------------------------------------------------------------------

/// The next item of a feed, within a wait (on PostgreSQL items come through the pump).
async fn next_item(feed: &mut Feed) -> remodel::Change {
    tokio::time::timeout(std::time::Duration::from_secs(20), feed.next())
        .await
        .expect("an item within the wait")
        .expect("the feed goes on")
        .expect("a change, not an error")
}

// Was a bug: a write of -0.0 over a stored 0.0 (float) was counted `unchanged` and dropped (serde_json's `==` says 0.0 == -0.0), though the store keeps -0.0 exactly everywhere else.
/// What a write stores is what reads return: the sign of zero included. An insert keeps
/// `-0.0`, and so does a write over `0` (an integer); a write over `0.0` must too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_minus_zero_over_zero_is_stored() {
    let db = common::db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.insert_many(vec![
        json!({"id": "fresh", "v": -0.0}),
        json!({"id": "int", "v": 0}),
        json!({"id": "float", "v": 0.0}),
        json!({"id": "nested", "o": {"a": [0.0]}}),
    ])
    .await
    .unwrap()
    .check()
    .unwrap();
    let mut fails = Vec::new();
    let fresh = t.get("fresh").await.unwrap().unwrap();
    if text(&fresh["v"]) != "-0.0" {
        fails.push(format!("insert: {}", text(&fresh)));
    }
    for id in ["int", "float"] {
        let w = t.get(id).update(json!({"v": -0.0})).await.unwrap();
        let back = t.get(id).await.unwrap().unwrap();
        if text(&back["v"]) != "-0.0" {
            fails.push(format!(
                "update of {id} to -0.0: {w:?} -> read back {}",
                text(&back)
            ));
        }
    }
    let w = t
        .get("nested")
        .replace(json!({"id": "nested", "o": {"a": [-0.0]}}))
        .await
        .unwrap();
    let back = t.get("nested").await.unwrap().unwrap();
    if text(&back) != text(&json!({"id": "nested", "o": {"a": [-0.0]}})) {
        fails.push(format!("replace: {w:?} -> read back {}", text(&back)));
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// The average of finite numbers is finite: the mean of `[MAX, MAX]` is `MAX` (it was
/// `inf`, shown as `null`: the rounded sum divided by the count), of `[MAX, MAX, -MAX]` is
/// `MAX / 3`; the sums are exact (`MAX + MAX - MAX` is `MAX`, not `inf`). A sum beyond the
/// doubles' range is an `InvalidQuery` error, for the query and the live sum alike (JSON has
/// no infinity: it read as `null`, "no row has it"); the live sum agrees with the query at
/// every other step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_and_averages_near_the_largest_double() {
    let db = common::db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let sum_feed = || async { t.query().sum("n").changes().include_initial(true).await };
    let mut live = sum_feed().await.unwrap();
    assert_eq!(next_item(&mut live).await.new_val(), Some(&json!(0.0)));
    t.insert(json!({"id": 1, "n": f64::MAX})).await.unwrap();
    assert_eq!(t.query().sum("n").await.unwrap(), f64::MAX);
    assert_eq!(next_item(&mut live).await.new_val(), Some(&json!(f64::MAX)));
    // Beyond the range: the query and the live sum both say so.
    t.insert(json!({"id": 2, "n": f64::MAX})).await.unwrap();
    assert!(matches!(
        t.query().sum("n").await,
        Err(Error::InvalidQuery(_))
    ));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), live.next())
        .await
        .expect("the live sum ends");
    // (As a feed ends when its aggregate cannot be maintained: a sum over a string, say.)
    assert!(
        matches!(&ended, Some(Err(Error::FeedAborted(why))) if why.contains("beyond the range")),
        "{ended:?}"
    );
    assert!(matches!(sum_feed().await, Err(Error::InvalidQuery(_))));
    // The means are finite all along.
    assert_eq!(t.query().avg("n").await.unwrap(), Some(f64::MAX));
    let groups = t.query().group("nope").avg("n").await.unwrap();
    assert_eq!(groups[0].reduction, json!(f64::MAX));
    let mut live_avg = t
        .query()
        .avg("n")
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    assert_eq!(
        next_item(&mut live_avg).await.new_val(),
        Some(&json!(f64::MAX))
    );
    // Back in range.
    t.insert(json!({"id": 3, "n": -f64::MAX})).await.unwrap();
    assert_eq!(t.query().sum("n").await.unwrap(), f64::MAX);
    assert_eq!(t.query().avg("n").await.unwrap(), Some(f64::MAX / 3.0));
    assert_eq!(
        next_item(&mut live_avg).await.new_val(),
        Some(&json!(f64::MAX / 3.0))
    );
    let mut live = sum_feed().await.unwrap();
    assert_eq!(next_item(&mut live).await.new_val(), Some(&json!(f64::MAX)));
}

/// Values of a megabyte (a string with NUL bytes inside, an array of long strings) are
/// stored, indexed (simple, compound, multi), ranged, filtered, grouped and watched like
/// small ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_values_are_indexed_ranged_and_watched() {
    let db = common::db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    make_indexes(&t).await;
    let big = |c: char| {
        let mut s: String = std::iter::repeat_n(c, 1 << 20).collect();
        s.insert(1000, '\u{0}');
        s
    };
    let (a, b) = (big('a'), big('b'));
    let mut top = t
        .order_by(Order::index("v").desc())
        .limit(2)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .await
        .unwrap();
    let mut range = t
        .between(Bound::Included(json!("a")), Bound::Excluded(json!("b")))
        .index("v")
        .changes()
        .await
        .unwrap();
    let mut m = Model::default();
    let docs = vec![
        json!({"id": 1, "v": a.clone(), "w": 1, "tags": [a.clone(), b.clone(), a.clone()]}),
        json!({"id": 2, "v": b.clone(), "w": b.clone(), "o": {"a": a.clone()}}),
        json!({"id": 3, "v": "c", "tags": [b.clone()]}),
    ];
    for d in &docs {
        t.insert(d.clone()).await.unwrap().check().unwrap();
        m.put(d.clone());
    }
    let mut r = Run::default();
    for ix in [Ix::V, Ix::Tags, Ix::Vw, Ix::Oa] {
        r.rows(
            format!("order_by(index {})", ix.name()),
            t.order_by(Order::index(ix.name())).run().await,
            Want::List(m.range(ix, &Bound::Unbounded, &Bound::Unbounded, false)),
        );
    }
    for (lo, hi) in [
        (json!("a"), json!("b")),
        (json!(a.clone()), json!(b.clone())),
        (json!(b.clone()), json!("c")),
    ] {
        let (lo, hi) = (Bound::Included(lo), Bound::Excluded(hi));
        r.rows(
            format!(
                "between {} {}",
                short(&bound_name(&lo)),
                short(&bound_name(&hi))
            ),
            t.between(lo.clone(), hi.clone()).index("v").run().await,
            Want::Bag(m.range(Ix::V, &lo, &hi, false)),
        );
    }
    r.rows(
        "get_all(big a).index(tags)".into(),
        t.get_all([json!(a.clone())]).index("tags").run().await,
        Want::List(m.get_all(Ix::Tags, &[json!(a.clone())])),
    );
    r.rows(
        "filter(v == big b)".into(),
        t.filter(field("v").eq(b.clone())).run().await,
        Want::List(vec![docs[1].clone()]),
    );
    r.one(
        "group_by_index(tags).count()".into(),
        t.query()
            .group_by_index("tags")
            .count()
            .await
            .map(|g| serde_json::to_value(g).unwrap()),
        want_of(grouped(&m.rows(), Err(Ix::Tags), Red::Count)),
    );
    // The feeds saw the rows: the range feed the `a` row, the top-2 `c` then `b`.
    let first = next_item(&mut range).await;
    r.one(
        "range feed item".into(),
        Ok(first.new_val().cloned().unwrap_or(Value::Null)),
        Want::One(docs[0].clone()),
    );
    let mut held: Vec<Value> = Vec::new();
    while held.len() < 2 || held[0]["id"] != json!(3) || held[1]["id"] != json!(2) {
        let c = next_item(&mut top).await;
        if let Some(i) = c.old_offset() {
            held.remove(i);
        }
        if let (Some(i), Some(v)) = (c.new_offset(), c.new_val()) {
            held.insert(i, v.clone());
        }
    }
    r.rows(
        "top-2 feed".into(),
        Ok(held),
        Want::List(m.range(Ix::V, &Bound::Unbounded, &Bound::Unbounded, true)[..2].to_vec()),
    );
    r.finish("megabyte values");
}

/// `eq_join` on join values of every type: a value equal to a key in another representation
/// (`2.0` for `2`, `-0.0` for `0`) joins it; values that are no key (null, objects) join
/// nothing; through a secondary index, each entry with an equal value, in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_on_values_of_every_type() {
    let db = common::db().await;
    let (t, m) = load(&db, 77).await;
    db.create_table("l").await.unwrap();
    let l = db.table("l");
    let mut rng = StdRng::seed_from_u64(5);
    let mut pool = key_pool();
    pool.extend([
        json!(2.0),
        json!(-0.0),
        json!(null),
        json!({"a": 1}),
        json!([1.0, "a"]),
    ]);
    pool.extend(value_pool());
    let mut left = Vec::new();
    for i in 0..60 {
        let mut d = json!({"id": i});
        if rng.gen_bool(0.9) {
            d["r"] = pick(&mut rng, &pool);
        }
        left.push(d);
    }
    l.insert_many(left.clone()).await.unwrap().check().unwrap();
    let rows = m.rows();
    let mut by_key = Vec::new();
    let mut by_index = Vec::new();
    for d in &left {
        let Some(r) = d.get("r") else { continue };
        for right in rows.iter().filter(|x| ord(&x["id"], r).is_eq()) {
            by_key.push(json!({"left": d, "right": right}));
        }
        for right in m.get_all(Ix::V, std::slice::from_ref(r)) {
            by_index.push(json!({"left": d, "right": right}));
        }
    }
    let mut run = Run::default();
    run.rows(
        "eq_join(r, t)".into(),
        l.query().eq_join("r", "t").run().await,
        Want::List(by_key),
    );
    run.rows(
        "eq_join(r, t).index(v)".into(),
        l.query().eq_join("r", "t").index("v").run().await,
        Want::List(by_index),
    );
    run.finish("joins");
    let _ = t;
}

/// Indexes on fields whose names hold NUL, non-ASCII and quote characters (document keys
/// may be any string): created, backfilled, maintained and read alike on every backend.
async fn odd_field_names(db: &Database) -> Result<Vec<String>, String> {
    db.create_table("t").await.map_err(|e| format!("{e:?}"))?;
    let t = db.table("t");
    let names = ["k\u{0}", "é\"\\", "日本.x"];
    t.insert_many(vec![
        json!({"id": 1, "k\u{0}": 2, "é\"\\": "b", "日本": {"x": [1]}}),
        json!({"id": 2, "k\u{0}": 1, "é\"\\": "a", "日本": {"x": []}}),
    ])
    .await
    .map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    for (i, f) in names.iter().enumerate() {
        let ix = format!("ix{i}");
        let made = t.create_index(&ix, IndexSpec::field(*f)).await;
        out.push(format!(
            "create_index({f:?}): {:?}",
            made.as_ref().map_err(kind)
        ));
        if made.is_err() {
            continue;
        }
        t.insert(json!({"id": 10 + i, "k\u{0}": 0, "é\"\\": "0", "日本": {"x": 0}}))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let rows = t.order_by(Order::index(&ix)).run().await;
        out.push(format!(
            "order_by({f:?}): {:?}",
            rows.map(|r| r.iter().map(|d| d["id"].clone()).collect::<Vec<_>>())
                .map_err(|e| kind(&e))
        ));
    }
    Ok(out)
}

// Was a bug (PostgreSQL only): create_index on a field named "k\u{0}" failed with Error::Storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_on_odd_field_names() {
    let db = common::db().await;
    let got = odd_field_names(&db).await.unwrap();
    let want = vec![
        "create_index(\"k\\0\"): Ok(())",
        "order_by(\"k\\0\"): Ok([Number(10), Number(2), Number(1)])",
        "create_index(\"é\\\"\\\\\"): Ok(())",
        "order_by(\"é\\\"\\\\\"): Ok([Number(10), Number(11), Number(2), Number(1)])",
        "create_index(\"日本.x\"): Ok(())",
        "order_by(\"日本.x\"): Ok([Number(2), Number(1), Number(10), Number(11), Number(12)])",
    ];
    assert_eq!(got, want);
}

// Was a bug: on PostgreSQL, create_index on a field whose name holds NUL failed with Error::Storage (the spec went into the catalog as jsonb, which refuses \u0000).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_on_odd_field_names_on_postgres() {
    let Some((db, _keep)) = pg_database("indexes_on_odd_field_names_on_postgres").await else {
        return;
    };
    let embedded = remodel::Config::temporary().open().await.unwrap();
    let want = odd_field_names(&embedded).await.unwrap();
    let got = odd_field_names(&db).await;
    assert_eq!(got, Ok(want));
}

/// Three processes on one PostgreSQL database: `a` writes the mixed documents; `b` was
/// connected before (it gets them through replication), `c` connects after (it loads them
/// from the tables). All three answer every query alike, and as the oracle.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_process_answers_alike() {
    let Some((a, pg)) = pg_database("every_postgres_process_answers_alike").await else {
        return;
    };
    let b = Database::connect(pg.url()).await.expect("b connects");
    let (_, m) = load(&a, 31337).await;
    b.sync().await.unwrap();
    let c = remodel::postgres::Connect::new(pg.url())
        .replica_in_memory(false)
        .open()
        .await
        .expect("c connects");
    let mut runs = Vec::new();
    for (name, db) in [("a", &a), ("b", &b), ("c", &c)] {
        let t = db.table("t");
        let mut r = Run::default();
        area_index_reads(&t, &m, &mut r).await;
        area_aggregates(&t, &m, &mut r).await;
        runs.push((name, r));
    }
    let mut fails = Vec::new();
    for (name, r) in &runs {
        if runs[0].1.results != r.results {
            let n = runs[0]
                .1
                .results
                .iter()
                .zip(&r.results)
                .filter(|(x, y)| x != y)
                .count();
            fails.push(format!("{name} differs from a in {n} answers"));
        }
        fails.extend(r.fails.iter().take(3).map(|f| format!("{name}: {f}")));
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// A resumable feed (durable change log) delivers the mixed documents exactly, live and
/// resumed from a cursor, and after a reopen of the database; an index range feed resumed
/// selects the rows as the live one did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_feeds_deliver_mixed_values_exactly() {
    let dir = common::files::scratch("vma_resume");
    let open = || {
        remodel::Config::new(&dir)
            .durability(remodel::Durability::Soft)
            .change_log(remodel::ChangeLogRetention::default())
            .open()
    };
    let mut rng = StdRng::seed_from_u64(8);
    let docs: Vec<Value> = key_pool()
        .into_iter()
        .take(24)
        .map(|k| random_doc(&mut rng, k))
        .collect();
    let range = (Bound::Included(json!(false)), Bound::Excluded(json!("")));
    let mut m = Model::default();
    let (live, live_range, cursor, range_cursor) = {
        let db = open().await.unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        make_indexes(&t).await;
        let mut feed = t.changes().await.unwrap();
        let mut rfeed = t
            .between(range.0.clone(), range.1.clone())
            .index("v")
            .changes()
            .await
            .unwrap();
        t.insert(docs[0].clone()).await.unwrap().check().unwrap();
        m.put(docs[0].clone());
        let first = next_item(&mut feed).await;
        let cursor = first.cursor().expect("a cursor");
        for d in &docs[1..] {
            t.insert(d.clone()).await.unwrap().check().unwrap();
            m.put(d.clone());
        }
        let mut live = Vec::new();
        while live.len() < docs.len() - 1 {
            live.push(next_item(&mut feed).await.new_val().cloned().unwrap());
        }
        let want_range = m.range(Ix::V, &range.0, &range.1, false).len();
        let mut live_range = Vec::new();
        let mut range_cursor = None;
        for i in 0..want_range {
            let c = next_item(&mut rfeed).await;
            if i == 0 {
                range_cursor = c.cursor();
            } else {
                live_range.push(c.new_val().cloned().unwrap());
            }
        }
        db.close().await.unwrap();
        (live, live_range, cursor, range_cursor)
    };
    let db = open().await.unwrap();
    let t = db.table("t");
    let mut r = Run::default();
    r.rows(
        "live items".into(),
        Ok(live.clone()),
        Want::List(docs[1..].to_vec()),
    );
    let mut resumed = t.changes().resume_from(cursor).await.unwrap();
    let mut again = Vec::new();
    while again.len() < docs.len() - 1 {
        again.push(next_item(&mut resumed).await.new_val().cloned().unwrap());
    }
    r.rows(
        "resumed items".into(),
        Ok(again),
        Want::List(docs[1..].to_vec()),
    );
    if let Some(rc) = range_cursor {
        let mut rfeed = t
            .between(range.0.clone(), range.1.clone())
            .index("v")
            .changes()
            .resume_from(rc)
            .await
            .unwrap();
        let mut again = Vec::new();
        while again.len() < live_range.len() {
            again.push(next_item(&mut rfeed).await.new_val().cloned().unwrap());
        }
        r.rows(
            "resumed range items".into(),
            Ok(again),
            Want::List(live_range),
        );
    }
    r.finish("resume");
    db.close().await.unwrap();
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
