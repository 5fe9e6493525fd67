//! Crash test: a child process writes with hard durability and reports each acknowledged
//! write; it is killed with SIGKILL at random moments; after each kill the database is
//! reopened and must hold every acknowledged write (and at most the one write that was in
//! flight), with every index agreeing exactly with the documents.
//!
//! The child is this test binary itself, started with `REMODEL_CRASH_DIR` set.

mod common;

use remodel::{json, Conflict, Database, IndexSpec, Order, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: u64 = 20;

/// The indexes the child creates: name and spec.
fn indexes() -> Vec<(&'static str, IndexSpec)> {
    vec![
        ("n", IndexSpec::field("n")),
        ("tag", IndexSpec::field("meta.tag")),
        ("tags", IndexSpec::multi("tags")),
        ("pair", IndexSpec::compound(["a", "b"])),
    ]
}

fn key(round: u64, i: u64) -> String {
    format!("{round:02}-{i:05}")
}

fn doc(id: &str, i: u64) -> Value {
    let mut d = json!({
        "id": id,
        "n": i,
        "meta": {"tag": format!("t{}", i % 4)},
        "tags": [i % 3, i % 5, "x"],
        "a": i % 2,
    });
    if i % 3 != 0 {
        d["b"] = json!(i % 11); // some documents lack a compound field
    }
    d
}

/// The child's writes, a deterministic function of (round, i).
enum Op {
    Insert(Vec<Value>),
    Update(String, Value),
    Delete(String),
}

fn op(round: u64, i: u64) -> Op {
    if i >= 7 && i % 7 == 6 {
        Op::Delete(key(round, i - 5))
    } else if i >= 5 && i % 5 == 4 {
        Op::Update(
            key(round, i - 3),
            json!({"n": -(i as i64), "meta": {"tag": null}, "tags": [i]}),
        )
    } else if i % 11 == 10 {
        // A batch: atomic as a whole.
        let k = key(round, i);
        Op::Insert(vec![
            doc(&k, i),
            doc(&format!("{k}a"), i + 1),
            doc(&format!("{k}b"), i + 2),
        ])
    } else {
        Op::Insert(vec![doc(&key(round, i), i)])
    }
}

fn apply(model: &mut BTreeMap<String, Value>, op: &Op) {
    match op {
        Op::Insert(docs) => {
            for d in docs {
                model.insert(d["id"].as_str().unwrap().to_string(), d.clone());
            }
        }
        Op::Update(k, patch) => {
            if let Some(d) = model.get_mut(k) {
                for (f, v) in patch.as_object().unwrap() {
                    match (d.get_mut(f), v) {
                        (Some(Value::Object(inner)), Value::Object(p)) => {
                            for (pf, pv) in p {
                                inner.insert(pf.clone(), pv.clone());
                            }
                        }
                        _ => {
                            d[f] = v.clone();
                        }
                    }
                }
            }
        }
        Op::Delete(k) => {
            model.remove(k);
        }
    }
}

async fn open(dir: &std::path::Path) -> Database {
    let db = Database::open(dir).await.unwrap();
    db.ensure_table("docs").await.unwrap();
    for (name, spec) in indexes() {
        db.table("docs").ensure_index(name, spec).await.unwrap();
    }
    db
}

/// The child: write forever, printing `ack <i>` after each acknowledged write.
#[tokio::test]
async fn crash_child() {
    let Some(dir) = std::env::var_os("REMODEL_CRASH_DIR") else {
        return;
    };
    let round: u64 = std::env::var("REMODEL_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let db = open(std::path::Path::new(&dir)).await;
    let t = db.table("docs");
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nready").unwrap(); // after the harness's "test crash_child ... "
    out.flush().unwrap();
    for i in 0.. {
        match op(round, i) {
            Op::Insert(docs) => {
                t.insert_many(docs)
                    .conflict(Conflict::Error)
                    .await
                    .unwrap()
                    .check()
                    .unwrap();
            }
            Op::Update(k, patch) => drop(t.get(k).update(patch).await.unwrap()),
            Op::Delete(k) => drop(t.get(k).delete().await.unwrap()),
        }
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Checks that every index agrees exactly with the documents.
async fn check_indexes(db: &Database, docs: &BTreeMap<String, Value>) {
    let t = db.table("docs");
    let status = t.index_status().unwrap();
    for (name, spec) in indexes() {
        let want: Vec<String> = common::expected_index_entries(docs.values(), &spec)
            .into_iter()
            .map(|(_, id)| id.as_str().unwrap().to_string())
            .collect();
        let got: Vec<String> = t
            .order_by(Order::index(name))
            .run()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "index `{name}` disagrees with the documents");
        let entries = status.iter().find(|s| s.name == name).unwrap().entries;
        assert_eq!(entries, want.len(), "index `{name}` has stray entries");
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_and_indexes_agree() {
    let dir = std::env::temp_dir().join(format!("remodel-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().unwrap();
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    let mut settled: BTreeMap<String, Value> = BTreeMap::new();
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("REMODEL_CRASH_DIR", &dir)
            .env("REMODEL_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // Only the child's own lines (the test harness prints its banner too).
            let lines = BufReader::new(stdout).lines().map_while(Result::ok);
            for line in lines.filter(|l| l == "ready" || l.starts_with("ack ")) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child has opened the database, then let it write for a while.
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child did not start");
        assert_eq!(ready, "ready");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(50 + rng % 350);
        let start = Instant::now();
        let mut acks = 0u64;
        while start.elapsed() < run_for {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(5)) {
                assert_eq!(line, format!("ack {acks}"));
                acks += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        while let Ok(line) = rx.try_recv() {
            if line.starts_with("ack ") {
                assert_eq!(line, format!("ack {acks}"));
                acks += 1;
            }
        }
        reader.join().unwrap();
        total_acks += acks;

        // Ops 0..acks were acknowledged; op `acks` may have committed before the kill.
        let mut before = settled.clone();
        for i in 0..acks {
            apply(&mut before, &op(round, i));
        }
        let mut after = before.clone();
        apply(&mut after, &op(round, acks));

        let db = open(&dir).await;
        let stored: BTreeMap<String, Value> = db
            .table("docs")
            .run()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d["id"].as_str().unwrap().to_string(), d))
            .collect();
        assert!(
            stored == before || stored == after,
            "round {round}: after {acks} acknowledged writes the documents are neither the \
             acknowledged state nor that plus the write in flight"
        );
        check_indexes(&db, &stored).await;
        db.close().await.unwrap();
        drop(db);
        settled = stored;
    }
    assert!(
        total_acks > ROUNDS,
        "the children wrote too little to test anything"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The child of the test below: tries to open a database another process holds.
#[tokio::test]
async fn lock_child() {
    let Some(dir) = std::env::var_os("REMODEL_LOCK_DIR") else {
        return;
    };
    match Database::open(std::path::Path::new(&dir)).await {
        Ok(_) => println!("\nopened"),
        Err(e) => println!("\nrefused: {e}"),
    }
}

#[tokio::test]
async fn a_database_open_in_another_process_is_refused_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("remodel-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = Database::open(&dir).await.unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_child", "--nocapture", "--test-threads=1"])
        .env("REMODEL_LOCK_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("refused") || l.starts_with("opened"))
        .unwrap_or("");
    assert!(
        line.starts_with("refused: storage error: cannot open the database at"),
        "{stdout}"
    );
    assert!(line.contains("another process"), "{line}");
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}
