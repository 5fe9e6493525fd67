//! The change log's record format: how a commit, an abort and a seal are framed and
//! read back, and a segment's header. Pure functions of bytes: no file, no clock, no I/O
//! (segment.rs maps the files, the log writes and reads them).
//!
//! A record is a frame (body length u32 LE, checksum of the body u32 LE) and a body whose
//! first byte is its kind: a commit (its changes), an abort (the commit just before did not
//! happen) or a seal (the last record of a closed segment, naming the next one). Reading
//! stops at the first record that is incomplete, damaged, or does not follow: what comes
//! after it is never read as records of the segment.

use crate::{Error, Result};
use serde_json::Value;
use std::sync::Arc;

/// Record kinds.
const COMMIT: u8 = 1;
const ABORT: u8 = 2;
/// The last record of a closed segment: the log goes on in the segment it names.
const SEAL: u8 = 3;
/// Frame header: body length (u32 LE), checksum of the body (u32 LE).
pub(super) const FRAME: usize = 8;

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

pub(super) fn damaged() -> Error {
    Error::storage("a record of the change log is damaged")
}

/// The most bytes one length field of a record holds.
pub(super) const MAX_FIELD: usize = u32::MAX as usize;

pub(super) fn too_large(what: &str, size: usize) -> Error {
    Error::TooLarge {
        what: what.to_string(),
        size,
        limit: MAX_FIELD,
    }
}

/// The records of one commit, built while it is staged and written by `ChangeLog::write`.
///
/// Body layout: kind (1: commit), first sequence number (u64 LE), timestamp (ms, u64 LE),
/// entry count (u32 LE), then per entry: sequence number (u64 LE), table name length (u16 LE)
/// and name, key length (u32 LE) and key, flags (bit 0: old, bit 1: new), old JSON length
/// (u32 LE) and bytes, new JSON length (u32 LE) and bytes. The new document's bytes are the
/// ones the engine stores (serialised once for both).
pub(crate) struct Record {
    pub(super) buf: Vec<u8>,
    count: u32,
    pub(super) first: u64,
    /// The number of the last change pushed (`first - 1` before the first).
    pub(super) last: u64,
    pub(super) time_ms: u64,
}

impl Record {
    /// The record of a commit whose first change is numbered `first`, made at `time_ms`, in
    /// `buf` (a spare buffer: its contents are dropped).
    pub(super) fn new(first: u64, time_ms: u64, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(FRAME, 0);
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
    pub(super) fn seal(&mut self) -> &[u8] {
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
pub(super) const ABORT_BYTES: usize = FRAME + 1 + 8 + 8;

pub(super) fn abort_record(from: u64, to: u64) -> Vec<u8> {
    let mut buf = vec![0; FRAME];
    buf.push(ABORT);
    buf.extend_from_slice(&from.to_le_bytes());
    buf.extend_from_slice(&to.to_le_bytes());
    seal(&mut buf);
    buf
}

/// The size of a seal record.
pub(super) const SEAL_BYTES: usize = FRAME + 1 + 8;

/// The seal of a segment closed for the segment `next`.
pub(super) fn seal_record(next: u64) -> Vec<u8> {
    let mut buf = vec![0; FRAME];
    buf.push(SEAL);
    buf.extend_from_slice(&next.to_le_bytes());
    seal(&mut buf);
    buf
}

/// The bytes of a segment's header: magic, first change number, durable length, the last
/// change number within it, 4 reserved bytes, checksum of the rest (u32).
pub(super) const HEADER: usize = 40;
const MAGIC: &[u8; 8] = b"RMDLLOG2";

/// What a segment's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    /// The first change number the segment holds (its name).
    pub(super) first: u64,
    /// Its first `durable_len` bytes were on disk (an `fsync` of them had returned)...
    pub(super) durable_len: u64,
    /// ... and held the changes up to this one.
    pub(super) durable_seq: u64,
}

impl Header {
    /// The header of a segment just made: only the header itself is on disk.
    pub(super) fn new(first: u64) -> Self {
        Header {
            first,
            durable_len: HEADER as u64,
            durable_seq: first.saturating_sub(1),
        }
    }

    pub(super) fn encode(&self) -> [u8; HEADER] {
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
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
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
pub(super) struct Synced {
    /// The segment.
    pub(super) first: u64,
    /// Its first `len` bytes were on disk...
    pub(super) len: u64,
    /// ... holding the changes up to this one.
    pub(super) seq: u64,
    /// The log was closed right after: nothing was written to it after `len`.
    pub(super) closed: bool,
}

impl Synced {
    pub(super) fn encode(&self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[..8].copy_from_slice(&self.first.to_be_bytes());
        b[8..16].copy_from_slice(&self.len.to_be_bytes());
        b[16..24].copy_from_slice(&self.seq.to_be_bytes());
        b[24] = u8::from(self.closed);
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<Self> {
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
pub(super) struct RawEntry<'a> {
    pub(super) seq: u64,
    pub(super) table: &'a [u8],
    pub(super) key: &'a [u8],
    pub(super) old: Option<&'a [u8]>,
    pub(super) new: Option<&'a [u8]>,
}

/// A commit record read back from a segment.
pub(super) struct RawCommit<'a> {
    pub(super) first: u64,
    pub(super) time_ms: u64,
    pub(super) count: u32,
    entries: &'a [u8],
}

impl<'a> RawCommit<'a> {
    pub(super) fn entries(&self) -> impl Iterator<Item = Result<RawEntry<'a>>> + 'a {
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
    pub(super) fn checked_last(&self) -> Option<u64> {
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
pub(super) struct Parsed<'a> {
    /// The commits that happened (an abort record cancels the commit just before it).
    pub(super) commits: Vec<RawCommit<'a>>,
    /// Where the valid records end (after the seal, for a sealed segment).
    pub(super) valid: usize,
    /// The segment the log went on in, when this one was closed.
    pub(super) seal: Option<u64>,
    /// The last change number the records used, aborted ones included (`first - 1` when
    /// there are none).
    pub(super) last_seq: u64,
}

/// Reads the records of the segment named `first` from byte `start` on. It stops at the first
/// record that is incomplete or damaged, or that does not follow (a change number not above
/// the last one: not a record of this segment), and after a seal.
pub(super) fn parse_segment(bytes: &[u8], start: usize, first: u64) -> Parsed<'_> {
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

/// A document of a record.
pub(super) fn parse(bytes: &[u8]) -> Result<Arc<Value>> {
    serde_json::from_slice(bytes)
        .map(Arc::new)
        .map_err(|e| Error::serialization_from(format!("a change log entry is unreadable: {e}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The commits of records written from the start of `bytes`, and where they end.
    fn commits(bytes: &[u8]) -> (Vec<RawCommit<'_>>, usize) {
        let p = parse_segment(bytes, 0, 1);
        (p.commits, p.valid)
    }

    #[test]
    fn records_round_trip_and_stop_at_a_torn_end() {
        let new = serde_json::to_vec(&json!({"id": 1, "x": 2})).unwrap();
        let mut r = Record::new(7, 0, Vec::new());
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
        let mut again = Record::new(9, 0, Vec::new());
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

    /// A segment's worth of records: two commits, an aborted one, and a seal.
    fn segment_bytes() -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut r = Record::new(1, 100, Vec::new());
        r.push(1, "t", b"a", None, Some(b"{\"id\":1}")).unwrap();
        bytes.extend_from_slice(r.seal());
        let mut r = Record::new(2, 200, Vec::new());
        r.push(2, "t", b"a", Some(&json!({"id": 1})), None).unwrap();
        r.push(3, "u", b"b", None, Some(b"{}")).unwrap();
        bytes.extend_from_slice(r.seal());
        let mut r = Record::new(4, 300, Vec::new());
        r.push(4, "t", b"c", None, Some(b"{}")).unwrap();
        bytes.extend_from_slice(r.seal());
        bytes.extend_from_slice(&abort_record(4, 4));
        bytes.extend_from_slice(&seal_record(5));
        bytes
    }

    #[test]
    fn a_segment_reads_back_to_its_seal() {
        let mut bytes = segment_bytes();
        let end = bytes.len();
        // Whatever follows a seal is not read.
        bytes.extend_from_slice(Record::new(5, 0, Vec::new()).seal());
        let p = parse_segment(&bytes, 0, 1);
        assert_eq!((p.valid, p.seal, p.last_seq), (end, Some(5), 4));
        let firsts: Vec<u64> = p.commits.iter().map(|c| c.first).collect();
        assert_eq!(firsts, [1, 2], "the aborted commit is not read back");
        assert_eq!(
            (
                p.commits[1].time_ms,
                p.commits[1].count,
                p.commits[1].checked_last()
            ),
            (200, 2, Some(3))
        );
    }

    /// Every cut of a segment's bytes reads as the whole records before the cut, and every
    /// flipped byte ends the records at the one it damages: damage never reads as a record.
    #[test]
    fn cuts_and_flipped_bytes_end_the_records_where_they_are() {
        let bytes = segment_bytes();
        let whole = parse_segment(&bytes, 0, 1);
        let mut ends = vec![0];
        let mut at = 0;
        while let Some((_, end)) = frame_at(&bytes, at) {
            ends.push(end);
            at = end;
        }
        assert_eq!(ends.last(), Some(&whole.valid));
        for cut in 0..bytes.len() {
            let p = parse_segment(&bytes[..cut], 0, 1);
            let expected = ends.iter().copied().filter(|&e| e <= cut).max().unwrap();
            assert_eq!(p.valid, expected, "cut at {cut}");
            assert!(p.seal.is_none(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let p = parse_segment(&bad, 0, 1);
            let record_start = ends.iter().copied().filter(|&e| e <= i).max().unwrap();
            assert_eq!(p.valid, record_start, "byte {i} flipped");
        }
    }

    /// A record whose changes are not numbered upwards from its first, or that does not
    /// follow the one before, is not a record of the segment: reading stops there.
    #[test]
    fn records_out_of_order_end_the_segment() {
        let mut r = Record::new(5, 0, Vec::new());
        r.push(5, "t", b"a", None, None).unwrap();
        r.push(5, "t", b"b", None, None).unwrap();
        let bytes = r.seal().to_vec();
        assert_eq!(parse_segment(&bytes, 0, 1).valid, 0);
        let mut bytes = Vec::new();
        let mut r = Record::new(5, 0, Vec::new());
        r.push(5, "t", b"a", None, None).unwrap();
        bytes.extend_from_slice(r.seal());
        let first = bytes.len();
        let mut r = Record::new(5, 0, Vec::new());
        r.push(5, "t", b"b", None, None).unwrap();
        bytes.extend_from_slice(r.seal());
        let p = parse_segment(&bytes, 0, 5);
        assert_eq!((p.valid, p.commits.len()), (first, 1));
        // A seal that names a segment before the changes it holds is not one.
        let mut sealed = bytes[..first].to_vec();
        sealed.extend_from_slice(&seal_record(5));
        assert_eq!(parse_segment(&sealed, 0, 5).seal, None);
    }

    #[test]
    fn headers_and_synced_round_trip_and_damage_is_seen() {
        let h = Header {
            first: 17,
            durable_len: 4096,
            durable_seq: 40,
        };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Some(h));
        assert_eq!(
            Header::decode(&Header::new(9).encode()),
            Some(Header::new(9))
        );
        assert_eq!(Header::decode(&bytes[..HEADER - 1]), None, "torn");
        assert_eq!(Header::decode(&[0; HEADER]), None, "never written");
        for i in 0..HEADER {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert_eq!(Header::decode(&bad), None, "byte {i} flipped");
        }
        let s = Synced {
            first: 3,
            len: 77,
            seq: 12,
            closed: true,
        };
        assert_eq!(Synced::decode(&s.encode()), Some(s));
        assert_eq!(Synced::decode(&s.encode()[..24]), None);
    }

    #[test]
    fn damaged_entries_and_documents_are_errors() {
        let mut r = Record::new(1, 0, Vec::new());
        r.push(1, "t", b"k", None, Some(b"{\"id\"")).unwrap();
        let bytes = r.seal().to_vec();
        let p = parse_segment(&bytes, 0, 1);
        let e = p.commits[0].entries().next().unwrap().unwrap();
        assert!(parse(e.new.unwrap()).is_err(), "unreadable JSON");
        // A commit whose count claims more entries than its body holds.
        let mut lying = RawCommit {
            first: 1,
            time_ms: 0,
            count: 2,
            entries: p.commits[0].entries,
        };
        assert!(lying.entries().nth(1).unwrap().is_err());
        assert_eq!(lying.checked_last(), None);
        lying.count = 1;
        assert_eq!(lying.checked_last(), Some(1));
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
