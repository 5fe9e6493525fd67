//! The PostgreSQL change pump against a throwaway cluster (`remodel::postgres`): every
//! committed transaction's records arrive exactly once, whole, in commit order, identical in
//! every pump and across processes; rolled-back ones never; a pump's temporary slot is gone
//! once its session is; damage and lost connections end a pump with a typed error.
//!
//! Without a PostgreSQL server the tests skip, saying why; under `CI=true` they fail.
//! The test binary also runs as a child process (`child_role`, selected by an environment
//! variable) for the checks across processes.
#![cfg(feature = "postgres")]

use remodel::postgres::record::{ChangeRecord, DdlRecord, Record};
use remodel::postgres::writer::{emit, MessageBatch};
use remodel::postgres::{CommitBatch, Lsn, Pump, PumpConfig, PumpError, TestCluster, TestDatabase};
use remodel::IndexSpec;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);
const CHILD_ROLE: &str = "REMODEL_PG_PUMP_CHILD";
const CHILD_URL: &str = "REMODEL_PG_PUMP_URL";

async fn database(test: &str) -> Option<TestDatabase> {
    let cluster = TestCluster::shared_or_skip(test)?;
    Some(cluster.create_database().await.expect("a test database"))
}

async fn start_pump(db: &TestDatabase) -> Pump {
    Pump::start(db.config(), PumpConfig::default())
        .await
        .expect("the pump starts")
}

/// The change record `i` of transaction `tag`.
fn record(tag: &str, i: usize) -> Record {
    Record::Change(ChangeRecord {
        table: "crew".into(),
        key: format!("{tag}/{i}").into_bytes(),
        old: (i % 3 == 1).then(|| Arc::new(json!({"id": i, "v": "before"}))),
        new: (i % 3 != 2).then(|| Arc::new(json!({"id": i, "tx": tag, "pad": "x".repeat(i % 7)}))),
    })
}

fn records(tag: &str, n: usize) -> Vec<Record> {
    (0..n).map(|i| record(tag, i)).collect()
}

fn batch_of(records: &[Record]) -> MessageBatch {
    let mut batch = MessageBatch::new();
    for r in records {
        batch.push(r);
    }
    batch
}

/// The transaction tag of a batch (its first record's key up to the slash).
fn tag_of(batch: &CommitBatch) -> String {
    match &batch.changes[0] {
        Record::Change(c) => {
            let key = String::from_utf8(c.key.clone()).unwrap();
            key.split('/').next().unwrap().to_string()
        }
        Record::Ddl(d) => d.table().to_string(),
        Record::Sync(token) => String::from_utf8_lossy(token).into_owned(),
    }
}

async fn xid(client: &impl tokio_postgres::GenericClient) -> u32 {
    let row = client
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap();
    row.get::<_, i64>(0) as u32
}

/// Commits one transaction emitting `records` (in `chunks` statements); returns its xid.
async fn commit(client: &mut Client, records: &[Record], chunks: usize) -> u32 {
    let tx = client.transaction().await.unwrap();
    let xid = xid(&tx).await;
    for part in records.chunks(records.len().div_ceil(chunks).max(1)) {
        emit(&tx, &batch_of(part)).await.unwrap();
    }
    tx.commit().await.unwrap();
    xid
}

async fn next(pump: &mut Pump) -> CommitBatch {
    tokio::time::timeout(WAIT, pump.next_batch())
        .await
        .expect("a batch in time")
        .expect("a batch, not an error")
}

async fn collect(pump: &mut Pump, n: usize) -> Vec<CommitBatch> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next(pump).await);
    }
    out
}

fn assert_commit_order(batches: &[CommitBatch]) {
    for pair in batches.windows(2) {
        assert!(
            pair[0].commit_lsn < pair[1].commit_lsn,
            "commit LSNs must strictly increase: {} then {}",
            pair[0].commit_lsn,
            pair[1].commit_lsn
        );
    }
    for b in batches {
        assert!(
            b.end_lsn > b.commit_lsn,
            "end {} <= commit {}",
            b.end_lsn,
            b.commit_lsn
        );
        assert!(!b.changes.is_empty());
    }
}

async fn slot_rows(client: &Client, slot: &str) -> Vec<(bool, bool)> {
    client
        .query(
            "SELECT temporary, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn wait_slot_gone(client: &Client, slot: &str) -> Duration {
    let t0 = Instant::now();
    while !slot_rows(client, slot).await.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "slot {slot} still there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_transactions_arrive_whole_in_commit_order() {
    let Some(db) = database("interleaved_transactions_arrive_whole_in_commit_order").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let mut a = db.connect().await.unwrap();
    let mut b = db.connect().await.unwrap();
    let mut expected: Vec<(String, u32, Vec<Record>)> = Vec::new();
    let mut rolled_back = HashSet::new();
    for round in 0..30usize {
        // Both transactions open at once, their messages emitted alternately.
        let ta = a.transaction().await.unwrap();
        let tb = b.transaction().await.unwrap();
        let (xa, xb) = (xid(&ta).await, xid(&tb).await);
        let (tag_a, tag_b) = (format!("a{round}"), format!("b{round}"));
        let (ra, rb) = (records(&tag_a, 4), records(&tag_b, 3 + round % 3));
        for i in 0..ra.len().max(rb.len()) {
            if let Some(r) = ra.get(i) {
                emit(&ta, &batch_of(std::slice::from_ref(r))).await.unwrap();
            }
            if let Some(r) = rb.get(i) {
                emit(&tb, &batch_of(std::slice::from_ref(r))).await.unwrap();
            }
        }
        // Commit in an order that varies; one round in five rolls one of them back.
        let roll_back_b = round % 5 == 3;
        let a_entry = (tag_a, xa, ra);
        let b_entry = (tag_b, xb, rb);
        if round % 2 == 0 {
            ta.commit().await.unwrap();
            expected.push(a_entry);
            if roll_back_b {
                tb.rollback().await.unwrap();
                rolled_back.insert(b_entry.0);
            } else {
                tb.commit().await.unwrap();
                expected.push(b_entry);
            }
        } else {
            if roll_back_b {
                tb.rollback().await.unwrap();
                rolled_back.insert(b_entry.0);
            } else {
                tb.commit().await.unwrap();
                expected.push(b_entry);
            }
            ta.commit().await.unwrap();
            expected.push(a_entry);
        }
    }
    // A last transaction: once it is in, everything committed before it is.
    let marker = records("end", 1);
    let xm = commit(&mut a, &marker, 1).await;
    expected.push(("end".into(), xm, marker));

    let got = collect(&mut pump, expected.len()).await;
    assert_commit_order(&got);
    for (batch, (tag, xid, records)) in got.iter().zip(&expected) {
        assert_eq!(&tag_of(batch), tag, "commit order");
        assert_eq!(batch.xid, *xid, "xid of {tag}");
        assert_eq!(
            &batch.changes, records,
            "records of {tag}, whole and in order"
        );
    }
    for batch in &got {
        assert!(
            !rolled_back.contains(&tag_of(batch)),
            "a rolled-back transaction arrived"
        );
    }
    let status = pump.handle().status();
    assert_eq!(status.batches, expected.len() as u64);
    assert_eq!(status.last_commit_lsn, got.last().unwrap().commit_lsn);
    assert_eq!(pump.handle().position(), got.last().unwrap().commit_lsn);
    pump.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_each_commit_exactly_once() {
    let Some(db) = database("concurrent_writers_each_commit_exactly_once").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let (writers, per_writer) = (4usize, 40usize);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = db.connect().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for t in 0..per_writer {
                let tag = format!("w{w}t{t}");
                let recs = records(&tag, 1 + (w + t) % 5);
                let xid = commit(&mut client, &recs, 1 + t % 2).await;
                mine.push((tag, xid, recs));
            }
            mine
        }));
    }
    let mut expected: HashMap<String, (u32, Vec<Record>)> = HashMap::new();
    for task in tasks {
        for (tag, xid, recs) in task.await.unwrap() {
            expected.insert(tag, (xid, recs));
        }
    }
    let got = collect(&mut pump, writers * per_writer).await;
    assert_commit_order(&got);
    let mut seen = HashSet::new();
    for batch in &got {
        let tag = tag_of(batch);
        assert!(seen.insert(tag.clone()), "{tag} delivered twice");
        let (xid, recs) = &expected[&tag];
        assert_eq!(batch.xid, *xid);
        assert_eq!(&batch.changes, recs, "{tag} whole and in order");
    }
    assert_eq!(seen.len(), expected.len());
    // Per writer, its (sequential) transactions arrive in the order it committed them.
    for w in 0..writers {
        let order: Vec<usize> = got
            .iter()
            .map(tag_of)
            .filter_map(|t| t.strip_prefix(&format!("w{w}t"))?.parse().ok())
            .collect();
        assert_eq!(order, (0..per_writer).collect::<Vec<_>>());
    }
    pump.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_transactions_never_arrive() {
    let Some(db) = database("rolled_back_transactions_never_arrive").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let mut client = db.connect().await.unwrap();
    for i in 0..5 {
        let tx = client.transaction().await.unwrap();
        emit(&tx, &batch_of(&records(&format!("gone{i}"), 3)))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    // A transaction that fails after emitting is rolled back too.
    let tx = client.transaction().await.unwrap();
    emit(&tx, &batch_of(&records("failed", 2))).await.unwrap();
    assert!(tx.batch_execute("SELECT 1/0").await.is_err());
    drop(tx);
    let kept = records("kept", 2);
    commit(&mut client, &kept, 1).await;
    let batch = next(&mut pump).await;
    assert_eq!(tag_of(&batch), "kept");
    assert_eq!(batch.changes, kept);
    pump.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_arrives_whole() {
    let Some(db) = database("a_large_transaction_arrives_whole").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let mut client = db.connect().await.unwrap();
    let big = records("big", 5_000);
    let small = records("small", 1);
    let t0 = Instant::now();
    // Emitted in 5 statements of one transaction; a small transaction commits after it.
    commit(&mut client, &big, 5).await;
    let committed = t0.elapsed();
    commit(&mut client, &small, 1).await;
    let first = next(&mut pump).await;
    let arrived = t0.elapsed();
    assert_eq!(first.changes.len(), big.len());
    assert_eq!(first.changes, big, "whole, in order");
    let second = next(&mut pump).await;
    assert_eq!(second.changes, small);
    assert!(first.commit_lsn < second.commit_lsn);
    let bytes: usize = big.iter().map(|r| r.encode().len()).sum();
    eprintln!(
        "large transaction: {} records, {} KiB of records, committed in {:?}, delivered {:?} after the start",
        big.len(),
        bytes / 1024,
        committed,
        arrived
    );
    pump.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pumps_see_the_same_batches() {
    let Some(db) = database("two_pumps_see_the_same_batches").await else {
        return;
    };
    let mut p1 = start_pump(&db).await;
    let mut p2 = start_pump(&db).await;
    assert_ne!(p1.slot(), p2.slot());
    let mut tasks = Vec::new();
    for w in 0..3 {
        let mut client = db.connect().await.unwrap();
        tasks.push(tokio::spawn(async move {
            for t in 0..30 {
                commit(&mut client, &records(&format!("w{w}t{t}"), 1 + t % 4), 1).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (b1, b2) = tokio::join!(collect(&mut p1, 90), collect(&mut p2, 90));
    assert_commit_order(&b1);
    assert_eq!(b1, b2, "every pump sees the same batches");
    p1.stop().await.unwrap();
    p2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_records_travel_in_order_with_changes() {
    let Some(db) = database("ddl_records_travel_in_order_with_changes").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let mut client = db.connect().await.unwrap();
    let recs = vec![
        Record::Ddl(DdlRecord::TableCreated {
            table: "crew".into(),
            primary_key: "id".into(),
        }),
        record("ddl", 0),
        Record::Ddl(DdlRecord::IndexCreated {
            table: "crew".into(),
            index: "rank".into(),
            spec: IndexSpec::field("rank"),
        }),
        record("ddl", 1),
        Record::Ddl(DdlRecord::IndexDropped {
            table: "crew".into(),
            index: "rank".into(),
        }),
        Record::Ddl(DdlRecord::TableDropped {
            table: "crew".into(),
        }),
    ];
    commit(&mut client, &recs, 2).await;
    assert_eq!(next(&mut pump).await.changes, recs);
    pump.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_are_ignored_and_damage_ends_the_pump() {
    let Some(db) = database("foreign_messages_are_ignored_and_damage_ends_the_pump").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let client = db.connect().await.unwrap();
    // Another application's messages, transactional or not, and a plain transaction.
    client
        .batch_execute(
            "SELECT pg_logical_emit_message(true, 'other.app', 'x'); \
             SELECT pg_logical_emit_message(false, 'other.app', 'y'); \
             CREATE TABLE plain (x int); INSERT INTO plain VALUES (1);",
        )
        .await
        .unwrap();
    let mut client = client;
    let ok = records("ok", 2);
    commit(&mut client, &ok, 1).await;
    assert_eq!(next(&mut pump).await.changes, ok);

    // A damaged record: the batches before it were delivered, then a typed error.
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'remodel.v1', '\\x01ff'::bytea)")
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, pump.next_batch())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, PumpError::Record { op: 0, .. }),
        "a damaged record ends the pump: {err:?}"
    );
    // Over: the same error again, and the slot goes with the session.
    assert_eq!(pump.next_batch().await.unwrap_err(), err);
    let slot = pump.slot().to_string();
    assert_eq!(pump.stop().await.unwrap_err(), err);
    wait_slot_gone(&client, &slot).await;

    // A non-transactional Remodel message is no commit: it ends a pump too.
    let mut pump = Pump::start(db.config(), PumpConfig::default())
        .await
        .unwrap();
    let body = records("nt", 1)[0].encode();
    client
        .execute(
            "SELECT pg_logical_emit_message(false, 'remodel.v1', $1::bytea)",
            &[&body],
        )
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, pump.next_batch())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, PumpError::Protocol { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pumps_slot_goes_with_its_session() {
    let Some(db) = database("a_pumps_slot_goes_with_its_session").await else {
        return;
    };
    let client = db.connect().await.unwrap();

    // Stopped.
    let pump = start_pump(&db).await;
    let slot = pump.slot().to_string();
    assert_eq!(
        slot_rows(&client, &slot).await,
        vec![(true, true)],
        "temporary, active"
    );
    pump.stop().await.unwrap();
    let gone = wait_slot_gone(&client, &slot).await;
    eprintln!("slot gone {gone:?} after stop");

    // Dropped without stopping.
    let pump = start_pump(&db).await;
    let slot = pump.slot().to_string();
    drop(pump);
    wait_slot_gone(&client, &slot).await;

    // Its connection killed by the server: a typed error, and no slot.
    let mut pump = start_pump(&db).await;
    let slot = pump.slot().to_string();
    let killed: bool = client
        .query_one(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let err = tokio::time::timeout(WAIT, pump.next_batch())
        .await
        .expect("the pump notices")
        .unwrap_err();
    assert!(matches!(err, PumpError::ConnectionLost { .. }), "{err:?}");
    let status = pump.handle().status();
    assert!(!status.running);
    assert_eq!(status.ended, Some(err));
    wait_slot_gone(&client, &slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_a_reader() {
    let Some(db) = database("stopping_does_not_wait_for_a_reader").await else {
        return;
    };
    let config = PumpConfig {
        channel_batches: 1,
        ..PumpConfig::default()
    };
    let pump = Pump::start(db.config(), config).await.unwrap();
    let handle = pump.handle();
    let mut client = db.connect().await.unwrap();
    for t in 0..5 {
        commit(&mut client, &records(&format!("unread{t}"), 1), 1).await;
    }
    // The pump's task waits for room in its channel once a batch is in it.
    let t0 = Instant::now();
    while handle.status().batches < 2 {
        assert!(t0.elapsed() < WAIT, "batches not decoded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slot = pump.slot().to_string();
    tokio::time::timeout(Duration::from_secs(10), pump.stop())
        .await
        .expect("stop returns with batches unread")
        .unwrap();
    wait_slot_gone(&client, &slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_positions_reach_the_server() {
    let Some(db) = database("acknowledged_positions_reach_the_server").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let mut client = db.connect().await.unwrap();
    commit(&mut client, &records("x", 2), 1).await;
    let batch = next(&mut pump).await;
    pump.ack(batch.end_lsn);
    let t0 = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&pump.slot()],
            )
            .await
            .unwrap();
        let confirmed: Lsn = row.get::<_, String>(0).parse().unwrap();
        if confirmed >= batch.end_lsn {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ack not reported: {confirmed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = pump.handle().status();
    assert_eq!(status.acked_lsn, batch.end_lsn);
    assert!(status.reported_lsn >= batch.end_lsn);
    pump.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_creation_waits_for_writers_and_says_which() {
    let Some(db) = database("slot_creation_waits_for_writers_and_says_which").await else {
        return;
    };
    let mut holder = db.connect().await.unwrap();
    let open = holder.transaction().await.unwrap();
    xid(&open).await; // a writing transaction: it has an xid
    let config = PumpConfig {
        start_timeout: Duration::from_millis(700),
        ..PumpConfig::default()
    };
    let err = Pump::start(db.config(), config).await.unwrap_err();
    match &err {
        PumpError::StartTimedOut { step, blockers, .. } => {
            assert_eq!(*step, "slot");
            assert!(
                blockers.iter().any(|b| b.contains("txid_current")),
                "the open transaction is named: {blockers:?}"
            );
        }
        other => panic!("expected a start timeout, got {other:?}"),
    }
    open.commit().await.unwrap();
    // No slot is left behind by the abandoned start.
    let client = db.connect().await.unwrap();
    let t0 = Instant::now();
    loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{n} slots left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a pump starts once the writer is done.
    start_pump(&db).await.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_to_pump_latency() {
    let Some(db) = database("commit_to_pump_latency").await else {
        return;
    };
    let t0 = Instant::now();
    let mut pump = start_pump(&db).await;
    let start = t0.elapsed();
    let slot_created_in = pump.handle().status().slot_created_in;
    let n = 1_000usize;
    let client = db.connect().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::with_capacity(n);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..n {
            tick.tick().await;
            let recs = vec![record(&format!("l{i}"), 0)];
            client.execute("BEGIN", &[]).await.unwrap();
            emit(&client, &batch_of(&recs)).await.unwrap();
            client.execute("COMMIT", &[]).await.unwrap();
            acked.push(Instant::now());
        }
        acked
    });
    let mut arrived = Vec::with_capacity(n);
    for _ in 0..n {
        let b = next(&mut pump).await;
        arrived.push((tag_of(&b), Instant::now()));
        pump.ack(b.end_lsn);
    }
    let acked = writer.await.unwrap();
    let mut lat: Vec<Duration> = arrived
        .iter()
        .map(|(tag, at)| {
            let i: usize = tag[1..].parse().unwrap();
            at.saturating_duration_since(acked[i])
        })
        .collect();
    lat.sort();
    let (p50, p99, max) = (percentile(&lat, 0.5), percentile(&lat, 0.99), lat[n - 1]);
    eprintln!(
        "commit acknowledged -> batch from the pump, {n} commits at <= 1000/s, 1 pump: \
         p50 {p50:?}, p99 {p99:?}, max {max:?}; pump start {start:?} (slot created in \
         {slot_created_in:?}); cluster started in {:?}",
        TestCluster::shared().unwrap().started_in()
    );
    // Figures are printed; the bound only catches a pump that waits for something.
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}");
    pump.stop().await.unwrap();
}

// ---- across processes: the test binary runs itself as a child ----

fn spawn_child(role: &str, url: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_role",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROLE, role)
        .env(CHILD_URL, url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("the test binary runs itself")
}

/// Not a test of its own: the child processes' entry point (a no-op when run as a test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_role() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let url = std::env::var(CHILD_URL).expect("the parent's database");
    let config: tokio_postgres::Config = url.parse().unwrap();
    match role.as_str() {
        "writer" => {
            let mut client = remodel::postgres::connect(&config).await.unwrap();
            let pid = std::process::id();
            for t in 0..50 {
                commit(&mut client, &records(&format!("p{pid}t{t}"), 3), 1).await;
            }
            println!("WROTE {pid}");
        }
        "pump" => {
            let pump = Pump::start(&config, PumpConfig::default()).await.unwrap();
            println!("SLOT {}", pump.slot());
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        other => panic!("unknown child role {other}"),
    }
}

fn read_line_starting(child: &mut std::process::Child, prefix: &str) -> String {
    use std::io::BufRead;
    let out = child.stdout.as_mut().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("child ended before printing {prefix}"))
            .unwrap();
        // The harness may have printed `test child_role ... ` on the same line.
        if let Some(at) = line.find(prefix) {
            return line[at + prefix.len()..].trim().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_of_other_processes_reach_this_pump() {
    let Some(db) = database("commits_of_other_processes_reach_this_pump").await else {
        return;
    };
    let mut pump = start_pump(&db).await;
    let mut children = vec![
        spawn_child("writer", db.url()),
        spawn_child("writer", db.url()),
    ];
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let mut client = db.connect().await.unwrap();
    commit(&mut client, &records("parent", 2), 1).await;
    let got = collect(&mut pump, 101).await;
    for child in &mut children {
        let status = tokio::task::block_in_place(|| child.wait()).unwrap();
        assert!(status.success(), "writer child failed: {status}");
    }
    assert_commit_order(&got);
    for pid in pids {
        let order: Vec<usize> = got
            .iter()
            .map(tag_of)
            .filter_map(|t| t.strip_prefix(&format!("p{pid}t"))?.parse().ok())
            .collect();
        assert_eq!(
            order,
            (0..50).collect::<Vec<_>>(),
            "child {pid}'s commits, in order"
        );
    }
    for b in &got {
        assert_eq!(b.changes, records(&tag_of(b), b.changes.len()));
    }
    pump.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_leaves_no_slot() {
    let Some(db) = database("a_killed_process_leaves_no_slot").await else {
        return;
    };
    let client = db.connect().await.unwrap();
    let mut child = spawn_child("pump", db.url());
    let slot = tokio::task::block_in_place(|| read_line_starting(&mut child, "SLOT "));
    assert_eq!(slot_rows(&client, &slot).await, vec![(true, true)]);
    child.kill().unwrap(); // SIGKILL
    tokio::task::block_in_place(|| child.wait()).unwrap();
    let gone = wait_slot_gone(&client, &slot).await;
    eprintln!("slot of a killed process gone {gone:?} after the kill");
}
