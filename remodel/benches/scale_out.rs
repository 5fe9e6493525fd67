//! The PostgreSQL backend's figures, side by side in one run (`../shared/spec/benchmarks.md`):
//! `cargo bench -p remodel --bench scale_out [-- --quick] [-- --json] [-- --only insert]`.
//!
//! It starts a throwaway PostgreSQL cluster of its own (`remodel::postgres::TestCluster`:
//! `fsync=off`, unix socket, on this machine's cores) and stands for app processes with
//! separate `Database::connect` handles in this process: each has its own replica, its own
//! replication slot and connections, exactly as a process has, but they share this process's
//! two runtime workers (which makes every figure a little worse than with real processes).
//!
//! - `pg_insert_vs_tokio_postgres` (`_8conn`): Remodel inserts (about 200-byte documents,
//!   one secondary index, a second replica with 100 feeds open) ÷ plain tokio-postgres
//!   single-row `INSERT` commits into a table with the same data and a B-tree index, with the
//!   same number of connections and 64 concurrent writing tasks each. Ratios: medians of 3
//!   alternating pairs.
//! - `pg_e2e_latency_p50_ms` / `_p99_ms`: a commit made through replica A (timed from the
//!   start of the write) → the item in a feed of replica B, 4 replicas with 1,000 feeds each
//!   (point, range, top-10), 1,000 commits/s.
//! - `pg_resume_10k_missed_ms`: a cursor taken in replica A, resumed in replica B after
//!   10,000 changes it missed: opening the feed and reading them all.
//! - `pg_resume_10k_from_history_ms`: the same cursor resumed in a replica started after
//!   it, whose own log does not reach back: read from the shared history in PostgreSQL.
//! - `pg_batched_load_vs_per_row`: 1,000 rows read with one `get_all` ÷ one `get` per row
//!   (what batched loading saves; on PostgreSQL the reads are of the local replica).
//! - `pg_processes_at_p99_50ms`: the most replicas, each with a feed, for which every one of
//!   them gets 1,000 commits/s with p99 ≤ 50 ms.
#![cfg(feature = "postgres")]

use futures::StreamExt;
use remodel::postgres::{Connect, TestCluster};
use remodel::{json, Database, IndexSpec, Order, Value};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Figure {
    metric: String,
    value: f64,
    unit: &'static str,
    target: Option<f64>,
    at_least: bool,
    note: String,
}

impl Figure {
    fn ok(&self) -> Option<bool> {
        self.target.map(|t| {
            if self.at_least {
                self.value >= t
            } else {
                self.value <= t
            }
        })
    }
}

fn doc(i: u64, n: u64) -> Value {
    json!({
        "id": i,
        "name": format!("member-{i:08}"),
        "email": format!("member{i}@starfleet.example"),
        "n": n,
        "rank": "lieutenant",
        "bio": "Served on several ships of the line; fond of Earl Grey, hot, and holodeck novels.",
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn connect(url: &str, conns: usize) -> Database {
    Connect::new(url).connections(conns).open().await.unwrap()
}

/// Inserts `n` documents from 64 tasks; returns commits per second.
async fn remodel_rate(db: &Database, start: u64, n: u64) -> f64 {
    let next = Arc::new(AtomicU64::new(start));
    let begin = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (t, next) = (db.table("crew"), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= start + n {
                        break;
                    }
                    t.insert(doc(i, i % 1000)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / begin.elapsed().as_secs_f64()
}

/// The same from 64 tasks over `clients` with plain single-row INSERTs.
async fn plain_rate(clients: &[Arc<tokio_postgres::Client>], start: u64, n: u64) -> f64 {
    let next = Arc::new(AtomicU64::new(start));
    let begin = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|k| {
            let (c, next) = (clients[k % clients.len()].clone(), next.clone());
            tokio::spawn(async move {
                let stmt = c
                    .prepare("INSERT INTO plain (id, doc) VALUES ($1, $2::text::json)")
                    .await
                    .unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= start + n {
                        break;
                    }
                    let d = serde_json::to_string(&doc(i, i % 1000)).unwrap();
                    c.execute(&stmt, &[&(i as i64), &d]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / begin.elapsed().as_secs_f64()
}

async fn insert_ratio(cluster: &TestCluster, conns: usize, n: u64) -> Figure {
    let pg = cluster.create_database().await.unwrap();
    let db = connect(pg.url(), conns).await;
    db.create_table("crew").await.unwrap();
    db.table("crew")
        .create_index("n", IndexSpec::field("n"))
        .await
        .unwrap();
    // Another "process" watching.
    let other = connect(pg.url(), 1).await;
    other.sync().await.unwrap();
    let mut feeds = Vec::new();
    for k in 0..100u64 {
        feeds.push(
            other
                .table("crew")
                .get(1_000_000_000 + k)
                .changes()
                .await
                .unwrap(),
        );
    }
    let admin = pg.connect().await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE plain (id bigint PRIMARY KEY, doc json NOT NULL);
             CREATE INDEX ON plain ((doc->>'n'));",
        )
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Arc::new(pg.connect().await.unwrap()));
    }
    let mut pairs = Vec::new();
    for round in 0..3 {
        let start = round * n;
        let ours = remodel_rate(&db, start, n).await;
        let plain = plain_rate(&clients, start, n).await;
        pairs.push((ours / plain, ours, plain));
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, ours, plain) = pairs[1];
    drop(feeds);
    Figure {
        metric: if conns == 1 {
            "pg_insert_vs_tokio_postgres".into()
        } else {
            format!("pg_insert_vs_tokio_postgres_{conns}conn")
        },
        value: ratio,
        unit: "ratio",
        target: Some(if conns == 1 { 0.6 } else { 0.7 }),
        at_least: true,
        note: format!(
            "{conns} connection(s), 64 tasks: ours {ours:.0}/s vs tokio-postgres {plain:.0}/s"
        ),
    }
}

/// Latencies (ms) from the start of each write through `writer` to its item in a feed of
/// each of `watchers`, at `rate` commits/s for `secs`.
async fn latencies(writer: &Database, watchers: &[Database], rate: u64, secs: f64) -> Vec<f64> {
    let epoch = Instant::now();
    let mut collectors = Vec::new();
    for w in watchers {
        let mut feed = w.table("crew").changes().await.unwrap();
        collectors.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(Ok(c)) = feed.next().await {
                let Some(new) = c.new_val() else { continue };
                if new["stop"] == true {
                    break;
                }
                let sent = new["sent_us"].as_u64().unwrap();
                let now = epoch.elapsed().as_micros() as u64;
                seen.push((now.saturating_sub(sent)) as f64 / 1000.0);
            }
            seen
        }));
    }
    let n = (rate as f64 * secs) as u64;
    let t = writer.table("crew");
    let begin = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let due = begin + Duration::from_micros(i * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let t = t.clone();
        let sent = epoch.elapsed().as_micros() as u64;
        pending.push(tokio::spawn(async move {
            t.insert(json!({"id": i % 500, "sent_us": sent, "n": i % 1000}))
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
    t.insert(json!({"id": "stop", "stop": true})).await.unwrap();
    let mut all = Vec::new();
    for c in collectors {
        all.extend(
            tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    t.get("stop").delete().await.unwrap();
    all.sort_by(f64::total_cmp);
    all
}

/// 1,000 feeds on a replica: point feeds, range feeds and top-10 feeds.
async fn open_feeds(db: &Database) -> Vec<remodel::Feed> {
    let t = db.table("crew");
    let mut feeds = Vec::new();
    for k in 0..400u64 {
        feeds.push(t.get(k % 500).changes().await.unwrap());
    }
    for k in 0..400u64 {
        let lo = (k * 7) % 1000;
        feeds.push(
            t.between(Bound::Included(json!(lo)), Bound::Excluded(json!(lo + 5)))
                .index("n")
                .changes()
                .await
                .unwrap(),
        );
    }
    for _ in 0..200 {
        feeds.push(
            t.order_by(Order::index("n").desc())
                .limit(10)
                .changes()
                .await
                .unwrap(),
        );
    }
    feeds
}

/// Drains feeds in the background (a feed nobody reads would overflow, not slow writers).
fn drain(feeds: Vec<remodel::Feed>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut all = futures::stream::select_all(feeds);
        while all.next().await.is_some() {}
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let as_json = args.iter().any(|a| a == "--json");
    let cluster = match TestCluster::shared() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scale_out: no PostgreSQL server: {e}");
            return;
        }
    };
    let mut figures = Vec::new();
    // 20,000 inserts per round: at ~25,000/s, shorter rounds scatter the ratios by ±0.15.
    let n = if quick { 1_000 } else { 20_000 };
    figures.push(insert_ratio(cluster, 1, n).await);
    figures.push(insert_ratio(cluster, 8, n).await);
    // `--only insert`: the insert figures alone (for profiling them).
    if args
        .windows(2)
        .any(|w| w[0] == "--only" && w[1] == "insert")
    {
        print(&figures, as_json);
        return;
    }

    // End-to-end latency across 4 replicas with 1,000 feeds each.
    let pg = cluster.create_database().await.unwrap();
    let a = connect(pg.url(), 4).await;
    a.create_table("crew").await.unwrap();
    a.table("crew")
        .create_index("n", IndexSpec::field("n"))
        .await
        .unwrap();
    let mut replicas = Vec::new();
    let mut drains = Vec::new();
    for _ in 0..3 {
        let r = connect(pg.url(), 1).await;
        r.sync().await.unwrap();
        drains.push(drain(open_feeds(&r).await));
        replicas.push(r);
    }
    drains.push(drain(open_feeds(&a).await));
    let secs = if quick { 2.0 } else { 5.0 };
    let lat = latencies(&a, &replicas, 1000, secs).await;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let note = format!(
        "4 replicas x 1,000 feeds, 1,000 commits/s for {secs} s: {} items, max {:.1} ms",
        lat.len(),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    figures.push(Figure {
        metric: "pg_e2e_latency_p50_ms".into(),
        value: p50,
        unit: "ms",
        target: Some(2.0),
        at_least: false,
        note: note.clone(),
    });
    figures.push(Figure {
        metric: "pg_e2e_latency_p99_ms".into(),
        value: p99,
        unit: "ms",
        target: Some(15.0),
        at_least: false,
        note,
    });
    drains.iter().for_each(|d| d.abort());

    // Resume in B a cursor taken in A, 10,000 changes later.
    let b = &replicas[0];
    let mut fa = a.table("crew").changes().await.unwrap();
    a.table("crew").insert(json!({"id": "mark"})).await.unwrap();
    let cursor = loop {
        let c = fa.next().await.unwrap().unwrap();
        if c.new_val().is_some_and(|v| v["id"] == "mark") {
            break c.cursor().unwrap();
        }
    };
    drop(fa);
    for chunk in 0..100u64 {
        let docs: Vec<Value> = (0..100u64)
            .map(|i| json!({"id": format!("r{}", chunk * 100 + i), "n": i}))
            .collect();
        a.table("crew").insert_many(docs).await.unwrap();
    }
    b.sync().await.unwrap();
    let begin = Instant::now();
    let mut resumed = b.table("crew").changes().resume_from(cursor).await.unwrap();
    let mut got = 0;
    while got < 10_000 {
        resumed.next().await.unwrap().unwrap();
        got += 1;
    }
    let resume_ms = begin.elapsed().as_secs_f64() * 1000.0;
    figures.push(Figure {
        metric: "pg_resume_10k_missed_ms".into(),
        value: resume_ms,
        unit: "ms",
        target: Some(100.0),
        at_least: false,
        note: "a cursor of replica A resumed in replica B, 10,000 changes read".into(),
    });
    // The same cursor in a process started after it: from the shared history.
    let late = connect(pg.url(), 1).await;
    let begin = Instant::now();
    let mut resumed = late
        .table("crew")
        .changes()
        .resume_from(cursor)
        .await
        .unwrap();
    let mut got = 0;
    while got < 10_000 {
        resumed.next().await.unwrap().unwrap();
        got += 1;
    }
    let history_ms = begin.elapsed().as_secs_f64() * 1000.0;
    drop(resumed);
    drop(late);
    figures.push(Figure {
        metric: "pg_resume_10k_from_history_ms".into(),
        value: history_ms,
        unit: "ms",
        target: Some(100.0),
        at_least: false,
        note: "the same cursor resumed in a replica started after it (the shared history), \
               10,000 changes read"
            .into(),
    });

    // Batched reads vs one read per row (of the replica). Both keep the rows they read, as
    // a loader does (a loop that drops each row as it goes reuses the same hot memory for
    // every document, which no caller that uses the rows gets).
    let keys: Vec<Value> = (0..1000u64).map(|i| json!(format!("r{i}"))).collect();
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let rows = b.table("crew").get_all(keys.clone()).run().await.unwrap();
        let batched = t0.elapsed().as_secs_f64();
        assert_eq!(rows.len(), 1000);
        drop(rows);
        let t0 = Instant::now();
        let mut rows = Vec::with_capacity(keys.len());
        for k in &keys {
            rows.push(b.table("crew").get(k.clone()).await.unwrap().unwrap());
        }
        let per_row = t0.elapsed().as_secs_f64();
        assert_eq!(rows.len(), 1000);
        pairs.push(per_row / batched);
    }
    pairs.sort_by(f64::total_cmp);
    figures.push(Figure {
        metric: "pg_batched_load_vs_per_row".into(),
        value: pairs[1],
        unit: "ratio",
        target: Some(10.0),
        at_least: true,
        note: "1,000 rows: one get_all ÷ 1,000 gets, both reads of the local replica, both \
               keeping the rows"
            .into(),
    });
    drop(replicas);
    drop(a);

    // How many replicas keep p99 ≤ 50 ms at 1,000 commits/s.
    let mut best = 0;
    let mut curve = Vec::new();
    for count in [1usize, 2, 4, 8, 16] {
        if quick && count > 4 {
            break;
        }
        let pg = cluster.create_database().await.unwrap();
        let w = connect(pg.url(), 4).await;
        w.create_table("crew").await.unwrap();
        let mut rs = Vec::new();
        for _ in 0..count {
            let r = connect(pg.url(), 1).await;
            r.sync().await.unwrap();
            rs.push(r);
        }
        let lat = latencies(&w, &rs, 1000, if quick { 1.0 } else { 3.0 }).await;
        let p99 = percentile(&lat, 0.99);
        curve.push(format!("{count}: p99 {p99:.1} ms"));
        if p99 <= 50.0 {
            best = count;
        } else {
            break;
        }
    }
    figures.push(Figure {
        metric: "pg_processes_at_p99_50ms".into(),
        value: best as f64,
        unit: "replicas",
        target: None,
        at_least: true,
        note: format!(
            "server and replicas on this machine's {} cores; {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            curve.join(", ")
        ),
    });

    print(&figures, as_json);
}

/// Prints the figures, as JSON lines or as text.
fn print(figures: &[Figure], as_json: bool) {
    for f in figures {
        if as_json {
            println!(
                "{}",
                json!({"metric": f.metric, "value": f.value, "unit": f.unit,
                       "target": f.target, "ok": f.ok()})
            );
        } else {
            let verdict = match f.ok() {
                Some(true) => "ok",
                Some(false) => "MISS",
                None => "reported",
            };
            let target = f.target.map_or(String::new(), |t| {
                format!(" (target {} {t})", if f.at_least { ">=" } else { "<=" })
            });
            println!(
                "{:<34} {:>10.3} {:<8}{target} {verdict}\n    {}",
                f.metric, f.value, f.unit, f.note
            );
        }
    }
}
