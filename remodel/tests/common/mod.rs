//! Helpers shared by the integration tests.

use remodel::value::compare;
use remodel::{IndexSpec, Value};

/// What an index must hold for `docs`: one `(value, primary key)` entry per indexed value,
/// sorted in index order. Written from the documented rules, independently of the store:
/// a missing or null field is not indexed, a compound index needs every field, a multi
/// index has one entry per distinct non-null element.
pub fn expected_index_entries<'a>(
    docs: impl IntoIterator<Item = &'a Value>,
    spec: &IndexSpec,
) -> Vec<(Value, Value)> {
    let get = |d: &Value, f: &str| {
        f.split('.')
            .try_fold(d, |v, s| v.get(s))
            .filter(|v| !v.is_null())
            .cloned()
    };
    let mut out = Vec::new();
    for d in docs {
        let id = d["id"].clone();
        let fields = spec.fields();
        if spec.is_compound() {
            if let Some(parts) = fields.iter().map(|f| get(d, f)).collect::<Option<Vec<_>>>() {
                out.push((Value::Array(parts), id));
            }
        } else if let Some(v) = get(d, &fields[0]) {
            match v {
                Value::Array(items) if spec.is_multi() => {
                    let mut seen: Vec<Value> = Vec::new();
                    for item in items.into_iter().filter(|i| !i.is_null()) {
                        if !seen.contains(&item) {
                            seen.push(item.clone());
                            out.push((item, id.clone()));
                        }
                    }
                }
                v => out.push((v, id)),
            }
        }
    }
    out.sort_by(|x, y| compare(&x.0, &y.0).then_with(|| compare(&x.1, &y.1)));
    out
}
