//! What a browser may watch and change, declared with remodel-web: every live part of every
//! page is one of these publications, and the personal log's writes are methods. Nothing else
//! reaches the database from a page's WebSocket.
//!
//! | publication | parameters | result |
//! |---|---|---|
//! | `ships` | — | every ship, by name |
//! | `members` | — | every crew member, by name (the away-team picker, names) |
//! | `crew` | `{ship}` | a ship's crew, by name (`ship.crewmembers(&db)`, has_many) |
//! | `away` | `{ship}` | a ship's away-team links (`ship.away_team(&db).link_changes()`) |
//! | `missions` | `{member}` | a member's away-mission links |
//! | `member` | `{member}` | one member (a point feed: empty once deleted) |
//! | `ship_counts`, `species` | — | live aggregates: crew count per ship, per species |
//! | `leaderboard` | — | the top five scores (an incremental top-N) |
//! | `logs` | `{member}` | a member's personal log, newest first: **only for the member and the captain of the member's ship** |
//! | `map` | — | every ship's position on the sector map (at most one frame per 50 ms: the net effect of a drag's writes) |
//! | `stats` | — | the database's own `stats` table (reads and writes per second), about once a second |
//!
//! | method | parameters | checks |
//! |---|---|---|
//! | `add_log` | `{member, text}` | the caller may write that log (as above); 1 to 500 characters |
//! | `delete_log` | `{id}` | the caller may write the log the entry is in |
//! | `move_ship` | `{ship, x, y}` | a ship that exists; finite coordinates on the map (last write wins) |
//! | `traffic` | — | none: 100 writes and 400 reads of a scratch table, so that the stats page moves |

use crate::models::{Crewmember, Log, Starship, MAP_HEIGHT, MAP_WIDTH};
use crate::routes::leaderboard::top_five;
use crate::rules::Authority;
use crate::session::Session;
use remodel::model::{Id, Transaction};
use remodel::{Database, Model};
use remodel_web::{Caller, Live, NoParams, Refusal, Web};
use serde::Deserialize;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShipParam {
    ship: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberParam {
    member: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLog {
    member: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogId {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShipAt {
    ship: String,
    x: f64,
    y: f64,
}

/// The scratch table the `traffic` method writes.
const TRAFFIC: &str = "starfleet_traffic";

/// Moves `ship` to (`x`, `y`) on the sector map: one write, decided at commit (two people
/// dragging the same ship: the last write wins, and every map shows it).
pub async fn move_ship(db: &Database, ship: &str, x: f64, y: f64) -> Result<(), Refusal> {
    let on_map = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
    if !on_map(x, MAP_WIDTH) || !on_map(y, MAP_HEIGHT) {
        return Err(Refusal::invalid(format!(
            "a position is within 0..{MAP_WIDTH} × 0..{MAP_HEIGHT}"
        )));
    }
    let written = Starship::table(db)
        .get(ship)
        .update(serde_json::json!({"x": x, "y": y}))
        .await?;
    match written.skipped {
        0 => Ok(()),
        _ => Err(Refusal::not_found("no such starship")),
    }
}

/// Some traffic for the stats page: 100 writes and 400 point reads of a scratch table. One
/// call at a time in the whole app (anyone may press the button; no one may make it a load
/// generator).
async fn traffic(db: &Database) -> Result<(), Refusal> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(Refusal::new(
            remodel_web::ErrorCode::RateLimited,
            "traffic is being made already",
        ));
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }
    let _done = Done;
    db.ensure_table(TRAFFIC).await?;
    let table = db.table(TRAFFIC);
    for i in 0..100u32 {
        let doc = serde_json::json!({"id": i % 10, "n": i});
        table
            .insert(doc)
            .conflict(remodel::Conflict::Replace)
            .await?;
        for k in 0..4u32 {
            table.get((i + k) % 10).await?;
        }
    }
    Ok(())
}

/// The longest log entry, in characters.
pub const MAX_LOG: usize = 500;

async fn ship(db: &Database, id: &str) -> Result<Starship, Refusal> {
    found(Starship::get(db, id).await)?.ok_or_else(|| Refusal::not_found("no such starship"))
}

async fn member(db: &Database, id: &str) -> Result<Crewmember, Refusal> {
    found(Crewmember::get(db, id).await)?.ok_or_else(|| Refusal::not_found("no such crew member"))
}

/// A row read by a key a page sent: a key the store refuses (too long, say) is no row; a
/// failing store is the server's failure (an `internal` refusal), not "no such row".
fn found<T>(row: remodel::Result<Option<T>>) -> Result<Option<T>, Refusal> {
    match row {
        Ok(row) => Ok(row),
        Err(remodel::Error::InvalidKey { .. }) => Ok(None),
        Err(e) => Err(Refusal::from(e)),
    }
}

/// The rule of personal logs: who may read and write `member`'s log? The member, and the
/// captain of the member's ship (a member whose rank is `captain`, on the same ship).
/// Gives the member whose log it is.
pub async fn may_use_log(
    db: &Database,
    session: &Session,
    member: &str,
) -> Result<Crewmember, Refusal> {
    let Some(me) = session.member.as_deref() else {
        return Err(Refusal::forbidden("sign in to read a personal log"));
    };
    let target = self::member(db, member).await?;
    if me == member {
        return Ok(target);
    }
    let me = self::member(db, me).await?;
    match crate::rules::captain_of(&me, target.starship_id.as_ref()) {
        true => Ok(target),
        false => Err(Refusal::forbidden(
            "only the member and their ship's captain read this log",
        )),
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A transaction of a write to `member`'s log by the signed-in member: the log's rule is
/// checked now and decided again at commit (the member still there; a captain writing
/// still the captain of the ship the member is still on). Gives the member whose log it is.
async fn log_write(
    db: &Database,
    session: &Session,
    member: &str,
) -> Result<(Transaction, Crewmember), Refusal> {
    let target = may_use_log(db, session, member).await?;
    let mut tx = Transaction::new(db);
    // The log's member, still there (an entry never outlives its member).
    tx.require(&target, LOG_RULE_CHANGED, |_| true)
        .map_err(|e| Refusal::from(&e))?;
    if session.member.as_deref() != Some(member) {
        let me = self::member(db, session.member.as_deref().unwrap_or_default()).await?;
        // `may_use_log` let a captain in only as the captain of the member's ship.
        let captain = target.starship_id.clone().map(Authority::Captain);
        captain
            .and_then(|c| c.require(&mut tx, &me, Some(&target)).ok())
            .ok_or_else(|| Refusal::forbidden(LOG_RULE_CHANGED))?;
    }
    Ok((tx, target))
}

/// Why a log write is refused at commit.
const LOG_RULE_CHANGED: &str =
    "who may write this log changed since the request was checked (a rank or a ship)";

/// Commits a log write: a rule that changed meanwhile is `forbidden`, a member (or entry)
/// deleted meanwhile `not_found`.
async fn commit_log_write(tx: Transaction) -> Result<(), Refusal> {
    match tx.commit().await {
        Ok(_) => Ok(()),
        Err(remodel::Error::Precondition(why)) => Err(Refusal::forbidden(why)),
        Err(e) => Err(Refusal::from(&e)),
    }
}

/// Writes an entry to `member`'s log as the signed-in member, after the log's rule and the
/// entry's checks (shared by the `add_log` method and the page's form).
pub async fn add_log(
    db: &Database,
    session: &Session,
    member: &str,
    text: &str,
) -> Result<Log, Refusal> {
    let (mut tx, _) = log_write(db, session, member).await?;
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_LOG || text.chars().any(char::is_control) {
        return Err(Refusal::invalid(format!(
            "a log entry has 1 to {MAX_LOG} characters, none of them control characters"
        )));
    }
    let log = Log {
        id: None,
        crewmember_id: Some(Id::from(member)),
        author: session.member.clone().unwrap_or_default(),
        text: text.to_string(),
        at: now_ms(),
    };
    let log = tx.create(log).await?;
    commit_log_write(tx).await?;
    Ok(log)
}

/// The app's publications and methods.
// Every publication's result is the same for every caller allowed to see it: each is
// declared shared, so that the pages watching it share one feed.
pub fn web(db: Database) -> Web<Session> {
    Web::builder(db)
        .publish("ships", |c: Caller<Session>, _: NoParams| async move {
            Ok(Live::new(Starship::query(&c.db).changes())
                .sort_by("name")
                .shared())
        })
        .publish("members", |c, _: NoParams| async move {
            Ok(Live::new(Crewmember::query(&c.db).changes())
                .sort_by("name")
                .shared())
        })
        .publish("crew", |c, p: ShipParam| async move {
            let ship = ship(&c.db, &p.ship).await?;
            Ok(Live::new(ship.crewmembers(&c.db).changes())
                .sort_by("name")
                .shared())
        })
        .publish("away", |c, p: ShipParam| async move {
            let ship = ship(&c.db, &p.ship).await?;
            Ok(Live::new(ship.away_team(&c.db).link_changes()).shared())
        })
        .publish("missions", |c, p: MemberParam| async move {
            let member = member(&c.db, &p.member).await?;
            Ok(Live::new(member.away_missions(&c.db).link_changes()).shared())
        })
        .publish("member", |c, p: MemberParam| async move {
            let feed = Crewmember::table(&c.db).get(p.member.as_str()).changes();
            Ok(Live::new(feed).shared())
        })
        .publish("ship_counts", |c, _: NoParams| async move {
            let counts = Crewmember::table(&c.db)
                .query()
                .group("starship_id")
                .count();
            Ok(Live::new(counts.changes()).key("group").shared())
        })
        .publish("species", |c, _: NoParams| async move {
            let counts = Crewmember::table(&c.db).query().group("species").count();
            Ok(Live::new(counts.changes())
                .key("group")
                .sort_by_desc("reduction")
                .sort_by("group")
                .shared())
        })
        .publish("leaderboard", |c, _: NoParams| async move {
            Ok(Live::new(top_five(&c.db).changes())
                .sort_by_desc("points")
                .shared())
        })
        .publish("logs", |c, p: MemberParam| async move {
            let target = may_use_log(&c.db, &c.identity, &p.member).await?;
            let owner = p.member.clone();
            let mut live = Live::new(target.logs(&c.db).changes())
                .rule(move |row| row["crewmember_id"] == owner.as_str())
                .sort_by_desc("at")
                // A move to another ship, a new rank: decide again.
                .guard(Crewmember::table(&c.db).get(p.member.as_str()).changes())
                // Who may read it is decided above, and each reader's guards are their own;
                // what it shows depends on the log's member alone.
                .shared();
            if let Some(me) = c.identity.member.as_deref() {
                live = live.guard(Crewmember::table(&c.db).get(me).changes());
            }
            Ok(live)
        })
        .publish("map", |c, _: NoParams| async move {
            Ok(Live::new(Starship::query(&c.db).changes()).shared())
        })
        .publish("stats", |c, _: NoParams| async move {
            Ok(Live::new(c.db.stats().changes())
                .key_with(|row| row.get("id").cloned())
                .shared())
        })
        .method("move_ship", |c, p: ShipAt| async move {
            move_ship(&c.db, &p.ship, p.x, p.y).await
        })
        .method(
            "traffic",
            |c, _: NoParams| async move { traffic(&c.db).await },
        )
        .method("add_log", |c, p: NewLog| async move {
            let log = add_log(&c.db, &c.identity, &p.member, &p.text).await?;
            Ok(log.id)
        })
        .method("delete_log", |c, p: LogId| async move {
            let log = Log::get(&c.db, p.id.as_str()).await?;
            let log = log.ok_or_else(|| Refusal::not_found("no such log entry"))?;
            let owner = log
                .crewmember_id
                .as_ref()
                .map(Id::as_str)
                .unwrap_or_default();
            let (mut tx, _) = log_write(&c.db, &c.identity, owner).await?;
            tx.delete(log).await?;
            commit_log_write(tx).await
        })
        .build()
}
