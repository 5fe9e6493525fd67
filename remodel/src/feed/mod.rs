//! The changefeed core: live queries whose result changes are pushed to subscribers.
//!
//! Call `.changes()` on a table, a `get`, a query, an aggregate or a join, set options, and
//! `.await` it to get a [`Feed`], a `futures::Stream` of `Result<`[`Change`]`>` items.
//! Dropping the feed unsubscribes. A task that serves one consumer (a WebSocket, an SSE
//! stream) reads best with [`Feed::for_each_ready`]: one wake-up, every ready item.
//!
//! | query | feed |
//! |---|---|
//! | `table` | every row |
//! | `get(key)` | one row (a missing row is `new_val: None` among the initial rows) |
//! | `get_all(keys)`, optionally `.index(name)` | rows by key or index value (a key given twice, twice) |
//! | `between(lo, hi)`, optionally `.index(name)` | rows in a range; rows moving in or out are reported |
//! | any of those + `filter` / `pluck` / `without` | the same, as the query sees the rows |
//! | `order_by(Order::index(..)).limit(n)` (also `min_by_index`, `max_by_index`) | the top `n`, maintained incrementally |
//! | `db.stats()` | changed stats rows, about once a second |
//! | `count()`, `sum/avg/min/max(field)`, `group(field)` / `group_by_index(name)` + any of them, over a table, `get_all` or `between` (with filters) | changed groups `{group, reduction}` (ungrouped: the value), maintained per commit; `min`/`max` need an index on the field |
//! | `eq_join(field, other)`, optionally `.index(name)` | `{left, right}` pairs, following both tables |
//!
//! Anything else is refused when the feed is created, with [`crate::Error::Unwatchable`]
//! saying why: `limit` without an index ordering ("cannot watch the first elements of an
//! unordered stream"), an `order_by` on a field, an index ordering without `limit`, `skip`,
//! anything after `limit`, an aggregate or join of a top-N query, a live `min`/`max`
//! without an index on its field.
//!
//! Feeds that watch the same query (described alike: the same rows, view, ordering,
//! aggregate or join) share their work: each write is matched, filtered and transformed once
//! for all of them, and each item is one allocation they all read.
//!
//! # Order and commit positions
//!
//! A feed's items come in commit order. The database numbers every change it commits, in
//! one order for all its tables; [`Change::seq`] is the position of the commit a change
//! belongs to, **shared by every item of one atomic commit** (a batch, a cascading delete,
//! an `insert_many` chunk), so a consumer sees where a commit ends when the position
//! changes, and [`Change::position_in_commit`] orders the items of one commit. Top-N,
//! aggregate and join feeds apply each commit as one step (no item reflects part of a
//! commit): top-N and aggregate items are about the whole commit and carry the place of its
//! last change, a join's pairs the place of the change that made them. Initial rows, state
//! markers and stats rows have no position. [`Change::cursor`] names an
//! item's place, to resume a row feed after it ([`Changes::resume_from`], with a change
//! log: [`crate::Config::change_log`]).
//!
//! # Initial rows
//!
//! With `include_initial`, the current result comes first (`initial` items; a missing
//! `get` row is one `null`; top-N rows with their offsets, best first), and no change is
//! missing or repeated between them and the changes that follow: the subscription is
//! registered and the rows are read under the commit lock (tables and primary key ranges are
//! read in chunks, with a scan frontier that tells which changes the scan has already seen,
//! so writers never wait for a whole table to be read). `include_states` puts an
//! `initializing` state before them and a `ready` state after them.
//!
//! # Queue size and overflow
//!
//! A feed holds up to its queue size of items its consumer has not read
//! ([`Changes::queue_size`], at least 1; by default the database's
//! [`crate::Config::feed_queue_size`], 100,000). Writers never wait for a consumer: one that
//! falls further behind loses the oldest items it had not read, a queue's worth at a time,
//! and then receives one `Err(`[`crate::Error::FeedOverflow`]` { skipped })` with their
//! number; **the feed goes on** with the items after them (as a lagging receiver of
//! tokio's broadcast channel does). To catch up on what was skipped, re-read the result
//! (`include_initial`) or resume a row feed from the last cursor it handed over.
//!
//! # Squash
//!
//! [`Changes::squash`] merges the changes that pile up while the consumer is not reading:
//! one item per row (and place in the result), with its oldest `old_val` and newest
//! `new_val`, carrying the position and cursor of its last change; a row whose changes
//! cancel out disappears; items of different rows come in no particular order. The queue
//! size then counts the rows waiting. A squashing top-N feed hands over the net difference
//! between its set when the batch started and when it is handed over (still valid list
//! edits with `include_offsets`); it never overflows (its batches are bounded by the
//! limit). [`Changes::squash_window`] hands the merged items over in batches at most that
//! many seconds after the first of them arrived (any finite non-negative number): the
//! feed's first hand-over is not delayed, and a queue more than half full, an overflow or
//! the feed's end is handed over at once.
//!
//! # Visibility of hard writes
//!
//! A feed shows nothing a crash could take back from an acknowledged hard write
//! ([`crate::Durability::Hard`], the default): while a hard write waits for its fsync,
//! every item from the first change not yet on disk waits with it (so items keep their
//! order), and initial rows wait for the commit they were read at. Soft writes are shown
//! when committed. If the database can no longer write to disk, what waits is never shown:
//! the feed ends as below.
//!
//! # Abort
//!
//! A feed ends (one `Err(`[`crate::Error::FeedAborted`]`(reason))` after the items it has
//! not read, then `None`) when what it watches goes away: its table is dropped (for a join,
//! either table), an index it reads is dropped or could not be built, the database closes
//! or can no longer write to disk, or its top-N set, aggregate or join can no longer be
//! maintained (a storage error while refilling it, a sum of a value that is not a number).
//! Nothing else ends a feed; dropping it unsubscribes it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use futures_util::StreamExt;
//! use remodel::{Database, IndexSpec, Order};
//! use serde_json::json;
//!
//! let db = Database::temporary().await?;
//! db.create_table("scores").await?;
//! let scores = db.table("scores");
//! scores.create_index("points", IndexSpec::field("points")).await?;
//! scores.insert(json!({"id": "kim", "points": 10})).await?;
//!
//! // The top 2, live: initial rows first, then changes of the top 2 only.
//! let mut top = scores.order_by(Order::index("points").desc()).limit(2)
//!     .changes().include_initial(true).await?;
//! assert_eq!(top.next().await.unwrap()?.new_val().unwrap()["id"], "kim");
//! scores.insert(json!({"id": "ann", "points": 30})).await?;
//! let c = top.next().await.unwrap()?;
//! assert_eq!((c.old_val(), &c.new_val().unwrap()["id"]), (None, &json!("ann")));
//! # Ok::<(), remodel::Error>(())
//! # }).unwrap();
//! ```

mod change;
mod changes;
mod edits;
pub(crate) mod hub;
mod log;
pub(crate) mod ops;
mod options;
mod queue;
mod ranges;
mod resume;
mod shared;
mod sink;
mod spec;
mod stream;

pub use change::{Change, ChangeKind, FeedState};
pub use changes::Changes;
pub(crate) use hub::Hub;
pub use options::{FeedOptions, Squash};
pub use resume::Cursor;
pub use stream::Feed;
