//! Opening the change log: examining what is on disk (see the log's module doc, "Damage"),
//! deciding what it comes to ([`Plan`]), carrying that out ([`Opened`]), and, once the tables
//! are loaded, redoing into storage the commits the engine may have lost
//! ([`ChangeLog::recover`]).

use super::record::{parse, parse_segment, Header, Parsed, RawEntry, Synced, HEADER};
use super::segment::{
    create_segment, list_segments, remove_segments, reopen_segment, segment_name, Mapped,
};
use super::{
    damaged, io_error, read_be, ChangeLog, Segment, CHECKPOINT_KEY, DIR, FLOOR_KEY, FORMAT,
    FORMAT_KEY, SYNCED_KEY,
};
use crate::db::TableState;
use crate::storage::{Storage, Tree, WriteBatch};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

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

/// What the log on disk comes to (see [`plan`] and [`examine`]).
pub(super) enum Plan {
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
pub(super) struct Kept {
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

/// What the log on disk comes to, from what the engine says of it (its floor, format,
/// checkpoint and what it was told of the open segment) and whether its folder is there.
pub(super) fn plan(meta: &Tree, dir: &Path, had_dir: bool, checkpoint: u64) -> Result<Plan> {
    let synced = match meta.get(SYNCED_KEY)? {
        Some(b) => Some(Synced::decode(&b).ok_or_else(damaged)?),
        None => None,
    };
    Ok(
        match (read_be(meta, FLOOR_KEY)?, read_be(meta, FORMAT_KEY)?) {
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
            (Some(floor), Some(FORMAT)) => examine(dir, floor, checkpoint, synced)?,
            (Some(_), Some(other)) => Plan::Refuse(format!(
                "its change log has format {other}, which this version cannot read"
            )),
        },
    )
}

/// Reads the segments in `dir` and tells what they come to (see the module doc, "Damage"):
/// the chain of seals from the floor on, the open segment against what was known to be on
/// disk, and, for what is unreadable, whether any of it may be needed to redo (past the
/// `checkpoint`).
fn examine(dir: &Path, floor: u64, checkpoint: u64, synced: Option<Synced>) -> Result<Plan> {
    let (scans, remove) = scan_files(dir, floor)?;
    // How far the log went, when it was closed last (nothing was written after that).
    let closed_at = synced.filter(|s| s.closed).map(|s| s.seq);
    let mut chain = follow_seals(&scans, floor, closed_at);
    let (durable, told) = check_open_segment(&scans, &mut chain, synced, closed_at);
    if let Some(reason) = refusal(&chain.lost, checkpoint) {
        return Ok(Plan::Refuse(reason));
    }
    warn_of_damage(&chain);
    if chain.newest_lost {
        return Ok(Plan::Reset);
    }
    Ok(Plan::Keep(keep(scans, chain, floor, remove, durable, told)))
}

/// The segment files in `dir` from the floor on, read, and the files to remove: segments
/// wholly below the floor (their removal was cut short), and a blank last one the segment
/// before does not name (the making of a segment, a roll or a start over, that a crash cut
/// short; the one a seal names is the open segment, not written yet).
fn scan_files(dir: &Path, floor: u64) -> Result<(Vec<Scanned>, Vec<u64>)> {
    let mut firsts = list_segments(dir)?;
    let mut remove = Vec::new();
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
    while let [.., before, last] = &scans[..] {
        if !last.blank || before.seal == Some(last.first) {
            break;
        }
        remove.push(last.first);
        scans.pop();
    }
    Ok((scans, remove))
}

/// The log's segments as the chain of seals links them (see [`follow_seals`]).
#[derive(Default)]
struct Chain {
    /// The scans of the log's segments (indexes), oldest first; the last one is open.
    links: Vec<usize>,
    /// Files named like segments that are not in the chain.
    strays: Vec<u64>,
    /// What the log may have lost.
    lost: Vec<Lost>,
    /// Its newest part is lost: how far it went is not known, and it starts over.
    newest_lost: bool,
}

/// Follows the chain of seals from the first segment: each closed segment must name the
/// next, and an unsealed one is the open segment unless a readable segment follows it.
fn follow_seals(scans: &[Scanned], floor: u64, closed_at: Option<u64>) -> Chain {
    let mut c = Chain::default();
    if scans.is_empty() {
        c.lost.push(Lost {
            from: floor,
            upto: closed_at,
            what: "every segment file is missing".into(),
        });
        c.newest_lost = true;
    } else if scans[0].first > floor {
        c.lost.push(Lost {
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
        c.links.push(i);
        let s = &scans[i];
        if let Some(next) = s.seal {
            // The log went on in `next`: files between are not the log's.
            if let Some(j) = (i + 1..scans.len()).find(|&j| scans[j].first == next) {
                c.strays.extend(scans[i + 1..j].iter().map(|s| s.first));
                i = j;
                continue;
            }
            let after = (i + 1..scans.len()).find(|&j| scans[j].first > next && !scans[j].foreign);
            let end = after.unwrap_or(scans.len());
            c.strays.extend(scans[i + 1..end].iter().map(|s| s.first));
            c.lost.push(Lost {
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
                    c.newest_lost = true;
                    break;
                }
            }
        }
        // Not sealed: the open segment, unless a readable segment follows it.
        let Some(j) = (i + 1..scans.len()).find(|&j| !scans[j].foreign) else {
            c.strays.extend(scans[i + 1..].iter().map(|s| s.first));
            break;
        };
        c.strays.extend(scans[i + 1..j].iter().map(|s| s.first));
        c.lost.push(Lost {
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
    c
}

/// Checks the open segment (the chain's last) against what was known to be on disk: what
/// its header says and what the engine was told (`synced`). Returns its bytes known to be on
/// disk (up to which change) and what the engine was told of it.
fn check_open_segment(
    scans: &[Scanned],
    chain: &mut Chain,
    synced: Option<Synced>,
    closed_at: Option<u64>,
) -> ((usize, u64), Option<Synced>) {
    let mut durable = (HEADER, 0);
    let mut told = None;
    let (false, Some(&o)) = (chain.newest_lost, chain.links.last()) else {
        return (durable, told);
    };
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
        chain.lost.push(Lost {
            from: s.lost_from(),
            upto: closed_at,
            what: format!("segment {} (the newest) is missing", segment_name(m.first)),
        });
        chain.newest_lost = true;
    } else if s.valid < durable.0 {
        chain.lost.push(Lost {
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
        chain.newest_lost = true;
    }
    (durable, told)
}

/// Why the log may not open: a part of what it lost is past the `checkpoint` (the engine
/// may not have those writes: only the log had them).
fn refusal(lost: &[Lost], checkpoint: u64) -> Option<String> {
    let l = lost
        .iter()
        .find(|l| l.upto.is_none_or(|upto| upto > checkpoint))?;
    Some(format!(
        "its change log is damaged ({}), and the data files may not have those writes \
         (they come after change {checkpoint}, the last the data files are known to \
         hold): nothing was opened. To open the database anyway, without them, move the \
         folder `{DIR}` out of its folder",
        l.describe()
    ))
}

/// Says what of the log is ignored (strays) or lost (only for resuming: cursors from before
/// the damage have expired).
fn warn_of_damage(chain: &Chain) {
    for stray in &chain.strays {
        tracing::warn!(
            "{} in the change log's folder is not part of the log: it is ignored",
            segment_name(*stray)
        );
    }
    if !chain.lost.is_empty() {
        let what: Vec<String> = chain.lost.iter().map(Lost::describe).collect();
        tracing::warn!(
            "the change log is damaged, only for resuming feeds (cursors from before the \
             damage have expired): {}",
            what.join("; ")
        );
    }
}

/// The log kept: its chain of segments from past the damage on (cursors before it have
/// expired), the ones wholly below that floor removed.
fn keep(
    scans: Vec<Scanned>,
    chain: Chain,
    floor: u64,
    mut remove: Vec<u64>,
    durable: (usize, u64),
    told: Option<Synced>,
) -> Kept {
    let raised = chain
        .lost
        .iter()
        .filter_map(|l| l.upto)
        .map(|u| u + 1)
        .max()
        .unwrap_or(floor)
        .max(floor);
    let mut segments: Vec<Scanned> = Vec::with_capacity(chain.links.len());
    let mut scans: Vec<Option<Scanned>> = scans.into_iter().map(Some).collect();
    for &k in &chain.links {
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
    Kept {
        floor: raised,
        segments,
        remove,
        durable,
        told,
    }
}

/// The log on disk once its [`Plan`] is carried out: where its writer starts.
pub(super) struct Opened {
    /// Every change numbered this or above is in the log.
    pub(super) floor: u64,
    /// Oldest first; the last one is open.
    pub(super) segments: VecDeque<Segment>,
    /// The open segment, mapped, and a handle on it.
    pub(super) map: Mapped,
    pub(super) sync: Arc<File>,
    /// Bytes of the open segment in use (its header and valid records), and of them the
    /// ones known to be on disk.
    pub(super) len: usize,
    pub(super) durable: usize,
    /// The last change number a record used.
    pub(super) last_seq: u64,
    /// What the engine was last told of the open segment.
    pub(super) told: Synced,
    /// Segments of the first format, redone by [`ChangeLog::recover`], then removed.
    pub(super) legacy: Option<Vec<u64>>,
}

impl Opened {
    /// Carries out `plan` for a log in `dir` (of the database in `db_dir`, whose last change
    /// is `seq`); a refused one is [`Error::Damaged`].
    pub(super) fn carry_out(
        plan: Plan,
        storage: &Storage,
        meta: &Tree,
        (db_dir, dir): (&Path, &Path),
        seq: u64,
        segment_bytes: usize,
    ) -> Result<Self> {
        match plan {
            Plan::Refuse(reason) => Err(Error::Damaged {
                path: db_dir.display().to_string(),
                reason,
            }),
            Plan::Reset => {
                let (map, sync) = start_over(storage, meta, dir, seq, segment_bytes)?;
                Ok(Opened::fresh(seq.saturating_add(1), (map, sync), seq, None))
            }
            Plan::Legacy => {
                // Its records are redone by `recover` (which then makes this log the only
                // one); meanwhile commits go to a segment of this format, after them.
                let first = seq.saturating_add(1);
                let legacy: Vec<u64> = list_segments(dir)?
                    .into_iter()
                    .filter(|&f| f < first)
                    .collect();
                let made = create_segment(dir, first, segment_bytes)?;
                Ok(Opened::fresh(first, made, seq, Some(legacy)))
            }
            Plan::Keep(kept) => Opened::kept(storage, meta, dir, kept, segment_bytes),
        }
    }

    /// A log of one segment just made, for the changes from `first` on.
    fn fresh(
        first: u64,
        (map, sync): (Mapped, Arc<File>),
        last_seq: u64,
        legacy: Option<Vec<u64>>,
    ) -> Self {
        Opened {
            floor: first,
            segments: VecDeque::from([Segment::new(first, 0)]),
            map,
            sync,
            len: HEADER,
            durable: HEADER,
            last_seq,
            told: Synced::default(),
            legacy,
        }
    }

    /// The log found on disk (see [`Kept`]): the floor raised past damage is written before
    /// the files below it go, and the open segment is reopened after its valid records.
    fn kept(
        storage: &Storage,
        meta: &Tree,
        dir: &Path,
        kept: Kept,
        segment_bytes: usize,
    ) -> Result<Self> {
        let stored = read_be(meta, FLOOR_KEY)?.unwrap_or(0);
        if kept.floor > stored {
            // Before the files go: a floor below a missing segment reads as damage.
            let mut batch = WriteBatch::default();
            batch.insert(meta, FLOOR_KEY.to_vec(), kept.floor.to_be_bytes().to_vec());
            storage.apply(&batch)?;
            storage.flush_blocking()?;
        }
        remove_segments(dir, &kept.remove);
        let open = kept
            .segments
            .last()
            .expect("a kept log has an open segment");
        // A torn record at its end (the process died while copying it) is cut off: its
        // commit's documents were never written.
        let len = open.valid.max(HEADER);
        let (mut map, sync) = reopen_segment(dir, open.first, len, segment_bytes)?;
        let durable = kept.durable.0;
        if open.header.is_none() {
            // Torn while it was rewritten: what was known stays known.
            let header = Header {
                first: open.first,
                durable_len: durable as u64,
                durable_seq: kept.durable.1,
            };
            map.write_at(0, &header.encode());
        }
        Ok(Opened {
            floor: kept.floor,
            segments: kept
                .segments
                .iter()
                .map(|s| Segment {
                    entries: s.entries,
                    first_ms: s.first_ms,
                    last_ms: s.last_ms,
                    ..Segment::new(s.first, 0)
                })
                .collect(),
            map,
            sync,
            len,
            durable,
            last_seq: open.last_seq,
            told: kept.told.unwrap_or_default(),
            legacy: None,
        })
    }
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
    use super::super::record::Record;
    use super::super::segment::{create_segment, list_segments, segment_name};
    use super::super::{ChangeLogRetention, CHECKPOINT_KEY, LOG_META_TREE};
    use super::*;
    use crate::storage::EngineConfig;
    use serde_json::json;
    use std::path::PathBuf;

    fn storage(dir: &Path) -> Storage {
        let cfg = EngineConfig {
            path: Some(dir),
            temporary: false,
            memory: false,
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
        log.for_each_from(
            "t",
            0,
            |_| Ok(()),
            |c| {
                seqs.push(c.seq);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seqs, [1, 2, 3, 5]);
        drop((log, storage));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("remodel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn seqs(log: &ChangeLog, table: &str) -> Vec<u64> {
        let mut seqs = Vec::new();
        log.for_each_from(
            table,
            0,
            |_| Ok(()),
            |c| {
                seqs.push(c.seq);
                Ok(())
            },
        )
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
            let mut r = Record::new(1, 0, Vec::new());
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
}
