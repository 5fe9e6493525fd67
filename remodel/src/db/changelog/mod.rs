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
//! configured ([`ChangeLog::open`] with `None`): segments of 1 MiB, no in-memory tail, no
//! resuming, and closed segments removed once there are a few.
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
//! The newest 16,384 changes are also kept in memory (while feeds are open, see
//! [`ChangeLog::keep_tail`]), each with the plain feed item a table feed delivers for it
//! (built once, shared by every feed that resumes over it): a reconnect reads them without
//! touching the disk or building items. Older cursors read the segments.

use super::write::Committed;
use super::TableState;
use crate::feed::Change;
use crate::storage::{Storage, Tree, WriteBatch};
use crate::{Error, Result};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
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

/// How many of the newest changes the log keeps in memory as well.
const TAIL: usize = 16_384;

/// Record kinds.
const COMMIT: u8 = 1;
const ABORT: u8 = 2;
/// The last record of a closed segment: the log goes on in the segment it names.
const SEAL: u8 = 3;
/// Frame header: body length (u32 LE), checksum of the body (u32 LE).
const FRAME: usize = 8;

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

/// A 32-bit checksum of a record's body, a word at a time: enough to tell a torn or damaged
/// record (this runs for every commit, so it is not a byte-at-a-time CRC).
fn checksum(bytes: &[u8]) -> u32 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in words.by_ref() {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(last)).wrapping_mul(K);
    h ^= h >> 32;
    h as u32
}

fn damaged() -> Error {
    Error::storage("a record of the change log is damaged")
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::storage_from(format!("the change log could not {what}: {e}"), e)
}

/// The most bytes one length field of a record holds.
const MAX_FIELD: usize = u32::MAX as usize;

fn too_large(what: &str, size: usize) -> Error {
    Error::TooLarge {
        what: what.to_string(),
        size,
        limit: MAX_FIELD,
    }
}

/// The records of one commit, built while it is staged and written by [`ChangeLog::write`].
///
/// Body layout: kind (1: commit), first sequence number (u64 LE), timestamp (ms, u64 LE),
/// entry count (u32 LE), then per entry: sequence number (u64 LE), table name length (u16 LE)
/// and name, key length (u32 LE) and key, flags (bit 0: old, bit 1: new), old JSON length
/// (u32 LE) and bytes, new JSON length (u32 LE) and bytes. The new document's bytes are the
/// ones the engine stores (serialised once for both).
pub(crate) struct Record {
    buf: Vec<u8>,
    count: u32,
    first: u64,
    /// The number of the last change pushed (`first - 1` before the first).
    last: u64,
    time_ms: u64,
}

impl Record {
    fn new(first: u64, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(FRAME, 0);
        let time_ms = now_ms();
        buf.push(COMMIT);
        buf.extend_from_slice(&first.to_le_bytes());
        buf.extend_from_slice(&time_ms.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        Record {
            buf,
            count: 0,
            first,
            last: first.saturating_sub(1),
            time_ms,
        }
    }

    /// Adds change `seq` of `table`: `new` is the new document's stored bytes. A document of
    /// 4 GiB or more does not fit a record's length field: [`Error::TooLarge`].
    pub(crate) fn push(
        &mut self,
        seq: u64,
        table: &str,
        key: &[u8],
        old: Option<&Value>,
        new: Option<&[u8]>,
    ) -> Result<()> {
        let b = &mut self.buf;
        b.extend_from_slice(&seq.to_le_bytes());
        let name = table.as_bytes();
        let name_len = u16::try_from(name.len())
            .map_err(|_| Error::storage("a table name is too long for the change log"))?;
        b.extend_from_slice(&name_len.to_le_bytes());
        b.extend_from_slice(name);
        let key_len = u32::try_from(key.len()).map_err(|_| too_large("a key", key.len()))?;
        b.extend_from_slice(&key_len.to_le_bytes());
        b.extend_from_slice(key);
        b.push(u8::from(old.is_some()) | (u8::from(new.is_some()) << 1));
        // The old document is written straight into the record (no intermediate buffer).
        let at = b.len();
        b.extend_from_slice(&0u32.to_le_bytes());
        if let Some(old) = old {
            serde_json::to_writer(&mut *b, old)?;
        }
        let n = b.len() - at - 4;
        let n = u32::try_from(n).map_err(|_| too_large("an old document", n))?;
        b[at..at + 4].copy_from_slice(&n.to_le_bytes());
        let new = new.unwrap_or_default();
        let n = u32::try_from(new.len()).map_err(|_| too_large("a document", new.len()))?;
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(new);
        self.count += 1;
        self.last = seq;
        Ok(())
    }

    /// Fills in the count and the frame.
    fn seal(&mut self) -> &[u8] {
        let count_at = FRAME + 1 + 8 + 8;
        self.buf[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        seal(&mut self.buf);
        &self.buf
    }
}

/// Writes the frame (length, checksum) of a record whose body follows its first `FRAME` bytes
/// (no longer than `MAX_FIELD`: checked by its writer).
fn seal(buf: &mut [u8]) {
    let body = &buf[FRAME..];
    let len = (body.len() as u32).to_le_bytes();
    let crc = checksum(body).to_le_bytes();
    buf[..4].copy_from_slice(&len);
    buf[4..FRAME].copy_from_slice(&crc);
}

/// The size of an abort record.
const ABORT_BYTES: usize = FRAME + 1 + 8 + 8;

fn abort_record(from: u64, to: u64) -> Vec<u8> {
    let mut buf = vec![0; FRAME];
    buf.push(ABORT);
    buf.extend_from_slice(&from.to_le_bytes());
    buf.extend_from_slice(&to.to_le_bytes());
    seal(&mut buf);
    buf
}

/// The size of a seal record.
const SEAL_BYTES: usize = FRAME + 1 + 8;

/// The seal of a segment closed for the segment `next`.
fn seal_record(next: u64) -> Vec<u8> {
    let mut buf = vec![0; FRAME];
    buf.push(SEAL);
    buf.extend_from_slice(&next.to_le_bytes());
    seal(&mut buf);
    buf
}

/// The bytes of a segment's header: magic, first change number, durable length, the last
/// change number within it, 4 reserved bytes, checksum of the rest (u32).
const HEADER: usize = 40;
const MAGIC: &[u8; 8] = b"RMDLLOG2";

/// What a segment's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    /// The first change number the segment holds (its name).
    first: u64,
    /// Its first `durable_len` bytes were on disk (an `fsync` of them had returned)...
    durable_len: u64,
    /// ... and held the changes up to this one.
    durable_seq: u64,
}

impl Header {
    /// The header of a segment just made: only the header itself is on disk.
    fn new(first: u64) -> Self {
        Header {
            first,
            durable_len: HEADER as u64,
            durable_seq: first.saturating_sub(1),
        }
    }

    fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.first.to_le_bytes());
        b[16..24].copy_from_slice(&self.durable_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.durable_seq.to_le_bytes());
        let check = checksum(&b[..36]);
        b[36..].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// The header at the start of `bytes`; `None` when there is none, or a damaged or torn
    /// one (it is rewritten in place after each sync).
    fn decode(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HEADER)?;
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let check = u32::from_le_bytes(b[36..].try_into().expect("4 bytes"));
        (&b[..8] == MAGIC && checksum(&b[..36]) == check).then(|| Header {
            first: word(8),
            durable_len: word(16),
            durable_seq: word(24),
        })
    }
}

/// What the engine knows of the log's open segment: written to the engine at each flush of
/// it (after the `fsync` of the segment that the flush starts with), and when the log closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Synced {
    /// The segment.
    first: u64,
    /// Its first `len` bytes were on disk...
    len: u64,
    /// ... holding the changes up to this one.
    seq: u64,
    /// The log was closed right after: nothing was written to it after `len`.
    closed: bool,
}

impl Synced {
    fn encode(&self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[..8].copy_from_slice(&self.first.to_be_bytes());
        b[8..16].copy_from_slice(&self.len.to_be_bytes());
        b[16..24].copy_from_slice(&self.seq.to_be_bytes());
        b[24] = u8::from(self.closed);
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 25] = b.try_into().ok()?;
        let word = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Some(Synced {
            first: word(0),
            len: word(8),
            seq: word(16),
            closed: b[24] == 1,
        })
    }
}

/// One change read back from a segment (borrowing the file's bytes).
struct RawEntry<'a> {
    seq: u64,
    table: &'a [u8],
    key: &'a [u8],
    old: Option<&'a [u8]>,
    new: Option<&'a [u8]>,
}

/// A commit record read back from a segment.
struct RawCommit<'a> {
    first: u64,
    time_ms: u64,
    count: u32,
    entries: &'a [u8],
}

impl<'a> RawCommit<'a> {
    fn entries(&self) -> impl Iterator<Item = Result<RawEntry<'a>>> + 'a {
        let mut b = self.entries;
        let mut left = self.count;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            Some(read_entry(&mut b))
        })
    }

    /// The number of its last change, once its entries are checked to be numbered upwards
    /// from its first (`None`: they are not, or unreadable: not a record of this log).
    fn checked_last(&self) -> Option<u64> {
        let mut last = self.first.checked_sub(1)?;
        for e in self.entries() {
            let e = e.ok()?;
            if e.seq <= last {
                return None;
            }
            last = e.seq;
        }
        Some(last)
    }
}

/// Splits `n` bytes off the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if b.len() < n {
        return Err(damaged());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn le_u64(b: &mut &[u8]) -> Result<u64> {
    Ok(u64::from_le_bytes(
        take(b, 8)?.try_into().map_err(|_| damaged())?,
    ))
}

fn le_u32(b: &mut &[u8]) -> Result<u32> {
    Ok(u32::from_le_bytes(
        take(b, 4)?.try_into().map_err(|_| damaged())?,
    ))
}

fn read_entry<'a>(b: &mut &'a [u8]) -> Result<RawEntry<'a>> {
    let seq = le_u64(b)?;
    let n = u16::from_le_bytes(take(b, 2)?.try_into().map_err(|_| damaged())?) as usize;
    let table = take(b, n)?;
    let n = le_u32(b)? as usize;
    let key = take(b, n)?;
    let flags = take(b, 1)?[0];
    let n = le_u32(b)? as usize;
    let old = take(b, n)?;
    let n = le_u32(b)? as usize;
    let new = take(b, n)?;
    Ok(RawEntry {
        seq,
        table,
        key,
        old: (flags & 1 != 0).then_some(old),
        new: (flags & 2 != 0).then_some(new),
    })
}

/// A record of a segment.
enum Raw<'a> {
    Commit(RawCommit<'a>),
    /// The commit whose first change has this number did not happen.
    Abort(u64),
    /// The segment was closed; the log goes on in the segment of this first change.
    Seal(u64),
}

/// The record framed at `at` in `bytes` and where it ends; `None` when there is none there
/// (the end of the records, or an incomplete or damaged one).
fn frame_at(bytes: &[u8], at: usize) -> Option<(Raw<'_>, usize)> {
    let rest = bytes.get(at..)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rest.get(4..FRAME)?.try_into().ok()?);
    let body = rest.get(FRAME..FRAME.checked_add(len)?)?;
    if checksum(body) != crc {
        return None;
    }
    let mut b = body;
    let raw = match take(&mut b, 1).ok()?[0] {
        COMMIT => {
            let first = le_u64(&mut b).ok()?;
            let time_ms = le_u64(&mut b).ok()?;
            let count = le_u32(&mut b).ok()?;
            Raw::Commit(RawCommit {
                first,
                time_ms,
                count,
                entries: b,
            })
        }
        ABORT => Raw::Abort(le_u64(&mut b).ok()?),
        SEAL => Raw::Seal(le_u64(&mut b).ok()?),
        _ => return None,
    };
    Some((raw, at + FRAME + len))
}

/// The records of a segment as read back.
struct Parsed<'a> {
    /// The commits that happened (an abort record cancels the commit just before it).
    commits: Vec<RawCommit<'a>>,
    /// Where the valid records end (after the seal, for a sealed segment).
    valid: usize,
    /// The segment the log went on in, when this one was closed.
    seal: Option<u64>,
    /// The last change number the records used, aborted ones included (`first - 1` when
    /// there are none).
    last_seq: u64,
}

/// Reads the records of the segment named `first` from byte `start` on. It stops at the first
/// record that is incomplete or damaged, or that does not follow (a change number not above
/// the last one: not a record of this segment), and after a seal.
fn parse_segment(bytes: &[u8], start: usize, first: u64) -> Parsed<'_> {
    let mut p = Parsed {
        commits: Vec::new(),
        valid: start.min(bytes.len()),
        seal: None,
        last_seq: first.saturating_sub(1),
    };
    let mut at = start;
    while let Some((raw, end)) = frame_at(bytes, at) {
        match raw {
            Raw::Commit(c) => {
                let Some(last) = c.checked_last() else { break };
                if c.first <= p.last_seq {
                    break;
                }
                p.last_seq = p.last_seq.max(last);
                p.commits.push(c);
            }
            Raw::Abort(from) => {
                if p.commits.last().is_some_and(|c| c.first == from) {
                    p.commits.pop();
                }
            }
            Raw::Seal(next) => {
                if next <= p.last_seq {
                    break;
                }
                p.seal = Some(next);
                p.valid = end;
                break;
            }
        }
        p.valid = end;
        at = end;
    }
    p
}

fn parse(bytes: &[u8]) -> Result<Arc<Value>> {
    serde_json::from_slice(bytes)
        .map(Arc::new)
        .map_err(|e| Error::serialization_from(format!("a change log entry is unreadable: {e}"), e))
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

fn segment_name(first: u64) -> String {
    format!("{first:016x}.log")
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

/// A segment file mapped into memory (shared with the file): a record is copied into it,
/// with no system call per commit. Once copied it is in the kernel's page cache, so a killed
/// process loses nothing of it; `fsync` of the file makes it durable. The file's space is
/// reserved when it is made (`posix_fallocate`), so a write into the mapping does not fail for
/// want of space where the file system can reserve it.
struct Mapped {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only written through
// `&mut self` (under the writer's mutex) and unmapped once, on drop.
unsafe impl Send for Mapped {}

impl Mapped {
    /// Maps the first `cap` bytes of `file` (which is at least that long).
    fn new(file: &File, cap: usize) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we hold open, of a length the file has;
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_error("map a segment", std::io::Error::last_os_error()));
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            cap,
        })
    }

    /// Copies `bytes` to offset `at` (the caller checked that they fit).
    fn write_at(&mut self, at: usize, bytes: &[u8]) {
        assert!(
            at + bytes.len() <= self.cap,
            "a record past its segment's end"
        );
        // SAFETY: in bounds (checked above), and the source is not in the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) }
    }

    /// Zeroes everything from `at` on (a torn record's bytes must not be read after a new
    /// one).
    fn clear_from(&mut self, at: usize) {
        if at < self.cap {
            // SAFETY: `at..cap` is inside the mapping.
            unsafe { std::ptr::write_bytes(self.ptr.add(at), 0, self.cap - at) }
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped only here.
        unsafe {
            libc::munmap(self.ptr.cast(), self.cap);
        }
    }
}

/// Makes the file `cap` bytes long with its space reserved (sparse where the file system
/// cannot reserve).
fn reserve(file: &File, cap: usize) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain system call on a file we hold open.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, cap as libc::off_t) };
    match r {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file
            .set_len(cap as u64)
            .map_err(|e| io_error("size a segment", e)),
        e => Err(io_error(
            "reserve space for a segment",
            std::io::Error::from_raw_os_error(e),
        )),
    }
}

/// One change in the in-memory tail: the plain item a table feed gets for it (as
/// `feed::hub` makes it), which also holds the change (key, documents, sequence number).
struct TailEntry {
    table: u32,
    item: Change,
}

/// A change read back from the log (see [`ChangeLog::for_each_from`]).
pub(crate) struct Logged<'a> {
    pub seq: u64,
    /// The number of its commit's first change.
    pub commit: u64,
    pub key: &'a [u8],
    pub old: Option<&'a Arc<Value>>,
    pub new: Option<&'a Arc<Value>>,
    /// The plain item of a table feed for it, when the log has it at hand (shared: cloning
    /// it is what a resuming table feed costs per change).
    pub plain: Option<&'a Change>,
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

#[derive(Default)]
struct Tail {
    /// Interned table names (entries carry an index: no string compare or pointer chase per
    /// entry when a feed replays them).
    names: Vec<Arc<str>>,
    entries: VecDeque<TailEntry>,
}

impl Tail {
    fn id(&mut self, table: &str) -> u32 {
        match self.names.iter().position(|n| &**n == table) {
            Some(i) => i as u32,
            None => {
                self.names.push(Arc::from(table));
                (self.names.len() - 1) as u32
            }
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
    tail: Mutex<Tail>,
    /// The last change committed while a feed was open (see [`ChangeLog::keep_tail`]).
    last_watched: AtomicU64,
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

/// The segment files in `dir`, by first sequence number: files named exactly as
/// [`segment_name`] names them (any other file is not the log's).
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("be listed", e))? {
        let entry = entry.map_err(|e| io_error("be listed", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(hex) = name.strip_suffix(".log") else {
            continue;
        };
        if let Ok(first) = u64::from_str_radix(hex, 16) {
            if segment_name(first) == name {
                firsts.push(first);
            }
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Makes the segment file for the changes from `first` on, `cap` bytes long, with its
/// header. A hard write is on disk once its record is, so the new file's name must be too
/// (an `fdatasync` of the file does not promise its directory entry survives a power loss).
/// The header itself needs no sync of its own: the first sync of a record covers it, and a
/// segment found without a readable one is read all the same (see [`examine`]).
fn create_segment(dir: &Path, first: u64, cap: usize) -> Result<(Mapped, Arc<File>)> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join(segment_name(first)))
        .map_err(|e| io_error("create a segment", e))?;
    reserve(&file, cap)?;
    file.write_all_at(&Header::new(first).encode(), 0)
        .map_err(|e| io_error("write a segment's header", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("make a new segment durable", e))?;
    Ok((Mapped::new(&file, cap)?, Arc::new(file)))
}

/// `fdatasync`s a segment. A failure is fatal, and marks `storage` failed: Linux reports a
/// failed writeback once, so syncing again would succeed and acknowledge hard writes whose
/// records never reached the disk.
fn sync_segment(file: &File, storage: &Storage) -> Result<()> {
    file.sync_data().map_err(|e| {
        storage.mark_failed(format!("the change log could not be written to disk: {e}"))
    })
}

/// Opens an existing segment to append to after its first `valid` bytes (at least its
/// header), with room for a record's abort and the segment's seal after them.
fn reopen_segment(
    dir: &Path,
    first: u64,
    valid: usize,
    segment_bytes: usize,
) -> Result<(Mapped, Arc<File>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(segment_name(first)))
        .map_err(|e| io_error("open a segment", e))?;
    let size = file
        .metadata()
        .map_err(|e| io_error("open a segment", e))?
        .len() as usize;
    let cap = size
        .max(segment_bytes)
        .max(valid + ABORT_BYTES + SEAL_BYTES);
    if size < cap {
        reserve(&file, cap)?;
    }
    let mut map = Mapped::new(&file, cap)?;
    map.clear_from(valid);
    Ok((map, Arc::new(file)))
}

/// A segment file as read when the log opens.
struct Scanned {
    first: u64,
    /// Its header, when it has a readable one naming it.
    header: Option<Header>,
    /// Where its valid records end (its length, when shorter than a header).
    valid: usize,
    /// The file's length.
    file_len: usize,
    seal: Option<u64>,
    /// The last change number its records used.
    last_seq: u64,
    /// The first change of its last commit (which an abort record after it, if lost with
    /// what follows, would have cancelled).
    last_commit: Option<u64>,
    entries: u64,
    first_ms: u64,
    last_ms: u64,
    /// Made and never written: nothing but zeros after its header (a readable one, or
    /// zeros there too).
    blank: bool,
    /// Not a segment of this log: no readable header naming it, no valid record, not blank.
    foreign: bool,
}

impl Scanned {
    /// The first change number that may be lost when what follows its valid records is.
    fn lost_from(&self) -> u64 {
        self.last_commit.unwrap_or(self.last_seq.saturating_add(1))
    }
}

fn scan_segment(dir: &Path, first: u64) -> Result<Scanned> {
    let bytes =
        std::fs::read(dir.join(segment_name(first))).map_err(|e| io_error("read a segment", e))?;
    let header = Header::decode(&bytes);
    // A readable header that names another segment: the file is not this segment (a torn
    // header is unreadable, never another one).
    let misnamed = header.is_some_and(|h| h.first != first);
    let header = header.filter(|_| !misnamed);
    let mut p = parse_segment(&bytes, HEADER, first);
    if misnamed {
        p = Parsed {
            commits: Vec::new(),
            valid: HEADER.min(bytes.len()),
            seal: None,
            last_seq: first.saturating_sub(1),
        };
    }
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    let blank = zero(bytes.get(HEADER..).unwrap_or_default())
        && (header.is_some() || zero(&bytes[..bytes.len().min(HEADER)]));
    let mut s = Scanned {
        first,
        header,
        valid: p.valid,
        file_len: bytes.len(),
        seal: p.seal,
        last_seq: p.last_seq,
        last_commit: p.commits.last().map(|c| c.first),
        entries: 0,
        first_ms: 0,
        last_ms: 0,
        blank,
        foreign: !blank && header.is_none() && p.valid <= HEADER,
    };
    for c in &p.commits {
        s.entries += u64::from(c.count);
        if s.first_ms == 0 {
            s.first_ms = c.time_ms;
        }
        s.last_ms = c.time_ms;
    }
    Ok(s)
}

/// A range of change numbers a damaged log may have lost.
struct Lost {
    from: u64,
    /// `None`: up to its newest change (how far the log went is lost too).
    upto: Option<u64>,
    what: String,
}

impl Lost {
    fn describe(&self) -> String {
        match self.upto {
            Some(upto) => format!("{}: changes {} to {upto} may be lost", self.what, self.from),
            None => format!(
                "{}: the changes from {} on may be lost",
                self.what, self.from
            ),
        }
    }
}

/// What the log on disk comes to (see [`examine`]).
enum Plan {
    /// Open it as it is, or from a raised floor on.
    Keep(Kept),
    /// Start over after the database's last change: the log was off in the last run (its
    /// files are stale), its folder was removed, or its newest part is damaged and none of
    /// it is needed to redo.
    Reset,
    /// A log of the first format (see the module doc): redone, then started over.
    Legacy,
    /// Damaged where it may hold writes the engine does not have: not opened, for this
    /// reason.
    Refuse(String),
}

/// A log found intact, or damaged only before its newest segment where nothing of it is
/// needed to redo.
struct Kept {
    floor: u64,
    /// The chain of segments from the floor on, oldest first; the last one is open.
    segments: Vec<Scanned>,
    /// Files to remove: segments below the floor, and one whose making a crash cut short.
    remove: Vec<u64>,
    /// The open segment's bytes known to be on disk, up to this change.
    durable: (usize, u64),
    /// What the engine was last told of the open segment.
    told: Option<Synced>,
}

/// Reads the segments in `dir` and tells what they come to (see the module doc, "Damage"):
/// the chain of seals from the floor on, the open segment against what was known to be on
/// disk, and, for what is unreadable, whether any of it may be needed to redo (past the
/// `checkpoint`).
fn examine(dir: &Path, floor: u64, checkpoint: u64, synced: Option<Synced>) -> Result<Plan> {
    let mut firsts = list_segments(dir)?;
    let mut remove = Vec::new();
    // Segments wholly below the floor: their removal was cut short.
    let below = firsts
        .windows(2)
        .take_while(|w| w[1] <= floor)
        .count()
        .min(firsts.len().saturating_sub(1));
    remove.extend(firsts.drain(..below));
    let mut scans = Vec::with_capacity(firsts.len());
    for &first in &firsts {
        scans.push(scan_segment(dir, first)?);
    }
    // A blank last file that the segment before does not name: the making of a segment (a
    // roll, or a start over) that a crash cut short. The one a seal names is the open
    // segment, not written yet.
    while let [.., before, last] = &scans[..] {
        if !last.blank || before.seal == Some(last.first) {
            break;
        }
        remove.push(last.first);
        scans.pop();
    }
    // How far the log went, when it was closed last (nothing was written after that).
    let closed_at = synced.filter(|s| s.closed).map(|s| s.seq);
    let mut lost: Vec<Lost> = Vec::new();
    let mut strays: Vec<u64> = Vec::new();
    let mut chain: Vec<usize> = Vec::new();
    let mut newest_lost = false;
    if scans.is_empty() {
        lost.push(Lost {
            from: floor,
            upto: closed_at,
            what: "every segment file is missing".into(),
        });
        newest_lost = true;
    } else if scans[0].first > floor {
        lost.push(Lost {
            from: floor,
            upto: Some(scans[0].first - 1),
            what: format!(
                "the segments before {} are missing",
                segment_name(scans[0].first)
            ),
        });
    }
    let mut i = 0;
    while i < scans.len() {
        chain.push(i);
        let s = &scans[i];
        if let Some(next) = s.seal {
            // The log went on in `next`: files between are not the log's.
            if let Some(j) = (i + 1..scans.len()).find(|&j| scans[j].first == next) {
                strays.extend(scans[i + 1..j].iter().map(|s| s.first));
                i = j;
                continue;
            }
            let after = (i + 1..scans.len()).find(|&j| scans[j].first > next && !scans[j].foreign);
            let end = after.unwrap_or(scans.len());
            strays.extend(scans[i + 1..end].iter().map(|s| s.first));
            lost.push(Lost {
                from: next,
                upto: after.map(|j| scans[j].first - 1).or(closed_at),
                what: format!("segment {} is missing", segment_name(next)),
            });
            match after {
                Some(j) => {
                    i = j;
                    continue;
                }
                None => {
                    newest_lost = true;
                    break;
                }
            }
        }
        // Not sealed: the open segment, unless a readable segment follows it.
        let Some(j) = (i + 1..scans.len()).find(|&j| !scans[j].foreign) else {
            strays.extend(scans[i + 1..].iter().map(|s| s.first));
            break;
        };
        strays.extend(scans[i + 1..j].iter().map(|s| s.first));
        lost.push(Lost {
            from: s.lost_from(),
            upto: Some(scans[j].first - 1),
            what: format!(
                "segment {} ends early ({} of its {} bytes are readable records)",
                segment_name(s.first),
                s.valid,
                s.file_len
            ),
        });
        i = j;
    }
    let mut durable = (HEADER, 0);
    let mut told = None;
    if let (false, Some(&o)) = (newest_lost, chain.last()) {
        let s = &scans[o];
        durable = s.header.map_or((HEADER, s.first.saturating_sub(1)), |h| {
            (h.durable_len as usize, h.durable_seq)
        });
        told = synced.filter(|m| m.first == s.first);
        if let Some(m) = told {
            if m.len as usize > durable.0 {
                durable = (m.len as usize, m.seq);
            }
        }
        if let Some(m) = synced.filter(|m| m.first > s.first) {
            lost.push(Lost {
                from: s.lost_from(),
                upto: closed_at,
                what: format!("segment {} (the newest) is missing", segment_name(m.first)),
            });
            newest_lost = true;
        } else if s.valid < durable.0 {
            lost.push(Lost {
                from: s.lost_from(),
                upto: told.filter(|m| m.closed).map(|m| m.seq),
                what: format!(
                    "segment {} (the newest) ends early: {} of its bytes are readable records, \
                     {} were on disk",
                    segment_name(s.first),
                    s.valid,
                    durable.0
                ),
            });
            newest_lost = true;
        }
    }
    if let Some(l) = lost
        .iter()
        .find(|l| l.upto.is_none_or(|upto| upto > checkpoint))
    {
        return Ok(Plan::Refuse(format!(
            "its change log is damaged ({}), and the data files may not have those writes \
             (they come after change {checkpoint}, the last the data files are known to \
             hold): nothing was opened. To open the database anyway, without them, move the \
             folder `{DIR}` out of its folder",
            l.describe()
        )));
    }
    for stray in &strays {
        tracing::warn!(
            "{} in the change log's folder is not part of the log: it is ignored",
            segment_name(*stray)
        );
    }
    if !lost.is_empty() {
        let what: Vec<String> = lost.iter().map(Lost::describe).collect();
        tracing::warn!(
            "the change log is damaged, only for resuming feeds (cursors from before the \
             damage have expired): {}",
            what.join("; ")
        );
    }
    if newest_lost {
        return Ok(Plan::Reset);
    }
    // Past the damage: cursors before it have expired.
    let raised = lost
        .iter()
        .filter_map(|l| l.upto)
        .map(|u| u + 1)
        .max()
        .unwrap_or(floor)
        .max(floor);
    let mut segments: Vec<Scanned> = Vec::with_capacity(chain.len());
    let mut scans: Vec<Option<Scanned>> = scans.into_iter().map(Some).collect();
    for &k in &chain {
        if let Some(s) = scans[k].take() {
            segments.push(s);
        }
    }
    // Segments wholly below the raised floor go.
    let gone = segments
        .windows(2)
        .take_while(|w| w[1].first <= raised)
        .count();
    remove.extend(segments.drain(..gone).map(|s| s.first));
    Ok(Plan::Keep(Kept {
        floor: raised,
        segments,
        remove,
        durable,
        told,
    }))
}

/// Starts the log over after change `seq` (see [`Plan::Reset`]): a new segment (its name on
/// disk) before the floor that names it is written, and the other files removed only after
/// that (a crash in between leaves a state the next open reads the same way).
fn start_over(
    storage: &Storage,
    meta: &Tree,
    dir: &Path,
    seq: u64,
    segment_bytes: usize,
) -> Result<(Mapped, Arc<File>)> {
    let first = seq.saturating_add(1);
    let made = create_segment(dir, first, segment_bytes)?;
    let mut batch = WriteBatch::default();
    batch.insert(meta, FLOOR_KEY.to_vec(), first.to_be_bytes().to_vec());
    batch.insert(meta, FORMAT_KEY.to_vec(), FORMAT.to_be_bytes().to_vec());
    // Every change up to `seq` is in the engine, or was lost with the log (see `examine`).
    batch.insert(meta, CHECKPOINT_KEY.to_vec(), seq.to_be_bytes().to_vec());
    batch.remove(meta, SYNCED_KEY.to_vec());
    storage.apply(&batch)?;
    storage.flush_blocking()?;
    let others: Vec<u64> = list_segments(dir)?
        .into_iter()
        .filter(|&f| f != first)
        .collect();
    remove_segments(dir, &others);
    Ok(made)
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
    /// checkpoint or two, no in-memory tail, and feeds cannot resume from it.
    pub(crate) fn open(
        storage: &Storage,
        db_dir: &Path,
        retention: Option<ChangeLogRetention>,
        seq: u64,
    ) -> Result<Self> {
        let resumable = retention.is_some();
        let segment_bytes = match resumable {
            true => SEGMENT_BYTES,
            false => REDO_SEGMENT_BYTES,
        };
        let retention = retention.unwrap_or(ChangeLogRetention {
            max_changes: None,
            max_age: None,
        });
        let dir = db_dir.join(DIR);
        let had_dir = dir.is_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create its directory", e))?;
        let meta = storage.tree(LOG_META_TREE)?;
        let checkpoint = read_be(&meta, CHECKPOINT_KEY)?.unwrap_or(0);
        let synced = match meta.get(SYNCED_KEY)? {
            Some(b) => Some(Synced::decode(&b).ok_or_else(damaged)?),
            None => None,
        };
        let plan = match (read_be(&meta, FLOOR_KEY)?, read_be(&meta, FORMAT_KEY)?) {
            // Not on in the last run: whatever is left of an older run has a gap after it.
            (None, _) => Plan::Reset,
            (Some(_), _) if !had_dir => {
                // Moved away (what a refused open says to do): its changes are given up.
                tracing::warn!(
                    "the change log's folder is missing: the log starts over, and what only it \
                     held is lost"
                );
                Plan::Reset
            }
            (Some(_), None) => Plan::Legacy,
            (Some(floor), Some(FORMAT)) => examine(&dir, floor, checkpoint, synced)?,
            (Some(_), Some(other)) => Plan::Refuse(format!(
                "its change log has format {other}, which this version cannot read"
            )),
        };
        let mut legacy = None;
        let mut told = Synced::default();
        let (floor, segments, map, sync, len, durable, last_seq);
        match plan {
            Plan::Refuse(reason) => {
                return Err(Error::Damaged {
                    path: db_dir.display().to_string(),
                    reason,
                })
            }
            Plan::Reset => {
                (map, sync) = start_over(storage, &meta, &dir, seq, segment_bytes)?;
                floor = seq.saturating_add(1);
                segments = VecDeque::from([Segment::new(floor, 0)]);
                (len, durable, last_seq) = (HEADER, HEADER, seq);
            }
            Plan::Legacy => {
                // Its records are redone by `recover` (which then makes this log the only
                // one); meanwhile commits go to a segment of this format, after them.
                let first = seq.saturating_add(1);
                legacy = Some(
                    list_segments(&dir)?
                        .into_iter()
                        .filter(|&f| f < first)
                        .collect::<Vec<_>>(),
                );
                (map, sync) = create_segment(&dir, first, segment_bytes)?;
                floor = first;
                segments = VecDeque::from([Segment::new(first, 0)]);
                (len, durable, last_seq) = (HEADER, HEADER, seq);
            }
            Plan::Keep(kept) => {
                let stored = read_be(&meta, FLOOR_KEY)?.unwrap_or(0);
                if kept.floor > stored {
                    // Before the files go: a floor below a missing segment reads as damage.
                    let mut batch = WriteBatch::default();
                    batch.insert(&meta, FLOOR_KEY.to_vec(), kept.floor.to_be_bytes().to_vec());
                    storage.apply(&batch)?;
                    storage.flush_blocking()?;
                }
                remove_segments(&dir, &kept.remove);
                floor = kept.floor;
                told = kept.told.unwrap_or_default();
                let open = kept
                    .segments
                    .last()
                    .expect("a kept log has an open segment");
                // A torn record at its end (the process died while copying it) is cut off:
                // its commit's documents were never written.
                len = open.valid.max(HEADER);
                let (mut m, s) = reopen_segment(&dir, open.first, len, segment_bytes)?;
                (durable, last_seq) = (kept.durable.0, open.last_seq);
                if open.header.is_none() {
                    // Torn while it was rewritten: what was known stays known.
                    let header = Header {
                        first: open.first,
                        durable_len: durable as u64,
                        durable_seq: kept.durable.1,
                    };
                    m.write_at(0, &header.encode());
                }
                (map, sync) = (m, s);
                segments = kept
                    .segments
                    .iter()
                    .map(|s| Segment {
                        entries: s.entries,
                        first_ms: s.first_ms,
                        last_ms: s.last_ms,
                        ..Segment::new(s.first, 0)
                    })
                    .collect();
            }
        }
        let total = segments.iter().map(|s| s.entries).sum();
        let segment_entries = match resumable {
            true => retention
                .max_changes
                .map_or(16_384, |m| (m / 16).clamp(64, 65_536)),
            false => REDO_SEGMENT_ENTRIES,
        };
        let log = ChangeLog {
            dir,
            meta: meta.clone(),
            storage: storage.clone(),
            resumable,
            segment_bytes,
            retention,
            segment_entries,
            segment_ms: retention.max_age.map(|a| (a.as_millis() as u64 / 8).max(1)),
            floor: AtomicU64::new(floor),
            legacy: Mutex::new(legacy),
            writer: Arc::new(Mutex::new(Writer {
                map,
                sync,
                len,
                segments,
                total,
                broken: None,
                last_ms: 0,
                last_seq,
                // Until `recover` has redone what follows the checkpoint.
                applied: checkpoint,
                checkpoint,
                durable,
                told,
                meta,
            })),
            last_watched: AtomicU64::new(0),
            spare: Mutex::new(Vec::new()),
            tail: Mutex::new(Tail::default()),
            created: Mutex::new(HashMap::new()),
        };
        for entry in log.meta.scan_prefix(CREATED_PREFIX) {
            let (k, v) = entry?;
            let name = String::from_utf8_lossy(&k[CREATED_PREFIX.len()..]).into_owned();
            let at = u64::from_be_bytes((&*v).try_into().map_err(|_| damaged())?);
            log.created.lock().insert(name, at);
        }
        // A flush of the storage makes the log durable first (see the module doc), and
        // records what it makes durable (`Writer::record_flush`). Weak: a log opened only to
        // be redone and removed (a database reopened without it) is gone after that.
        let writer = Arc::downgrade(&log.writer);
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
        Ok(log)
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
        Record::new(first, std::mem::take(&mut *self.spare.lock()))
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
        let fits = w.len + room <= w.map.cap;
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
        if w.len + seal.len() > w.map.cap {
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
        if w.len + bytes.len() <= w.map.cap {
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

    /// After a crash: the engine may have lost the newest documents whose records the log
    /// has. Redoes every commit after the checkpoint on the documents and index entries of
    /// `tables` (a table that no longer exists, or was created after the change, is skipped:
    /// it was dropped after the commit). Writing a document or index entry the engine kept
    /// again is harmless: commits are redone in order, so each key ends as the last one left
    /// it. A log of the first format is redone the same way, and then removed.
    pub(crate) fn recover(
        &self,
        storage: &Storage,
        tables: &HashMap<String, Arc<TableState>>,
    ) -> Result<()> {
        let checkpoint = self.writer.lock().checkpoint;
        let legacy = self.legacy.lock().take();
        // The segments to read, and where their records start.
        let (firsts, start) = match &legacy {
            Some(files) => (files.clone(), 0),
            None => (self.segment_firsts(), HEADER),
        };
        // The segment holding the change after the checkpoint, and all later ones.
        let from = firsts
            .iter()
            .rposition(|&f| f <= checkpoint.saturating_add(1))
            .unwrap_or(0);
        let mut redone = 0u64;
        let mut last = checkpoint;
        for &first in firsts.get(from..).unwrap_or_default() {
            let bytes = std::fs::read(self.dir.join(segment_name(first)))
                .map_err(|e| io_error("read a segment", e))?;
            for c in parse_segment(&bytes, start, first).commits {
                if c.first <= checkpoint {
                    continue;
                }
                let mut batch = WriteBatch::default();
                for e in c.entries() {
                    let e = e?;
                    last = last.max(e.seq);
                    let name = String::from_utf8_lossy(e.table);
                    let Some(table) = tables.get(&*name) else {
                        continue;
                    };
                    if e.seq <= self.created(&name) {
                        continue;
                    }
                    redo(&mut batch, table, &e)?;
                    redone += 1;
                }
                storage.apply(&batch)?;
            }
        }
        if last > checkpoint {
            if redone > 0 {
                tracing::info!("the change log redid {redone} changes the storage had lost");
            }
            storage.flush_blocking()?;
            self.writer.lock().set_checkpoint(storage, last)?;
            storage.flush_blocking()?;
        }
        {
            let mut w = self.writer.lock();
            w.applied = w.applied.max(last);
            w.last_seq = w.last_seq.max(last);
        }
        if let Some(files) = legacy {
            // From here on the log is of this format, from the segment `open` made on.
            let mut batch = WriteBatch::default();
            batch.insert(
                &self.meta,
                FLOOR_KEY.to_vec(),
                self.floor().to_be_bytes().to_vec(),
            );
            batch.insert(
                &self.meta,
                FORMAT_KEY.to_vec(),
                FORMAT.to_be_bytes().to_vec(),
            );
            storage.apply(&batch)?;
            storage.flush_blocking()?;
            remove_segments(&self.dir, &files);
        }
        Ok(())
    }

    /// Whether a commit whose last change is numbered `last` goes into the in-memory tail;
    /// `watched`: a feed is open. The tail serves resuming feeds, whose cursors only feeds
    /// hand out: a cursor within the tail's length comes from a feed open at most that many
    /// changes ago. So the tail is filled while a feed is open and for `TAIL` changes after
    /// the last one closed (every cursor that could read it from memory still does); after
    /// that it is emptied, and no longer costs the inserts that keep it (about 1.5 µs each:
    /// the documents of 16,384 changes held, and freed long after they were written).
    pub(crate) fn keep_tail(&self, watched: bool, last: u64) -> bool {
        if !self.resumable {
            return false;
        }
        if watched {
            self.last_watched.store(last, Ordering::Relaxed);
            return true;
        }
        let since = last.saturating_sub(self.last_watched.load(Ordering::Relaxed));
        if since < TAIL as u64 {
            return true;
        }
        let mut tail = self.tail.lock();
        if !tail.entries.is_empty() {
            // Nothing may be left with a gap after it.
            tail.entries = VecDeque::new();
        }
        false
    }

    /// Remembers a commit's changes to `table` in the in-memory tail, once they are in
    /// storage (the caller holds the commit lock).
    pub(crate) fn remember(&self, table: &str, changes: &[Committed]) {
        let mut tail = self.tail.lock();
        let id = tail.id(table);
        for c in changes {
            if tail.entries.len() == TAIL {
                // This frees the documents of a change 16,384 commits old (out of the cache
                // by now): part of what the tail costs (see `keep_tail`).
                tail.entries.pop_front();
            }
            let item = Change::row(Some(Arc::from(&c.key[..])), c.old.clone(), c.new.clone())
                .at(c.seq, c.commit);
            tail.entries.push_back(TailEntry { table: id, item });
        }
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
            .map(|a| now.saturating_sub(a.as_millis() as u64));
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

    /// Calls `f` with each change of `table` numbered `from` and above, in order (the
    /// caller holds the commit lock, so nothing is appended meanwhile). Recent changes are
    /// read from memory, older ones from the disk.
    ///
    /// A segment read from the disk must be whole (a closed one up to the seal that names
    /// the next, the open one up to what was written): one damaged since the log was opened
    /// fails with [`Error::Damaged`] rather than ending the changes early.
    pub(crate) fn for_each_from(
        &self,
        table: &str,
        from: u64,
        mut f: impl FnMut(&Logged<'_>) -> Result<()>,
    ) -> Result<()> {
        {
            // The tail holds every change from its first one on: a cursor at or after that
            // one reads from memory.
            let tail = self.tail.lock();
            let seq = |e: &TailEntry| e.item.change_seq().unwrap_or(0);
            if tail.entries.front().is_some_and(|e| seq(e) <= from) {
                let Some(id) = tail.names.iter().position(|n| &**n == table) else {
                    return Ok(());
                };
                let id = id as u32;
                let at = tail.entries.partition_point(|e| seq(e) < from);
                for e in tail.entries.range(at..) {
                    if e.table == id {
                        f(&Logged {
                            seq: seq(e),
                            commit: e.item.stamp().map_or(0, |(_, commit)| commit),
                            key: e.item.key().map_or(&[][..], |k| &k[..]),
                            old: e.item.old_arc(),
                            new: e.item.new_arc(),
                            plain: Some(&e.item),
                        })?;
                    }
                }
                return Ok(());
            }
        }
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
                    if e.seq < from || e.table != table.as_bytes() {
                        continue;
                    }
                    let (old, new) = (e.old.map(parse).transpose()?, e.new.map(parse).transpose()?);
                    f(&Logged {
                        seq: e.seq,
                        commit: c.first,
                        key: e.key,
                        old: old.as_ref(),
                        new: new.as_ref(),
                        plain: None,
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

/// Removes segment files (a failure leaves a file below the floor, removed on the next open).
fn remove_segments(dir: &Path, firsts: &[u64]) {
    for &first in firsts {
        if let Err(e) = std::fs::remove_file(dir.join(segment_name(first))) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("a segment of the change log could not be removed: {e}");
            }
        }
    }
}

/// Adds the writes of one logged change (its document and index entries) to `batch`.
fn redo(batch: &mut WriteBatch, table: &TableState, e: &RawEntry<'_>) -> Result<()> {
    match e.new {
        Some(new) => batch.insert(&table.docs, e.key.to_vec(), new.to_vec()),
        None => batch.remove(&table.docs, e.key.to_vec()),
    }
    let indexes = table.indexes.read();
    if indexes.is_empty() {
        return Ok(());
    }
    let old = e.old.map(parse).transpose()?;
    let new = e.new.map(parse).transpose()?;
    for ix in indexes.iter() {
        let keys = |d: &Option<Arc<Value>>| {
            d.as_deref()
                .map(|d| ix.compiled.keys(d, e.key))
                .unwrap_or_default()
        };
        let (before, after) = (keys(&old), keys(&new));
        for k in &before {
            if after.binary_search(k).is_err() {
                batch.remove(&ix.tree, k.clone());
            }
        }
        for k in after {
            if before.binary_search(&k).is_err() {
                batch.insert(&ix.tree, k, e.key.to_vec());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EngineConfig;
    use serde_json::json;

    fn storage(dir: &Path) -> Storage {
        let cfg = EngineConfig {
            path: Some(dir),
            temporary: false,
            cache_bytes: 1 << 20,
            flush_every_ms: None,
        };
        // The test reopens the files of the engine it just dropped.
        Storage::open_waiting_for_lock(cfg, std::time::Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("the storage did not open: {e:?}"))
    }

    /// As after a `kill -9` between a commit's record and its documents: reopening redoes
    /// the documents (not an aborted commit's, nor an earlier table's of the same name), and
    /// cuts off a torn record.
    #[test]
    fn recovery_redoes_the_documents_the_storage_lost() {
        let dir = std::env::temp_dir().join(format!("remodel-redo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let doc = |i: i64| serde_json::to_vec(&json!({"id": i})).unwrap();
        let torn_at;
        {
            let storage = storage(&dir);
            let log =
                ChangeLog::open(&storage, &dir, Some(ChangeLogRetention::default()), 0).unwrap();
            // Change 1 belongs to an earlier table `t`, created again after it.
            let mut r = log.record(1);
            r.push(1, "t", b"old", None, Some(&doc(0))).unwrap();
            log.write(&storage, r).unwrap();
            log.table_created(&storage, "t", 1).unwrap();
            let mut r = log.record(2);
            r.push(2, "t", b"a", None, Some(&doc(1))).unwrap();
            r.push(3, "t", b"b", None, Some(&doc(2))).unwrap();
            log.write(&storage, r).unwrap();
            // A commit whose documents failed.
            let mut r = log.record(4);
            r.push(4, "t", b"c", None, Some(&doc(3))).unwrap();
            log.write(&storage, r).unwrap();
            log.abort(4, 4);
            let mut r = log.record(5);
            r.push(5, "t", b"a", Some(&json!({"id": 1})), None).unwrap();
            log.write(&storage, r).unwrap();
            storage.flush_blocking().unwrap();
            torn_at = log.writer.lock().len;
            // A record the process died inside of.
            let mut r = log.record(6);
            r.push(6, "t", b"d", None, Some(&doc(4))).unwrap();
            let bytes = r.seal().to_vec();
            let mut w = log.writer.lock();
            w.map.write_at(torn_at, &bytes[..bytes.len() - 2]);
        }
        let storage = storage(&dir);
        let log = ChangeLog::open(&storage, &dir, Some(ChangeLogRetention::default()), 10).unwrap();
        assert_eq!(log.writer.lock().len, torn_at);
        let docs = storage.tree("t/t").unwrap();
        let table = Arc::new(TableState::new("t".into(), "id".into(), docs.clone()));
        let tables = HashMap::from([("t".to_string(), table)]);
        log.recover(&storage, &tables).unwrap();
        let get = |k: &[u8]| docs.get(k).unwrap().map(|b| b.to_vec());
        assert_eq!(get(b"old"), None, "an earlier table's change");
        assert_eq!(get(b"a"), None, "deleted by change 5");
        assert_eq!(get(b"b"), Some(doc(2)));
        assert_eq!(get(b"c"), None, "an aborted commit");
        assert_eq!(get(b"d"), None, "a torn record");
        let mut seqs = Vec::new();
        log.for_each_from("t", 0, |c| {
            seqs.push(c.seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(seqs, [1, 2, 3, 5]);
        drop((log, storage));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The commits of records written from the start of `bytes`, and where they end.
    fn commits(bytes: &[u8]) -> (Vec<RawCommit<'_>>, usize) {
        let p = parse_segment(bytes, 0, 1);
        (p.commits, p.valid)
    }

    #[test]
    fn records_round_trip_and_stop_at_a_torn_end() {
        let new = serde_json::to_vec(&json!({"id": 1, "x": 2})).unwrap();
        let mut r = Record::new(7, Vec::new());
        r.push(7, "t", b"k1", Some(&json!({"id": 1})), Some(&new))
            .unwrap();
        r.push(8, "u", b"k2", None, None).unwrap();
        let mut bytes = r.seal().to_vec();
        let (cs, valid) = commits(&bytes);
        assert_eq!((cs.len(), valid), (1, bytes.len()));
        let es: Vec<_> = cs[0].entries().map(Result::unwrap).collect();
        assert_eq!(
            (es[0].seq, es[0].table, es[0].key),
            (7, &b"t"[..], &b"k1"[..])
        );
        assert_eq!(
            parse(es[0].old.unwrap()).unwrap().as_ref(),
            &json!({"id": 1})
        );
        assert_eq!(es[0].new, Some(&new[..]));
        assert!(es[1].old.is_none() && es[1].new.is_none());
        assert_eq!(cs[0].checked_last(), Some(8));
        // An aborted commit is not read back; a torn one ends the segment.
        let whole = bytes.len();
        bytes.extend_from_slice(&abort_record(7, 8));
        assert!(commits(&bytes).0.is_empty());
        bytes.truncate(whole);
        let mut again = Record::new(9, Vec::new());
        again.push(9, "t", b"k3", None, Some(b"{}")).unwrap();
        bytes.extend_from_slice(again.seal());
        let full = bytes.len();
        bytes.truncate(full - 3);
        let (cs, valid) = commits(&bytes);
        assert_eq!((cs.len(), valid), (1, whole));
        // A flipped byte is caught by the checksum.
        let mut bad = again.seal().to_vec();
        bad[FRAME + 3] ^= 1;
        assert_eq!(commits(&bad).1, 0);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("remodel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn seqs(log: &ChangeLog, table: &str) -> Vec<u64> {
        let mut seqs = Vec::new();
        log.for_each_from(table, 0, |c| {
            seqs.push(c.seq);
            Ok(())
        })
        .unwrap();
        seqs
    }

    /// A log of the first format (records from the file's start, no header, no seal, no
    /// format in the engine) is redone, then started over in this format after the
    /// database's last change.
    #[test]
    fn a_log_of_the_first_format_is_redone_then_started_over() {
        let dir = temp_dir("legacy-log");
        let doc = serde_json::to_vec(&json!({"id": 1})).unwrap();
        {
            let storage = storage(&dir);
            let meta = storage.tree(LOG_META_TREE).unwrap();
            let mut batch = WriteBatch::default();
            batch.insert(&meta, FLOOR_KEY.to_vec(), 1u64.to_be_bytes().to_vec());
            batch.insert(&meta, CHECKPOINT_KEY.to_vec(), 0u64.to_be_bytes().to_vec());
            storage.apply(&batch).unwrap();
            storage.flush_blocking().unwrap();
            std::fs::create_dir_all(dir.join(DIR)).unwrap();
            let mut r = Record::new(1, Vec::new());
            r.push(1, "t", b"a", None, Some(&doc)).unwrap();
            let mut bytes = r.seal().to_vec();
            bytes.resize(4096, 0);
            std::fs::write(dir.join(DIR).join(segment_name(1)), bytes).unwrap();
        }
        let storage = storage(&dir);
        let log = ChangeLog::open(&storage, &dir, Some(ChangeLogRetention::default()), 10).unwrap();
        let docs = storage.tree("t/t").unwrap();
        let table = Arc::new(TableState::new("t".into(), "id".into(), docs.clone()));
        let tables = HashMap::from([("t".to_string(), table)]);
        log.recover(&storage, &tables).unwrap();
        assert_eq!(docs.get(b"a").unwrap().map(|b| b.to_vec()), Some(doc));
        assert_eq!(list_segments(&dir.join(DIR)).unwrap(), [11]);
        assert_eq!(read_be(&log.meta, FORMAT_KEY).unwrap(), Some(FORMAT));
        assert_eq!(read_be(&log.meta, FLOOR_KEY).unwrap(), Some(11));
        assert_eq!(log.floor(), 11);
        drop((log, storage, docs, tables));
        // Opened again, it is a log of this format, whole.
        let again = self::storage(&dir);
        let log = ChangeLog::open(&again, &dir, Some(ChangeLogRetention::default()), 20).unwrap();
        assert_eq!(log.floor(), 11);
        drop((log, again));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash inside a roll (the next segment made, the open one not sealed yet) is not
    /// damage: the next segment goes, and the log goes on in the one it had.
    #[test]
    fn an_interrupted_roll_is_not_damage() {
        let dir = temp_dir("interrupted-roll");
        let doc = |i: i64| serde_json::to_vec(&json!({"id": i})).unwrap();
        let len;
        {
            let storage = storage(&dir);
            let log =
                ChangeLog::open(&storage, &dir, Some(ChangeLogRetention::default()), 0).unwrap();
            for i in 1..=5u64 {
                let mut r = log.record(i);
                r.push(i, "t", &i.to_be_bytes(), None, Some(&doc(i as i64)))
                    .unwrap();
                log.write(&storage, r).unwrap();
                log.committed(&storage, 1).unwrap();
            }
            len = log.writer.lock().len;
            drop(create_segment(&dir.join(DIR), 6, 1 << 20).unwrap());
        }
        let storage = storage(&dir);
        let log = ChangeLog::open(&storage, &dir, Some(ChangeLogRetention::default()), 5).unwrap();
        assert_eq!(list_segments(&dir.join(DIR)).unwrap(), [1]);
        assert_eq!(log.writer.lock().len, len);
        assert_eq!(log.floor(), 1);
        assert_eq!(seqs(&log, "t"), [1, 2, 3, 4, 5]);
        drop((log, storage));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Records the checkpoint does not cover, damaged: the log may hold writes the engine
    /// does not have, so it is refused (`Error::Damaged`), and nothing is changed on disk.
    #[test]
    fn damage_past_the_checkpoint_is_refused() {
        let dir = temp_dir("refused-log");
        let doc = |i: i64| serde_json::to_vec(&json!({"id": i})).unwrap();
        {
            let storage = storage(&dir);
            let log =
                ChangeLog::open(&storage, &dir, Some(ChangeLogRetention::default()), 0).unwrap();
            for i in 1..=5u64 {
                let mut r = log.record(i);
                r.push(i, "t", &i.to_be_bytes(), None, Some(&doc(i as i64)))
                    .unwrap();
                log.write(&storage, r).unwrap();
                // No `committed`: as if the documents never reached the engine.
            }
            log.sync(&storage).unwrap();
        }
        let path = dir.join(DIR).join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let storage = storage(&dir);
        let opened = ChangeLog::open(&storage, &dir, Some(ChangeLogRetention::default()), 5);
        assert!(
            matches!(opened, Err(Error::Damaged { .. })),
            "{:?}",
            opened.err()
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        drop(storage);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_checksum_sees_every_byte() {
        let base: Vec<u8> = (0..37u8).collect();
        let sum = checksum(&base);
        for i in 0..base.len() {
            let mut b = base.clone();
            b[i] ^= 0x10;
            assert_ne!(checksum(&b), sum, "byte {i}");
        }
        assert_ne!(checksum(&base[..36]), sum);
    }
}
