//! The durable change log: every committed change (table, key, document before and after),
//! keyed by its sequence number, written in the same atomic storage batch as the documents.
//! Feeds resume from it (`Changes::resume_from`): a client that saw every change up to a
//! cursor reads exactly the ones after it, across disconnects and restarts.
//!
//! Retention is by count and/or age ([`ChangeLogRetention`]). Trimming is amortised: it runs
//! when the log holds a sixteenth more entries than it keeps (or, for age, at that cadence),
//! removing the surplus in one batch, together with the new floor: the sequence number above
//! which every change is still in the log. A cursor below the floor has expired.

use super::write::Committed;
use crate::storage::{Storage, Tree, WriteBatch};
use crate::{Error, Result};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LOG_TREE: &str = "__remodel_changelog";
const LOG_META_TREE: &str = "__remodel_changelog_meta";
/// The floor (see the module doc), big-endian: every change numbered this or above is in
/// the log, with all its items.
const FLOOR_KEY: &[u8] = b"floor";

/// How much of the change log is kept (see [`crate::Config::change_log`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeLogRetention {
    /// Keep at most this many changes (at least 1); `None`: no count limit.
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

/// An open change log.
pub(crate) struct ChangeLog {
    tree: Tree,
    meta: Tree,
    retention: ChangeLogRetention,
    /// Every change numbered this or above is in the log.
    floor: AtomicU64,
    /// Entries in the log (kept under the commit lock; atomics only to share the struct).
    count: AtomicU64,
    /// Entries written since the last age check.
    since_check: AtomicU64,
    /// The newest changes, in memory, as committed (shared with the feeds' items): a feed
    /// resuming from a recent cursor (a reconnect) reads them without touching the disk.
    tail: Mutex<VecDeque<(Arc<str>, Committed)>>,
    /// Tables created while the log was on: the last sequence number before each was made.
    created: Mutex<HashMap<String, u64>>,
}

/// Where the creation numbers of tables are kept in the meta tree.
const CREATED_PREFIX: &[u8] = b"created/";

/// How many of the newest changes the log keeps in memory as well.
const TAIL: usize = 16_384;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Entry layout: timestamp (ms, u64 BE), the first sequence number of its commit (u64 BE),
/// table name length (u16 BE) and name, key length (u32 BE) and key, flags (bit 0: old,
/// bit 1: new), old length (u32 BE) and old JSON, then the new JSON to the end. The table
/// name comes before the documents so that replay skips other tables without parsing JSON.
fn encode(
    commit: u64,
    table: &str,
    key: &[u8],
    old: Option<&Value>,
    new: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let old = old.map(serde_json::to_vec).transpose()?;
    let name = table.as_bytes();
    let mut out = Vec::with_capacity(
        27 + name.len() + key.len() + old.as_ref().map_or(0, Vec::len) + new.map_or(0, <[u8]>::len),
    );
    out.extend_from_slice(&now_ms().to_be_bytes());
    out.extend_from_slice(&commit.to_be_bytes());
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.push(u8::from(old.is_some()) | (u8::from(new.is_some()) << 1));
    let old = old.unwrap_or_default();
    out.extend_from_slice(&(old.len() as u32).to_be_bytes());
    out.extend_from_slice(&old);
    if let Some(n) = new {
        out.extend_from_slice(n);
    }
    Ok(out)
}

fn damaged() -> Error {
    Error::storage("an entry of the change log is damaged")
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

fn be_u64(b: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| damaged())?))
}

fn timestamp(entry: &[u8]) -> Result<u64> {
    be_u64(entry.get(..8).ok_or_else(damaged)?)
}

/// Decodes an entry of `table` (`None` for an entry of another table).
/// The commit an entry belongs to (its first sequence number).
fn commit_of(entry: &[u8]) -> Result<u64> {
    be_u64(entry.get(8..16).ok_or_else(damaged)?)
}

/// The table an entry is about.
fn table_of(mut b: &[u8]) -> Result<String> {
    take(&mut b, 16)?;
    let n = u16::from_be_bytes(take(&mut b, 2)?.try_into().map_err(|_| damaged())?) as usize;
    Ok(String::from_utf8_lossy(take(&mut b, n)?).into_owned())
}

fn decode(seq: u64, mut b: &[u8], table: &str) -> Result<Option<Committed>> {
    take(&mut b, 16)?;
    let n = u16::from_be_bytes(take(&mut b, 2)?.try_into().map_err(|_| damaged())?) as usize;
    if take(&mut b, n)? != table.as_bytes() {
        return Ok(None);
    }
    let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().map_err(|_| damaged())?) as usize;
    let key = take(&mut b, n)?.to_vec();
    let flags = take(&mut b, 1)?[0];
    let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().map_err(|_| damaged())?) as usize;
    let old = take(&mut b, n)?;
    let parse = |bytes: &[u8]| -> Result<Arc<Value>> {
        serde_json::from_slice(bytes).map(Arc::new).map_err(|e| {
            Error::serialization_from(format!("a change log entry is unreadable: {e}"), e)
        })
    };
    Ok(Some(Committed {
        seq,
        key,
        old: if flags & 1 != 0 {
            Some(parse(old)?)
        } else {
            None
        },
        new: if flags & 2 != 0 {
            Some(parse(b)?)
        } else {
            None
        },
    }))
}

impl ChangeLog {
    /// Opens the log. `seq` is the last sequence number of the database: when the log was
    /// not on in the previous run (or never), changes up to there are not in it, so the
    /// floor starts there (and a stale log of an earlier run is cleared).
    pub(crate) fn open(storage: &Storage, retention: ChangeLogRetention, seq: u64) -> Result<Self> {
        let tree = storage.tree(LOG_TREE)?;
        let meta = storage.tree(LOG_META_TREE)?;
        let floor = match meta.get(FLOOR_KEY)? {
            Some(b) => be_u64(&b)?,
            None => {
                // Not on in the last run: whatever is left of an older run has a gap after it.
                let mut batch = WriteBatch::default();
                for entry in tree.iter() {
                    batch.remove(&tree, entry?.0.to_vec());
                }
                let floor = seq.saturating_add(1);
                batch.insert(&meta, FLOOR_KEY.to_vec(), floor.to_be_bytes().to_vec());
                storage.apply(&batch)?;
                storage.flush_blocking()?;
                floor
            }
        };
        let log = ChangeLog {
            count: AtomicU64::new(tree.len() as u64),
            tree,
            meta,
            retention,
            floor: AtomicU64::new(floor),
            since_check: AtomicU64::new(0),
            tail: Mutex::new(VecDeque::new()),
            created: Mutex::new(HashMap::new()),
        };
        for entry in log.meta.scan_prefix(CREATED_PREFIX) {
            let (k, v) = entry?;
            let name = String::from_utf8_lossy(&k[CREATED_PREFIX.len()..]).into_owned();
            log.created.lock().insert(name, be_u64(&v)?);
        }
        Ok(log)
    }

    /// Marks the log as off (the database opened without it): a later open with the log
    /// starts a new one, since the changes written meanwhile are not in it.
    pub(crate) fn disable(storage: &Storage) -> Result<()> {
        let meta = storage.tree(LOG_META_TREE)?;
        if meta.get(FLOOR_KEY)?.is_some() {
            let mut batch = WriteBatch::default();
            batch.remove(&meta, FLOOR_KEY.to_vec());
            storage.apply(&batch)?;
        }
        Ok(())
    }

    /// Adds one change of the commit whose first sequence number is `commit` to the log's
    /// batch. `new` is the new document's stored bytes.
    ///
    /// The log's batch is applied just before the documents' (and removed again if those
    /// fail): after a crash between the two, [`ChangeLog::recover`] finds the last commit's
    /// entries without their documents and removes them. So the log holds exactly the
    /// committed changes, at the cost of one more storage write per commit rather than
    /// making every single-document commit a journaled multi-key batch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &self,
        batch: &mut WriteBatch,
        commit: u64,
        seq: u64,
        table: &str,
        key: &[u8],
        old: Option<&Value>,
        new: Option<&[u8]>,
    ) -> Result<()> {
        let entry = encode(commit, table, key, old, new)?;
        batch.insert(&self.tree, seq.to_be_bytes().to_vec(), entry);
        Ok(())
    }

    /// Removes the entries `from..=to` of a commit whose documents could not be written.
    pub(crate) fn unwrite(&self, storage: &Storage, from: u64, to: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        for seq in from..=to {
            batch.remove(&self.tree, seq.to_be_bytes().to_vec());
        }
        storage.apply(&batch)
    }

    /// After a crash: the last commit's entries may have reached the disk without its
    /// documents (they are written first). Its first change says which: when the document
    /// is not as the entry has it (`current` reads it), the commit did not happen and its
    /// entries go. Earlier commits are complete (the storage keeps a prefix of its writes).
    /// `current` gives `None` for a table that no longer exists (its entries stay: it was
    /// dropped after the commit).
    pub(crate) fn recover(
        &self,
        storage: &Storage,
        current: impl Fn(&str, &[u8]) -> Result<Option<Option<Value>>>,
    ) -> Result<()> {
        let Some(last) = self.tree.iter().next_back() else {
            return Ok(());
        };
        let commit = commit_of(&last?.1)?;
        let from = || Bound::Included(commit.to_be_bytes().to_vec());
        let Some(first) = self.tree.range(from(), Bound::Unbounded).next() else {
            return Ok(());
        };
        let (k, v) = first?;
        let table = table_of(&v)?;
        let Some(c) = decode(be_u64(&k)?, &v, &table)? else {
            return Ok(());
        };
        match current(&table, &c.key)? {
            None => return Ok(()),
            Some(doc) if doc.as_ref() == c.new.as_deref() => return Ok(()),
            Some(_) => {}
        }
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for entry in self.tree.range(from(), Bound::Unbounded) {
            batch.remove(&self.tree, entry?.0.to_vec());
            n += 1;
        }
        storage.apply(&batch)?;
        storage.flush_blocking()?;
        self.count.fetch_sub(n, Ordering::AcqRel);
        Ok(())
    }

    /// Remembers a commit's changes to `table` in the in-memory tail, once they are in
    /// storage (the caller holds the commit lock).
    pub(crate) fn remember(&self, table: &Arc<str>, changes: &[Committed]) {
        let mut tail = self.tail.lock();
        for c in changes {
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back((table.clone(), c.clone()));
        }
    }

    /// Records that `table` was created after change `seq`.
    pub(crate) fn table_created(&self, storage: &Storage, table: &str, seq: u64) -> Result<()> {
        let mut key = CREATED_PREFIX.to_vec();
        key.extend_from_slice(table.as_bytes());
        let mut batch = WriteBatch::default();
        batch.insert(&self.meta, key, seq.to_be_bytes().to_vec());
        storage.apply(&batch)?;
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

    /// After a commit of `n` changes (under the commit lock): trims the log when it holds a
    /// sixteenth more than it keeps, or (every sixteenth of the count limit, at least 1,024
    /// entries) when its oldest entry is past the age limit.
    pub(crate) fn committed(&self, storage: &Storage, n: u64) -> Result<()> {
        let count = self.count.fetch_add(n, Ordering::AcqRel) + n;
        let slack = self
            .retention
            .max_changes
            .map_or(1024, |m| (m / 16).max(64));
        let mut remove = 0;
        if let Some(max) = self.retention.max_changes {
            if count > max.max(1) + slack {
                remove = count - max.max(1);
            }
        }
        let mut cutoff = None;
        if let Some(age) = self.retention.max_age {
            let since = self.since_check.fetch_add(n, Ordering::AcqRel) + n;
            if since >= slack.min(1024) || remove > 0 {
                self.since_check.store(0, Ordering::Release);
                cutoff = Some(now_ms().saturating_sub(age.as_millis() as u64));
            }
        }
        if remove == 0 && cutoff.is_none() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut removed = 0u64;
        let mut last = None;
        for entry in self.tree.iter() {
            let (k, v) = entry?;
            let old_enough = cutoff.is_some_and(|c| timestamp(&v).is_ok_and(|t| t < c));
            if removed >= remove && !old_enough {
                break;
            }
            batch.remove(&self.tree, k.to_vec());
            last = Some(be_u64(&k)?);
            removed += 1;
        }
        let Some(last) = last else { return Ok(()) };
        // A cursor at the last removed change has lost its later items too: it expires.
        let floor = last.saturating_add(1);
        batch.insert(&self.meta, FLOOR_KEY.to_vec(), floor.to_be_bytes().to_vec());
        storage.apply(&batch)?;
        self.floor.store(floor, Ordering::Release);
        self.count.fetch_sub(removed, Ordering::AcqRel);
        Ok(())
    }

    /// Calls `f` with each change of `table` numbered `from` and above, in order (the
    /// caller holds the commit lock, so nothing is appended meanwhile). Recent changes are
    /// read from memory, older ones from the disk.
    pub(crate) fn for_each_from(
        &self,
        table: &str,
        from: u64,
        mut f: impl FnMut(&Committed) -> Result<()>,
    ) -> Result<()> {
        {
            // The tail holds every change from its first one on: a cursor at or after that
            // one reads from memory.
            let tail = self.tail.lock();
            if tail.front().is_some_and(|(_, c)| c.seq <= from) {
                let at = tail.partition_point(|(_, c)| c.seq < from);
                for (t, c) in tail.range(at..) {
                    if &**t == table {
                        f(c)?;
                    }
                }
                return Ok(());
            }
        }
        let entries = self.tree.range(
            Bound::Included(from.to_be_bytes().to_vec()),
            Bound::Unbounded,
        );
        for entry in entries {
            let (k, v) = entry?;
            if let Some(c) = decode(be_u64(&k)?, &v, table)? {
                f(&c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EngineConfig;
    use serde_json::json;

    #[test]
    fn recovery_removes_the_last_commit_when_its_documents_are_missing() {
        let storage = Storage::open(EngineConfig {
            path: None,
            temporary: true,
            cache_bytes: 1 << 20,
            flush_every_ms: None,
        })
        .unwrap();
        let log = ChangeLog::open(&storage, ChangeLogRetention::default(), 0).unwrap();
        let doc = |i: i64| serde_json::to_vec(&json!({"id": i})).unwrap();
        let mut batch = WriteBatch::default();
        log.append(&mut batch, 1, 1, "t", b"a", None, Some(&doc(1)))
            .unwrap();
        storage.apply(&batch).unwrap();
        // A two-change commit whose documents never made it.
        let mut batch = WriteBatch::default();
        log.append(&mut batch, 2, 2, "t", b"b", None, Some(&doc(2)))
            .unwrap();
        log.append(&mut batch, 2, 3, "t", b"c", None, Some(&doc(3)))
            .unwrap();
        storage.apply(&batch).unwrap();
        let seqs = |log: &ChangeLog| -> Vec<u64> {
            let mut seqs = Vec::new();
            log.for_each_from("t", 0, |c| {
                seqs.push(c.seq);
                Ok(())
            })
            .unwrap();
            seqs
        };
        // Its document is as the entry says: the commit happened, nothing goes.
        log.recover(&storage, |_, k| {
            Ok(Some((k == b"b").then(|| json!({"id": 2}))))
        })
        .unwrap();
        assert_eq!(seqs(&log), [1, 2, 3]);
        // A table that is gone: nothing goes either.
        log.recover(&storage, |_, _| Ok(None)).unwrap();
        assert_eq!(seqs(&log), [1, 2, 3]);
        // Not there: the whole last commit goes, the one before stays.
        log.recover(&storage, |_, _| Ok(Some(None))).unwrap();
        assert_eq!(seqs(&log), [1]);
        log.recover(&storage, |_, k| {
            Ok(Some((k == b"a").then(|| json!({"id": 1}))))
        })
        .unwrap();
        assert_eq!(seqs(&log), [1]);
    }

    #[test]
    fn entries_round_trip_and_skip_other_tables() {
        let new = serde_json::to_vec(&json!({"id": 1, "x": 2})).unwrap();
        let e = encode(7, "t", b"k1", Some(&json!({"id": 1})), Some(&new)).unwrap();
        let c = decode(7, &e, "t").unwrap().unwrap();
        assert_eq!(c.seq, 7);
        assert_eq!(c.key, b"k1");
        assert_eq!(c.old.as_deref(), Some(&json!({"id": 1})));
        assert_eq!(c.new.as_deref(), Some(&json!({"id": 1, "x": 2})));
        assert!(decode(7, &e, "other").unwrap().is_none());
        let d = encode(8, "t", b"k1", None, None).unwrap();
        let c = decode(8, &d, "t").unwrap().unwrap();
        assert!(c.old.is_none() && c.new.is_none());
        assert!(decode(9, &e[..12], "t").is_err());
    }
}
