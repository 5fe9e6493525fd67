//! Range feeds found by the value a write touches: a stabbing index over key ranges.
//!
//! `between` feeds watch a range of primary keys or of index keys. A write must reach the
//! feeds whose range contains its key (old or new), and cost nothing for the others, however
//! many there are. The key space is cut at every range end into segments, each holding the
//! groups whose range covers it; a write finds its segment with one ordered-map lookup, so
//! routing costs `O(log segments + matching feeds)`. Adding or removing a range touches the
//! segments it covers.
//!
//! Positions tell a bound's side: `(key, AT)` is the key itself and `(key, AFTER)` is just
//! past it, so `[a, b)` covers positions from `(a, AT)` up to `(b, AT)` and `(a, b]` from
//! `(a, AFTER)` up to `(b, AFTER)`. A range is then one half-open span of positions.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;

pub(crate) type GroupId = u64;

const AT: u8 = 0;
const AFTER: u8 = 1;

/// A place in the key space (see the module doc): `(key, side)` in that order. The empty
/// key sorts before every encoded key, so `(empty, AT)` is the start of the space.
///
/// The key's first 16 bytes are kept inline (`head`, big-endian, zero-padded) and compared
/// first: an ordered map of a hundred thousand ranges compares a write's key with a dozen
/// or more segment starts, and comparing the keys themselves follows a pointer (a cache
/// miss) each time, which made a million idle feeds cost writes a tenth of their rate. The
/// order is the same as `(key, side)`'s: keys that differ in their first 16 bytes compare
/// as their heads do (a key that ends there pads with zeros, which sort first, as a
/// shorter key does), and equal heads fall back to the keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    head: u128,
    key: Vec<u8>,
    side: u8,
}

/// The first 16 bytes of `key`, big-endian, zero-padded.
fn head(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

impl Pos {
    fn new(key: Vec<u8>, side: u8) -> Self {
        Pos {
            head: head(&key),
            key,
            side,
        }
    }
}

fn start_of(lo: &Bound<Vec<u8>>) -> Pos {
    match lo {
        Bound::Unbounded => Pos::new(Vec::new(), AT),
        Bound::Included(k) => Pos::new(k.clone(), AT),
        Bound::Excluded(k) => Pos::new(k.clone(), AFTER),
    }
}

fn end_of(hi: &Bound<Vec<u8>>) -> Option<Pos> {
    match hi {
        Bound::Unbounded => None,
        Bound::Included(k) => Some(Pos::new(k.clone(), AFTER)),
        Bound::Excluded(k) => Some(Pos::new(k.clone(), AT)),
    }
}

/// Groups by the key ranges they watch.
pub(crate) struct RangeIndex {
    /// Segment start → the groups covering `[start, next start)`, sorted. Always holds the
    /// start of the space.
    segments: BTreeMap<Pos, Vec<GroupId>>,
    ranges: usize,
    /// The position a stab looks up, kept to spare an allocation per write (routes are used
    /// under their lock, one caller at a time).
    probe: RefCell<Pos>,
}

impl Default for RangeIndex {
    fn default() -> Self {
        let mut segments = BTreeMap::new();
        segments.insert(Pos::new(Vec::new(), AT), Vec::new());
        RangeIndex {
            segments,
            ranges: 0,
            probe: RefCell::new(Pos::new(Vec::new(), AT)),
        }
    }
}

impl RangeIndex {
    /// Whether no range is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges == 0
    }

    /// Cuts the space at `at` (the new segment starts with the groups of the one it splits).
    fn cut(&mut self, at: &Pos) {
        if self.segments.contains_key(at) {
            return;
        }
        let inherited = self
            .segments
            .range(..at.clone())
            .next_back()
            .map(|(_, g)| g.clone())
            .unwrap_or_default();
        self.segments.insert(at.clone(), inherited);
    }

    /// The segments of the span `[start, end)` (`end: None`: to the end of the space).
    fn span_mut<'a>(
        &'a mut self,
        start: &Pos,
        end: &Option<Pos>,
    ) -> impl Iterator<Item = &'a mut Vec<GroupId>> + 'a {
        let upper = match end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        self.segments
            .range_mut((Bound::Included(start.clone()), upper))
            .map(|(_, g)| g)
    }

    /// Registers `id` for the range (an empty range is registered nowhere).
    pub(crate) fn insert(&mut self, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, id: GroupId) {
        let (start, end) = (start_of(lo), end_of(hi));
        if end.as_ref().is_some_and(|e| *e <= start) {
            return;
        }
        self.cut(&start);
        if let Some(e) = &end {
            self.cut(e);
        }
        for groups in self.span_mut(&start, &end) {
            if let Err(at) = groups.binary_search(&id) {
                groups.insert(at, id);
            }
        }
        self.ranges += 1;
    }

    /// Unregisters `id` from the range it was registered with.
    pub(crate) fn remove(&mut self, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, id: GroupId) {
        let (start, end) = (start_of(lo), end_of(hi));
        if end.as_ref().is_some_and(|e| *e <= start) {
            return;
        }
        for groups in self.span_mut(&start, &end) {
            if let Ok(at) = groups.binary_search(&id) {
                groups.remove(at);
            }
        }
        self.ranges = self.ranges.saturating_sub(1);
        // Cuts that no longer separate different groups go (the space's start stays).
        for cut in [Some(start), end].into_iter().flatten() {
            if cut.key.is_empty() && cut.side == AT {
                continue;
            }
            let before = self
                .segments
                .range(..cut.clone())
                .next_back()
                .map(|(_, g)| g);
            if before.is_some() && before == self.segments.get(&cut) {
                self.segments.remove(&cut);
            }
        }
    }

    /// Adds to `out` the groups whose range contains `key`.
    pub(crate) fn stab(&self, key: &[u8], out: &mut Vec<GroupId>) {
        let mut probe = self.probe.borrow_mut();
        probe.key.clear();
        probe.key.extend_from_slice(key);
        probe.head = head(key);
        // The last segment starting at or before (key, AT).
        let found = self.segments.range(..=&*probe).next_back().map(|(_, g)| g);
        if let Some(groups) = found {
            out.extend_from_slice(groups);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Key `k` of a small key space whose keys share their first 16 bytes or not, and end
    /// there or go past it (so that the inline heads tie and fall back to the keys):
    /// `[1, k]`, `[1; 16] + [k]`, `[1; 16]`, `[1; 15]`, `[1; 16] + [k, 0]`.
    fn key(k: u8) -> Vec<u8> {
        let long = |tail: &[u8]| [&[1u8; 16][..], tail].concat();
        match k % 5 {
            0 => vec![1, k],
            1 => long(&[k]),
            2 => vec![1; 16],
            3 => vec![1; 15],
            _ => long(&[k, 0]),
        }
    }

    fn bound(kind: u8, k: u8) -> Bound<Vec<u8>> {
        match kind % 3 {
            0 => Bound::Unbounded,
            1 => Bound::Included(key(k)),
            _ => Bound::Excluded(key(k)),
        }
    }

    #[test]
    fn positions_order_as_key_then_side() {
        let long = |tail: &[u8]| [&[1u8; 16][..], tail].concat();
        let keys: Vec<Vec<u8>> = (0..12)
            .map(key)
            .chain([
                vec![],
                vec![0],
                vec![1],
                vec![1, 0],
                vec![1, 0, 0],
                vec![0x80],
            ])
            .chain([
                vec![0xff; 17],
                long(&[0]),
                long(&[0, 0]),
                long(&[0x80]),
                vec![1; 16],
            ])
            .collect();
        for a in &keys {
            for b in &keys {
                for (x, y) in [(AT, AT), (AT, AFTER), (AFTER, AT), (AFTER, AFTER)] {
                    let want = (a, x).cmp(&(b, y));
                    let got = Pos::new(a.clone(), x).cmp(&Pos::new(b.clone(), y));
                    assert_eq!(got, want, "{a:?} {x} vs {b:?} {y}");
                }
            }
        }
    }

    fn contains(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, k: &[u8]) -> bool {
        (match lo {
            Bound::Unbounded => true,
            Bound::Included(l) => k >= l.as_slice(),
            Bound::Excluded(l) => k > l.as_slice(),
        }) && (match hi {
            Bound::Unbounded => true,
            Bound::Included(h) => k <= h.as_slice(),
            Bound::Excluded(h) => k < h.as_slice(),
        })
    }

    proptest! {
        /// After any sequence of inserts and removes, a stab finds exactly the registered
        /// ranges that contain the key, and removing everything leaves one empty segment.
        #[test]
        fn stabbing_finds_exactly_the_ranges_that_contain_a_key(
            ops in proptest::collection::vec((0u8..3, 0u8..12, 0u8..3, 0u8..12, any::<bool>()), 1..40),
        ) {
            let mut index = RangeIndex::default();
            type Live = (Bound<Vec<u8>>, Bound<Vec<u8>>, GroupId);
            let mut live: Vec<Live> = Vec::new();
            for (n, (lk, l, hk, h, remove)) in ops.into_iter().enumerate() {
                if remove && !live.is_empty() {
                    let (lo, hi, id) = live.remove(n % live.len());
                    index.remove(&lo, &hi, id);
                } else {
                    let (lo, hi) = (bound(lk, l), bound(hk, h));
                    index.insert(&lo, &hi, n as GroupId);
                    live.push((lo, hi, n as GroupId));
                }
                for k in 0u8..13 {
                    let probe = key(k);
                    let mut found = Vec::new();
                    index.stab(&probe, &mut found);
                    found.sort_unstable();
                    let mut want: Vec<GroupId> = live
                        .iter()
                        .filter(|(lo, hi, _)| contains(lo, hi, &probe))
                        .map(|(_, _, id)| *id)
                        .collect();
                    want.sort_unstable();
                    prop_assert_eq!(found, want, "key {}", k);
                }
            }
            for (lo, hi, id) in live.drain(..) {
                index.remove(&lo, &hi, id);
            }
            prop_assert_eq!(index.segments.len(), 1);
        }
    }
}
