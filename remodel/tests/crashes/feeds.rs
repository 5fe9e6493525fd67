//! What a subscriber has seen, a crash cannot take back: a child process writes with hard
//! durability while a feed prints every item it receives; it is killed with SIGKILL at a
//! random moment. After reopening, every row a subscriber saw is there, and sequence numbers
//! continue above every number a subscriber saw.

use crate::common::test_name;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use remodel::{json, Config, Database, Durability};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ENV_DIR: &str = "REMODEL_CRASH_FEEDS_DIR";

/// The child. Returns at once unless started by `seen_items_survive_a_crash`.
#[test]
fn crash_feeds_child() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            // The parent's last handle may still hold the files for a moment after its
            // close: retry for a bounded time.
            let mut tries = 0;
            let db = loop {
                match Config::new(&dir).durability(Durability::Hard).open().await {
                    Ok(db) => break db,
                    Err(_) if tries < 200 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    Err(e) => panic!("open: {e}"),
                }
            };
            db.ensure_table("log").await.expect("table");
            let log = db.table("log");
            let mut feed = log.changes().await.expect("feed");
            let reader = tokio::spawn(async move {
                while let Some(item) = feed.next().await {
                    let c = item.expect("an item");
                    let id = c.new_val().expect("inserts only")["id"].clone();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "@@ seen {} {}", c.seq().expect("numbered"), id).unwrap();
                    out.flush().unwrap();
                }
            });
            // Several writers, so that fsyncs and deliveries interleave.
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        for i in 0u64.. {
                            let id = format!("{}-{w}-{i}", std::process::id());
                            log.insert(json!({"id": id, "i": i})).await.expect("insert");
                        }
                    })
                })
                .collect();
            for w in writers {
                w.await.unwrap();
            }
            reader.await.unwrap();
        });
}

/// Runs the child until a random moment after its first delivery, kills it, returns the
/// (sequence number, id) of every item its subscriber printed.
fn run_child(dir: &Path, kill_after: Duration) -> Vec<(u64, String)> {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--exact",
            test_name!(crash_feeds_child).as_str(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with('\n') => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                Ok(_) => break, // cut by the kill
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait for the first delivery, then let it run a little longer.
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
        if lines.iter().any(|l| l.contains("@@ seen")) {
            break;
        }
    }
    let kill_at = Instant::now() + kill_after;
    while let Ok(line) = rx.recv_timeout(kill_at.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    reader.join().expect("reader");
    lines.extend(rx.try_iter());
    lines
        .iter()
        .filter_map(|l| {
            // The first line may follow the test harness's own `test ... ` on the same line.
            let at = l.find("@@ seen ")?;
            let mut parts = l[at..].trim().strip_prefix("@@ seen ")?.splitn(2, ' ');
            let seq = parts.next()?.parse().ok()?;
            let id: serde_json::Value = serde_json::from_str(parts.next()?).ok()?;
            Some((seq, id.as_str()?.to_string()))
        })
        .collect()
}

#[test]
fn seen_items_survive_a_crash() {
    if std::env::var_os(ENV_DIR).is_some() {
        return;
    }
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempdir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut highest_seen = 0;
    for round in 0..6 {
        let seen = run_child(&dir, Duration::from_millis(rng.gen_range(20..400)));
        assert!(
            !seen.is_empty(),
            "round {round}: the child delivered nothing"
        );
        let max_seen = seen.iter().map(|(s, _)| *s).max().unwrap();
        assert!(
            seen.iter().all(|(s, _)| *s > highest_seen),
            "round {round}: a number was used again after a restart"
        );
        highest_seen = max_seen;
        rt.block_on(async {
            let db = Database::open(&dir).await.expect("reopen");
            let log = db.table("log");
            for (seq, id) in &seen {
                assert!(
                    log.get(id.as_str()).await.unwrap().is_some(),
                    "round {round}: row {id} (seq {seq}) was seen by a subscriber and lost"
                );
            }
            // The next number is above everything a subscriber saw.
            let mut feed = log.changes().await.unwrap();
            log.insert(json!({"id": format!("probe-{round}")}))
                .await
                .unwrap();
            let probe = feed.next().await.unwrap().unwrap();
            assert!(
                probe.seq().unwrap() > max_seen,
                "round {round}: seq {} after a restart, {max_seen} seen before",
                probe.seq().unwrap()
            );
            highest_seen = probe.seq().unwrap();
            db.close().await.unwrap();
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "remodel-crash-feeds-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
