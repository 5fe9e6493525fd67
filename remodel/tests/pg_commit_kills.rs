//! Group commit under attack: two processes (two handles on one PostgreSQL database) run
//! many tasks of read-modify-write increments and colliding inserts while an attacker keeps
//! terminating their commit connections. Each operation is logged as acknowledged, refused
//! (a definite key conflict), or failed (ambiguous: it may or may not have committed), and
//! the end state is checked against that log: nothing acknowledged is lost, nothing is
//! applied twice, nothing refused is stored, and both replicas and the database agree.
#![cfg(feature = "postgres")]

use remodel::postgres::{TestCluster, TestDatabase};
use remodel::{Database, Error, Patch};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters every task increments (few: many writes of one row in one moment).
const COUNTERS: u64 = 6;
/// Tasks per process.
const TASKS: u64 = 10;
/// How long the attack lasts (the tasks write until it ends).
const ATTACK_FOR: Duration = Duration::from_secs(4);
/// At most this many rounds (an increment and an insert) per task.
const MAX_ROUNDS: u64 = 300;
/// What a connection that commits was last running: the prepared single-table commit
/// statement, the commit function, or the advisory lock of a write that locks its table;
/// with `$2`, also the connection that writes sync tokens (a write that stages again, or
/// waits for its commit to be applied, syncs on it).
const KILL_COMMIT_CONNECTIONS: &str =
    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
     WHERE datname = current_database() AND backend_type = 'client backend' \
       AND pid <> pg_backend_pid() AND application_name = ANY($1) \
       AND (query LIKE 'WITH lk AS (SELECT pg_advisory_xact_lock_shared%' \
            OR query LIKE 'SELECT \"remodel\".commit(%' \
            OR query LIKE 'SELECT pg_advisory_lock(%' \
            OR ($2 AND query LIKE 'SELECT pg_logical_emit_message(true, $1::text, $2::bytea)'))";

async fn database(test: &str) -> Option<TestDatabase> {
    let cluster = TestCluster::shared_or_skip(test)?;
    Some(cluster.create_database().await.expect("a test database"))
}

/// `url` with every connection of the handle named `app` in `pg_stat_activity`.
fn named(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

/// xorshift64*: the same sequence every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What an operation came to, as its caller saw it.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Acknowledged: it was applied.
    Acked,
    /// A definite "no" (a key conflict): it was not applied.
    Refused,
    /// An error: it may or may not have been applied.
    Ambiguous(String),
}

#[derive(Default)]
struct Log {
    /// (counter, op id, outcome)
    increments: Vec<(u64, String, Outcome)>,
    /// (key, op id, outcome)
    inserts: Vec<(u64, String, Outcome)>,
}

/// The counter document after the increment `op`: `n` one more, `op` appended to `ops`.
fn bump(doc: &Value, op: &str) -> Value {
    let n = doc["n"].as_u64().expect("a count");
    let mut ops = doc["ops"].as_array().cloned().expect("an op list");
    ops.push(json!(op));
    json!({"id": doc["id"].clone(), "n": n + 1, "ops": ops})
}

async fn worker(db: Database, p: u64, task: u64, stop: Arc<AtomicBool>) -> Log {
    let mut rng = Rng::new(p * 1000 + task + 1);
    let mut log = Log::default();
    for i in 0..MAX_ROUNDS {
        if stop.load(Ordering::Acquire) {
            break;
        }
        // A read-modify-write increment, by whole-document closure or by patch closure.
        let c = rng.next() % COUNTERS;
        let op = format!("i{p}.{task}.{i}");
        let get = db.table("counters").get(c);
        let write = if task.is_multiple_of(2) {
            let op = op.clone();
            get.replace_with(move |doc| Ok(bump(doc, &op)))
        } else {
            let op = op.clone();
            get.update(Patch::with(move |doc| {
                let mut new = bump(doc, &op);
                new.as_object_mut().unwrap().remove("id");
                Ok(new)
            }))
        };
        let outcome = match write.await {
            Ok(r) if r.replaced == 1 && r.errors == 0 => Outcome::Acked,
            Ok(r) => panic!("increment {op} of counter {c}: {r:?}"),
            Err(e) => {
                assert!(matches!(e, Error::Storage { .. }), "increment {op}: {e:?}");
                Outcome::Ambiguous(e.to_string())
            }
        };
        log.increments.push((c, op, outcome));
        // A plain insert into a small key space shared by every task: about three keys per
        // round, wanted by all twenty tasks.
        let key = i * 3 + rng.next() % 3;
        let op = format!("k{p}.{task}.{i}");
        let outcome = match db.table("keys").insert(json!({"id": key, "op": op})).await {
            Ok(r) if r.inserted == 1 && r.errors == 0 => Outcome::Acked,
            Ok(r) if r.inserted == 0 && r.errors == 1 => {
                assert!(
                    matches!(r.first_error, Some(Error::KeyConflict { .. })),
                    "insert {op} of key {key}: {r:?}"
                );
                Outcome::Refused
            }
            Ok(r) => panic!("insert {op} of key {key}: {r:?}"),
            Err(Error::KeyConflict { .. }) => Outcome::Refused,
            Err(e) => {
                assert!(matches!(e, Error::Storage { .. }), "insert {op}: {e:?}");
                Outcome::Ambiguous(e.to_string())
            }
        };
        log.inserts.push((key, op, outcome));
    }
    log
}

/// Every document of `table` in PostgreSQL itself, by `id`.
async fn stored(admin: &tokio_postgres::Client, table: &str) -> BTreeMap<u64, Value> {
    let rows = admin
        .query(&format!("SELECT doc::text FROM remodel.\"t_{table}\""), &[])
        .await
        .unwrap();
    by_id(
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
            .collect(),
    )
}

fn by_id(rows: Vec<Value>) -> BTreeMap<u64, Value> {
    let mut map = BTreeMap::new();
    for row in rows {
        let id = row["id"].as_u64().expect("a numeric id");
        assert!(map.insert(id, row).is_none(), "id {id} twice");
    }
    map
}

/// Two processes write concurrently while their commit connections are terminated again and
/// again: every counter holds each acknowledged increment exactly once and each failed one at
/// most once (no other), every key holds the document of an insert that was acknowledged or
/// failed (never of one refused), an acknowledged insert's document is the one stored, a
/// refused insert's key exists, both replicas equal the database, and both processes write
/// and read again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_under_killed_connections_are_never_lost_or_doubled() {
    let Some(pg) = database("commits_under_killed_connections").await else {
        return;
    };
    let apps = vec!["remodel_kills_a".to_string(), "remodel_kills_b".to_string()];
    let a = Database::connect(&named(pg.url(), &apps[0]))
        .await
        .expect("a connects");
    let b = Database::connect(&named(pg.url(), &apps[1]))
        .await
        .expect("b connects");
    a.create_table("counters").await.unwrap();
    a.create_table("keys").await.unwrap();
    for c in 0..COUNTERS {
        a.table("counters")
            .insert(json!({"id": c, "n": 0, "ops": []}))
            .await
            .unwrap();
    }
    b.sync().await.unwrap();
    let admin = pg.connect().await.unwrap();
    // The handles' connections are told apart by name.
    let named_connections: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY($1)",
            &[&apps],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        named_connections >= 4,
        "{named_connections} named connections"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (p, db) in [(0, &a), (1, &b)] {
        for task in 0..TASKS {
            tasks.push(tokio::spawn(worker(db.clone(), p, task, stop.clone())));
        }
    }
    let attacker = {
        let stop = stop.clone();
        let apps = apps.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(99);
            let (mut rounds, mut killed) = (0u64, 0u64);
            let begin = Instant::now();
            while begin.elapsed() < ATTACK_FOR {
                tokio::time::sleep(Duration::from_millis(50 + rng.next() % 151)).await;
                let rows = admin
                    .query(KILL_COMMIT_CONNECTIONS, &[&apps, &(rounds % 3 == 2)])
                    .await
                    .unwrap();
                killed += rows.iter().filter(|r| r.get::<_, bool>(1)).count() as u64;
                rounds += 1;
            }
            stop.store(true, Ordering::Release);
            (admin, rounds, killed)
        })
    };
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.expect("a task panicked"));
    }
    let (admin, rounds, killed) = attacker.await.unwrap();

    // The oracle.
    let mut increments: HashMap<u64, HashMap<String, Outcome>> = HashMap::new();
    let mut inserts: HashMap<u64, Vec<(String, Outcome)>> = HashMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = |o: &Outcome| {
        if let Outcome::Ambiguous(e) = o {
            *errors.entry(e.clone()).or_default() += 1;
        }
    };
    for log in logs {
        for (c, op, outcome) in log.increments {
            count(&outcome);
            increments.entry(c).or_default().insert(op, outcome);
        }
        for (key, op, outcome) in log.inserts {
            count(&outcome);
            inserts.entry(key).or_default().push((op, outcome));
        }
    }
    let tally = |outcome: &Outcome| {
        let all = increments.values().flat_map(|m| m.values());
        let ins = inserts.values().flat_map(|v| v.iter().map(|(_, o)| o));
        let same = |o: &&Outcome| std::mem::discriminant(*o) == std::mem::discriminant(outcome);
        (all.filter(same).count(), ins.filter(same).count())
    };
    let (acked_incs, acked_ins) = tally(&Outcome::Acked);
    let (ambiguous_incs, ambiguous_ins) = tally(&Outcome::Ambiguous(String::new()));
    let (_, refused_ins) = tally(&Outcome::Refused);
    eprintln!(
        "attack: {rounds} rounds, {killed} connections terminated; increments: {acked_incs} \
         acknowledged, {ambiguous_incs} failed; inserts: {acked_ins} acknowledged, \
         {refused_ins} refused, {ambiguous_ins} failed; errors: {errors:#?}"
    );
    // The attack happened, and hit writes in flight; writes went on between the kills.
    assert!(
        killed > 0,
        "no connection was terminated in {rounds} rounds"
    );
    assert!(
        ambiguous_incs + ambiguous_ins > 0,
        "{killed} connections terminated, yet no write failed"
    );
    assert!(
        acked_incs > 0 && acked_ins > 0,
        "nothing acknowledged under attack"
    );

    // Give the terminated connections a moment to be seen closed, then catch both up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.sync().await.expect("a syncs after the attack");
    b.sync().await.expect("b syncs after the attack");

    // Both replicas and the database agree.
    let db_counters = stored(&admin, "counters").await;
    let db_keys = stored(&admin, "keys").await;
    for (name, db) in [("a", &a), ("b", &b)] {
        let counters = by_id(db.table("counters").run().await.unwrap());
        assert!(
            counters == db_counters,
            "{name}'s replica of counters differs from the database"
        );
        let keys = by_id(db.table("keys").run().await.unwrap());
        assert_eq!(keys.len(), db_keys.len(), "{name}'s replica of keys");
        assert!(
            keys == db_keys,
            "{name}'s replica of keys differs from the database"
        );
    }
    let count: i64 = admin
        .query_one("SELECT count(*) FROM remodel.t_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, db_keys.len());

    let failed_applied = db_counters
        .iter()
        .flat_map(|(c, doc)| {
            let mine = increments.get(c);
            doc["ops"].as_array().unwrap().iter().filter(move |op| {
                matches!(
                    mine.and_then(|m| m.get(op.as_str().unwrap())),
                    Some(Outcome::Ambiguous(_))
                )
            })
        })
        .count();
    let failed_stored = db_keys
        .iter()
        .filter(|(key, doc)| {
            inserts.get(*key).is_some_and(|tries| {
                tries
                    .iter()
                    .any(|(op, o)| matches!(o, Outcome::Ambiguous(_)) && doc["op"] == json!(op))
            })
        })
        .count();
    eprintln!(
        "of the failed writes, {failed_applied} increments and {failed_stored} inserts \
         were applied after all"
    );

    // Counters: each acknowledged increment exactly once, each failed one at most once, none
    // other; acknowledged <= n <= acknowledged + failed.
    assert_eq!(db_counters.len() as u64, COUNTERS);
    for (c, doc) in &db_counters {
        let ops: Vec<&str> = doc["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        let n = doc["n"].as_u64().unwrap();
        assert_eq!(n, ops.len() as u64, "counter {c}: n against its op list");
        let mine = increments.remove(c).unwrap_or_default();
        let mut seen = BTreeSet::new();
        for op in &ops {
            assert!(
                seen.insert(*op),
                "counter {c}: increment {op} applied twice"
            );
            match mine.get(*op) {
                Some(Outcome::Acked | Outcome::Ambiguous(_)) => {}
                Some(Outcome::Refused) => unreachable!(),
                None => panic!("counter {c}: increment {op} is not one of this counter's"),
            }
        }
        let acked = mine.values().filter(|o| **o == Outcome::Acked).count() as u64;
        let failed = mine.len() as u64 - acked;
        for (op, outcome) in &mine {
            if *outcome == Outcome::Acked {
                assert!(
                    seen.contains(op.as_str()),
                    "counter {c}: acknowledged increment {op} lost"
                );
            }
        }
        assert!(
            acked <= n && n <= acked + failed,
            "counter {c}: {n}, with {acked} acknowledged and {failed} failed increments"
        );
    }

    // Keys: the stored document is an acknowledged or failed insert's, never a refused one's;
    // an acknowledged insert's is the one stored; a refused insert's key exists.
    for (key, tries) in &inserts {
        let stored_op = db_keys
            .get(key)
            .map(|d| d["op"].as_str().unwrap().to_string());
        let acked: Vec<_> = tries
            .iter()
            .filter(|(_, o)| *o == Outcome::Acked)
            .map(|(op, _)| op.clone())
            .collect();
        assert!(acked.len() <= 1, "key {key}: inserted by {acked:?}");
        if let Some(op) = acked.first() {
            assert_eq!(
                stored_op.as_ref(),
                Some(op),
                "key {key}: acknowledged insert {op}"
            );
        }
        if tries.iter().any(|(_, o)| *o == Outcome::Refused) {
            assert!(
                stored_op.is_some(),
                "key {key}: an insert was refused as a conflict, yet the key is absent"
            );
        }
        if let Some(stored_op) = &stored_op {
            match tries.iter().find(|(op, _)| op == stored_op) {
                Some((_, Outcome::Acked | Outcome::Ambiguous(_))) => {}
                Some((_, Outcome::Refused)) => {
                    panic!("key {key}: stored by {stored_op}, whose insert was refused")
                }
                None => panic!("key {key}: stored by {stored_op}, no insert of this key"),
            }
        }
    }
    for key in db_keys.keys() {
        assert!(inserts.contains_key(key), "key {key} was never inserted");
    }

    // Both processes are usable: writes (on every commit connection, round robin) and reads.
    for (p, db) in [(0u64, &a), (1, &b)] {
        for i in 0..8u64 {
            let r = db
                .table("keys")
                .insert(json!({"id": 1_000_000 + p * 100 + i}))
                .await
                .unwrap_or_else(|e| panic!("process {p}: write {i} after the attack: {e}"));
            assert_eq!(r.inserted, 1, "{r:?}");
        }
        let r = db
            .table("counters")
            .get(0)
            .update(json!({"after": p}))
            .await
            .unwrap();
        assert_eq!(r.replaced, 1);
    }
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    for db in [&a, &b] {
        assert_eq!(
            db.table("keys").count().await.unwrap() as usize,
            db_keys.len() + 16
        );
        assert!(db.table("keys").get(1_000_107).await.unwrap().is_some());
        assert!(db.table("counters").get(0).await.unwrap().unwrap()["after"].is_u64());
    }
}
