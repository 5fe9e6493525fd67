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
//! **At most one event per [`THROTTLE`] (50 ms) and list** (up to [`BUSY_THROTTLE`], 200 ms,
//! while the list changes many times a window, see [`throttled`]). A change that finds its
//! stream idle is sent at once. After an event, the stream sleeps until the window has passed,
//! without reading its feed (the changes wait in the feed, and writers wake no one), then
//! takes everything that is ready in one go and sends its net effect as one event: the latest
//! state of each row that changed (a row that changed twice is rendered and sent once; one
//! that came and went is a removal). An idle page thus sees a change one commit after it
//! happens, a busy one within [`THROTTLE`] more, and each open list costs the server at most
//! 20 events a second, however fast the writes come.
//!
//! Every event that follows changes carries the cursor of the newest change in it as its
//! SSE `id`. A browser that loses its connection reconnects by itself and sends that id as
//! `Last-Event-ID`: the crew stream resumes its feed from it (`resume_from`). Since an event
//! holds the net effect of every change up to its id, the page gets exactly what it missed.
//! A cursor the change log no longer holds (or one that is not a cursor at all) gets a
//! `reload` event: the page reloads its state. Join, aggregate and top-N feeds cannot
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
use remodel::{Change, ChangeKind, Cursor, Error, FeedState, Model};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// What the live handlers return.
pub type EventStream = Sse<KeepAliveStream<BoxStream<'static, Result<Event, Infallible>>>>;

/// How long a browser waits before reconnecting a cut stream.
const RETRY: Duration = Duration::from_millis(500);

/// The least time between two events of one live list. Each event costs a socket write, a
/// wake-up and a read in the browser, whatever it carries: one event per change and page
/// made 1,000 open pages slow the app's writes twentyfold. 50 ms caps a list at 20 events a
/// second, and keeps a change's delivery well within the 100 ms that feels instant.
const THROTTLE: Duration = Duration::from_millis(50);

/// The longest window of a busy list (see [`throttled`]).
const BUSY_THROTTLE: Duration = Duration::from_millis(200);

/// A window that gathered this many changes was a busy one: the next window is twice as
/// long (up to [`BUSY_THROTTLE`]). One with at most one change brings it back to [`THROTTLE`].
const BUSY_BATCH: usize = 4;

/// The most items one event gathers (a page resuming after a long cut gets several).
const MOST_PER_EVENT: usize = 8192;

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

/// A `reload` event: the page must read its state again.
fn reload_event(why: String) -> Event {
    Event::default().event("reload").data(why)
}

/// A stream of one `reload` event.
fn reload(app: &AppState, why: String) -> EventStream {
    serve(app, stream::once(async move { reload_event(why) }))
}

/// An event of `name` with JSON data, and the cursor of the newest change behind it.
fn event(name: &str, data: Value, cursor: Option<Cursor>) -> Event {
    let e = Event::default().event(name).data(data.to_string());
    match cursor {
        Some(c) => e.id(c.to_string()),
        None => e,
    }
}

/// `items` in batches, at most one batch per window: takes everything that is ready
/// (waiting for an item if there is none), hands the batch over, then sleeps until the
/// window has passed since, without reading `items`, so that what comes meanwhile piles up
/// in the feed and is taken as the next batch.
///
/// The window is [`THROTTLE`] while changes come one at a time (what a person editing sees:
/// a change within one window), and doubles after each busy window up to [`BUSY_THROTTLE`]:
/// when writes pour in, each event costs the same whatever it carries, and a page that
/// changes dozens of times a second cannot be read faster than five times a second anyway.
fn throttled<S>(items: S) -> impl Stream<Item = Vec<S::Item>> + Send
where
    S: Stream + Send + 'static,
    S::Item: Send,
{
    stream! {
        let mut items = Box::pin(items);
        let mut window = THROTTLE;
        loop {
            // Sized for a busy window (a few dozen changes), so that it rarely grows.
            let mut batch = Vec::with_capacity(64);
            let mut ended = take_ready(items.as_mut(), &mut batch);
            if batch.is_empty() && !ended {
                // Nothing yet: wait with this task's waker, then take the rest with it.
                match items.next().await {
                    Some(first) => batch.push(first),
                    None => break,
                }
                ended = take_ready(items.as_mut(), &mut batch);
            }
            if !batch.is_empty() {
                window = match batch.len() {
                    1 => THROTTLE,
                    n if n >= BUSY_BATCH => (window * 2).min(BUSY_THROTTLE),
                    _ => window,
                };
                let sent = tokio::time::Instant::now();
                yield batch;
                tokio::time::sleep_until(sent + window).await;
            }
            if ended {
                break;
            }
        }
    }
}

/// Moves what `items` has ready into `batch` (up to [`MOST_PER_EVENT`]); `true` if it
/// ended. Polled with a waker that does nothing: the caller sleeps next anyway, and a feed
/// left with the task's waker would wake it for nothing on its next item (the caller's
/// `next()` gives the feed the real waker when it waits).
fn take_ready<S: Stream + ?Sized>(
    mut items: std::pin::Pin<&mut S>,
    batch: &mut Vec<S::Item>,
) -> bool {
    let mut idle = Context::from_waker(Waker::noop());
    while batch.len() < MOST_PER_EVENT {
        match items.as_mut().poll_next(&mut idle) {
            Poll::Ready(Some(item)) => batch.push(item),
            Poll::Ready(None) => return true,
            Poll::Pending => return false,
        }
    }
    false
}

/// The newest cursor of `items` (commit order: the largest).
fn newest(items: impl IntoIterator<Item = Option<Cursor>>) -> Option<Cursor> {
    items.into_iter().flatten().max()
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

/// Rows already rendered, per list of a page (`crew/voyager`, ...) and change: a change
/// seen by hundreds of open pages of one ship (each with its own feed) is rendered once,
/// since rendering is most of what a delivery costs.
#[derive(Default)]
pub(crate) struct RowCache {
    lists: Mutex<HashMap<String, Arc<ListRows>>>,
}

impl RowCache {
    /// The rendered rows of `list`, shared by every stream of that list.
    fn list(&self, list: &str) -> Arc<ListRows> {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        lists.entry(list.to_string()).or_default().clone()
    }
}

/// One list's rendered rows, by the cursor of the change behind them (a cursor names one
/// item of one feed, and the feeds of a list are the same query). The newest are kept.
#[derive(Default)]
struct ListRows {
    rows: Mutex<BTreeMap<Cursor, Arc<str>>>,
}

impl ListRows {
    const KEEP: usize = 1024;

    /// The JSON row of the change at `at`, made by `make` if no stream made it yet.
    fn get_or_make(&self, at: Option<Cursor>, make: impl FnOnce() -> String) -> Arc<str> {
        let Some(at) = at else { return make().into() };
        let cached = self
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&at)
            .cloned();
        if let Some(row) = cached {
            return row;
        }
        let row: Arc<str> = make().into();
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.insert(at, row.clone());
        while rows.len() > Self::KEEP {
            rows.pop_first();
        }
        row
    }
}

/// The field `name` of a JSON object. Rows have few fields: a scan is cheaper than the
/// map's hashed lookup, and this runs for every change on every open page.
fn field<'v>(row: &'v Value, name: &str) -> Option<&'v Value> {
    row.as_object()?
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// One list of a ship page (the crew, the away team), as its stream needs it.
struct RowList {
    /// `crew` or `away`: the prefix of its events and of its rows' DOM ids.
    name: &'static str,
    /// Its rows already rendered (the [`RowCache`] entry of, e.g., `crew/voyager`).
    rendered: Arc<ListRows>,
    /// Whether its events carry their cursor as SSE id (only a resumable feed's do).
    ids: bool,
    /// The member a row of the feed is about: the row itself, or the right side of a pair.
    member: fn(&Value) -> Option<&Value>,
    /// Renders the HTML of a row (`None`: a row that does not decode, shown as gone).
    render: RenderRow,
}

/// Renders a feed's row as HTML (`None`: a row that does not decode).
type RenderRow = Box<dyn Fn(&Value) -> Option<String> + Send>;

impl RowList {
    /// The member id of a change's row (after the change, or before it for a removal).
    fn id_of<'c>(&self, c: &'c Change) -> Option<&'c str> {
        let row = c.new_val().or(c.old_val())?;
        field((self.member)(row)?, "id")?.as_str()
    }
}

/// The net effect of a batch of row changes: the latest change of each row (in the order
/// the rows were first changed) and the newest cursor of them all.
#[derive(Default)]
struct NetRows {
    latest: Vec<(String, Change)>,
    /// Where each row is in `latest`, once there are too many rows for a scan.
    index: HashMap<String, usize>,
    newest: Option<Cursor>,
}

impl NetRows {
    /// Rows a scan of `latest` finds faster than a hashed lookup.
    const SCAN: usize = 16;

    /// Folds in `c`, a later change than those folded so far.
    fn fold(&mut self, list: &RowList, c: Change) {
        let Some(id) = list.id_of(&c) else { return };
        self.newest = self.newest.max(c.cursor());
        let at = if self.latest.len() <= Self::SCAN {
            self.latest.iter().position(|(row, _)| row == id)
        } else {
            if self.index.is_empty() {
                let rows = self.latest.iter().enumerate();
                self.index = rows.map(|(i, (row, _))| (row.clone(), i)).collect();
            }
            self.index.get(id).copied()
        };
        match at {
            Some(i) => self.latest[i].1 = c,
            None => {
                if !self.index.is_empty() {
                    self.index.insert(id.to_string(), self.latest.len());
                }
                self.latest.push((id.to_string(), c));
            }
        }
    }

    /// The `{list}-rows` event of what was folded, `[{id, html}, ...]` (`html: null`: the
    /// row left), with the newest cursor as its id; `None` if nothing was. Empties `self`.
    fn take_event(&mut self, list: &RowList) -> Option<Event> {
        if self.latest.is_empty() {
            return None;
        }
        self.index.clear();
        let mut data = String::with_capacity(1024 * self.latest.len());
        data.push('[');
        for (id, c) in self.latest.drain(..) {
            let row = list.rendered.get_or_make(c.cursor(), || {
                let html = c.new_val().and_then(|row| (list.render)(row));
                json!({ "id": format!("{}-{id}", list.name), "html": html }).to_string()
            });
            if data.len() > 1 {
                data.push(',');
            }
            data.push_str(&row);
        }
        data.push(']');
        let e = Event::default()
            .event(format!("{}-rows", list.name))
            .data(data);
        match self.newest.take().filter(|_| list.ids) {
            Some(c) => Some(e.id(c.to_string())),
            None => Some(e),
        }
    }
}

/// A ship page's list as SSE events: the initial rows become one `{list}-reset` event;
/// then each throttled batch of changes becomes one `{list}-rows` event of its net effect.
/// A feed error (missed changes, a closing database) ends the stream with `reload`.
fn row_events(
    list: RowList,
    feed: impl Stream<Item = remodel::Result<Change>> + Send + 'static,
) -> impl Stream<Item = Event> + Send {
    stream! {
        let mut initial = String::new();
        let mut net = NetRows::default();
        let mut batches = Box::pin(throttled(feed));
        while let Some(batch) = batches.next().await {
            for item in batch {
                let c = match item {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(rows) = net.take_event(&list) {
                            yield rows;
                        }
                        yield reload_event(e.to_string());
                        return;
                    }
                };
                match c.kind() {
                    ChangeKind::State if c.state() == Some(FeedState::Ready) => {
                        let html = std::mem::take(&mut initial);
                        let name = format!("{}-reset", list.name);
                        yield event(&name, json!({ "html": html }), None);
                    }
                    ChangeKind::State => {}
                    ChangeKind::Initial => {
                        if let Some(html) = c.new_val().and_then(|row| (list.render)(row)) {
                            initial.push_str(&html);
                        }
                    }
                    _ => net.fold(&list, c),
                }
            }
            if let Some(rows) = net.take_event(&list) {
                yield rows;
            }
        }
    }
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
    Ok(serve(&app, stream::select(crew, away)))
}

/// The crew, through the relation feed `ship.crewmembers(&db).changes()`. `Err` is the
/// `reload` stream for a `Last-Event-ID` that cannot be resumed. The feed is read undecoded
/// (`into_raw`): a row is decoded only when it is rendered, once per change for all pages.
async fn crew(
    app: &AppState,
    ship: &Starship,
    headers: &HeaderMap,
) -> AppResult<Result<impl Stream<Item = Event> + Send + 'static, EventStream>> {
    let feed = match open_rows(app, headers, ship.crewmembers(&app.db).changes()).await? {
        Ok(feed) => feed.into_raw(),
        Err(reload) => return Ok(Err(reload)),
    };
    let ships = Starship::all(&app.db).await?; // for the move forms; ships never change
    let list = RowList {
        name: "crew",
        rendered: app.inner.rows.list(&format!("crew/{}", ship.id_str())),
        ids: true,
        member: |row| Some(row),
        render: {
            let ship = ship.clone();
            Box::new(move |row| {
                let m = decode_member(row)?;
                Some(render_row("crew_row.html", context! { m, ship, ships }))
            })
        },
    };
    Ok(Ok(row_events(list, feed)))
}

/// The away team, through a live join of the ship's links (the many-to-many join table)
/// with the crew: an officer appears when assigned, changes when edited, and goes when
/// released or deleted. A join feed does not resume from a cursor: it starts from the
/// current team.
async fn away_team(
    app: &AppState,
    ship: &Starship,
) -> AppResult<impl Stream<Item = Event> + Send + 'static> {
    let feed = ship
        .away_team(&app.db)
        .join_changes()?
        .include_initial(true)
        .include_states(true)
        .await?;
    let list = RowList {
        name: "away",
        rendered: app.inner.rows.list(&format!("away/{}", ship.id_str())),
        ids: false,
        member: |pair| field(pair, "right"),
        render: {
            let ship = ship.clone();
            Box::new(move |pair| {
                let m = decode_member(pair.get("right")?)?;
                Some(render_row("away_row.html", context! { m, ship }))
            })
        },
    };
    Ok(row_events(list, feed))
}

/// A crew member from a feed's row; one that does not decode (a bug) is logged.
fn decode_member(row: &Value) -> Option<Crewmember> {
    Crewmember::from_json(row.clone())
        .map_err(|e| eprintln!("starfleet: a crew row: {e}"))
        .ok()
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
/// groups are in, and again after every throttled batch of changed groups. An aggregate
/// feed does not resume from a cursor: a reconnecting page gets the whole current state
/// again, which is all it shows.
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
        let mut batches = Box::pin(throttled(feed));
        while let Some(batch) = batches.next().await {
            let mut cursor = None;
            for item in batch {
                let c = match item {
                    Ok(c) => c,
                    Err(e) => {
                        // Missed group changes (an overflow) or a closing database.
                        yield reload_event(e.to_string());
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
                cursor = newest([cursor, c.cursor()]);
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

/// `/member/{id}/events`: the member's details, redrawn as the row is after each throttled
/// batch of its changes (`member.watch(&db)`, a point feed; its ship and missions are read
/// again then).
pub async fn member(State(app): State<AppState>, Path(id): Path<String>) -> AppResult<EventStream> {
    let member = find_member(&app.db, &id).await?;
    // With the current row first: a change between the page and this stream is not lost.
    let feed = member.watch(&app.db).include_initial(true).await?;
    let db = app.db.clone();
    let events = stream! {
        let mut batches = Box::pin(throttled(feed));
        while let Some(batch) = batches.next().await {
            let mut latest = None;
            for item in batch {
                match item {
                    Ok(c) => {
                        let at = newest([latest.as_ref().and_then(|(at, _)| *at), c.cursor()]);
                        latest = Some((at, c.new));
                    }
                    Err(e) => {
                        yield reload_event(e.to_string());
                        return;
                    }
                }
            }
            let Some((at, member)) = latest else { continue };
            let Some(member) = member else {
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
/// five, then each change says which row left or entered at which position. The board is
/// redrawn once per throttled batch of changes.
pub async fn leaderboard(State(app): State<AppState>) -> AppResult<EventStream> {
    let feed = top_five(&app.db)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .include_states(true)
        .await?;
    let events = stream! {
        let mut board: Vec<Score> = Vec::new();
        let mut ready = false;
        let mut batches = Box::pin(throttled(feed));
        while let Some(batch) = batches.next().await {
            let (mut changed, mut at) = (false, None);
            for item in batch {
                let c = match item {
                    Ok(c) => c,
                    Err(e) => {
                        yield reload_event(e.to_string());
                        return;
                    }
                };
                if let Some(i) = c.old_offset.filter(|&i| i < board.len()) {
                    board.remove(i);
                }
                if let (Some(i), Some(score)) = (c.new_offset, c.new.clone()) {
                    board.insert(i.min(board.len()), score);
                }
                ready |= c.state == Some(FeedState::Ready);
                changed |= c.kind != ChangeKind::Initial;
                at = newest([at, c.cursor()]);
            }
            if ready && changed {
                let html = render_row("scores.html", context! { scores => board });
                yield event("html", json!({ "html": html }), at);
            }
        }
    };
    Ok(serve(&app, events))
}
