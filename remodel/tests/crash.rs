//! Crash test: kill a writer with SIGKILL at random moments and check what survives.
//!
//! The test binary re-executes itself as the writer (the `crash_child` test, which does
//! nothing unless `REMODEL_CRASH_DIR` is set). The child opens the database with the default
//! (hard) durability, ensures a table and four indexes (simple, nested, multi, compound), then
//! writes forever: inserts (single and batches), updates, deletes and replacing re-inserts.
//! Before each write it prints `@@ try <op>`, after the write is acknowledged `@@ ok <seq>`.
//!
//! The parent kills it after a random 50..400 ms of writing (some rounds earlier, while it
//! starts up, recovers or creates its indexes), reopens the database and checks that
//! - every acknowledged write is there: the table holds exactly the documents of the
//!   acknowledged writes, plus or minus the one write in flight (all of it or none of it);
//! - every index agrees exactly with the documents: `order_by(index)` returns one row per
//!   indexed value of each document, in (value, primary key) order, and `index_status`
//!   counts as many entries.

mod common;

use common::{index_values, merge};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::value::compare;
use remodel::{json, Conflict, Database, Error, IndexSpec, Order, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ENV_DIR: &str = "REMODEL_CRASH_DIR";
const ENV_ROUND: &str = "REMODEL_CRASH_ROUND";
const TABLE: &str = "docs";
const ROUNDS: u64 = 24;
/// Every how many rounds the child is killed early, while it starts up.
const EARLY_EVERY: u64 = 5;

fn indexes() -> Vec<(&'static str, IndexSpec)> {
    vec![
        ("n", IndexSpec::field("n")),
        ("meta_tag", IndexSpec::field("meta.tag")),
        ("tags", IndexSpec::multi("tags")),
        ("pair", IndexSpec::compound(["a", "b"])),
    ]
}

// ---------------------------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------------------------

/// The writer. Returns at once unless started by `crash_recovery` with `REMODEL_CRASH_DIR`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return;
    };
    let round: u64 = std::env::var(ENV_ROUND)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(child(PathBuf::from(dir), round));
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {line}").expect("stdout");
    out.flush().expect("stdout");
}

fn new_doc(rng: &mut StdRng, id: &str, n: u64) -> Value {
    let mut d = json!({
        "id": id,
        "n": n,
        "tag": format!("t{}", n % 5),
        "a": n % 3,
    });
    match rng.gen_range(0..4) {
        0 => {}
        1 => d["meta"] = json!({"tag": null}),
        _ => d["meta"] = json!({"tag": format!("m{}", n % 7), "x": n}),
    }
    if rng.gen_bool(0.7) {
        d["b"] = json!(format!("b{}", n % 4));
    }
    if rng.gen_bool(0.8) {
        let len = rng.gen_range(0..5);
        let tags: Vec<Value> = (0..len)
            .map(|_| match rng.gen_range(0..5) {
                0 => Value::Null,
                1 => json!(rng.gen_range(0..3)),
                2 => json!(rng.gen_range(0..3) as f64 / 4.0),
                _ => json!(["x", "y", "z"][rng.gen_range(0..3)]),
            })
            .collect();
        d["tags"] = Value::Array(tags);
    }
    d
}

async fn child(dir: PathBuf, round: u64) {
    let db = Database::open(&dir).await.expect("child: open");
    db.ensure_table(TABLE).await.expect("child: ensure_table");
    let t = db.table(TABLE);
    for (name, spec) in indexes() {
        t.ensure_index(name, spec)
            .await
            .expect("child: ensure_index");
    }
    // Some keys of earlier rounds, to update and delete too.
    let mut live: Vec<String> = t
        .query()
        .limit(200)
        .run()
        .await
        .expect("child: read")
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect();
    let mut dead: Vec<String> = Vec::new();
    say("ready");
    let mut rng = StdRng::seed_from_u64(round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed);
    for seq in 0u64.. {
        let n = seq;
        let fresh = |i: u64| format!("{round:03}-{n:06}{}", ["", "a", "b"][i as usize]);
        let roll = rng.gen_range(0..100);
        let op = if roll < 15 && !live.is_empty() {
            let id = live[rng.gen_range(0..live.len())].clone();
            let mut patch = json!({"n": 1_000_000 + n, "meta": {"tag": format!("u{}", n % 3)}});
            if rng.gen_bool(0.3) {
                patch["tags"] = json!(["x", n % 2, null]);
            }
            if rng.gen_bool(0.2) {
                patch["b"] = Value::Null;
            }
            if rng.gen_bool(0.2) {
                patch["meta"] = Value::Null;
            }
            json!({"op": "upd", "id": id, "patch": patch})
        } else if roll < 27 && !live.is_empty() {
            let id = live.swap_remove(rng.gen_range(0..live.len()));
            dead.push(id.clone());
            json!({"op": "del", "id": id})
        } else if roll < 33 && !dead.is_empty() {
            let id = dead.swap_remove(rng.gen_range(0..dead.len()));
            live.push(id.clone());
            json!({"op": "rep", "doc": new_doc(&mut rng, &id, n)})
        } else if roll < 43 {
            let docs: Vec<Value> = (0..3).map(|i| new_doc(&mut rng, &fresh(i), n)).collect();
            live.extend((0..3).map(fresh));
            json!({"op": "ins", "docs": docs})
        } else {
            live.push(fresh(0));
            json!({"op": "ins", "docs": [new_doc(&mut rng, &fresh(0), n)]})
        };
        say(&format!("try {seq} {op}"));
        let result = match op["op"].as_str().unwrap() {
            "ins" => {
                let docs = op["docs"].as_array().unwrap().clone();
                let count = docs.len() as u64;
                let r = t.insert_many(docs).await.and_then(|r| r.check());
                r.map(|r| assert_eq!(r.inserted, count, "child: inserted"))
            }
            "rep" => t
                .insert(op["doc"].clone())
                .conflict(Conflict::Replace)
                .await
                .and_then(|r| r.check())
                .map(drop),
            "upd" => t
                .get(op["id"].clone())
                .update(op["patch"].clone())
                .await
                .and_then(|r| r.check())
                .map(drop),
            "del" => t
                .get(op["id"].clone())
                .delete()
                .await
                .and_then(|r| r.check())
                .map(drop),
            other => unreachable!("{other}"),
        };
        result.expect("child: write");
        say(&format!("ok {seq}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------------------------

/// Acknowledged state: documents by id.
type Docs = BTreeMap<String, Value>;

fn id_of(doc: &Value) -> String {
    doc["id"].as_str().expect("string ids").to_string()
}

/// Applies an acknowledged (or possibly applied) write to the model.
fn apply(model: &mut Docs, op: &Value) {
    match op["op"].as_str().unwrap() {
        "ins" => {
            for d in op["docs"].as_array().unwrap() {
                model.insert(id_of(d), d.clone());
            }
        }
        "rep" => {
            model.insert(id_of(&op["doc"]), op["doc"].clone());
        }
        "upd" => {
            if let Some(d) = model.get_mut(op["id"].as_str().unwrap()) {
                merge(d, &op["patch"]);
            }
        }
        "del" => {
            model.remove(op["id"].as_str().unwrap());
        }
        other => panic!("unknown op {other}"),
    }
}

/// The keys a write touches.
fn touched(op: &Value) -> Vec<String> {
    match op["op"].as_str().unwrap() {
        "ins" => op["docs"].as_array().unwrap().iter().map(id_of).collect(),
        "rep" => vec![id_of(&op["doc"])],
        _ => vec![op["id"].as_str().unwrap().to_string()],
    }
}

/// What `order_by(index)` must return for these documents: (value, primary key) order.
fn expected_rows(docs: &Docs, spec: &IndexSpec) -> Vec<Value> {
    let mut rows: Vec<(Value, Value, &Value)> = docs
        .values()
        .flat_map(|d| {
            index_values(spec, d)
                .into_iter()
                .map(move |v| (v, d["id"].clone(), d))
        })
        .collect();
    rows.sort_by(|a, b| compare(&a.0, &b.0).then_with(|| compare(&a.1, &b.1)));
    rows.into_iter().map(|r| r.2.clone()).collect()
}

/// What the parent read from one run of the child.
struct Run {
    ready: bool,
    /// Acknowledged writes, in order.
    acked: Vec<Value>,
    /// The write started but not acknowledged when the child died.
    in_flight: Option<Value>,
    writes_seen: usize,
}

fn parse_lines(lines: &[String]) -> Run {
    let mut run = Run {
        ready: false,
        acked: Vec::new(),
        in_flight: None,
        writes_seen: 0,
    };
    let mut pending: Option<(u64, Value)> = None;
    for line in lines {
        // The harness's own output is not a report ("test crash_child ... " even shares
        // the line of the first report).
        let Some(at) = line.find("@@ ") else {
            continue;
        };
        let rest = &line.trim_end()[at + 3..];
        if rest == "ready" {
            run.ready = true;
        } else if let Some(rest) = rest.strip_prefix("try ") {
            assert!(pending.is_none(), "a try without ok before {line}");
            let (seq, op) = rest.split_once(' ').expect("try <seq> <op>");
            let op: Value = serde_json::from_str(op).expect("op json");
            pending = Some((seq.parse().unwrap(), op));
        } else if let Some(seq) = rest.strip_prefix("ok ") {
            let seq: u64 = seq.parse().unwrap();
            let (want, op) = pending.take().expect("an ok without a try");
            assert_eq!(seq, want, "ok for another write");
            run.acked.push(op);
            run.writes_seen += 1;
        }
    }
    run.in_flight = pending.map(|(_, op)| op);
    run
}

fn spawn_child(dir: &Path, round: u64) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_ROUND, round.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child")
}

/// Runs the child until it has written for `write_for` (or, with `kill_at`, until that long
/// after the spawn), kills it with SIGKILL and returns its complete stdout lines.
fn run_child(
    dir: &Path,
    round: u64,
    kill_at: Option<Duration>,
    write_for: Duration,
) -> (Vec<String>, Option<Duration>) {
    let started = Instant::now();
    let mut child = spawn_child(dir, round);
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // A line cut by the kill is not a report.
                Ok(_) if line.ends_with('\n') => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
    });
    let mut lines = Vec::new();
    let mut ready_after = None;
    let deadline = match kill_at {
        Some(at) => started + at,
        None => {
            // Wait for the child to be ready, then let it write.
            let limit = started + Duration::from_secs(30);
            loop {
                let left = limit.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        let ready = line.contains("@@ ready");
                        lines.push(line);
                        if ready {
                            ready_after = Some(started.elapsed());
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "round {round}: the child never became ready ({e:?}); \
                             stdout {:?}; stderr {}",
                            &lines[lines.len().saturating_sub(5)..],
                            stderr_of(&mut child)
                        );
                    }
                }
            }
            Instant::now() + write_for
        }
    };
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!(
            "round {round}: the child exited by itself ({status}); stderr {}",
            stderr_of(&mut child)
        );
    }
    child.kill().expect("SIGKILL the child"); // SIGKILL on Unix
    let status = child.wait().expect("wait for the child");
    assert!(!status.success(), "the child was killed");
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    (lines, ready_after)
}

/// The first few items, for messages.
fn first<T>(items: &[T]) -> &[T] {
    &items[..items.len().min(5)]
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Reopens the database and checks it against the model; resolves the write in flight.
async fn check(
    dir: &Path,
    model: &mut Docs,
    in_flight: Option<&Value>,
    setup_done: bool,
) -> Result<usize, String> {
    let db = Database::open(dir)
        .await
        .map_err(|e| format!("reopen: {e}"))?;
    let t = db.table(TABLE);
    let docs = match t.run().await {
        Ok(docs) => docs,
        Err(Error::NoSuchTable(_)) if !setup_done && model.is_empty() => return Ok(0),
        Err(e) => return Err(format!("full scan: {e}")),
    };
    let mut actual = Docs::new();
    for d in docs {
        if actual.insert(id_of(&d), d.clone()).is_some() {
            return Err(format!("document {} is there twice", d["id"]));
        }
    }

    // The write in flight: all of it or none of it.
    if let Some(op) = in_flight {
        let mut after = model.clone();
        apply(&mut after, op);
        let keys = touched(op);
        let matches = |m: &Docs| keys.iter().all(|k| actual.get(k) == m.get(k));
        if matches(&after) {
            *model = after;
        } else if !matches(model) {
            let got: Vec<_> = keys.iter().map(|k| (k, actual.get(k))).collect();
            return Err(format!(
                "the write in flight {op} is neither wholly applied nor absent: {got:?}"
            ));
        }
    }

    // Exactly the acknowledged documents.
    if actual != *model {
        let missing: Vec<_> = model.keys().filter(|k| !actual.contains_key(*k)).collect();
        let extra: Vec<_> = actual.keys().filter(|k| !model.contains_key(*k)).collect();
        let differ: Vec<_> = model
            .iter()
            .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
            .map(|(k, v)| format!("{k}: want {v}, got {}", actual[k]))
            .collect();
        return Err(format!(
            "documents differ from the acknowledged writes: {} missing {:?}, \
             {} unexpected {:?}, {} different {:?}",
            missing.len(),
            first(&missing),
            extra.len(),
            first(&extra),
            differ.len(),
            first(&differ)
        ));
    }

    // Every index agrees exactly with the documents.
    let status = t.index_status().map_err(|e| format!("index_status: {e}"))?;
    for (name, spec) in indexes() {
        let Some(st) = status.iter().find(|s| s.name == name) else {
            if setup_done {
                return Err(format!("index `{name}` is gone"));
            }
            continue; // the child died before creating it
        };
        if st.spec != spec || !st.ready {
            return Err(format!("index `{name}`: {st:?}"));
        }
        let want = expected_rows(&actual, &spec);
        let got = t
            .order_by(Order::index(name))
            .run()
            .await
            .map_err(|e| format!("order_by({name}): {e}"))?;
        if got != want {
            let ids = |rows: &[Value]| rows.iter().map(id_of).collect::<Vec<_>>();
            let (g, w) = (ids(&got), ids(&want));
            let at = g.iter().zip(&w).take_while(|(a, b)| a == b).count();
            return Err(format!(
                "index `{name}` disagrees with the documents ({} rows, want {}); \
                 from row {at}:\n got  {:?}\n want {:?}",
                g.len(),
                w.len(),
                first(&g[at..]),
                first(&w[at..])
            ));
        }
        if st.entries != want.len() {
            return Err(format!(
                "index `{name}` has {} entries, the documents give {}",
                st.entries,
                want.len()
            ));
        }
    }
    Ok(actual.len())
    // `db` and `t` are dropped here: the next child needs sled's file lock.
}

#[test]
fn crash_recovery() {
    if std::env::var_os(ENV_DIR).is_some() {
        return; // never recurse from a child
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("remodel-crash-{}-{nanos}", std::process::id()));
    let seed = std::env::var("REMODEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(nanos as u64);
    println!(
        "crash test: seed {seed} (REMODEL_CRASH_SEED), dir {}",
        dir.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut model = Docs::new();
    let mut setup_done = false;
    let mut ready_latency = Duration::from_millis(150);
    let mut acked_total = 0;
    let mut in_flight_total = 0;
    for round in 0..ROUNDS {
        let early = round % EARLY_EVERY == 0;
        let kill_at = early.then(|| {
            let max = (ready_latency.as_millis() as u64 * 3 / 2).max(20);
            Duration::from_millis(rng.gen_range(5..=max))
        });
        let write_for = Duration::from_millis(rng.gen_range(50..=400));
        let (lines, ready_after) = run_child(&dir, round, kill_at, write_for);
        if let Some(r) = ready_after {
            ready_latency = r;
        }
        let run = parse_lines(&lines);
        for op in &run.acked {
            apply(&mut model, op);
        }
        setup_done |= run.ready;
        acked_total += run.writes_seen;
        in_flight_total += usize::from(run.in_flight.is_some());
        let result = rt.block_on(check(&dir, &mut model, run.in_flight.as_ref(), setup_done));
        match result {
            Ok(docs) => println!(
                "round {round:2}: {} after {:?}, {} acknowledged writes{}, {docs} documents",
                if early { "early kill" } else { "killed" },
                kill_at.unwrap_or(write_for),
                run.writes_seen,
                if run.in_flight.is_some() {
                    " + 1 in flight"
                } else {
                    ""
                },
            ),
            Err(e) => {
                // Keep the directory for a post-mortem.
                panic!("round {round} (seed {seed}, dir {}): {e}", dir.display());
            }
        }
    }
    println!(
        "crash test: {ROUNDS} rounds, {acked_total} acknowledged writes, \
         {in_flight_total} in flight at a kill, {:?}",
        started.elapsed()
    );
    assert!(setup_done, "the child never got to write");
    assert!(acked_total > 0, "no write was acknowledged");
    std::fs::remove_dir_all(&dir).expect("remove the test directory");
}
