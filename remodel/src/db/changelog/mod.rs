//! The durable change log: every committed change (table, key, document before and after),
//! in commit order. Feeds resume from it (`Changes::resume_from`): a client that saw every
//! change up to a cursor reads exactly the ones after it, across disconnects and restarts.
//!
//! # Where it is kept
//!
//! Not in the storage engine: a sled key costs 3–6 µs to insert (a node copy, and a split of
//! the leaf every few keys), as much as the document write itself, which halved the insert
//! rate. The log is a directory of segment files next to the engine's
//! (`<db>/changelog/<first seq, 16 hex digits>.log`), each made with its space reserved and
//! mapped into memory. Each commit is one framed record (length, checksum, body) copied into
//! the open segment **before** the commit's documents go to the engine (no system call per
//! commit). That makes the log a redo log for the documents:
//!
//! - Once copied, the record is in the kernel's page cache, so a killed process (`kill -9`)
//!   loses no record whose documents it had handed to the engine; the engine may lose its
//!   newest writes, and opening the database re-applies the records after the last
//!   *checkpoint* (a sequence number the engine's own log says all earlier documents reached:
//!   written to the engine after them, at each flush of the engine, once per segment, at
//!   table creation and when the log closes) to the documents and their index entries. So
//!   after a crash the log and the documents agree: what a feed delivered is in both.
//! - A commit whose documents fail to write gets an *abort* record right after its own, and
//!   is never replayed or redone.
//! - A hard write waits for an `fsync` of the open segment only (`group_flush.rs`): once its
//!   record is on disk, so is the write, whatever the engine has written. Every flush of the
//!   storage (its timer, `close`, DDL) `fsync`s the open segment first, so the log is never
//!   behind the engine's files on disk.
//! - A torn record at the end of the newest segment (the process died while copying it) is
//!   cut off on open: its documents were never written.
//!
//! # Format
//!
//! A segment starts with a header (`HEADER` bytes: a magic, its first change number, and how
//! many of its bytes, up to which change, were known to be on disk: rewritten after each
//! `fsync` of it), then its records. A closed segment ends with a *seal* record naming the
//! segment the log went on in. This is the log's second format: a log of the first (no
//! header, no seal) is redone on open and then started over (its cursors expire).
//!
//! # Damage
//!
//! The log is checked when it is opened, so that a damaged one never reads as a shorter one
//! (which would give resumed feeds a silent gap, or lose writes only the log held):
//!
//! - every closed segment must run up to its seal, and the seal must name the next segment
//!   file (so a truncated, zeroed or damaged closed segment, and a missing one, are seen);
//! - the open segment must hold at least what was known to be on disk: what its header says
//!   (rewritten after each sync) and what the engine was told at its last flush and when the
//!   log was last closed (`SYNCED_KEY`);
//! - files named like segments but outside the chain of seals (strays) are ignored, as are
//!   files with other names.
//!
//! What is unreadable is a range of change numbers that may be lost. If a part of it is past
//! the checkpoint (the engine may not have those documents: the log is needed to redo them),
//! the database does not open: [`Error::Damaged`], naming the damage and how to open it
//! anyway. Otherwise only resuming is affected: the floor is raised past the damage (its
//! segments removed), or the log starts over when the damage is in its newest segment, and a
//! cursor from before it gets [`Error::CursorExpired`], never a gap. A segment damaged while
//! the database is open is seen when a feed resumes across it (`CursorExpired` as well).
//!
//! What cannot be seen: damage to the newest records of the open segment that no `fsync`
//! had covered before a crash (it reads as a record torn by the crash, and is cut off as one;
//! those are soft writes the crash could have lost anyway), and damage to the header together
//! with the records of a segment created after the engine's last flush before a crash.
//!
//! # Redo only
//!
//! A database whose writes are hard by default keeps the log even without a retention
//! configured ([`ChangeLog::open`] with `None`): segments of 1 MiB, no resuming, and closed
//! segments removed once there are a few.
//!
//! # Retention
//!
//! By count and/or age ([`ChangeLogRetention`]), a whole segment at a time: a segment holds a
//! sixteenth of the count limit (at least 64 changes) and is closed early when its first change
//! is older than an eighth of the age limit; the oldest segment is deleted once the others
//! hold the count limit, or once its newest change is past the age limit. A segment goes only
//! once the checkpoint past it is on disk (a flush of the engine ended after it was written:
//! usually the timer's, at a later commit), and before it goes the new floor is written to the
//! engine: every change numbered the floor or above is in the log, and a cursor below it has
//! expired.
//!
//! # Reading
//!
//! [`ChangeLog::for_each_from`] reads the segments back (as written when it starts). The log keeps
//! records only: the newest changes are also kept in memory by the feed layer, as the items
//! feeds deliver (told of every commit through [`super::ChangeSink::remember`]), and a
//! resuming feed reads them there first.
//!
//! # Parts
//!
//! - `record.rs`: the record format (framing, checksums, a segment's header, reading records
//!   back): pure functions of bytes.
//! - `segment.rs`: the segment files and their memory mapping (all of the log's `unsafe`).
//! - `recovery.rs`: examining the log on open, carrying out what it comes to, and redoing
//!   into storage what the engine lost.
//! - here: the log itself (the write path, rolls, retention, reading back).

mod record;
mod recovery;
mod segment;

pub(crate) use record::Record;

use super::write::Committed;
use crate::storage::{Storage, Tree, WriteBatch};
use crate::{Error, Result};
use parking_lot::Mutex;
use record::{
    abort_record, damaged, parse, parse_segment, seal_record, too_large, Header, Synced,
    ABORT_BYTES, FRAME, HEADER, MAX_FIELD, SEAL_BYTES,
};
use recovery::Opened;
use segment::{
    create_segment, list_segments, remove_segments, reserve, segment_name, sync_segment, Mapped,
};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LOG_META_TREE: &str = "__remodel_changelog_meta";
/// The floor (see the module doc), big-endian: every change numbered this or above is in
/// the log. Absent: the log was off in the last run (its files are stale).
const FLOOR_KEY: &[u8] = b"floor";
/// The log's format (see the module doc), big-endian, written with the floor. Absent with a
/// floor: a log of the first format.
const FORMAT_KEY: &[u8] = b"format";
const FORMAT: u64 = 2;
/// The redo checkpoint, big-endian: the documents of every change numbered this or below
/// reached the engine (see the module doc).
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// What the engine knows of the open segment (see [`Synced`]).
const SYNCED_KEY: &[u8] = b"synced";
/// Where the creation numbers of tables are kept in the meta tree.
const CREATED_PREFIX: &[u8] = b"created/";
/// The log's directory inside the database's.
const DIR: &str = "changelog";

/// A redo-only log (see [`ChangeLog::open`]): segments of 1 MiB (it needs no more than a
/// few on disk), closed by size only (no limit of entries), and the closed ones removed once
/// there are `REDO_CLOSED_KEPT` (and their checkpoint is on disk, see `committed`).
const REDO_SEGMENT_BYTES: usize = 1 << 20;
const REDO_SEGMENT_ENTRIES: u64 = u64::MAX;
const REDO_CLOSED_KEPT: usize = 4;

/// The `checkpoint_epoch` of a segment whose checkpoint could not be written.
const NO_CHECKPOINT: u64 = u64::MAX;

/// Segments past the retention that wait for the engine's timer flush before they go (see
/// [`ChangeLog::committed`]); at this many, the commit flushes instead.
const MAX_UNFLUSHED_DROPS: usize = 16;

/// How much of the change log is kept (see [`crate::Config::change_log`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeLogRetention {
    /// Keep at most this many changes (at least 1); `None`: no count limit. Changes go a
    /// segment (a sixteenth of this) at a time, so up to that many more are kept.
    pub max_changes: Option<u64>,
    /// Keep changes at most this old; `None`: no age limit.
    pub max_age: Option<Duration>,
}

impl Default for ChangeLogRetention {
    /// The last 100,000 changes, of at most the last 24 hours.
    fn default() -> Self {
        ChangeLogRetention {
            max_changes: Some(100_000),
            max_age: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::storage_from(format!("the change log could not {what}: {e}"), e)
}

/// A segment file: changes numbered from `first` on (up to the next segment's first).
struct Segment {
    first: u64,
    entries: u64,
    /// The engine's flush epoch right after the checkpoint before `first` was written (when
    /// this segment was opened; 0 for a segment found on open, whose checkpoint the engine
    /// recovered): the segments before this one may go once a later flush ended (see
    /// [`ChangeLog::committed`]).
    checkpoint_epoch: u64,
    /// Timestamps of its first and last commit (0: none yet).
    first_ms: u64,
    last_ms: u64,
}

impl Segment {
    fn new(first: u64, checkpoint_epoch: u64) -> Self {
        Segment {
            first,
            entries: 0,
            checkpoint_epoch,
            first_ms: 0,
            last_ms: 0,
        }
    }
}

/// Where the open segment was at some moment: its first `len` bytes held the changes up to
/// `seq`.
#[derive(Clone, Copy)]
struct Position {
    first: u64,
    len: usize,
    seq: u64,
}

/// The open segment and the list of all of them (under the commit lock).
struct Writer {
    /// The open segment, mapped.
    map: Mapped,
    /// A handle on the open segment, for `fsync` without holding the writer.
    sync: Arc<File>,
    /// Bytes of the open segment in use: its header and valid records.
    len: usize,
    /// Oldest first; the last one is open.
    segments: VecDeque<Segment>,
    total: u64,
    /// Set when an abort record could not be written: the log no longer says exactly what
    /// happened, so commits stop.
    broken: Option<String>,
    /// The timestamp of the last record written (its commit's time).
    last_ms: u64,
    /// The last change number a record used (aborted commits' included).
    last_seq: u64,
    /// Every commit up to this change number has its documents written (or was aborted):
    /// what a checkpoint may say (see [`ChangeLog::recover`]). Set once a commit is done
    /// (`committed`), and by `recover`.
    applied: u64,
    /// The highest checkpoint written to the engine (it never goes back).
    checkpoint: u64,
    /// The open segment's bytes known to be on disk (what its header says).
    durable: usize,
    /// What the engine was last told of the open segment (see [`Synced`]).
    told: Synced,
    /// The log's tree in the engine (checkpoint, what it was told).
    meta: Tree,
}

impl Writer {
    /// Makes the open segment `cap` bytes long (space reserved) and maps all of it; the new
    /// mapping replaces the old one once it exists.
    fn grow(&mut self, cap: usize) -> Result<()> {
        reserve(&self.sync, cap)?;
        self.map = Mapped::new(&self.sync, cap)?;
        Ok(())
    }

    fn open_first(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.first)
    }

    /// Where the open segment is now (taken before an `fsync` that covers it).
    fn position(&self) -> Position {
        Position {
            first: self.open_first(),
            len: self.len,
            seq: self.last_seq,
        }
    }

    /// After an `fsync` of the open segment that started at `at`: its header says so (read
    /// on open, see `examine`). A segment closed meanwhile is left as it is (its seal says
    /// more).
    fn synced(&mut self, at: Position) {
        if at.first == self.open_first() && at.len > self.durable {
            self.durable = at.len;
            let header = Header {
                first: at.first,
                durable_len: at.len as u64,
                durable_seq: at.seq,
            };
            self.map.write_at(0, &header.encode());
        }
    }

    /// Writes checkpoint `upto` to the engine, unless a higher one was written (a checkpoint
    /// never goes back: the segments before a durable one may be gone).
    fn set_checkpoint(&mut self, storage: &Storage, upto: u64) -> Result<()> {
        if upto <= self.checkpoint {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.insert(
            &self.meta,
            CHECKPOINT_KEY.to_vec(),
            upto.to_be_bytes().to_vec(),
        );
        storage.apply(&batch)?;
        self.checkpoint = upto;
        Ok(())
    }

    /// What a flush of the engine makes durable once the open segment is synced up to `at`
    /// (called by the flush hook, before the engine flushes): the checkpoint of every commit
    /// that is over, and where the segment was on disk.
    fn record_flush(&mut self, at: Position) -> Result<()> {
        self.synced(at);
        if self.applied > self.checkpoint {
            self.meta
                .write_in_flush(CHECKPOINT_KEY, &self.applied.to_be_bytes())?;
            self.checkpoint = self.applied;
        }
        let told = Synced {
            first: at.first,
            len: at.len as u64,
            seq: at.seq,
            closed: false,
        };
        if (told.first, told.len) > (self.told.first, self.told.len) || self.told.closed {
            self.meta.write_in_flush(SYNCED_KEY, &told.encode())?;
            self.told = told;
        }
        Ok(())
    }
}

/// Bytes a segment file is made with (more when one commit's record is larger).
const SEGMENT_BYTES: usize = 4 << 20;

/// A change read back from the log (see [`ChangeLog::for_each_from`]).
pub(crate) struct Logged<'a> {
    pub seq: u64,
    /// The number of its commit's first change.
    pub commit: u64,
    pub key: &'a [u8],
    pub old: Option<&'a Arc<Value>>,
    pub new: Option<&'a Arc<Value>>,
}

impl Logged<'_> {
    /// The change as the commit engine handed it to the feeds.
    pub(crate) fn committed(&self) -> Committed {
        Committed {
            seq: self.seq,
            commit: self.commit,
            key: self.key.to_vec(),
            old: self.old.cloned(),
            new: self.new.cloned(),
        }
    }
}

/// Record buffers up to this size are kept for the next commit.
const SPARE_MAX: usize = 1 << 16;

/// An open change log.
pub(crate) struct ChangeLog {
    dir: PathBuf,
    meta: Tree,
    /// The storage the log redoes into (kept to say, when the log closes, how far it went).
    storage: Storage,
    /// Kept for feeds to resume from (else only as a redo log, see [`ChangeLog::open`]).
    resumable: bool,
    /// The size a segment file is made with.
    segment_bytes: usize,
    retention: ChangeLogRetention,
    /// Changes per segment.
    segment_entries: u64,
    /// Close a segment whose first change is this old (ms), so that age retention has
    /// segments to drop.
    segment_ms: Option<u64>,
    /// Every change numbered this or above is in the log.
    floor: AtomicU64,
    /// Segments of the first format: redone by [`ChangeLog::recover`], then removed.
    legacy: Mutex<Option<Vec<u64>>>,
    writer: Arc<Mutex<Writer>>,
    /// The buffer of the last record, reused by the next one.
    spare: Mutex<Vec<u8>>,
    /// Tables created while the log was on: the last sequence number before each was made.
    created: Mutex<HashMap<String, u64>>,
}

fn read_be(meta: &Tree, key: &[u8]) -> Result<Option<u64>> {
    match meta.get(key)? {
        Some(b) => Ok(Some(u64::from_be_bytes(
            (&*b).try_into().map_err(|_| damaged())?,
        ))),
        None => Ok(None),
    }
}

/// The tables created while the log was on, each with the last change before it was made.
fn created_tables(meta: &Tree) -> Result<HashMap<String, u64>> {
    let mut created = HashMap::new();
    for entry in meta.scan_prefix(CREATED_PREFIX) {
        let (k, v) = entry?;
        let name = String::from_utf8_lossy(&k[CREATED_PREFIX.len()..]).into_owned();
        let at = u64::from_be_bytes((&*v).try_into().map_err(|_| damaged())?);
        created.insert(name, at);
    }
    Ok(created)
}

/// What a retention (or none: a redo log only) makes of the log's segments.
struct Shape {
    resumable: bool,
    /// The size a segment file is made with.
    segment_bytes: usize,
    retention: ChangeLogRetention,
    /// Changes per segment.
    segment_entries: u64,
    /// Close a segment whose first change is this old (ms).
    segment_ms: Option<u64>,
}

impl Shape {
    fn new(retention: Option<ChangeLogRetention>) -> Self {
        let resumable = retention.is_some();
        let retention = retention.unwrap_or(ChangeLogRetention {
            max_changes: None,
            max_age: None,
        });
        Shape {
            resumable,
            segment_bytes: match resumable {
                true => SEGMENT_BYTES,
                false => REDO_SEGMENT_BYTES,
            },
            retention,
            segment_entries: match resumable {
                true => retention
                    .max_changes
                    .map_or(16_384, |m| (m / 16).clamp(64, 65_536)),
                false => REDO_SEGMENT_ENTRIES,
            },
            segment_ms: retention.max_age.map(|a| (millis(a) / 8).max(1)),
        }
    }
}

/// `d` in milliseconds, saturating: an age beyond u64 milliseconds keeps everything (a
/// wrapping cast would make it a tiny age that deletes the history meant to be kept).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ChangeLog {
    /// Opens the log kept in `db_dir` (the database's directory). `seq` is the last sequence
    /// number of the database: when the log was not on in the previous run (or never),
    /// changes up to there are not in it, so the floor starts after it (and the files of an
    /// earlier run are removed). The records after the checkpoint are redone by
    /// [`ChangeLog::recover`], once the tables are loaded.
    ///
    /// The log is checked first (see the module doc, "Damage"): one damaged where it may
    /// hold writes the engine does not have is refused with [`Error::Damaged`]; one damaged
    /// only for resuming opens from past the damage.
    ///
    /// `retention: None` opens it as a redo log only (a database whose writes are hard by
    /// default keeps one, see `group_flush.rs`): it keeps the changes since the last
    /// checkpoint or two, and feeds cannot resume from it.
    pub(crate) fn open(
        storage: &Storage,
        db_dir: &Path,
        retention: Option<ChangeLogRetention>,
        seq: u64,
    ) -> Result<Self> {
        let shape = Shape::new(retention);
        let dir = db_dir.join(DIR);
        let had_dir = dir.is_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create its directory", e))?;
        let meta = storage.tree(LOG_META_TREE)?;
        let checkpoint = read_be(&meta, CHECKPOINT_KEY)?.unwrap_or(0);
        let plan = recovery::plan(&meta, &dir, had_dir, checkpoint)?;
        let Opened {
            floor,
            segments,
            map,
            sync,
            len,
            durable,
            last_seq,
            told,
            legacy,
        } = Opened::carry_out(
            plan,
            storage,
            &meta,
            (db_dir, &dir),
            seq,
            shape.segment_bytes,
        )?;
        let created = created_tables(&meta)?;
        let writer = Writer {
            map,
            sync,
            len,
            total: segments.iter().map(|s| s.entries).sum(),
            segments,
            broken: None,
            last_ms: 0,
            last_seq,
            // Until `recover` has redone what follows the checkpoint.
            applied: checkpoint,
            checkpoint,
            durable,
            told,
            meta: meta.clone(),
        };
        let log = ChangeLog {
            dir,
            meta,
            storage: storage.clone(),
            resumable: shape.resumable,
            segment_bytes: shape.segment_bytes,
            retention: shape.retention,
            segment_entries: shape.segment_entries,
            segment_ms: shape.segment_ms,
            floor: AtomicU64::new(floor),
            legacy: Mutex::new(legacy),
            writer: Arc::new(Mutex::new(writer)),
            spare: Mutex::new(Vec::new()),
            created: Mutex::new(created),
        };
        log.sync_before_flush(storage);
        Ok(log)
    }

    /// Has every flush of `storage` make the log durable first (see the module doc), and
    /// record what it makes durable (`Writer::record_flush`). Weak: a log opened only to be
    /// redone and removed (a database reopened without it) is gone after that.
    fn sync_before_flush(&self, storage: &Storage) {
        let writer = Arc::downgrade(&self.writer);
        storage.before_flush(Arc::new(move || {
            let Some(writer) = writer.upgrade() else {
                return Ok(());
            };
            let (sync, at) = {
                let w = writer.lock();
                (w.sync.clone(), w.position())
            };
            sync.sync_data()
                .map_err(|e| io_error("be written to disk", e))?;
            let recorded = writer.lock().record_flush(at);
            recorded
        }));
    }

    /// Makes every record written so far durable (one `fdatasync` of the open segment: a
    /// closed segment was made durable when it was closed), and says so in the segment's
    /// header. A failure marks `storage` failed (see [`sync_segment`]).
    pub(crate) fn sync(&self, storage: &Storage) -> Result<()> {
        let (sync, at) = {
            let w = self.writer.lock();
            (w.sync.clone(), w.position())
        };
        sync_segment(&sync, storage)?;
        self.writer.lock().synced(at);
        Ok(())
    }

    /// Whether feeds can resume from this log (it was opened with a retention).
    pub(crate) fn resumable(&self) -> bool {
        self.resumable
    }

    /// Whether the log was on in the last run (its records may hold writes the storage
    /// lost in a crash: see [`ChangeLog::recover`]).
    pub(crate) fn was_on(storage: &Storage) -> Result<bool> {
        Ok(storage.tree(LOG_META_TREE)?.get(FLOOR_KEY)?.is_some())
    }

    /// Marks the log as off (the database opened without it) and removes its files: a later
    /// open with the log starts a new one, since the changes written meanwhile are not in it.
    pub(crate) fn disable(storage: &Storage, db_dir: &Path) -> Result<()> {
        let meta = storage.tree(LOG_META_TREE)?;
        if meta.get(FLOOR_KEY)?.is_some() {
            let mut batch = WriteBatch::default();
            batch.remove(&meta, FLOOR_KEY.to_vec());
            batch.remove(&meta, FORMAT_KEY.to_vec());
            batch.remove(&meta, SYNCED_KEY.to_vec());
            storage.apply(&batch)?;
            // Before the files go: a floor without its segments reads as a damaged log.
            storage.flush_blocking()?;
        }
        let dir = db_dir.join(DIR);
        if dir.is_dir() {
            remove_segments(&dir, &list_segments(&dir)?);
        }
        Ok(())
    }

    /// Starts the record of a commit whose first change will be numbered `first`.
    pub(crate) fn record(&self, first: u64) -> Record {
        Record::new(first, now_ms(), std::mem::take(&mut *self.spare.lock()))
    }

    /// Writes a commit's record, before its documents are written (see the module doc),
    /// first closing the open segment when it is full or old. On an error nothing of it is
    /// in the log, and the commit must not happen.
    pub(crate) fn write(&self, storage: &Storage, mut record: Record) -> Result<()> {
        let written = self.write_record(storage, &mut record);
        if record.buf.capacity() <= SPARE_MAX {
            // The buffer serves the next commit (no allocation per commit).
            *self.spare.lock() = record.buf;
        }
        written
    }

    fn write_record(&self, storage: &Storage, record: &mut Record) -> Result<()> {
        let (first, last, time_ms) = (record.first, record.last, record.time_ms);
        let body = record.buf.len() - FRAME;
        if body > MAX_FIELD {
            return Err(too_large("a commit's record in the change log", body));
        }
        let bytes = record.seal();
        let mut w = self.writer.lock();
        if let Some(cause) = &w.broken {
            return Err(Error::storage(format!(
                "the change log can no longer be written: {cause}"
            )));
        }
        let open = w.segments.back().expect("the open segment is listed");
        let old = self
            .segment_ms
            .is_some_and(|ms| open.first_ms != 0 && time_ms.saturating_sub(open.first_ms) >= ms);
        // Room for the record, an abort record after it, and the segment's seal.
        let room = bytes.len() + ABORT_BYTES + SEAL_BYTES;
        let fits = w.len + room <= w.map.cap();
        let cap = self.segment_bytes.max(HEADER + room);
        if w.len <= HEADER && !fits {
            // Nothing in the open segment yet (a fresh log's first commit): it grows to hold
            // the record. Rolling would make a segment of the same name (it is named after
            // its first change, this record's), truncating the file under its own mapping.
            w.grow(cap)?;
        } else if open.entries >= self.segment_entries || old || !fits {
            self.roll(storage, &mut w, first, cap)?;
        }
        let at = w.len;
        w.map.write_at(at, bytes);
        w.len += bytes.len();
        w.last_ms = time_ms;
        w.last_seq = w.last_seq.max(last);
        Ok(())
    }

    /// Closes the open segment and opens one (of `cap` bytes) for the changes from `next`
    /// on: the new one is made (its name on disk), the closed one sealed with its name and
    /// made durable once, and the engine is told that every document before `next`
    /// is written (the redo checkpoint), after them.
    fn roll(&self, storage: &Storage, w: &mut Writer, next: u64, cap: usize) -> Result<()> {
        let (map, sync) = create_segment(&self.dir, next, cap)?;
        let seal = seal_record(next);
        if w.len + seal.len() > w.map.cap() {
            // `write_record` keeps room for it; a segment of the first format may have none.
            let need = w.len + seal.len();
            w.grow(need)?;
        }
        let at = w.len;
        w.map.write_at(at, &seal);
        w.len += seal.len();
        if let Err(e) = sync_segment(&w.sync, storage) {
            // Sealed in memory, maybe not on disk: nothing more goes into it.
            w.broken = Some(format!("a segment could not be closed: {e}"));
            return Err(e);
        }
        // The closed segment gives back the space reserved past its records (after its
        // mapping is gone: nothing reads or writes there any more).
        let (closed, len) = (std::mem::replace(&mut w.sync, sync), w.len);
        w.map = map;
        w.len = HEADER;
        w.durable = HEADER;
        if let Err(e) = closed.set_len(len as u64) {
            tracing::warn!("a closed segment of the change log could not be shortened: {e}");
        }
        // Listed before the checkpoint is written: the records that go into it must be
        // found (resume, recovery) even if the checkpoint write fails. Until it is written,
        // no segment before it may go (`NO_CHECKPOINT`).
        w.segments.push_back(Segment::new(next, NO_CHECKPOINT));
        w.set_checkpoint(storage, next.saturating_sub(1))?;
        let open = w.segments.back_mut().expect("just listed");
        open.checkpoint_epoch = storage.flush_epoch();
        Ok(())
    }

    /// The documents of the commit `from..=to` (written by [`ChangeLog::write`]) could not
    /// be written: it did not happen, and neither may its record.
    pub(crate) fn abort(&self, from: u64, to: u64) {
        let bytes = abort_record(from, to);
        let mut w = self.writer.lock();
        // `write` left room for it.
        if w.len + bytes.len() <= w.map.cap() {
            let at = w.len;
            w.map.write_at(at, &bytes);
            w.len += bytes.len();
        } else {
            // The record would be redone on the next open: stop writing instead.
            tracing::warn!("the change log could not record a failed commit");
            w.broken = Some("a failed commit could not be recorded".into());
        }
    }

    /// The first change number of each segment, oldest first.
    fn segment_firsts(&self) -> Vec<u64> {
        self.writer
            .lock()
            .segments
            .iter()
            .map(|s| s.first)
            .collect()
    }

    /// Records that `table` was created after change `seq`, and moves the checkpoint there:
    /// no change of an earlier table of that name is redone into it.
    pub(crate) fn table_created(&self, storage: &Storage, table: &str, seq: u64) -> Result<()> {
        let mut key = CREATED_PREFIX.to_vec();
        key.extend_from_slice(table.as_bytes());
        let mut batch = WriteBatch::default();
        batch.insert(&self.meta, key, seq.to_be_bytes().to_vec());
        storage.apply(&batch)?;
        self.writer.lock().set_checkpoint(storage, seq)?;
        self.created.lock().insert(table.to_string(), seq);
        Ok(())
    }

    /// The last change before `table` was created (0: before the log knew).
    pub(crate) fn created(&self, table: &str) -> u64 {
        self.created.lock().get(table).copied().unwrap_or(0)
    }

    /// Every change numbered this or above is in the log.
    pub(crate) fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// After a commit of `n` changes whose documents are written (under the commit lock):
    /// counts them, and drops the oldest segments past the retention.
    pub(crate) fn committed(&self, storage: &Storage, n: u64) -> Result<()> {
        let mut w = self.writer.lock();
        w.applied = w.last_seq;
        let now = w.last_ms;
        w.total += n;
        let open = w.segments.back_mut().expect("the open segment is listed");
        open.entries += n;
        if open.first_ms == 0 {
            open.first_ms = now;
        }
        open.last_ms = now;
        let cutoff = self
            .retention
            .max_age
            .map(|a| now.saturating_sub(millis(a)));
        // The oldest segments past the retention (a redo-only log keeps no closed one).
        let (mut drop_n, mut total) = (0usize, w.total);
        let closed = w.segments.len() - 1;
        for s in w.segments.iter().take(closed) {
            let by_count = (!self.resumable && closed >= REDO_CLOSED_KEPT)
                || self
                    .retention
                    .max_changes
                    .is_some_and(|m| total - s.entries >= m.max(1));
            let by_age = cutoff.is_some_and(|c| s.last_ms < c);
            if !(by_count || by_age) {
                break;
            }
            total -= s.entries;
            drop_n += 1;
        }
        if drop_n == 0 {
            return Ok(());
        }
        // The checkpoint past these segments was written to the engine when the first kept
        // one was opened; it must be on disk before they go, or a crash could leave the
        // engine's checkpoint pointing into a deleted segment (and the redo would miss
        // changes). The engine's timer flush gets it there (they go at a later commit); a
        // backlog of them (the timer is slow or off) is flushed here.
        let epoch = w.segments[drop_n].checkpoint_epoch;
        if epoch == NO_CHECKPOINT {
            return Ok(());
        }
        if !storage.flushed_since(epoch) {
            if drop_n < MAX_UNFLUSHED_DROPS {
                return Ok(());
            }
            drop(w);
            storage.flush_blocking()?;
            w = self.writer.lock();
        }
        let writer = &mut *w;
        let mut gone = Vec::with_capacity(drop_n);
        for s in writer.segments.drain(..drop_n) {
            gone.push(s.first);
            writer.total -= s.entries;
        }
        if let Some(s) = w.segments.front() {
            // The floor first: a crash before the files go leaves files below it (removed
            // on open). (One that loses the floor, not yet flushed, after the files went
            // leaves missing segments below the checkpoint: the open raises the floor past
            // them, as here.)
            let floor = s.first;
            let mut batch = WriteBatch::default();
            batch.insert(&self.meta, FLOOR_KEY.to_vec(), floor.to_be_bytes().to_vec());
            storage.apply(&batch)?;
            self.floor.store(floor, Ordering::Release);
            remove_segments(&self.dir, &gone);
        }
        Ok(())
    }

    /// The error for a segment found damaged while the log is open (a resume reads it).
    fn damaged_segment(&self, first: u64, what: &str) -> Error {
        Error::Damaged {
            path: self.dir.display().to_string(),
            reason: format!("segment {} {what}", segment_name(first)),
        }
    }

    /// Calls `f` with each change of `table` numbered `from` and above, in order, read from
    /// the segments as written when it starts (a caller holding the commit lock reads them
    /// all; one that does not checks afterwards that the segments it needed were not dropped
    /// meanwhile: see `feed::resume::read_early`).
    ///
    /// A segment read from the disk must be whole (a closed one up to the seal that names
    /// the next, the open one up to what was written): one damaged since the log was opened
    /// fails with [`Error::Damaged`] rather than ending the changes early.
    ///
    /// `read` is told the number of every change read at or after `from`, of any table (what
    /// the read costs: a caller bounding it stops it with an error).
    pub(crate) fn for_each_from(
        &self,
        table: &str,
        from: u64,
        mut read: impl FnMut(u64) -> Result<()>,
        mut f: impl FnMut(&Logged<'_>) -> Result<()>,
    ) -> Result<()> {
        let (firsts, open_len) = {
            let w = self.writer.lock();
            let firsts: Vec<u64> = w.segments.iter().map(|s| s.first).collect();
            (firsts, w.len)
        };
        let start = firsts.iter().rposition(|&s| s <= from).unwrap_or(0);
        for (k, &first) in firsts.iter().enumerate().skip(start) {
            let bytes = match std::fs::read(self.dir.join(segment_name(first))) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.damaged_segment(first, "is missing"))
                }
                Err(e) => return Err(io_error("read a segment", e)),
            };
            let parsed = parse_segment(&bytes, HEADER, first);
            if Header::decode(&bytes).is_some_and(|h| h.first != first) {
                return Err(self.damaged_segment(first, "holds another segment"));
            }
            let whole = match firsts.get(k + 1) {
                Some(&next) => parsed.seal == Some(next),
                None => parsed.valid >= open_len,
            };
            if !whole {
                return Err(self.damaged_segment(
                    first,
                    &format!(
                        "ends early ({} of its {} bytes are readable records)",
                        parsed.valid,
                        bytes.len()
                    ),
                ));
            }
            for c in parsed.commits {
                if c.checked_last().unwrap_or(u64::MAX) < from {
                    continue;
                }
                for e in c.entries() {
                    let e = e?;
                    if e.seq < from {
                        continue;
                    }
                    read(e.seq)?;
                    if e.table != table.as_bytes() {
                        continue;
                    }
                    let (old, new) = (e.old.map(parse).transpose()?, e.new.map(parse).transpose()?);
                    f(&Logged {
                        seq: e.seq,
                        commit: c.first,
                        key: e.key,
                        old: old.as_ref(),
                        new: new.as_ref(),
                    })?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for ChangeLog {
    /// Closing the log: it is made durable, and the engine is told how far it went and that
    /// nothing follows (so that the next open can tell damage to its newest records from a
    /// record torn by a crash, see `examine`), and that every commit is over (the
    /// checkpoint). Skipped when the storage failed: nothing more may reach the disk.
    fn drop(&mut self) {
        if self.storage.has_failed() {
            return;
        }
        let mut w = self.writer.lock();
        if w.broken.is_some() {
            return;
        }
        let at = w.position();
        if let Err(e) = w.sync.sync_data() {
            tracing::warn!("the change log could not be written to disk as it closed: {e}");
            return;
        }
        w.synced(at);
        let told = Synced {
            first: at.first,
            len: at.len as u64,
            seq: at.seq,
            closed: true,
        };
        let applied = w.applied;
        let written = w.set_checkpoint(&self.storage, applied).and_then(|()| {
            let mut batch = WriteBatch::default();
            batch.insert(&w.meta, SYNCED_KEY.to_vec(), told.encode().to_vec());
            self.storage.apply(&batch)
        });
        if let Err(e) = written {
            tracing::warn!("the change log could not record how far it went as it closed: {e}");
        }
    }
}
