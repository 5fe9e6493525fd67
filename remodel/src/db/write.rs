//! The commit engine: every committed write goes through [`DbInner::commit_chunk`], which
//! applies documents and index entries in one crash-atomic storage batch, numbers each change
//! in commit order, and hands them to the change sink (the feed layer), all under the commit
//! lock. The public types of writes are in `write_types.rs` and `patch.rs`.

pub(crate) use super::patch::{merge, PatchKind, ReplaceFn, ResolveFn};
use super::{ChangePair, Conflict, Durability, Patch, WriteResult};

use super::changelog::Record;
use super::{Database, DbInner, TableState};
use crate::storage::WriteBatch;
use crate::value::encode_key;
use crate::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One write of one document. (Cloned for a write that is staged again, when a shared
/// database's commit found a row changed since it was staged: closures are shared.)
#[derive(Clone)]
pub(crate) enum WriteOp {
    /// Insert a validated document (its key is set).
    Insert { doc: Value, conflict: OnConflict },
    /// Merge a patch into the document with this key.
    Update { key: Vec<u8>, patch: Patch },
    /// Replace the document with this key (the new one has the same key).
    Replace { key: Vec<u8>, doc: Value },
    /// Replace the document with this key by what the closure makes of it, under the commit
    /// lock (skipped when there is none).
    ReplaceWith { key: Vec<u8>, f: Arc<ReplaceFn> },
    /// Delete the document with this key.
    Delete { key: Vec<u8> },
}

impl WriteOp {
    /// The key of the row it writes (an insert's, from its document).
    fn row_key(&self, table: &TableState) -> Result<Vec<u8>> {
        match self {
            WriteOp::Insert { doc, .. } => table.key_of(doc),
            WriteOp::Update { key, .. }
            | WriteOp::Replace { key, .. }
            | WriteOp::ReplaceWith { key, .. }
            | WriteOp::Delete { key } => Ok(key.clone()),
        }
    }
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteOp::Insert { doc, conflict } => f
                .debug_struct("Insert")
                .field("doc", doc)
                .field("conflict", conflict)
                .finish(),
            WriteOp::Update { key, patch } => f
                .debug_struct("Update")
                .field("key", key)
                .field("patch", patch)
                .finish(),
            WriteOp::Replace { key, doc } => f
                .debug_struct("Replace")
                .field("key", key)
                .field("doc", doc)
                .finish(),
            WriteOp::ReplaceWith { key, .. } => f
                .debug_struct("ReplaceWith")
                .field("key", key)
                .finish_non_exhaustive(),
            WriteOp::Delete { key } => f.debug_struct("Delete").field("key", key).finish(),
        }
    }
}

/// What an insert does over a stored document with the same key.
#[derive(Clone)]
pub(crate) enum OnConflict {
    /// One of the fixed policies.
    Policy(Conflict),
    /// The closure decides, from the stored and the new document, under the commit lock.
    Resolve(Arc<ResolveFn>),
}

impl std::fmt::Debug for OnConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnConflict::Policy(c) => c.fmt(f),
            OnConflict::Resolve(_) => f.write_str("Resolve(<function>)"),
        }
    }
}

/// A committed change, as handed to the change sink.
#[derive(Clone, Debug)]
pub(crate) struct Committed {
    /// The change's own number.
    pub seq: u64,
    /// The commit's position: the number of its first change (shared by its changes).
    pub commit: u64,
    pub key: Vec<u8>,
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

/// A key touched by a chunk: its document before the chunk, as staged by it, and whether
/// more than one write of the chunk changed it.
type Staged = (Option<Arc<Value>>, Option<Arc<Value>>, bool);

/// How many documents go into one atomic storage batch.
const CHUNK: usize = 4096;

/// The most handed-off writes one holder of the commit lock commits before letting go: the
/// holder may be an async worker, which this keeps to well under a millisecond.
const MAX_HANDOFFS: usize = 32;

/// How long a write's closure (`Patch::with`, `replace_with`, `conflict_with`) may hold the
/// commit lock before the writes waiting for it give up with [`Error::CommitStalled`]. A
/// closure runs under the lock, so one that waits for another write (made on another
/// thread) would otherwise wait forever, and every writer with it: the waiting writes fail
/// instead, which also ends the closure's wait.
pub(crate) const CLOSURE_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a blocking writer waits for the commit lock between two looks at whether a
/// closure stalls it.
const STALL_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Since when a write's closure runs under the commit lock, if one does (see
/// [`CLOSURE_STALL`]).
pub(crate) struct ClosureWatch {
    base: std::time::Instant,
    /// Microseconds since `base` + 1 when the running closure started; 0 when none runs.
    since: std::sync::atomic::AtomicU64,
}

impl Default for ClosureWatch {
    fn default() -> Self {
        ClosureWatch {
            base: std::time::Instant::now(),
            since: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl ClosureWatch {
    fn now(&self) -> u64 {
        self.base.elapsed().as_micros() as u64 + 1
    }

    /// Runs a write's closure (the caller holds the commit lock), marked as running.
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Done<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        self.since.store(self.now(), Ordering::Release);
        let _done = Done(&self.since);
        f()
    }

    /// The error for a writer waiting behind a closure that has held the lock for longer
    /// than [`CLOSURE_STALL`], if one has.
    fn stalled(&self) -> Option<Error> {
        let since = self.since.load(Ordering::Acquire);
        let held = self.now().saturating_sub(since);
        (since != 0 && held > CLOSURE_STALL.as_micros() as u64).then(|| Error::CommitStalled {
            held_ms: held / 1000,
        })
    }
}

/// How often a writer whose write waits for the lock's holder looks at the lock itself (a
/// holder that is not a write, such as DDL, commits no handoffs).
const HANDOFF_RECHECK: std::time::Duration = std::time::Duration::from_millis(1);

/// A small write that found the commit lock taken, left for the lock's holder to commit
/// right after its own commit (flat combining): the writer neither blocks an async worker
/// on the lock nor pays a handoff to a blocking thread, and the holder, already running
/// with the lock and the caches warm, commits it in a few microseconds.
struct Handoff {
    id: u64,
    table: Arc<TableState>,
    ops: Vec<WriteOp>,
    return_changes: bool,
    hard: bool,
    done: tokio::sync::oneshot::Sender<Result<WriteResult>>,
}

/// Takes back a handoff when its writer's future is dropped (a no-op once it was taken or
/// its result came).
struct Withdraw<'a> {
    handoffs: &'a Handoffs,
    id: u64,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.handoffs.withdraw(self.id);
        }
    }
}

/// The writes left for the commit lock's holder. Every commit looks whether there are any,
/// so that look is one atomic load, not a lock.
#[derive(Default)]
pub(crate) struct Handoffs {
    left: parking_lot::Mutex<Vec<Handoff>>,
    count: std::sync::atomic::AtomicUsize,
    /// The next handoff's id.
    ids: std::sync::atomic::AtomicU64,
}

impl Handoffs {
    fn leave(&self, h: Handoff) {
        let mut left = self.left.lock();
        left.push(h);
        self.count.store(left.len(), Ordering::SeqCst);
    }

    fn is_empty(&self) -> bool {
        self.count.load(Ordering::SeqCst) == 0
    }

    /// Takes back the handoff `id` if no holder took it yet (then it will never commit).
    fn withdraw(&self, id: u64) -> bool {
        let mut left = self.left.lock();
        let Some(i) = left.iter().position(|h| h.id == id) else {
            return false;
        };
        left.remove(i);
        self.count.store(left.len(), Ordering::SeqCst);
        true
    }

    /// The oldest `n` at most, in the order they were left.
    fn take(&self, n: usize) -> Vec<Handoff> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut left = self.left.lock();
        let n = left.len().min(n);
        let taken = left.drain(..n).collect();
        self.count.store(left.len(), Ordering::SeqCst);
        taken
    }
}

impl DbInner {
    /// Applies `ops` to `table`. Each chunk of up to 4,096 documents is atomic: its documents
    /// and index entries all reach storage together or not at all.
    /// Stops before the next chunk once `abandoned` (its caller stopped waiting): each chunk
    /// is a commit of its own.
    pub(crate) fn commit(
        &self,
        table: &Arc<TableState>,
        ops: Vec<WriteOp>,
        return_changes: bool,
        hard: bool,
        abandoned: &super::Abandoned,
    ) -> Result<WriteResult> {
        let mut result = WriteResult::default();
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            // Up to CHUNK writes, and up to MAX_COMMIT_INDEX_WORK index entries: what one
            // hold of the commit lock costs every other writer stays bounded.
            let mut chunk = Vec::new();
            let mut work = 0;
            while let Some(op) = ops.peek() {
                let w = op_index_work(table, op);
                let full = chunk.len() == CHUNK || work + w > super::index::MAX_COMMIT_INDEX_WORK;
                if full && !chunk.is_empty() {
                    break;
                }
                work += w;
                chunk.push((table.clone(), ops.next().expect("peeked")));
            }
            self.commit_locked(
                || abandoned.check().map(|()| chunk),
                Commit {
                    return_changes,
                    all_or_nothing: false,
                    hard,
                },
                &mut result,
            )?;
        }
        Ok(result)
    }

    /// Leaves a small write for the commit lock's holder to commit (see [`Handoff`]) and
    /// waits for its result without blocking the worker.
    pub(crate) async fn hand_off(
        &self,
        table: Arc<TableState>,
        ops: Vec<WriteOp>,
        return_changes: bool,
        hard: bool,
    ) -> Result<WriteResult> {
        let (done, mut result) = tokio::sync::oneshot::channel();
        let id = self.handoffs.ids.fetch_add(1, Ordering::Relaxed);
        self.handoffs.leave(Handoff {
            id,
            table,
            ops,
            return_changes,
            hard,
            done,
        });
        // A write whose caller stops waiting is taken back if no holder took it yet: a holder
        // takes writes under the commit lock and commits them before letting it go, so the
        // write is either never made or made before any later write of the caller.
        let mut withdraw = Withdraw {
            handoffs: &self.handoffs,
            id,
            armed: true,
        };
        loop {
            // The holder may have let go before the write was left: then commit it here.
            self.drain_handoffs();
            match tokio::time::timeout(HANDOFF_RECHECK, &mut result).await {
                Ok(Ok(result)) => {
                    withdraw.armed = false;
                    return result;
                }
                Ok(Err(_)) => {
                    withdraw.armed = false;
                    return Err(Error::storage(
                        "a write left for the commit lock's holder was lost",
                    ));
                }
                // Held by something that takes no handoffs (DDL, a feed opening, a stalled
                // closure): look again, and give up behind a stalled closure unless the
                // write was taken already (then its result comes).
                Err(_) => {
                    if let Some(e) = self.closures.stalled() {
                        if self.handoffs.withdraw(id) {
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Commits the writes left for the lock's holder, if the lock is free now.
    fn drain_handoffs(&self) {
        if self.handoffs.is_empty() {
            return;
        }
        let Some(mut seq) = self.writer.try_lock() else {
            return;
        };
        let mut wakes = Vec::new();
        self.commit_handoffs(&mut seq, &mut wakes);
        drop(seq);
        wakes.drain(..).for_each(std::task::Waker::wake);
    }

    /// Under the commit lock: commits the writes left for its holder, in the order they were
    /// left (each its own commit, as if its writer had taken the lock), at most
    /// [`MAX_HANDOFFS`] per hold.
    fn commit_handoffs(&self, seq: &mut u64, wakes: &mut Vec<std::task::Waker>) {
        let mut budget = MAX_HANDOFFS;
        while budget > 0 {
            let taken = self.handoffs.take(budget);
            if taken.is_empty() {
                return;
            }
            budget -= taken.len();
            for h in taken {
                let mut result = WriteResult::default();
                let chunk = h.ops.into_iter().map(|op| (h.table.clone(), op)).collect();
                let how = Commit {
                    return_changes: h.return_changes,
                    all_or_nothing: false,
                    hard: h.hard,
                };
                let committed = self.commit_chunk(chunk, how, &mut result, seq, wakes);
                // The writer may have gone (its task was cancelled): the write stands.
                let _ = h.done.send(committed.map(|()| result));
            }
        }
    }

    /// Commits `ops` (one chunk) if the commit lock is free right now; gives them back when
    /// it is not, so that the caller can wait for it elsewhere.
    pub(crate) fn try_commit_now(
        &self,
        table: &Arc<TableState>,
        ops: Vec<WriteOp>,
        return_changes: bool,
        hard: bool,
    ) -> std::result::Result<Result<WriteResult>, Vec<WriteOp>> {
        debug_assert!(ops.len() <= CHUNK);
        let Some(mut seq) = self.writer.try_lock() else {
            return Err(ops);
        };
        let mut result = WriteResult::default();
        let mut wakes = Vec::new();
        let chunk = ops.into_iter().map(|op| (table.clone(), op)).collect();
        let how = Commit {
            return_changes,
            all_or_nothing: false,
            hard,
        };
        let committed = self.commit_chunk(chunk, how, &mut result, &mut seq, &mut wakes);
        self.commit_handoffs(&mut seq, &mut wakes);
        drop(seq);
        wakes.drain(..).for_each(std::task::Waker::wake);
        // A write left after the last look under the lock, before it was let go.
        self.drain_handoffs();
        Ok(committed.map(|()| result))
    }

    /// Takes the commit lock, commits one chunk, and wakes the feeds it fed once the lock is
    /// released.
    /// `ops` runs first, under the lock: it may read the store to decide what to write.
    ///
    /// One write path for every write that selects its rows when it commits (writes by
    /// query, batches with `update_where` / `delete_where` / `require_empty`): an
    /// all-or-nothing commit is one atomic storage batch however many rows it selected; any
    /// other commits atomically per chunk of 4,096 rows, under one hold of the lock (no other
    /// writer runs in between).
    pub(crate) fn commit_locked(
        &self,
        ops: impl FnOnce() -> Result<Vec<(Arc<TableState>, WriteOp)>>,
        how: Commit,
        result: &mut WriteResult,
    ) -> Result<()> {
        super::check_not_in_patch()?;
        let mut wakes = Vec::new();
        let mut seq = self.lock_for_commit()?;
        let committed = ops().and_then(|ops| {
            if how.all_or_nothing {
                return self.commit_chunk(ops, how, result, &mut seq, &mut wakes);
            }
            let mut ops = ops.into_iter().peekable();
            while ops.peek().is_some() {
                let chunk = ops.by_ref().take(CHUNK).collect();
                self.commit_chunk(chunk, how, result, &mut seq, &mut wakes)?;
            }
            Ok(())
        });
        // Writes left for the holder meanwhile go next: between two chunks of a large write,
        // a small one commits instead of waiting for the whole of it.
        self.commit_handoffs(&mut seq, &mut wakes);
        drop(seq);
        wakes.drain(..).for_each(std::task::Waker::wake);
        self.drain_handoffs();
        committed
    }

    /// Applies an update's patch (a closure's marked as running, see [`ClosureWatch`]).
    fn apply(&self, patch: &Patch, table: &TableState, cur: &Value) -> Result<Value> {
        match &patch.0 {
            PatchKind::With(_) => self.closures.run(|| patch.apply(table, cur)),
            PatchKind::Merge(_) => patch.apply(table, cur),
        }
    }

    /// Takes the commit lock, waiting for it unless a write's closure has held it for longer
    /// than [`CLOSURE_STALL`] (then [`Error::CommitStalled`]).
    fn lock_for_commit(&self) -> Result<parking_lot::MutexGuard<'_, u64>> {
        loop {
            if let Some(seq) = self.writer.try_lock_for(STALL_RECHECK) {
                return Ok(seq);
            }
            if let Some(e) = self.closures.stalled() {
                return Err(e);
            }
        }
    }

    /// Commits one chunk of writes, possibly to several tables, as one atomic storage batch;
    /// the caller holds the commit lock (`seq`). Stages each write against the current
    /// document, numbers the net changes, makes them durable, then hands them to the feeds.
    pub(crate) fn commit_chunk(
        &self,
        ops: Vec<(Arc<TableState>, WriteOp)>,
        how: Commit,
        result: &mut WriteResult,
        seq: &mut u64,
        wakes: &mut Vec<std::task::Waker>,
    ) -> Result<()> {
        let staging = self.stage_all(ops, how, result)?;
        let commit_first = *seq + 1;
        let (batch, record, committed) = self.number(staging.order_by_first_touch(), seq)?;
        if committed.iter().all(|(_, c)| c.is_empty()) {
            return Ok(());
        }
        if !self.seq_reserved_for(*seq) {
            // Once per `SEQ_BLOCK` numbers: the next ones are made durable before use.
            self.reserve_seq(*seq)?;
        }
        let numbers = (commit_first, *seq);
        self.persist_and_publish(&batch, record, &committed, numbers, how.hard, wakes)
    }

    /// The tail of every commit, local or replicated: makes a numbered commit (changes
    /// `numbers.0..=numbers.1`) durable, then hands it to the feeds, which show it at once
    /// (soft) or once it is on disk (hard).
    fn persist_and_publish(
        &self,
        batch: &WriteBatch,
        record: Option<Record>,
        committed: &[(Arc<TableState>, Vec<Committed>)],
        (first, last): (u64, u64),
        hard: bool,
        wakes: &mut Vec<std::task::Waker>,
    ) -> Result<()> {
        self.persist(batch, record, committed, first, last)?;
        self.visibility.committed(last, hard);
        for (table, changes) in committed {
            table
                .writes
                .fetch_add(changes.len() as u64, Ordering::Relaxed);
        }
        if let Some(sink) = self.sink().filter(|s| !s.is_idle()) {
            sink.publish(committed, wakes);
        }
        Ok(())
    }

    /// Stages a chunk's writes in order; an all-or-nothing chunk with a refused write fails
    /// whole with its first error (nothing is written).
    fn stage_all(
        &self,
        ops: Vec<(Arc<TableState>, WriteOp)>,
        how: Commit,
        result: &mut WriteResult,
    ) -> Result<Staging> {
        let errors_before = result.errors;
        let mut staging = Staging::default();
        for (table, op) in ops {
            self.stage(&mut staging, table, op, how, result)?;
        }
        if how.all_or_nothing && result.errors > errors_before {
            return Err(result
                .first_error
                .clone()
                .unwrap_or_else(|| Error::query("a write of the batch failed")));
        }
        Ok(staging)
    }

    /// Stages one write against the key's current document (as stored, or as staged by an
    /// earlier write of the chunk), counting what it does in `result`.
    fn stage(
        &self,
        staging: &mut Staging,
        table: Arc<TableState>,
        op: WriteOp,
        how: Commit,
        result: &mut WriteResult,
    ) -> Result<()> {
        if table.is_dropped() {
            return Err(Error::NoSuchTable(table.name.clone()));
        }
        if let WriteOp::Insert { doc, .. } | WriteOp::Replace { doc, .. } = &op {
            // Bounds the index work done under the commit lock (updates: `Patch::apply`).
            if let Err(e) = table.check_index_limits(doc) {
                result.error(e);
                return Ok(());
            }
        }
        let id = (staging.slot(&table), op.row_key(&table)?);
        let current = staging.current(&table, &id)?;
        let Some(next) = self.next_value(&table, op, &current, result) else {
            return Ok(()); // refused or skipped: counted, nothing to write
        };
        if same(&current, &next) {
            return Ok(()); // unchanged: counted, nothing to write
        }
        if how.return_changes {
            result.changes.push(ChangePair {
                old_val: current.as_deref().cloned(),
                new_val: next.as_deref().cloned(),
            });
        }
        staging.set(&id, next);
        Ok(())
    }

    /// What one write makes of the current document (`None` inside: deleted), counted in
    /// `result`; `None` when the write is refused (an error counted) or skipped (no document).
    fn next_value(
        &self,
        table: &TableState,
        op: WriteOp,
        current: &Option<Arc<Value>>,
        result: &mut WriteResult,
    ) -> Option<Option<Arc<Value>>> {
        let Some(cur) = current else {
            return match op {
                WriteOp::Insert { doc, .. } => {
                    result.inserted += 1;
                    Some(Some(Arc::new(doc)))
                }
                _ => {
                    result.skipped += 1;
                    None
                }
            };
        };
        let new = match op {
            WriteOp::Insert { doc, conflict } => match conflict {
                OnConflict::Resolve(f) => self
                    .closures
                    .run(|| super::patch::resolve(table, cur, &doc, &*f)),
                OnConflict::Policy(Conflict::Error) => Err(Error::KeyConflict {
                    table: table.name.clone(),
                    key: doc.get(&table.primary_key).cloned().unwrap_or(Value::Null),
                }),
                OnConflict::Policy(Conflict::Replace) => Ok(doc),
                OnConflict::Policy(Conflict::Update) => Patch::merge(doc).apply(table, cur),
            },
            WriteOp::Update { patch, .. } => self.apply(&patch, table, cur),
            WriteOp::Replace { doc, .. } => Ok(doc),
            WriteOp::ReplaceWith { f, .. } => self
                .closures
                .run(|| super::patch::replace_with(table, cur, &*f)),
            WriteOp::Delete { .. } => {
                result.deleted += 1;
                return Some(None);
            }
        };
        match new {
            Ok(new) => Some(count_replace(result, cur, new)),
            Err(e) => {
                result.error(e);
                None
            }
        }
    }

    /// Numbers the chunk's net changes in commit order (after `seq`, which ends at the
    /// last), and builds the storage batch of their documents and index entries and the
    /// change log's record of them. Keys whose writes cancel out get no number.
    #[allow(clippy::type_complexity)]
    fn number(
        &self,
        staged: Vec<(Arc<TableState>, Vec<u8>, Staged)>,
        seq: &mut u64,
    ) -> Result<(
        WriteBatch,
        Option<Record>,
        Vec<(Arc<TableState>, Vec<Committed>)>,
    )> {
        let mut batch = WriteBatch::default();
        // The change log's record of this commit, numbered from its first change.
        let first = *seq + 1;
        let mut record = self.changelog.as_ref().map(|log| log.record(first));
        let mut committed: Vec<(Arc<TableState>, Vec<Committed>)> = Vec::new();
        for (table, key, (old, new, rewritten)) in staged {
            // Each write was already compared with the value it replaced; only a key written
            // twice can come back to where it started.
            if same(&old, &new) || (rewritten && identical_staged(&old, &new)) {
                continue;
            }
            *seq += 1;
            let b = new.as_deref().map(serde_json::to_vec).transpose()?;
            if let Some(record) = &mut record {
                // The stored bytes go into the log as they are (serialized once).
                record.push(*seq, &table.name, &key, old.as_deref(), b.as_deref())?;
            }
            match b {
                Some(b) => batch.insert(&table.docs, key.clone(), b),
                None => batch.remove(&table.docs, key.clone()),
            }
            index_entries(&mut batch, &table, &key, old.as_deref(), new.as_deref());
            let change = Committed {
                seq: *seq,
                commit: first,
                key,
                old,
                new,
            };
            match committed.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &table)) {
                Some((_, changes)) => changes.push(change),
                None => committed.push((table, vec![change])),
            }
        }
        Ok((batch, record, committed))
    }

    /// Makes a numbered chunk durable: its change-log record first (it redoes the documents
    /// if the engine loses them in a crash, see `changelog`), then the storage batch.
    fn persist(
        &self,
        batch: &WriteBatch,
        record: Option<Record>,
        committed: &[(Arc<TableState>, Vec<Committed>)],
        first: u64,
        last: u64,
    ) -> Result<()> {
        let (Some(log), Some(record)) = (&self.changelog, record) else {
            return self.storage.apply(batch);
        };
        log.write(&self.storage, record)?;
        if let Err(e) = self.storage.apply(batch) {
            // The commit did not happen: neither may its record.
            log.abort(first, last);
            return Err(e);
        }
        // Resuming feeds read the newest changes from the feed layer's own tail (kept while
        // feeds are open, and a while after). Cursors come only from feeds: with no sink,
        // none was handed out.
        if log.resumable() {
            if let Some(sink) = self.sink() {
                sink.remember(committed);
            }
        }
        let n = committed.iter().map(|(_, c)| c.len() as u64).sum();
        // Closing and trimming segments is housekeeping: the commit is done, and a failure is
        // retried with the next one.
        if let Err(e) = log.committed(&self.storage, n) {
            tracing::warn!("the change log could not close or trim a segment: {e}");
        }
        Ok(())
    }
}

/// A change of a commit made in the database of record: table, key, document before (as
/// the commit saw it) and after.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
pub(crate) type ReplicatedChange = (
    Arc<TableState>,
    Vec<u8>,
    Option<Arc<Value>>,
    Option<Arc<Value>>,
);

/// What a write staged for a backend: the keys it changes, and the keys it read and left
/// as they were (skipped, unchanged or refused), each with its document as read, which the
/// backend checks are still so at commit: a write's outcome is decided against the rows as
/// they are at commit, also where it writes nothing.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
pub(crate) struct BackendStaging {
    pub changes: Vec<StagedChange>,
    pub checks: Vec<StagedCheck>,
}

/// A key a write read and left as it was: its table, key and document as read.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
pub(crate) type StagedCheck = (Arc<TableState>, Vec<u8>, Option<Arc<Value>>);

/// A key a write staged for a backend: its table, key, document before (as this store has
/// it) and after.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
pub(crate) type StagedChange = (
    Arc<TableState>,
    Vec<u8>,
    Option<Arc<Value>>,
    Option<Arc<Value>>,
);

// Used by the PostgreSQL backend only.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl DbInner {
    /// For a backend: stages `ops` (one chunk) against this store under the commit lock, as
    /// a local commit would, and returns the net changes in first-touch order (and the keys
    /// read but left as they were) without writing them (the backend commits them; [`DbInner::apply_replicated`] writes them
    /// here once they are committed).
    pub(crate) fn stage_for_backend(
        &self,
        ops: impl FnOnce() -> Result<Vec<(Arc<TableState>, WriteOp)>>,
        how: Commit,
        result: &mut WriteResult,
    ) -> Result<BackendStaging> {
        super::check_not_in_patch()?;
        let _seq = self.lock_for_commit()?;
        let staging = self.stage_all(ops()?, how, result)?;
        let mut changes = Vec::new();
        let mut checks = Vec::new();
        for (t, k, (old, new, rewritten)) in staging.order_by_first_touch() {
            if same(&old, &new) || (rewritten && identical_staged(&old, &new)) {
                checks.push((t, k, old));
            } else {
                changes.push((t, k, old, new));
            }
        }
        Ok(BackendStaging { changes, checks })
    }

    /// Writes a commit of the database of record into this store and publishes it to the
    /// feeds, numbered from `first` (its changes get `first`, `first + 1`, ...; `first` must
    /// be past every number used so far). Each change's `old` must be what the store holds:
    /// anything else means the store is not the replica it should be, and is an error
    /// (nothing is written).
    pub(crate) fn apply_replicated(
        &self,
        changes: Vec<ReplicatedChange>,
        first: u64,
    ) -> Result<()> {
        let mut wakes = Vec::new();
        {
            let mut seq = self.writer.lock();
            if first <= *seq {
                return Err(Error::storage(format!(
                    "a replicated commit at {first:x} is not after the last one ({:x})",
                    *seq
                )));
            }
            let mut staged = Vec::with_capacity(changes.len());
            for (table, key, expected, new) in changes {
                if table.is_dropped() {
                    return Err(Error::NoSuchTable(table.name.clone()));
                }
                let old = table.get_doc(&key)?.map(Arc::new);
                if old.as_deref() != expected.as_deref() {
                    return Err(Error::storage(format!(
                        "this process's replica of table `{}` does not hold what a commit \
                         changed (a write made outside Remodel?)",
                        table.name
                    )));
                }
                staged.push((table, key, (old, new, false)));
            }
            *seq = first - 1;
            let (batch, record, committed) = self.number(staged, &mut seq)?;
            if !committed.iter().all(|(_, c)| c.is_empty()) {
                let numbers = (first, *seq);
                self.persist_and_publish(&batch, record, &committed, numbers, false, &mut wakes)?;
            }
        }
        wakes.drain(..).for_each(std::task::Waker::wake);
        Ok(())
    }

    /// Writes documents into an empty table of a replica that is being loaded (with their
    /// index entries, in one storage batch): not a commit, so not numbered, logged or
    /// published. The caller loads before anything can read or watch the table.
    pub(crate) fn load_rows(&self, table: &TableState, rows: Vec<(Vec<u8>, Value)>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, doc) in rows {
            index_entries(&mut batch, table, &key, None, Some(&doc));
            batch.insert(&table.docs, key, serde_json::to_vec(&doc)?);
        }
        self.storage.apply(&batch)
    }

    /// Moves the commit numbering to after `last` (a replica starting at a position of the
    /// database of record). Numbers never go back.
    pub(crate) fn advance_seq(&self, last: u64) {
        let mut seq = self.writer.lock();
        *seq = (*seq).max(last);
        self.visibility.committed(*seq, false);
        // A replica's numbers are the database of record's positions: nothing to reserve.
        self.seq_reserved.store(u64::MAX, Ordering::Release);
    }
}

/// Adds to `batch` the index entries a document's change from `old` to `new` removes and
/// adds, in every index of `table`.
fn index_entries(
    batch: &mut WriteBatch,
    table: &TableState,
    key: &[u8],
    old: Option<&Value>,
    new: Option<&Value>,
) {
    for ix in table.indexes.read().iter() {
        let before = old.map(|d| ix.compiled.keys(d, key)).unwrap_or_default();
        let after = new.map(|d| ix.compiled.keys(d, key)).unwrap_or_default();
        for k in &before {
            if after.binary_search(k).is_err() {
                batch.remove(&ix.tree, k.clone());
            }
        }
        for k in after {
            if before.binary_search(&k).is_err() {
                batch.insert(&ix.tree, k, key.to_vec());
            }
        }
    }
}

/// The rows of a batch as its writes so far leave them, for the selections a later step of
/// the same batch makes (a cascading delete selects the rows that refer to what it deletes
/// as the batch has them then: a child the batch moved away earlier is not touched, one it
/// moved onto the deleted row is). Each write is applied as staging will apply it, against
/// the same current rows; one that staging would refuse changes nothing here (staging then
/// refuses it, and the batch fails).
pub(crate) struct Preview {
    db: Arc<DbInner>,
    staging: Staging,
}

impl Preview {
    pub(crate) fn new(db: &Database) -> Self {
        Preview {
            db: db.inner.clone(),
            staging: Staging::default(),
        }
    }

    /// Applies one write of the batch (in the batch's order).
    pub(crate) fn apply(&mut self, table: &Arc<TableState>, op: &WriteOp) -> Result<()> {
        let Ok(key) = op.row_key(table) else {
            // Staging refuses it the same way.
            return Ok(());
        };
        let id = (self.staging.slot(table), key);
        let current = self.staging.current(table, &id)?;
        let mut scratch = WriteResult::default();
        if let Some(next) = self
            .db
            .next_value(table, op.clone(), &current, &mut scratch)
        {
            self.staging.set(&id, next);
        }
        Ok(())
    }

    /// The rows of `table` the batch has written so far, each as the batch leaves it
    /// (`None`: deleted).
    pub(crate) fn written(&self, table: &TableState) -> Vec<(&[u8], Option<&Arc<Value>>)> {
        let Some(slot) = self
            .staging
            .tables
            .iter()
            .position(|t| t.name == table.name)
        else {
            return Vec::new();
        };
        self.staging
            .order
            .iter()
            .filter(|id| id.0 == slot)
            .filter_map(|id| {
                let (_, now, _) = self.staging.staged.get(id)?;
                Some((id.1.as_slice(), now.as_ref()))
            })
            .collect()
    }
}

/// The keys a chunk touched, per table: each one's document before the chunk and as staged
/// by it, in the order they were first touched.
#[derive(Default)]
struct Staging {
    tables: Vec<Arc<TableState>>,
    staged: HashMap<(usize, Vec<u8>), Staged>,
    order: Vec<(usize, Vec<u8>)>,
}

impl Staging {
    /// The table's slot (tables are few: a linear look beats hashing).
    fn slot(&mut self, table: &Arc<TableState>) -> usize {
        match self.tables.iter().position(|t| Arc::ptr_eq(t, table)) {
            Some(i) => i,
            None => {
                self.tables.push(table.clone());
                self.tables.len() - 1
            }
        }
    }

    /// The key's document as the chunk has it so far (read from storage on first touch).
    fn current(&mut self, table: &TableState, id: &(usize, Vec<u8>)) -> Result<Option<Arc<Value>>> {
        if let Some((_, new, _)) = self.staged.get(id) {
            return Ok(new.clone());
        }
        let before = table.get_doc(&id.1)?.map(Arc::new);
        self.staged
            .insert(id.clone(), (before.clone(), before.clone(), false));
        self.order.push(id.clone());
        Ok(before)
    }

    /// Stages the key's new document.
    fn set(&mut self, id: &(usize, Vec<u8>), next: Option<Arc<Value>>) {
        let entry = self.staged.get_mut(id).expect("read before it is set");
        entry.2 = !same(&entry.0, &entry.1); // a second change of this key
        entry.1 = next;
    }

    /// Every touched key with its table and states, in first-touch order.
    fn order_by_first_touch(mut self) -> Vec<(Arc<TableState>, Vec<u8>, Staged)> {
        let order = std::mem::take(&mut self.order);
        order
            .into_iter()
            .map(|id| {
                let state = self
                    .staged
                    .remove(&id)
                    .expect("every ordered key is staged");
                (self.tables[id.0].clone(), id.1, state)
            })
            .collect()
    }
}

/// How a chunk commits.
#[derive(Clone, Copy)]
pub(crate) struct Commit {
    /// Collect the `{old_val, new_val}` of each write.
    pub return_changes: bool,
    /// Write nothing if any write of the chunk fails (conflict, bad patch).
    pub all_or_nothing: bool,
    /// A hard-durability write: feeds show it once it is on disk.
    pub hard: bool,
}

pub(crate) use super::index::MAX_COMMIT_INDEX_WORK;

/// About how many index entries a write computes (updates: as many as the table has indexes;
/// their documents are known only under the lock).
pub(crate) fn op_index_work(table: &TableState, op: &WriteOp) -> usize {
    match op {
        WriteOp::Insert { doc, .. } | WriteOp::Replace { doc, .. } => table.index_work(doc),
        WriteOp::Update { .. } | WriteOp::ReplaceWith { .. } | WriteOp::Delete { .. } => {
            table.indexes.read().len()
        }
    }
}

/// Whether two staged values are the same document, bit for bit (see `value::identical`).
fn identical_staged(a: &Option<Arc<Value>>, b: &Option<Arc<Value>>) -> bool {
    crate::value::identical_rows(a.as_ref(), b.as_ref())
}

/// Whether two staged values are the same allocation (or both absent).
fn same(a: &Option<Arc<Value>>, b: &Option<Arc<Value>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Counts a replace of `cur` by `new`; returns the staged value (`cur` itself when unchanged,
/// so that the caller sees that nothing changed).
fn count_replace(result: &mut WriteResult, cur: &Arc<Value>, new: Value) -> Option<Arc<Value>> {
    if crate::value::identical(cur, &new) {
        result.unchanged += 1;
        Some(cur.clone())
    } else {
        result.replaced += 1;
        Some(Arc::new(new))
    }
}

impl Database {
    /// Validates documents for insertion: objects only, with a valid key (generated when
    /// missing). Nothing is written when one of them is invalid.
    pub(crate) fn prepare_inserts(
        &self,
        table: &TableState,
        docs: Vec<Value>,
        conflict: OnConflict,
        generated: &mut Vec<Value>,
    ) -> Result<Vec<WriteOp>> {
        // The depth limit first: nothing else may walk (print, clone) a too-deep document.
        if let Some(i) = docs
            .iter()
            .position(|d| crate::value::deeper_than(d, crate::value::MAX_DEPTH))
        {
            docs.into_iter().for_each(crate::value::drop_deep);
            return Err(crate::value::too_deep(&format!("document #{i}")));
        }
        docs.into_iter()
            .enumerate()
            .map(|(i, mut doc)| {
                let Value::Object(map) = &mut doc else {
                    return Err(Error::InvalidDocument {
                        reason: format!("document #{i} is not a JSON object: {doc}"),
                    });
                };
                match map.get(&table.primary_key) {
                    Some(k) => {
                        encode_key(k)?;
                    }
                    None => {
                        let id = Value::String(uuid::Uuid::new_v4().to_string());
                        map.insert(table.primary_key.clone(), id.clone());
                        generated.push(id);
                    }
                }
                Ok(WriteOp::Insert {
                    doc,
                    conflict: conflict.clone(),
                })
            })
            .collect()
    }

    /// Runs a write and waits for the requested durability. Large writes run on a blocking
    /// thread so that they do not hold up the async workers.
    pub(crate) async fn run_write(
        &self,
        table: Arc<TableState>,
        ops: Vec<WriteOp>,
        return_changes: bool,
        durability: Option<Durability>,
    ) -> Result<WriteResult> {
        // Here too: a large write goes on to a blocking thread, where the check would not see
        // the closure's thread.
        super::check_not_in_patch()?;
        let hard = self.is_hard(durability);
        if let Some(backend) = self.backend() {
            let how = Commit {
                return_changes,
                all_or_nothing: false,
                hard,
            };
            let job = super::backend::Job::Keys { table, ops };
            return backend.commit(self.clone(), job, how).await;
        }
        // A small write commits in place when the commit lock is free; a large one, or one
        // that would wait for the lock, runs on a blocking thread: an async worker never
        // waits on the commit lock.
        // Small also in index work: a document with a large multi-index array is computed off
        // the workers, in commits bounded by MAX_COMMIT_INDEX_WORK.
        let small = ops.len() <= 64
            && ops
                .iter()
                .map(|op| op_index_work(&table, op))
                .sum::<usize>()
                <= 1024;
        let ops = match small {
            true => {
                let result = match self.inner.try_commit_now(&table, ops, return_changes, hard) {
                    Ok(done) => done,
                    // The lock is taken: its holder commits this write after its own.
                    Err(ops) => self.inner.hand_off(table, ops, return_changes, hard).await,
                };
                let result = result?;
                self.settle(durability).await?;
                return Ok(result);
            }
            false => ops,
        };
        let inner = self.inner.clone();
        let result = super::spawn_write(move |abandoned| {
            inner.commit(&table, ops, return_changes, hard, abandoned)
        })
        .await;
        let result = result?;
        self.settle(durability).await?;
        Ok(result)
    }

    /// Waits for the durability a write asked for (or the database default).
    pub(crate) async fn settle(&self, durability: Option<Durability>) -> Result<()> {
        if self.is_hard(durability) {
            self.inner.flush_committed().await?;
        } else {
            // A soft write may complete without ever waiting: let a loop of them give the
            // scheduler its turn once the task's budget is spent (timers, other tasks).
            tokio::task::coop::consume_budget().await;
        }
        Ok(())
    }

    /// Whether a write with this durability (or the database default) is a hard one.
    pub(crate) fn is_hard(&self, durability: Option<Durability>) -> bool {
        durability.unwrap_or(self.inner.config.durability) == Durability::Hard
    }
}
