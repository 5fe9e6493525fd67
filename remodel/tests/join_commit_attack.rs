//! Adversarial differential tests of live joins (`eq_join(..).changes()`), aimed at commits
//! that write both tables of a join (`feed/hub/publish.rs`, `Joins`): random batches over the
//! left and right tables (every write kind, interleaved, rows written twice, rows moving
//! between join keys, right rows deleted and re-inserted), single-table writes and
//! `insert_many`; several join feeds (primary key, index, multi index, `get_all` on a left
//! index with a repeated key, filter + pluck) opened at different times with initial rows.
//!
//! Checks: (1) a commit's items come in `position_in_commit` order and each item's `old_val`
//! is the pair as the items before it left it; (2) after every commit the pairs rebuilt from
//! the items equal the join re-run; (3) a lagging or concurrent reader never sees a state at
//! a commit boundary that was no committed result; (4) DDL ends a join feed with a typed
//! error and no item of another incarnation.

use futures::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::{field, json, Conflict, Database, Durability, Error, Feed, IndexSpec, Join, Value};
use std::collections::BTreeMap;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Values and the replay of a feed.

/// A canonical text of a value (object keys sorted), to compare multisets of pairs.
fn canon(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut ks: Vec<&String> = m.keys().collect();
                ks.sort();
                out.push('{');
                for k in ks {
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    walk(&m[k], out);
                    out.push(',');
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for x in a {
                    walk(x, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    walk(v, &mut s);
    s
}

/// A multiset of pairs, as sorted canonical texts.
type State = Vec<String>;

fn state_of(pairs: &[Value]) -> State {
    let mut s: State = pairs.iter().map(canon).collect();
    s.sort();
    s
}

fn pair_key(p: &Value) -> String {
    format!("{}|{}", canon(&p["left"]["id"]), canon(&p["right"]["id"]))
}

/// One join feed and what its consumer rebuilt from it.
struct Watched {
    name: String,
    join: Join,
    feed: Feed,
    /// (left id, right id) -> the copies of the pair (a `get_all` with a repeated key has
    /// several).
    pairs: BTreeMap<String, Vec<Value>>,
    /// The last item's (seq, position in commit).
    last: Option<(u64, u32)>,
    /// The states seen at commit boundaries (for the lagging readers), with the commit.
    boundaries: Vec<(u64, State)>,
    ended: Option<Error>,
    after_end: usize,
    squashed: bool,
}

impl Watched {
    async fn open(name: impl Into<String>, join: Join) -> Self {
        Self::opened(name, join, false).await
    }

    async fn opened(name: impl Into<String>, join: Join, squash: bool) -> Self {
        let feed = join
            .changes()
            .include_initial(true)
            .squash(squash)
            .await
            .unwrap();
        Watched {
            name: name.into(),
            join,
            feed,
            pairs: BTreeMap::new(),
            last: None,
            boundaries: Vec::new(),
            ended: None,
            after_end: 0,
            squashed: squash,
        }
    }

    fn state(&self) -> State {
        let all: Vec<Value> = self.pairs.values().flatten().cloned().collect();
        state_of(&all)
    }

    /// Applies one item (checks 1); failures go to `fails`.
    fn take(&mut self, c: remodel::Change, fails: &mut Vec<String>) {
        if std::env::var("JCA_TRACE").is_ok() {
            eprintln!(
                "{}: {:?} {:?} old={:?} new={:?}",
                self.name,
                c.seq(),
                c.position_in_commit(),
                c.old_val().map(canon),
                c.new_val().map(canon)
            );
        }
        let name = &self.name;
        match (c.seq(), c.position_in_commit()) {
            (Some(seq), Some(pos)) => {
                let at = (seq, pos);
                if let Some(l) = self.last {
                    // A squashed feed merges a pair's items of one commit in place (at the
                    // first one's slot, with the last one's position): not checked there.
                    if at < l && !self.squashed {
                        fails.push(format!("{name}: item at {at:?} came after one at {l:?}"));
                    }
                    if seq != l.0 && !self.squashed {
                        // A commit boundary: the state the previous commit left.
                        let st = self.state();
                        self.boundaries.push((l.0, st));
                    }
                }
                self.last = Some(at);
            }
            (None, _) => {
                if self.last.is_some() {
                    fails.push(format!(
                        "{name}: an unstamped item after stamped ones: {c:?}"
                    ));
                }
            }
            (Some(_), None) => fails.push(format!("{name}: seq without position: {c:?}")),
        }
        let Some(any) = c.old_val().or(c.new_val()) else {
            fails.push(format!("{name}: an item with neither value: {c:?}"));
            return;
        };
        let key = pair_key(any);
        if let Some(old) = c.old_val() {
            let copies = self.pairs.entry(key.clone()).or_default();
            match copies.iter().position(|p| p == old) {
                Some(i) => {
                    copies.swap_remove(i);
                }
                None => fails.push(format!(
                    "{name}: at {:?} the item's old_val is {} but the pair {key} is {:?}",
                    self.last,
                    canon(old),
                    copies.iter().map(canon).collect::<Vec<_>>()
                )),
            }
        }
        if let Some(new) = c.new_val() {
            if let Some(n) = c.new_val().and(c.old_val()) {
                if pair_key(n) != key {
                    fails.push(format!("{name}: an item changes its pair's key: {c:?}"));
                }
            }
            self.pairs.entry(key.clone()).or_default().push(new.clone());
        }
        if self.pairs.get(&key).is_some_and(|v| v.is_empty()) {
            self.pairs.remove(&key);
        }
    }

    /// Takes every item queued now; returns the commits (seqs) they came from.
    fn drain(&mut self, fails: &mut Vec<String>) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(Some(item)) = self.feed.next().now_or_never() {
            if self.ended.is_some() {
                self.after_end += 1;
                continue;
            }
            match item {
                Ok(c) => {
                    if let Some(s) = c.seq() {
                        if seqs.last() != Some(&s) {
                            seqs.push(s);
                        }
                    }
                    self.take(c, fails);
                }
                Err(e) => self.ended = Some(e),
            }
        }
        seqs
    }

    /// Takes items until none came for `quiet` (for a feed in another process).
    async fn drain_quiet(&mut self, quiet: Duration, fails: &mut Vec<String>) -> Vec<u64> {
        let mut seqs = self.drain(fails);
        while let Ok(Some(item)) = tokio::time::timeout(quiet, self.feed.next()).await {
            match item {
                Ok(c) if self.ended.is_none() => {
                    if let Some(s) = c.seq() {
                        if seqs.last() != Some(&s) {
                            seqs.push(s);
                        }
                    }
                    self.take(c, fails);
                }
                Ok(_) => self.after_end += 1,
                Err(e) => self.ended = Some(e),
            }
            seqs.extend(self.drain(fails));
        }
        seqs
    }

    async fn expected(&self) -> State {
        state_of(&self.join.run().await.unwrap())
    }

    /// Check 2: the rebuilt pairs equal the join re-run now.
    async fn compare(&self, when: &str, fails: &mut Vec<String>) {
        let want = self.expected().await;
        let got = self.state();
        if got != want {
            fails.push(format!(
                "{} {when}: rebuilt pairs differ from the join re-run\n  rebuilt: {got:?}\n  re-run:  {want:?}",
                self.name
            ));
        }
        if let Some(e) = &self.ended {
            fails.push(format!("{} {when}: the feed ended: {e:?}", self.name));
        }
    }
}

/// Check 3: every state a lagging reader saw at a commit boundary is the committed result
/// after that commit (`results`: by the seq of the commit's first change, which is what
/// items carry as `seq`).
fn check_boundaries(w: &Watched, results: &BTreeMap<u64, State>, fails: &mut Vec<String>) {
    for (seq, st) in &w.boundaries {
        match results.get(seq) {
            Some(want) if want == st => {}
            Some(want) => fails.push(format!(
                "{}: after commit {seq} the reader saw {st:?}\n  but the committed result was {want:?}",
                w.name
            )),
            None => fails.push(format!(
                "{}: items of commit {seq}, which was no commit of the writer's",
                w.name
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The schema and the random writes.

const L: &str = "lefts";
const R: &str = "rights";
const NL: u64 = 9;
const NR: u64 = 5;

async fn schema(db: &Database) {
    db.create_table(L).await.unwrap();
    db.create_table(R).await.unwrap();
    let (l, r) = (db.table(L), db.table(R));
    r.create_index("grp", IndexSpec::field("grp"))
        .await
        .unwrap();
    r.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    l.create_index("k", IndexSpec::field("k")).await.unwrap();
}

fn left_doc(rng: &mut StdRng, id: u64, v: u64) -> Value {
    let mut d = json!({"id": id, "g": rng.gen_range(0..3), "t": rng.gen_range(0..4), "f": rng.gen_bool(0.6), "v": v});
    match rng.gen_range(0..8) {
        0 => {} // joins nothing on k
        1 => d["k"] = json!(null),
        2 => d["k"] = json!(format!("s{}", rng.gen_range(0..2))),
        _ => d["k"] = json!(rng.gen_range(0..NR)),
    }
    d
}

fn tags(rng: &mut StdRng) -> Value {
    let n = rng.gen_range(0..4);
    // Repeats allowed: a multi index puts the row under each distinct value once.
    json!((0..n).map(|_| rng.gen_range(0..4)).collect::<Vec<u64>>())
}

fn right_doc(rng: &mut StdRng, id: u64, v: u64) -> Value {
    let mut d = json!({"id": id, "tags": tags(rng), "v": v});
    if rng.gen_range(0..5) > 0 {
        d["grp"] = json!(rng.gen_range(0..3));
    }
    if rng.gen_range(0..6) == 0 {
        d["id"] = json!(format!("s{}", rng.gen_range(0..2)));
    }
    d
}

fn right_id(rng: &mut StdRng) -> Value {
    if rng.gen_range(0..6) == 0 {
        json!(format!("s{}", rng.gen_range(0..2)))
    } else {
        json!(rng.gen_range(0..NR))
    }
}

/// Adds one random write of the left table to `b`.
fn left_write(
    db: &Database,
    rng: &mut StdRng,
    b: remodel::Batch,
    v: u64,
    log: &mut Vec<String>,
) -> remodel::Batch {
    let id = rng.gen_range(0..NL);
    let l = db.table(L);
    match rng.gen_range(0..10) {
        0 | 1 => {
            let d = left_doc(rng, id, v);
            log.push(format!("L insert/replace {d}"));
            b.insert_with(L, d, Conflict::Replace)
        }
        2 => {
            let d = json!({"id": id, "k": rng.gen_range(0..NR), "v": v});
            log.push(format!("L insert/update {d}"));
            b.insert_with(L, d, Conflict::Update)
        }
        3 => {
            // Mostly fresh ids (a taken one fails the whole batch).
            let fresh = NL + rng.gen_range(0..3);
            let d = left_doc(rng, fresh, v);
            // Mostly deleted first in the same batch (a taken key fails the batch).
            let b = if rng.gen_bool(0.8) {
                log.push(format!("L delete {fresh}"));
                b.delete(L, fresh)
            } else {
                b
            };
            log.push(format!("L insert/error {d}"));
            b.insert_with(L, d, Conflict::Error)
        }
        4 | 5 => {
            let patch = match rng.gen_range(0..4) {
                0 => json!({"k": rng.gen_range(0..NR), "v": v}),
                1 => json!({"g": rng.gen_range(0..3), "v": v}),
                2 => json!({"t": rng.gen_range(0..4), "f": rng.gen_bool(0.5)}),
                _ => json!({"v": v}),
            };
            log.push(format!("L update {id} {patch}"));
            b.update(L, id, patch)
        }
        6 => {
            let d = left_doc(rng, id, v);
            log.push(format!("L replace {id} {d}"));
            b.replace(L, id, d)
        }
        7 => {
            let gone = if rng.gen_bool(0.5) {
                id
            } else {
                NL + rng.gen_range(0..3)
            };
            log.push(format!("L delete {gone}"));
            b.delete(L, gone)
        }
        8 => {
            let g = rng.gen_range(0..3);
            let k = rng.gen_range(0..NR);
            log.push(format!("L update_where g={g} -> k={k}"));
            b.update_where(&l.filter(field("g").eq(g)), json!({"k": k, "v": v}))
        }
        _ => {
            let k = rng.gen_range(0..NR);
            log.push(format!("L delete_where k={k}"));
            b.delete_where(&l.filter(field("k").eq(k)))
        }
    }
}

/// Adds one random write of the right table to `b`.
fn right_write(
    db: &Database,
    rng: &mut StdRng,
    b: remodel::Batch,
    v: u64,
    log: &mut Vec<String>,
) -> remodel::Batch {
    let id = right_id(rng);
    let r = db.table(R);
    match rng.gen_range(0..10) {
        0 | 1 => {
            let mut d = right_doc(rng, 0, v);
            d["id"] = id.clone();
            log.push(format!("R insert/replace {d}"));
            b.insert_with(R, d, Conflict::Replace)
        }
        2 => {
            let d = json!({"id": id, "grp": rng.gen_range(0..3), "v": v});
            log.push(format!("R insert/update {d}"));
            b.insert_with(R, d, Conflict::Update)
        }
        3 | 4 => {
            let patch = match rng.gen_range(0..3) {
                0 => json!({"grp": rng.gen_range(0..3), "v": v}),
                1 => json!({"tags": tags(rng), "v": v}),
                _ => json!({"v": v}),
            };
            log.push(format!("R update {id} {patch}"));
            b.update(R, id, patch)
        }
        5 => {
            let mut d = right_doc(rng, 0, v);
            d["id"] = id.clone();
            log.push(format!("R replace {id} {d}"));
            b.replace(R, id, d)
        }
        6 => {
            log.push(format!("R delete {id}"));
            b.delete(R, id)
        }
        7 => {
            // Deleted and inserted again in the same batch (maybe as it was).
            let mut d = right_doc(rng, 0, v);
            d["id"] = id.clone();
            log.push(format!("R delete+insert {d}"));
            b.delete(R, id).insert_with(R, d, Conflict::Error)
        }
        8 => {
            let g = rng.gen_range(0..3);
            log.push(format!("R update_where grp={g}"));
            let to = rng.gen_range(0..3);
            b.update_where(&r.filter(field("grp").eq(g)), json!({"v": v, "grp": to}))
        }
        _ => {
            let g = rng.gen_range(0..3);
            log.push(format!("R delete_where grp={g}"));
            b.delete_where(&r.filter(field("grp").eq(g)))
        }
    }
}

/// One random commit (or a failed batch, which commits nothing); the log of what it did.
async fn random_commit(db: &Database, rng: &mut StdRng, v: u64) -> (bool, Vec<String>) {
    let mut log = Vec::new();
    let ok = match rng.gen_range(0..10) {
        0 => {
            let t = if rng.gen_bool(0.5) { L } else { R };
            let docs: Vec<Value> = (0..rng.gen_range(1..5))
                .map(|_| {
                    if t == L {
                        let id = rng.gen_range(0..NL);
                        left_doc(rng, id, v)
                    } else {
                        let mut d = right_doc(rng, 0, v);
                        d["id"] = right_id(rng);
                        d
                    }
                })
                .collect();
            log.push(format!("{t} insert_many {docs:?}"));
            db.table(t)
                .insert_many(docs)
                .conflict(Conflict::Replace)
                .await
                .is_ok()
        }
        1 => {
            let id = rng.gen_range(0..NL);
            let k = rng.gen_range(0..NR);
            log.push(format!("L get({id}).update k={k}"));
            db.table(L)
                .get(id)
                .update(json!({"k": k, "v": v}))
                .await
                .is_ok()
        }
        _ => {
            let mut b = db.batch();
            for _ in 0..rng.gen_range(1..9) {
                b = if rng.gen_bool(0.5) {
                    left_write(db, rng, b, v, &mut log)
                } else {
                    right_write(db, rng, b, v, &mut log)
                };
            }
            match b.await {
                Ok(_) => true,
                Err(e) => {
                    if std::env::var("JCA_TRACE_FAIL").is_ok() {
                        eprintln!("batch failed: {e}");
                    }
                    log.push(format!("failed: {e}"));
                    false
                }
            }
        }
    };
    (ok, log)
}

/// The joins watched (name, join); `phase` varies them between the opening times.
fn joins(db: &Database, phase: usize) -> Vec<(String, Join)> {
    let l = db.table(L);
    vec![
        (format!("pk#{phase}"), l.query().eq_join("k", R)),
        (
            format!("grp#{phase}"),
            l.query().eq_join("g", R).index("grp"),
        ),
        (
            format!("tags#{phase}"),
            l.query().eq_join("t", R).index("tags"),
        ),
        (
            format!("get_all k[1,2,2]#{phase}"),
            l.get_all([1, 2, 2]).index("k").eq_join("k", R),
        ),
        (
            format!("filter+pluck grp#{phase}"),
            l.query()
                .filter(field("f").eq(true))
                .pluck(["id", "g", "k"])
                .eq_join("g", R)
                .index("grp"),
        ),
        // Crossing: the right table's rows on the left, the left table followed.
        (
            format!("reverse pk#{phase}"),
            db.table(R).query().eq_join("grp", L),
        ),
        (
            format!("reverse index#{phase}"),
            db.table(R).query().eq_join("grp", L).index("k"),
        ),
        (
            format!("get_all k[0,3] tags#{phase}"),
            l.get_all([0, 3]).index("k").eq_join("t", R).index("tags"),
        ),
    ]
}

/// The random scenario: `writer` commits, `reader` has the feeds (the same handle on the
/// embedded store; two handles on PostgreSQL, `quiet` then the time a drain waits).
async fn scenario(
    writer: &Database,
    reader: &Database,
    seed: u64,
    steps: u64,
    quiet: Option<Duration>,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fails = Vec::new();
    // Some rows before any feed.
    for v in 0..4 {
        random_commit(writer, &mut rng, v).await;
    }
    if quiet.is_some() {
        reader.sync().await.unwrap();
    }
    let mut eager: Vec<Watched> = Vec::new();
    // Lagging readers: drained every few commits; their boundaries are checked (3).
    let mut lagging: Vec<Watched> = Vec::new();
    let mut results: Vec<BTreeMap<u64, State>> = Vec::new();
    let mut opened_at = Vec::new();
    let mut committed = 0;
    for step in 0..steps {
        if step == 0 || step == steps / 3 || step == 2 * steps / 3 {
            let phase = opened_at.len();
            opened_at.push(step);
            for (name, j) in joins(reader, phase) {
                let mut w = Watched::open(name, j).await;
                w.drain(&mut fails);
                w.compare("when opened", &mut fails).await;
                eager.push(w);
            }
            // Squashed (merged per pair while unread): drained after every commit too.
            for (name, j) in joins(reader, phase).into_iter().take(3) {
                let mut w = Watched::opened(format!("squashed {name}"), j, true).await;
                w.drain(&mut fails);
                w.compare("when opened", &mut fails).await;
                eager.push(w);
            }
            if step == 0 {
                let l = reader.table(L);
                for (name, j) in [
                    ("lagging pk", l.query().eq_join("k", R)),
                    ("lagging tags", l.query().eq_join("t", R).index("tags")),
                ] {
                    let mut w = Watched::open(name, j).await;
                    w.drain(&mut fails);
                    w.compare("when opened", &mut fails).await;
                    let mut first = BTreeMap::new();
                    first.insert(0, w.state());
                    results.push(first);
                    lagging.push(w);
                }
            }
        }
        let (ok, log) = random_commit(writer, &mut rng, 100 + step).await;
        committed += ok as u64;
        if quiet.is_some() {
            reader.sync().await.unwrap();
        }
        let mut seqs_seen: Vec<u64> = Vec::new();
        let before = fails.len();
        for w in &mut eager {
            let seqs = match quiet {
                Some(q) => w.drain_quiet(q, &mut fails).await,
                None => w.drain(&mut fails),
            };
            if seqs.len() > 1 {
                fails.push(format!(
                    "{}: one commit's items carry several seqs: {seqs:?}",
                    w.name
                ));
            }
            if !ok && !seqs.is_empty() {
                fails.push(format!("{}: items after a failed batch: {seqs:?}", w.name));
            }
            seqs_seen.extend(seqs);
            w.compare(&format!("after step {step}"), &mut fails).await;
        }
        seqs_seen.sort();
        seqs_seen.dedup();
        if seqs_seen.len() > 1 {
            fails.push(format!("feeds disagree on the commit's seq: {seqs_seen:?}"));
        }
        // The committed result of each lagging join, under the commit's seq.
        if let Some(&seq) = seqs_seen.first() {
            for (w, res) in lagging.iter().zip(results.iter_mut()) {
                res.insert(seq, w.expected().await);
            }
        } else if ok {
            // No eager feed saw it: the lagging ones must not have an item of it either;
            // keyed by nothing, so a boundary there is reported as unknown.
        }
        if step % 7 == 6 {
            for w in &mut lagging {
                match quiet {
                    Some(q) => w.drain_quiet(q, &mut fails).await,
                    None => w.drain(&mut fails),
                };
            }
        }
        if fails.len() > before {
            fails.push(format!("  (seed {seed}, step {step}) the commit: {log:?}"));
            break;
        }
    }
    for (w, res) in lagging.iter_mut().zip(results.iter()) {
        match quiet {
            Some(q) => w.drain_quiet(q, &mut fails).await,
            None => w.drain(&mut fails),
        };
        // The last commit's state.
        if let Some((s, _)) = w.last {
            let st = w.state();
            w.boundaries.push((s, st));
        }
        check_boundaries(w, res, &mut fails);
        w.compare("at the end", &mut fails).await;
    }
    for w in &eager {
        w.compare("at the end", &mut fails).await;
    }
    if committed < steps / 3 {
        fails.push(format!(
            "seed {seed}: only {committed} of {steps} batches committed"
        ));
    }
    fails
}

fn report(fails: Vec<String>) {
    if !fails.is_empty() {
        let n = fails.len();
        let shown: Vec<String> = fails.into_iter().take(12).collect();
        panic!("{n} failures:\n{}", shown.join("\n"));
    }
}

async fn embedded() -> Database {
    remodel::Config::in_memory()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Tests.

/// Checks 1–3 on the embedded store, over several seeds.
#[tokio::test]
async fn random_commits_over_both_tables_keep_every_join_feed_exact() {
    let mut fails = Vec::new();
    for seed in 1..=6u64 {
        let db = embedded().await;
        schema(&db).await;
        fails.extend(scenario(&db, &db, seed, 120, None).await);
        if !fails.is_empty() {
            break;
        }
    }
    report(fails);
}

/// The same on PostgreSQL: the writer and the feeds in two handles (two processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_commits_over_both_tables_on_postgres() {
    let Some(cluster) = remodel::postgres::TestCluster::shared_or_skip(
        "random_commits_over_both_tables_on_postgres",
    ) else {
        return;
    };
    let pg = cluster.create_database().await.expect("a test database");
    let a = Database::connect(pg.url()).await.unwrap();
    schema(&a).await;
    let b = Database::connect(pg.url()).await.unwrap();
    b.sync().await.unwrap();
    let fails = scenario(&a, &b, 77, 45, Some(Duration::from_millis(30))).await;
    report(fails);
}

/// A reader on another thread that reads whenever items come: every state it holds when
/// the feed has nothing more for it (a commit boundary as it sees it) is a committed
/// result: a commit's items are delivered at once, never in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_reader_never_sees_part_of_a_commit() {
    let db = embedded().await;
    schema(&db).await;
    let mut rng = StdRng::seed_from_u64(5);
    for v in 0..6 {
        random_commit(&db, &mut rng, v).await;
    }
    let mut fails = Vec::new();
    let mut readers = Vec::new();
    for (name, j) in joins(&db, 0).into_iter().take(3) {
        let mut w = Watched::open(name, j).await;
        w.drain(&mut fails);
        let start = w.state();
        readers.push(tokio::spawn(async move {
            let mut fails = Vec::new();
            let mut seen: Vec<State> = vec![start];
            loop {
                match tokio::time::timeout(Duration::from_millis(500), w.feed.next()).await {
                    Ok(Some(Ok(c))) => {
                        w.take(c, &mut fails);
                        w.drain(&mut fails);
                        // Nothing more queued: what the reader holds now.
                        let st = w.state();
                        if seen.last() != Some(&st) {
                            seen.push(st);
                        }
                    }
                    Ok(Some(Err(e))) => {
                        fails.push(format!("{}: ended {e:?}", w.name));
                        break;
                    }
                    _ => break,
                }
            }
            (w, seen, fails)
        }));
    }
    // The committed results, in order.
    let mut results: Vec<Vec<State>> = vec![Vec::new(); readers.len()];
    let js: Vec<Join> = joins(&db, 0).into_iter().take(3).map(|(_, j)| j).collect();
    for (i, j) in js.iter().enumerate() {
        results[i].push(state_of(&j.run().await.unwrap()));
    }
    for v in 0..250 {
        let mut b = db.batch();
        let mut log = Vec::new();
        for _ in 0..rng.gen_range(2..10) {
            b = if rng.gen_bool(0.5) {
                left_write(&db, &mut rng, b, 1000 + v, &mut log)
            } else {
                right_write(&db, &mut rng, b, 1000 + v, &mut log)
            };
        }
        if b.await.is_ok() {
            for (i, j) in js.iter().enumerate() {
                results[i].push(state_of(&j.run().await.unwrap()));
            }
        }
    }
    for (i, r) in readers.into_iter().enumerate() {
        let (w, seen, f) = r.await.unwrap();
        fails.extend(f);
        // Each seen state is a committed result, in commit order.
        let mut q = 0;
        for st in &seen {
            match (q..results[i].len()).find(|&k| &results[i][k] == st) {
                Some(k) => q = k,
                None => {
                    fails.push(format!(
                        "{}: the reader held a state that was no committed result (after result #{q}): {st:?}",
                        w.name
                    ));
                    break;
                }
            }
        }
        w.compare("at the end", &mut fails).await;
    }
    report(fails);
}

/// A self join (the right table is the left one): its commits always write "both tables".
/// Each commit's items must still come in position order with a consistent chain, alone
/// and in a batch that also writes another table.
#[tokio::test]
async fn a_self_join_keeps_commit_order_and_chain() {
    let db = embedded().await;
    db.create_table("nodes").await.unwrap();
    db.create_table("other").await.unwrap();
    db.table("nodes")
        .create_index("color", IndexSpec::field("color"))
        .await
        .unwrap();
    let n = db.table("nodes");
    let mut ws = vec![
        Watched::open("self pk", n.query().eq_join("link", "nodes")).await,
        Watched::open(
            "self index",
            n.query().eq_join("want", "nodes").index("color"),
        )
        .await,
    ];
    let mut rng = StdRng::seed_from_u64(11);
    let mut fails = Vec::new();
    for step in 0..120u64 {
        let mut b = db.batch();
        let mut log = Vec::new();
        for _ in 0..rng.gen_range(1..6) {
            let id = rng.gen_range(0..6u64);
            let d = json!({"id": id, "link": rng.gen_range(0..6u64), "color": rng.gen_range(0..3), "want": rng.gen_range(0..3), "v": step});
            b = match rng.gen_range(0..4) {
                0 => {
                    log.push(format!("delete {id}"));
                    b.delete("nodes", id)
                }
                1 => {
                    log.push(format!("update {id} link"));
                    b.update(
                        "nodes",
                        id,
                        json!({"link": rng.gen_range(0..6u64), "v": step}),
                    )
                }
                _ => {
                    log.push(format!("put {d}"));
                    b.insert_with("nodes", d, Conflict::Replace)
                }
            };
        }
        if step % 2 == 1 {
            log.push("+ other".into());
            b = b.insert_with(
                "other",
                json!({"id": step % 3, "v": step}),
                Conflict::Replace,
            );
        }
        let ok = b.await.is_ok();
        let before = fails.len();
        for w in &mut ws {
            let seqs = w.drain(&mut fails);
            if seqs.len() > 1 {
                fails.push(format!("{}: several seqs in one commit: {seqs:?}", w.name));
            }
            w.compare(&format!("after step {step}"), &mut fails).await;
        }
        if fails.len() > before {
            fails.push(format!("  step {step} (ok {ok}): {log:?}"));
            break;
        }
    }
    report(fails);
}

/// Waits for a feed's end: the error it ends with, and how many items came before it.
async fn end_of(w: &mut Watched) -> (Option<Error>, usize) {
    let mut items = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), w.feed.next()).await {
            Ok(Some(Ok(_))) => items += 1,
            Ok(Some(Err(e))) => return (Some(e), items),
            Ok(None) => return (None, items),
            Err(_) => return (None, usize::MAX),
        }
    }
}

/// Check 4: DDL ends the join feeds it concerns with a typed error, leaves the others, and
/// an ended feed shows nothing of a re-created table or index; feeds opened after it follow
/// the new incarnation.
#[tokio::test]
async fn ddl_ends_join_feeds_with_a_typed_error_and_never_mixes_incarnations() {
    let db = embedded().await;
    schema(&db).await;
    let mut rng = StdRng::seed_from_u64(3);
    for v in 0..15 {
        random_commit(&db, &mut rng, v).await;
    }
    let l = db.table(L);
    let mut fails = Vec::new();
    let mut pk = Watched::open("pk", l.query().eq_join("k", R)).await;
    let mut grp = Watched::open("grp", l.query().eq_join("g", R).index("grp")).await;
    let mut tags = Watched::open("tags", l.query().eq_join("t", R).index("tags")).await;
    let mut left_ix = Watched::open(
        "get_all by left index",
        l.get_all([1, 2]).index("k").eq_join("k", R),
    )
    .await;
    for w in [&mut pk, &mut grp, &mut tags, &mut left_ix] {
        w.drain(&mut fails);
        w.compare("opened", &mut fails).await;
    }
    // A both-tables commit, then the right index is dropped.
    db.batch()
        .insert_with(
            L,
            json!({"id": 1, "k": 1, "g": 1, "t": 1}),
            Conflict::Replace,
        )
        .insert_with(
            R,
            json!({"id": 1, "grp": 1, "tags": [1]}),
            Conflict::Replace,
        )
        .await
        .unwrap();
    db.table(R).drop_index("grp").await.unwrap();
    match end_of(&mut grp).await {
        (Some(Error::FeedAborted(_)), _) => {}
        other => fails.push(format!("grp after its index was dropped: {other:?}")),
    }
    // Re-created on another field, with rows under it: the ended feed shows nothing.
    db.table(R)
        .create_index("grp", IndexSpec::field("v"))
        .await
        .unwrap();
    db.batch()
        .insert_with(
            L,
            json!({"id": 2, "k": 2, "g": 7, "t": 2}),
            Conflict::Replace,
        )
        .insert_with(
            R,
            json!({"id": 2, "grp": 1, "v": 7, "tags": [2]}),
            Conflict::Replace,
        )
        .await
        .unwrap();
    if let Some(Some(x)) = grp.feed.next().now_or_never() {
        fails.push(format!("grp: an item after its end: {x:?}"));
    }
    let mut grp2 = Watched::open("grp re-created", l.query().eq_join("g", R).index("grp")).await;
    grp2.drain(&mut fails);
    grp2.compare("opened on the new index", &mut fails).await;
    if grp2.state().is_empty() {
        fails.push("grp re-created: expected the new index's pair (g 7 = v 7)".into());
    }
    for w in [&mut pk, &mut tags, &mut left_ix] {
        w.drain(&mut fails);
        w.compare(
            "after the right index was dropped and re-created",
            &mut fails,
        )
        .await;
    }
    // The left index a get_all reads is dropped: that feed ends, the others go on.
    l.drop_index("k").await.unwrap();
    match end_of(&mut left_ix).await {
        (Some(Error::FeedAborted(_)), _) => {}
        other => fails.push(format!(
            "get_all by left index after the index was dropped: {other:?}"
        )),
    }
    // The right table is dropped and made again, with the same rows.
    let rights = db.table(R).run().await.unwrap();
    db.drop_table(R).await.unwrap();
    for w in [&mut pk, &mut tags, &mut grp2] {
        match end_of(w).await {
            (Some(Error::FeedAborted(_)), _) => {}
            other => fails.push(format!(
                "{} after the right table was dropped: {other:?}",
                w.name
            )),
        }
    }
    // A join on a missing table or index does not open.
    match l.query().eq_join("k", R).changes().await {
        Err(Error::NoSuchTable(_)) => {}
        Err(e) => fails.push(format!(
            "a join on a dropped table: {e:?} (typed NoSuchTable expected)"
        )),
        Ok(_) => fails.push("a join on a dropped table opened".into()),
    }
    db.create_table(R).await.unwrap();
    db.table(R).insert_many(rights).await.unwrap();
    match l.query().eq_join("t", R).index("tags").changes().await {
        Err(Error::NoSuchIndex { .. }) => {}
        Err(e) => fails.push(format!(
            "a join on a missing index: {e:?} (typed NoSuchIndex expected)"
        )),
        Ok(_) => fails.push("a join on a missing index opened".into()),
    }
    db.batch()
        .insert_with(
            L,
            json!({"id": 3, "k": 1, "g": 1, "t": 1}),
            Conflict::Replace,
        )
        .update(R, 1, json!({"v": 99}))
        .await
        .unwrap();
    for w in [&mut pk, &mut tags, &mut grp2] {
        if let Some(Some(x)) = w.feed.next().now_or_never() {
            fails.push(format!(
                "{}: an item of the re-created table: {x:?}",
                w.name
            ));
        }
    }
    let mut pk2 = Watched::open("pk on the new table", l.query().eq_join("k", R)).await;
    pk2.drain(&mut fails);
    pk2.compare("opened", &mut fails).await;
    db.batch()
        .update(R, 1, json!({"v": 100}))
        .insert_with(L, json!({"id": 4, "k": 1}), Conflict::Replace)
        .delete(R, 2)
        .await
        .unwrap();
    pk2.drain(&mut fails);
    pk2.compare("after a both-tables commit", &mut fails).await;
    // The left table dropped: its join ends.
    db.drop_table(L).await.unwrap();
    match end_of(&mut pk2).await {
        (Some(Error::FeedAborted(_)), _) => {}
        other => fails.push(format!("pk2 after the left table was dropped: {other:?}")),
    }
    report(fails);
}

/// Targeted both-tables commits, in both orders: a left row entering a key that no left
/// row had (read from the right table then) in the same commit as changes of that key's
/// right rows (written twice, deleted and re-inserted, moved between index keys).
#[tokio::test]
async fn a_left_row_entering_a_new_key_in_a_commit_that_writes_its_right_rows() {
    let mut fails = Vec::new();
    for variant in 0..16u64 {
        let db = embedded().await;
        schema(&db).await;
        db.table(R)
            .insert_many([
                json!({"id": 0, "grp": 0, "tags": [0, 1], "v": 0}),
                json!({"id": 1, "grp": 1, "tags": [1], "v": 0}),
                json!({"id": 2, "grp": 1, "tags": [2, 2], "v": 0}),
            ])
            .await
            .unwrap();
        db.table(L)
            .insert_many([json!({"id": 0, "k": 0, "g": 0, "t": 0, "f": true})])
            .await
            .unwrap();
        let mut ws = Vec::new();
        for (name, j) in joins(&db, 0) {
            let mut w = Watched::open(name, j).await;
            w.drain(&mut fails);
            ws.push(w);
        }
        let enter = json!({"id": 5, "k": 1, "g": 1, "t": 1, "f": true, "v": variant});
        let right_first = variant & 1 == 1;
        let mut b = db.batch();
        if !right_first {
            b = b.insert_with(L, enter.clone(), Conflict::Replace);
        }
        b = match variant >> 1 {
            0 => b
                .update(R, 1, json!({"v": 1}))
                .update(R, 1, json!({"v": 2})),
            1 => b
                .delete(R, 1)
                .insert(R, json!({"id": 1, "grp": 2, "tags": [3], "v": 3})),
            2 => b
                .update(R, 2, json!({"grp": 2, "tags": [1]}))
                .update(R, 0, json!({"grp": 1})),
            3 => b.delete(R, 1).delete(R, 2),
            4 => b
                .update(R, 1, json!({"grp": 0}))
                .update(R, 1, json!({"grp": 1})),
            5 => b
                .update(L, 0, json!({"k": 1, "g": 1, "t": 1}))
                .update(R, 1, json!({"v": 5})),
            6 => b
                .delete(L, 0)
                .update(R, 0, json!({"grp": 1, "tags": [1]}))
                .insert_with(
                    L,
                    json!({"id": 6, "k": 0, "g": 0, "t": 0, "f": true}),
                    Conflict::Replace,
                ),
            _ => b
                .update_where(&db.table(R).filter(field("grp").eq(1)), json!({"grp": 0}))
                .update_where(
                    &db.table(L).filter(field("g").eq(0)),
                    json!({"g": 1, "k": 1}),
                ),
        };
        if right_first {
            b = b.insert_with(L, enter.clone(), Conflict::Replace);
        }
        b.await.unwrap();
        for w in &mut ws {
            let before = fails.len();
            w.drain(&mut fails);
            w.compare(&format!("variant {variant}"), &mut fails).await;
            if fails.len() > before {
                fails.push(format!("  (variant {variant}, right first: {right_first})"));
            }
        }
    }
    report(fails);
}
