//! Feeds across app processes on one PostgreSQL database: the test binary runs itself as
//! writer and feed processes (the role is an environment variable).
//!
//! - 3 writer processes make random inserts, updates and deletes of 40 keys, with
//!   read-modify-write updates that several processes race on.
//! - 2 feed processes and the parent watch a table feed and a top-5 feed (both with their
//!   initial rows). Every feed's items, replayed onto its initial rows, equal the query
//!   re-run on the table's state at each commit position (the state rebuilt from the
//!   table feed, whose final state equals a plain read); the two processes' table feeds
//!   hold the same changes at the same positions.
//! - A third feed process is killed with SIGKILL mid-stream; the parent, and a process
//!   started after the kill (from the shared history), resume its last cursor: the victim's
//!   items then the resumed ones are the changes after its start, none missed, none twice.
//! - Dropping the table ends the feeds of every process with `FeedAborted`.
#![cfg(feature = "postgres")]

use futures::StreamExt;
use remodel::postgres::{TestCluster, TestDatabase};
use remodel::{Change, Cursor, Database, Error, IndexSpec, Order, Value};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ROLE: &str = "REMODEL_PG_PROCESS_ROLE";
const URL: &str = "REMODEL_PG_PROCESS_URL";
const OUT: &str = "REMODEL_PG_PROCESS_OUT";
const SEED: &str = "REMODEL_PG_PROCESS_SEED";
const KEYS: u64 = 40;
const OPS_PER_WRITER: usize = 150;
const TOP: usize = 5;
const WAIT: Duration = Duration::from_secs(120);

/// One feed item as the processes write it down.
fn item_json(c: &Change) -> Value {
    json!({
        "kind": format!("{:?}", c.kind()),
        "old": c.old_val(),
        "new": c.new_val(),
        "seq": c.seq(),
        "cursor": c.cursor().map(|c| c.to_string()),
    })
}

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// Makes random writes; writes down how many increments and deletes were acknowledged as
/// done (the history must hold exactly these).
async fn writer(db: Database, seed: u64, out: &str) {
    let t = db.table("crew");
    let mut rng = seed;
    let (mut increments, mut deletes) = (0u64, 0u64);
    for _ in 0..OPS_PER_WRITER {
        let key = lcg(&mut rng) % KEYS;
        let n = (lcg(&mut rng) % 1000) as i64;
        match lcg(&mut rng) % 4 {
            0 => {
                let _ = t
                    .insert(json!({"id": key, "n": n, "by": seed}))
                    .conflict(remodel::Conflict::Replace)
                    .await
                    .unwrap();
            }
            1 => {
                deletes += t.get(key).delete().await.unwrap().deleted;
            }
            _ => {
                // Read-modify-write at commit: racing processes must not lose increments.
                let r = t
                    .get(key)
                    .update(remodel::Patch::with(|doc| {
                        let n = doc["n"].as_i64().unwrap_or(0);
                        Ok(json!({"n": n + 1, "last": "inc"}))
                    }))
                    .await
                    .unwrap();
                increments += r.replaced;
            }
        }
    }
    let done = json!({"increments": increments, "deletes": deletes});
    std::fs::write(out, done.to_string()).unwrap();
}

/// Watches both feeds until the table is dropped; writes everything down.
async fn watcher(db: Database, out: &str, victim: bool) {
    let t = db.table("crew");
    let mut all = t.changes().include_initial(true).await.unwrap();
    let mut top = t
        .order_by(Order::index("n").desc())
        .limit(TOP)
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    let mut file = std::fs::File::create(out).unwrap();
    writeln!(file, "{}", json!({"ready": true})).unwrap();
    file.flush().unwrap();
    let (mut all_done, mut top_done) = (false, false);
    while !(all_done && top_done) {
        let (feed, item) = tokio::select! {
            item = all.next(), if !all_done => ("all", item),
            item = top.next(), if !top_done => ("top", item),
        };
        let line = match item {
            Some(Ok(c)) => json!({"feed": feed, "item": item_json(&c)}),
            Some(Err(Error::FeedAborted(why))) => {
                if feed == "all" {
                    all_done = true;
                } else {
                    top_done = true;
                }
                json!({"feed": feed, "aborted": why})
            }
            other => panic!("feed {feed} ended with {other:?}"),
        };
        writeln!(file, "{line}").unwrap();
        if victim {
            file.flush().unwrap();
        }
    }
    file.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // the parent's own run: nothing to do here
    };
    let url = std::env::var(URL).unwrap();
    let db = Database::connect(&url).await.unwrap();
    match role.as_str() {
        "writer" => {
            let seed = std::env::var(SEED).unwrap().parse().unwrap();
            writer(db, seed, &std::env::var(OUT).unwrap()).await
        }
        "watcher" => watcher(db, &std::env::var(OUT).unwrap(), false).await,
        "victim" => watcher(db, &std::env::var(OUT).unwrap(), true).await,
        other => panic!("unknown role {other}"),
    }
}

fn spawn(role: &str, pg: &TestDatabase, out: Option<&std::path::Path>, seed: u64) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(URL, pg.url())
        .env(SEED, seed.to_string())
        .stdout(Stdio::null());
    if let Some(out) = out {
        cmd.env(OUT, out);
    }
    cmd.spawn().unwrap()
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_ready(path: &std::path::Path) {
    tokio::time::timeout(WAIT, async {
        while !read_lines(path).iter().any(|l| l.get("ready").is_some()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a watcher process is ready");
}

fn wait_exit(mut child: Child, what: &str) {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        assert!(started.elapsed() < WAIT, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A feed's items grouped by commit position, after its initial rows.
struct Replayed {
    initial: Vec<Value>,
    commits: BTreeMap<u64, Vec<Value>>,
}

fn replayed(lines: &[Value], feed: &str) -> Replayed {
    let mut initial = Vec::new();
    let mut commits: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let mut aborted = false;
    for l in lines.iter().filter(|l| l["feed"] == feed) {
        if l.get("aborted").is_some() {
            aborted = true;
            continue;
        }
        let item = &l["item"];
        if item["kind"] == "Initial" {
            assert!(commits.is_empty(), "an initial row after a change");
            initial.push(item["new"].clone());
        } else {
            let seq = item["seq"].as_u64().expect("a change has a position");
            commits.entry(seq).or_default().push(item.clone());
        }
    }
    assert!(aborted, "feed {feed} was not ended by the drop");
    Replayed { initial, commits }
}

/// Applies items (old leaves, new enters) to a result keyed by id.
fn apply(result: &mut BTreeMap<String, Value>, items: &[Value]) {
    for item in items {
        if let Some(old) = item["old"].as_object() {
            result.remove(&old["id"].to_string());
        }
    }
    for item in items {
        if item["new"].is_object() {
            result.insert(item["new"]["id"].to_string(), item["new"].clone());
        }
    }
}

fn keyed(rows: &[Value]) -> BTreeMap<String, Value> {
    rows.iter()
        .map(|r| (r["id"].to_string(), r.clone()))
        .collect()
}

/// The top-5 of a state by `n` descending (ties: greater key first, as a descending index
/// orders equal values by key).
fn top_of(state: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    let mut rows: Vec<&Value> = state.values().collect();
    rows.sort_by(|a, b| {
        let (na, nb) = (a["n"].as_i64().unwrap(), b["n"].as_i64().unwrap());
        nb.cmp(&na)
            .then_with(|| b["id"].as_u64().cmp(&a["id"].as_u64()))
    });
    rows.into_iter()
        .take(TOP)
        .map(|r| (r["id"].to_string(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_across_processes_agree_with_the_query_at_every_commit() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let Some(cluster) = TestCluster::shared_or_skip("feeds_across_processes") else {
        return;
    };
    let pg = cluster.create_database().await.unwrap();
    let dir = std::env::temp_dir().join(format!("remodel-pg-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let parent = Database::connect(pg.url()).await.unwrap();
    parent.create_table("crew").await.unwrap();
    let t = parent.table("crew");
    t.create_index("n", IndexSpec::field("n")).await.unwrap();
    for k in 0..KEYS / 2 {
        t.insert(json!({"id": k, "n": k as i64 * 10, "by": 0}))
            .await
            .unwrap();
    }
    let outs: Vec<_> = (0..3)
        .map(|i| dir.join(format!("watcher{i}.jsonl")))
        .collect();
    let watchers = vec![
        spawn("watcher", &pg, Some(&outs[0]), 0),
        spawn("watcher", &pg, Some(&outs[1]), 0),
    ];
    let mut victim = spawn("victim", &pg, Some(&outs[2]), 0);
    for out in &outs {
        wait_ready(out).await;
    }
    // The parent's own resume target: a feed opened before the writers start keeps this
    // replica's history from here on.
    let done: Vec<_> = (1..=3)
        .map(|i| dir.join(format!("writer{i}.json")))
        .collect();
    let writers: Vec<Child> = (1..=3)
        .map(|s| spawn("writer", &pg, Some(&done[s as usize - 1]), s))
        .collect();
    // Kill the victim once it has seen some changes.
    tokio::time::timeout(WAIT, async {
        while read_lines(&outs[2])
            .iter()
            .filter(|l| {
                l["feed"] == "all" && l["item"]["kind"] != "Initial" && l.get("item").is_some()
            })
            .count()
            < 50
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the victim sees changes");
    victim.kill().unwrap();
    victim.wait().unwrap();
    let victim_lines = read_lines(&outs[2]);
    let victim_items: Vec<&Value> = victim_lines
        .iter()
        .filter(|l| l["feed"] == "all" && l["item"]["kind"] != "Initial" && l.get("item").is_some())
        .map(|l| &l["item"])
        .collect();
    let last: Cursor = victim_items.last().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut resumed = t.changes().resume_from(last).await.unwrap();
    // And in a process started after the kill, while the writers write: its replica has no
    // history that far back; the shared history has (whichever process archived, the
    // victim included: another takes over where it stopped).
    let late = Database::connect(pg.url()).await.unwrap();
    let mut resumed_late = late
        .table("crew")
        .changes()
        .resume_from(last)
        .await
        .unwrap();
    for w in writers {
        tokio::task::spawn_blocking(move || wait_exit(w, "a writer"))
            .await
            .unwrap();
    }
    parent.sync().await.unwrap();
    let final_rows: Vec<Value> = t.query().run().await.unwrap();
    parent.drop_table("crew").await.unwrap();
    let mut resumed_items = Vec::new();
    let mut late_items = Vec::new();
    for (feed, items) in [
        (&mut resumed, &mut resumed_items),
        (&mut resumed_late, &mut late_items),
    ] {
        loop {
            match tokio::time::timeout(WAIT, feed.next()).await.unwrap() {
                Some(Ok(c)) => items.push(item_json(&c)),
                Some(Err(Error::FeedAborted(_))) | None => break,
                Some(Err(e)) => panic!("{e}"),
            }
        }
    }
    for w in watchers {
        tokio::task::spawn_blocking(move || wait_exit(w, "a watcher"))
            .await
            .unwrap();
    }

    // One order: both watchers' table feeds agree change for change.
    let lines: Vec<Vec<Value>> = outs[..2].iter().map(|o| read_lines(o)).collect();
    let all: Vec<Replayed> = lines.iter().map(|l| replayed(l, "all")).collect();
    assert_eq!(
        all[0].commits, all[1].commits,
        "two processes saw different changes"
    );
    assert!(
        all[0].commits.len() > 100,
        "too few commits: {}",
        all[0].commits.len()
    );
    for (i, lines) in lines.iter().enumerate() {
        let rows = &all[i];
        let top = replayed(lines, "top");
        // The table feed's state after every commit, and the top-5 at each of its commits.
        let mut state = keyed(&rows.initial);
        let mut shown = keyed(&top.initial);
        assert_eq!(shown, top_of(&state), "top-5 initial rows");
        let mut checked = 0;
        for (seq, items) in &rows.commits {
            apply(&mut state, items);
            if let Some(top_items) = top.commits.get(seq) {
                apply(&mut shown, top_items);
                checked += 1;
            }
            assert_eq!(shown, top_of(&state), "the top-5 feed after commit {seq:x}");
        }
        assert!(top.commits.keys().all(|s| rows.commits.contains_key(s)));
        assert!(checked > 10, "the top-5 feed changed only {checked} times");
        assert_eq!(
            state,
            keyed(&final_rows),
            "the table feed replayed != the table"
        );
    }
    // Every change was decided against the row as it was (its `old` is the state before it),
    // and the history holds exactly the increments and deletes acknowledged to the writers.
    let mut state = keyed(&all[0].initial);
    let (mut increments, mut deletes) = (0, 0);
    for items in all[0].commits.values() {
        for item in items {
            let key = item["old"]["id"].to_string();
            let key = if item["old"].is_null() {
                item["new"]["id"].to_string()
            } else {
                key
            };
            assert_eq!(
                state.get(&key).cloned().unwrap_or(Value::Null),
                item["old"],
                "a change not decided against the current row"
            );
            match item["new"].as_object() {
                Some(new) => {
                    if new.get("last") == Some(&json!("inc")) && !item["old"].is_null() {
                        assert_eq!(new["n"], json!(item["old"]["n"].as_i64().unwrap() + 1));
                        increments += 1;
                    }
                    state.insert(key, item["new"].clone());
                }
                None => {
                    deletes += 1;
                    state.remove(&key);
                }
            }
        }
    }
    let acknowledged = |what: &str| -> u64 {
        done.iter()
            .map(|f| {
                let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
                v[what].as_u64().unwrap()
            })
            .sum()
    };
    assert_eq!(
        increments,
        acknowledged("increments"),
        "increments lost or invented"
    );
    assert_eq!(deletes, acknowledged("deletes"), "deletes lost or invented");
    // Kill -9 and resume elsewhere: exactly the changes after the victim's start.
    let everything: Vec<Value> = all[0]
        .commits
        .values()
        .flatten()
        .filter(|i| {
            let c: Cursor = i["cursor"].as_str().unwrap().parse().unwrap();
            c > victim_items[0]["cursor"]
                .as_str()
                .unwrap()
                .parse::<Cursor>()
                .unwrap()
        })
        .cloned()
        .collect();
    let seen: Vec<Value> = victim_items[1..]
        .iter()
        .map(|v| (*v).clone())
        .chain(resumed_items)
        .collect();
    let strip = |v: &Vec<Value>| -> Vec<(Value, Value, Value)> {
        v.iter()
            .map(|i| (i["cursor"].clone(), i["old"].clone(), i["new"].clone()))
            .collect()
    };
    assert_eq!(
        strip(&seen),
        strip(&everything),
        "missed or repeated across the kill"
    );
    let seen_late: Vec<Value> = victim_items[1..]
        .iter()
        .map(|v| (*v).clone())
        .chain(late_items)
        .collect();
    assert_eq!(
        strip(&seen_late),
        strip(&everything),
        "missed or repeated across the kill, resumed in a process started after it"
    );
    eprintln!(
        "{} commits seen alike by 2 processes ({increments} increments, {deletes} deletes); \
         the victim saw {} changes before SIGKILL, the resumed feed {} after",
        all[0].commits.len(),
        victim_items.len(),
        seen.len() + 1 - victim_items.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(pg);
}
