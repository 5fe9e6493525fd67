//! Live pages: Server-Sent Events streams, each fed by a Remodel feed (never by polling).
//!
//! | stream | feed | events |
//! |---|---|---|
//! | `/ship/{id}/events` | `ship.crewmembers(&db).changes()` (relation feed) | `crew-reset`, `crew-rows` |
//! | (the same stream) | `ship.away_team(&db).join_changes()` (a live join) | `away-reset`, `away-rows` |
//! | `/events/ships`, `/species/events` | the live aggregate `group("starship_id" / "species").count().changes()` | `counts`, `html` |
//! | `/member/{id}/events` | `member.watch(&db)` (point feed) | `html` |
//! | `/leaderboard/events` | `order_by(points index).limit(5)` (top-N feed) | `html` |
//!
//! Every event that follows a change carries the change's cursor as its SSE `id`. A browser
//! that loses its connection reconnects by itself and sends that id as `Last-Event-ID`: the
//! crew stream resumes its feed from it (`resume_from`), so the page gets exactly the changes
//! it missed. A cursor the change log no longer holds (or one that is not a cursor at all)
//! gets a `reload` event: the page reloads its state. Join, aggregate and top-N feeds cannot
//! resume (their items depend on the whole result at the time): their streams send the whole
//! current state on every (re)connect, which is all those parts of a page show.

use crate::error::AppResult;
use crate::models::{Crewmember, Score, Starship};
use crate::routes::leaderboard::top_five;
use crate::routes::species::{draw_chart, sorted_counts};
use crate::routes::{find_member, find_ship, page};
use crate::AppState;
use async_stream::stream;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use minijinja::context;
use remodel::model::{ModelChanges, ModelFeed};
use remodel::{ChangeKind, Cursor, Error, FeedState, Model};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the live handlers return.
pub type EventStream = Sse<KeepAliveStream<BoxStream<'static, Result<Event, Infallible>>>>;

/// How long a browser waits before reconnecting a cut stream.
const RETRY: Duration = Duration::from_millis(500);

/// Serves `events` until the client goes away or the app cuts live streams
/// ([`AppState::disconnect_live_clients`]).
fn serve(app: &AppState, events: impl Stream<Item = Event> + Send + 'static) -> EventStream {
    let mut cut = app.cut_signal();
    let cut = async move {
        let _ = cut.changed().await;
    };
    let events = stream::once(async { Event::default().retry(RETRY) })
        .chain(events)
        .take_until(cut)
        .map(Ok);
    Sse::new(events.boxed()).keep_alive(KeepAlive::default())
}

/// A stream of one `reload` event: the page must read its state again.
fn reload(app: &AppState, why: String) -> EventStream {
    serve(
        app,
        stream::once(async move { Event::default().event("reload").data(why) }),
    )
}

/// An event of `name` with JSON data, and the cursor of the change behind it.
fn event(name: &str, data: Value, cursor: Option<Cursor>) -> Event {
    let e = Event::default().event(name).data(data.to_string());
    match cursor {
        Some(c) => e.id(c.to_string()),
        None => e,
    }
}

/// Where a reconnecting browser stopped: `None` for a fresh page, `Err` for a header that
/// is not a cursor.
fn last_event_id(headers: &HeaderMap) -> Option<Result<Cursor, String>> {
    let raw = headers.get("last-event-id")?;
    let text = raw
        .to_str()
        .map_err(|_| "Last-Event-ID is not text".to_string());
    Some(text.and_then(|t| t.parse::<Cursor>().map_err(|e| e.to_string())))
}

/// Rows already rendered, by the change behind them and the list they are for: a change
/// seen by hundreds of open ship pages (each with its own feed) is rendered once, since
/// rendering is most of what a delivery costs. The most recent changes are kept.
#[derive(Default)]
pub(crate) struct RowCache {
    rows: Mutex<BTreeMap<(Cursor, String), Arc<str>>>,
}

impl RowCache {
    const KEEP: usize = 4096;

    /// The JSON row of the change at `at` for `list`, made by `make` if no stream made it yet.
    fn get_or_make(
        &self,
        at: Option<Cursor>,
        list: String,
        make: impl FnOnce() -> String,
    ) -> Arc<str> {
        let Some(at) = at else { return make().into() };
        let key = (at, list);
        if let Some(row) = self
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return row.clone();
        }
        let row: Arc<str> = make().into();
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.insert(key, row.clone());
        while rows.len() > Self::KEEP {
            rows.pop_first();
        }
        row
    }
}

/// What a row stream tells the page.
enum RowUpdate {
    /// One row of the current state (rendered), before `Ready`.
    Initial(String),
    /// The current state is complete: replace the page's rows with it.
    Ready,
    /// A row was added, changed or removed: its JSON (see [`row_update`]) and cursor.
    Change(Arc<str>, Option<Cursor>),
    /// Nothing to tell (a state marker).
    Skip,
    /// The feed failed or missed changes: the page must reload.
    Failed(String),
}

/// Row updates of one list of a page as SSE events: the initial rows become one
/// `{list}-reset` event; then the changes that are ready together (a burst, or a page
/// catching up after a reconnect) become one `{list}-rows` event, `[{id, html}, ...]` in
/// commit order (`html: null`: the row left). With `ids`, its SSE id is the cursor of its
/// last change (the stream's `Last-Event-ID` on reconnect).
fn row_events(
    list: &'static str,
    ids: bool,
    updates: impl Stream<Item = RowUpdate> + Send + 'static,
) -> impl Stream<Item = Event> + Send {
    let rows = move |batch: &mut Vec<Arc<str>>, at: Option<Cursor>| {
        let e = Event::default()
            .event(format!("{list}-rows"))
            .data(format!("[{}]", batch.join(",")));
        batch.clear();
        match at.filter(|_| ids) {
            Some(c) => e.id(c.to_string()),
            None => e,
        }
    };
    stream! {
        let mut initial = String::new();
        let (mut batch, mut last) = (Vec::new(), None);
        let mut updates = std::pin::pin!(updates.ready_chunks(256));
        while let Some(chunk) = updates.next().await {
            for update in chunk {
                match update {
                    RowUpdate::Initial(html) => initial.push_str(&html),
                    RowUpdate::Ready => {
                        let html = std::mem::take(&mut initial);
                        yield event(&format!("{list}-reset"), json!({ "html": html }), None)
                    }
                    RowUpdate::Change(row, at) => {
                        batch.push(row);
                        last = at.or(last);
                    }
                    RowUpdate::Skip => {}
                    RowUpdate::Failed(why) => {
                        if !batch.is_empty() {
                            yield rows(&mut batch, last);
                        }
                        yield Event::default().event("reload").data(why);
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                yield rows(&mut batch, last);
            }
        }
    }
}

/// A row change, `{id, html}` with the row's DOM id (`html: null` for a row that left).
/// Made once per change and list, whatever the number of streams (see [`RowCache`]).
fn row_update(
    app: &AppState,
    list: &str,
    id: String,
    at: Option<Cursor>,
    html: impl FnOnce() -> Option<String>,
) -> RowUpdate {
    let key = format!("{list}/{id}");
    let row = app
        .inner
        .rows
        .get_or_make(at, key, || json!({ "id": id, "html": html() }).to_string());
    RowUpdate::Change(row, at)
}

/// Opens a row feed: resumed from the browser's `Last-Event-ID`, or fresh with the current
/// rows. `Err` is the `reload` stream for a cursor that cannot be resumed (too old, not a
/// cursor, from another database).
async fn open_rows<T: Model>(
    app: &AppState,
    headers: &HeaderMap,
    changes: ModelChanges<T>,
) -> AppResult<Result<ModelFeed<T>, EventStream>> {
    let cursor = match last_event_id(headers) {
        None => {
            let fresh = changes.include_initial(true).include_states(true);
            return Ok(Ok(fresh.await?));
        }
        Some(Err(why)) => return Ok(Err(reload(app, why))),
        Some(Ok(cursor)) => cursor,
    };
    match changes.resume_from(cursor).await {
        Ok(feed) => {
            app.count_resume();
            Ok(Ok(feed))
        }
        Err(e @ (Error::CursorExpired { .. } | Error::InvalidFeedOption(_))) => {
            Ok(Err(reload(app, e.to_string())))
        }
        Err(e) => Err(e.into()),
    }
}

/// A feed failure as a row update: the page reloads (an overflow means missed changes).
fn failed(e: Error) -> RowUpdate {
    RowUpdate::Failed(e.to_string())
}

/// `/ship/{id}/events`: the ship page's two lists, live, on one connection (browsers allow
/// few per host): `crew-*` events from the relation feed, resumed from `Last-Event-ID`, and
/// `away-*` events from the away team's live join, which starts from the current team on
/// every (re)connect. Only crew events carry ids, so `Last-Event-ID` is always a crew cursor.
pub async fn ship(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> AppResult<EventStream> {
    let ship = find_ship(&app.db, &id).await?;
    let crew = match crew(&app, &ship, &headers).await? {
        Ok(crew) => crew,
        Err(reload) => return Ok(reload),
    };
    let away = away_team(&app, &ship).await?;
    let events = stream::select(
        row_events("crew", true, crew),
        row_events("away", false, away),
    );
    Ok(serve(&app, events))
}

/// The crew, through the relation feed `ship.crewmembers(&db).changes()`. `Err` is the
/// `reload` stream for a `Last-Event-ID` that cannot be resumed.
async fn crew(
    app: &AppState,
    ship: &Starship,
    headers: &HeaderMap,
) -> AppResult<Result<impl Stream<Item = RowUpdate> + Send + 'static, EventStream>> {
    let feed = match open_rows(app, headers, ship.crewmembers(&app.db).changes()).await? {
        Ok(feed) => feed,
        Err(reload) => return Ok(Err(reload)),
    };
    let ships = Starship::all(&app.db).await?; // for the move buttons; ships never change
    let (app, ship) = (app.clone(), ship.clone());
    let list = format!("crew/{}", ship.id_str());
    let row = move |m: &Crewmember| render_row("crew_row.html", context! { m, ship, ships });
    Ok(Ok(feed.map(move |item| match item {
        Err(e) => failed(e),
        Ok(c) => match (c.kind, c.raw().cursor(), c.new, c.old) {
            (ChangeKind::State, ..) => ready_or_skip(c.state),
            (ChangeKind::Initial, _, Some(m), _) => RowUpdate::Initial(row(&m)),
            (_, at, Some(m), _) => {
                row_update(&app, &list, dom_id("crew", &m), at, || Some(row(&m)))
            }
            (_, at, None, Some(m)) => row_update(&app, &list, dom_id("crew", &m), at, || None),
            (_, _, None, None) => RowUpdate::Skip,
        },
    })))
}

/// The away team, through a live join of the ship's links (the many-to-many join table)
/// with the crew: an officer appears when assigned, changes when edited, and goes when
/// released or deleted. A join feed does not resume from a cursor: it starts from the
/// current team.
async fn away_team(
    app: &AppState,
    ship: &Starship,
) -> AppResult<impl Stream<Item = RowUpdate> + Send + 'static> {
    let feed = ship
        .away_team(&app.db)
        .join_changes()?
        .include_initial(true)
        .include_states(true)
        .await?;
    let (app, ship) = (app.clone(), ship.clone());
    let list = format!("away/{}", ship.id_str());
    let officer = |pair: Option<&Value>| {
        pair.and_then(|p| Crewmember::from_json(p.get("right")?.clone()).ok())
    };
    let row = move |m: &Crewmember| render_row("away_row.html", context! { m, ship });
    Ok(feed.map(move |item| {
        let c = match item {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let at = c.cursor();
        match (c.kind(), officer(c.new_val()), officer(c.old_val())) {
            (ChangeKind::State, ..) => ready_or_skip(c.state()),
            (ChangeKind::Initial, Some(m), _) => RowUpdate::Initial(row(&m)),
            (_, Some(m), _) => row_update(&app, &list, dom_id("away", &m), at, || Some(row(&m))),
            (_, None, Some(m)) => row_update(&app, &list, dom_id("away", &m), at, || None),
            (_, None, None) => RowUpdate::Skip,
        }
    }))
}

fn ready_or_skip(state: Option<FeedState>) -> RowUpdate {
    match state {
        Some(FeedState::Ready) => RowUpdate::Ready,
        _ => RowUpdate::Skip,
    }
}

/// The DOM id of a member's row in one of a ship page's lists.
fn dom_id(list: &str, m: &Crewmember) -> String {
    format!("{list}-{}", m.id_str())
}

/// Renders one row; a template error (a bug) is logged and sends an empty row.
fn render_row(template: &str, ctx: minijinja::Value) -> String {
    page(template, ctx).map(|h| h.0).unwrap_or_else(|e| {
        eprintln!("starfleet: {template}: {e:?}");
        String::new()
    })
}

/// Crew counts by `field`, live: the store's live aggregate `group(field).count()`, kept
/// as a map from group to count. `show` turns the map into the event sent once the current
/// groups are in, and again after every batch of changed groups (changes that arrive
/// together are drawn once). An aggregate feed does not resume from a cursor: a reconnecting
/// page gets the whole current state again, which is all it shows.
async fn live_counts<F>(app: &AppState, field: &str, show: F) -> AppResult<EventStream>
where
    F: Fn(&BTreeMap<String, u64>) -> AppResult<(&'static str, Value)> + Send + 'static,
{
    let feed = Crewmember::table(&app.db)
        .query()
        .group(field)
        .count()
        .changes()
        .include_initial(true)
        .include_states(true)
        .await?;
    let events = stream! {
        let mut groups = BTreeMap::new();
        let mut ready = false;
        let mut batches = feed.ready_chunks(1024);
        while let Some(batch) = batches.next().await {
            let mut cursor = None;
            for item in batch {
                let c = match item {
                    Ok(c) => c,
                    Err(e) => {
                        // Missed group changes (an overflow) or a closing database.
                        yield Event::default().event("reload").data(e.to_string());
                        return;
                    }
                };
                ready |= c.state() == Some(FeedState::Ready);
                if let Some((group, _)) = c.old_val().and_then(group_count) {
                    groups.remove(&group);
                }
                if let Some((group, n)) = c.new_val().and_then(group_count) {
                    groups.insert(group, n);
                }
                cursor = c.cursor().or(cursor);
            }
            if ready {
                match show(&groups) {
                    Ok((name, data)) => yield event(name, data, cursor),
                    Err(e) => eprintln!("starfleet: live counts: {e:?}"),
                }
            }
        }
    };
    Ok(serve(app, events))
}

/// A group row `{"group": .., "reduction": n}` as (group as text, count); a missing group
/// value (a member without a ship) is `""`.
fn group_count(row: &Value) -> Option<(String, u64)> {
    let group = match row.get("group")? {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let n = row.get("reduction")?;
    Some((group, n.as_u64().or_else(|| n.as_f64().map(|f| f as u64))?))
}

/// `/events/ships`: crew counts per ship key, `{"voyager": 3, ...}`.
pub async fn ship_counts(State(app): State<AppState>) -> AppResult<EventStream> {
    live_counts(&app, "starship_id", |groups| Ok(("counts", json!(groups)))).await
}

/// `/species/events`: the species chart, redrawn.
pub async fn species(State(app): State<AppState>) -> AppResult<EventStream> {
    live_counts(&app, "species", |groups| {
        let counts = sorted_counts(groups.iter().map(|(s, n)| (s.clone(), *n)));
        Ok(("html", json!({ "html": draw_chart(&counts)? })))
    })
    .await
}

/// `/member/{id}/events`: the member's details, redrawn on each change of the row
/// (`member.watch(&db)`, a point feed; its ship and missions are read again then).
pub async fn member(State(app): State<AppState>, Path(id): Path<String>) -> AppResult<EventStream> {
    let member = find_member(&app.db, &id).await?;
    // With the current row first: a change between the page and this stream is not lost.
    let mut feed = member.watch(&app.db).include_initial(true).await?;
    let db = app.db.clone();
    let events = stream! {
        while let Some(item) = feed.next().await {
            let c = match item {
                Ok(c) => c,
                Err(e) => {
                    yield Event::default().event("reload").data(e.to_string());
                    break;
                }
            };
            let at = c.raw().cursor();
            let Some(member) = c.new else {
                yield event("html", json!({ "html": render_row("member_details.html", context! {}) }), at);
                continue;
            };
            let details = async {
                let ship = member.starship(&db).await?;
                let missions = member.away_missions(&db).all().await?;
                Ok::<_, Error>(render_row("member_details.html", context! { member, ship, missions }))
            };
            match details.await {
                Ok(html) => yield event("html", json!({ "html": html }), at),
                Err(e) => eprintln!("starfleet: member page: {e:?}"),
            }
        }
    };
    Ok(serve(&app, events))
}

/// `/leaderboard/events`: the top five, through the top-N feed: it starts with the current
/// five, then each change says which row left or entered at which position.
pub async fn leaderboard(State(app): State<AppState>) -> AppResult<EventStream> {
    let mut feed = top_five(&app.db)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .include_states(true)
        .await?;
    let events = stream! {
        let mut board: Vec<Score> = Vec::new();
        let mut ready = false;
        while let Some(item) = feed.next().await {
            let c = match item {
                Ok(c) => c,
                Err(e) => {
                    yield Event::default().event("reload").data(e.to_string());
                    break;
                }
            };
            if let Some(i) = c.old_offset.filter(|&i| i < board.len()) {
                board.remove(i);
            }
            if let (Some(i), Some(score)) = (c.new_offset, c.new.clone()) {
                board.insert(i.min(board.len()), score);
            }
            ready |= c.state == Some(FeedState::Ready);
            if ready && c.kind != ChangeKind::Initial {
                let html = render_row("scores.html", context! { scores => board });
                yield event("html", json!({ "html": html }), c.raw().cursor());
            }
        }
    };
    Ok(serve(&app, events))
}
