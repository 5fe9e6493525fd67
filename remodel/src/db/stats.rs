//! The `stats` system table: totals and per-second rates of reads and writes.

use super::Database;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Rates are measured over windows of at least this long.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct Stats {
    sampler: Mutex<Sampler>,
}

/// Read and write totals per table (`""` for the database), taken at an instant.
type Sample = (Instant, HashMap<String, (u64, u64)>);

#[derive(Default)]
struct Sampler {
    last: Option<Sample>,
    rates: HashMap<String, (f64, f64)>,
}

impl Stats {
    /// The rows of the stats table: one for the database (`id: ["database"]`) and one per
    /// table (`id: ["table", name]`), sorted by id.
    pub(crate) fn rows(&self, db: &Database) -> Vec<Value> {
        let tables = db.inner.tables.read().clone();
        let mut totals: HashMap<String, (u64, u64)> = tables
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    (
                        t.reads.load(Ordering::Relaxed),
                        t.writes.load(Ordering::Relaxed),
                    ),
                )
            })
            .collect();
        let db_total = totals.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        totals.insert(String::new(), db_total);

        let rates = {
            let mut s = self.sampler.lock();
            let now = Instant::now();
            match &s.last {
                Some((at, _)) if now.duration_since(*at) < WINDOW => {}
                Some((at, before)) => {
                    let secs = now.duration_since(*at).as_secs_f64();
                    let rates = totals
                        .iter()
                        .map(|(k, now_t)| {
                            let b = before.get(k).copied().unwrap_or((0, 0));
                            let r = now_t.0.saturating_sub(b.0) as f64 / secs;
                            let w = now_t.1.saturating_sub(b.1) as f64 / secs;
                            (k.clone(), (r.round(), w.round()))
                        })
                        .collect();
                    s.rates = rates;
                    s.last = Some((now, totals.clone()));
                }
                None => s.last = Some((now, totals.clone())),
            }
            s.rates.clone()
        };
        let rate = |k: &str| rates.get(k).copied().unwrap_or((0.0, 0.0));

        let mut rows = Vec::with_capacity(tables.len() + 1);
        let (r, w) = rate("");
        rows.push(json!({
            "id": ["database"],
            "type": "database",
            "reads_total": db_total.0,
            "writes_total": db_total.1,
            "reads_per_sec": r,
            "writes_per_sec": w,
            "tables": tables.len(),
            "feeds": db.inner.open_feeds(None),
            "feed_groups": db.inner.open_groups(None),
            // fsyncs that hard writes waited for (group commit shares them).
            "flushes_total": db.inner.flushes(),
        }));
        let mut names: Vec<&String> = tables.keys().collect();
        names.sort();
        for name in names {
            let (r, w) = rate(name);
            let tot = totals[name.as_str()];
            rows.push(json!({
                "id": ["table", name],
                "type": "table",
                "table": name,
                "reads_total": tot.0,
                "writes_total": tot.1,
                "reads_per_sec": r,
                "writes_per_sec": w,
                "feeds": db.inner.open_feeds(Some(name)),
                "feed_groups": db.inner.open_groups(Some(name)),
            }));
        }
        rows
    }
}
