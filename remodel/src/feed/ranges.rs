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

/// A place in the key space (see the module doc). The empty key sorts before every encoded
/// key, so `(empty, AT)` is the start of the space.
type Pos = (Vec<u8>, u8);

fn start_of(lo: &Bound<Vec<u8>>) -> Pos {
    match lo {
        Bound::Unbounded => (Vec::new(), AT),
        Bound::Included(k) => (k.clone(), AT),
        Bound::Excluded(k) => (k.clone(), AFTER),
    }
}

fn end_of(hi: &Bound<Vec<u8>>) -> Option<Pos> {
    match hi {
        Bound::Unbounded => None,
        Bound::Included(k) => Some((k.clone(), AFTER)),
        Bound::Excluded(k) => Some((k.clone(), AT)),
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
        segments.insert((Vec::new(), AT), Vec::new());
        RangeIndex {
            segments,
            ranges: 0,
            probe: RefCell::new((Vec::new(), AT)),
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
            if cut.0.is_empty() && cut.1 == AT {
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
        probe.0.clear();
        probe.0.extend_from_slice(key);
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

    fn bound(kind: u8, k: u8) -> Bound<Vec<u8>> {
        match kind % 3 {
            0 => Bound::Unbounded,
            1 => Bound::Included(vec![1, k]),
            _ => Bound::Excluded(vec![1, k]),
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
            ops in proptest::collection::vec((0u8..3, 0u8..6, 0u8..3, 0u8..6, any::<bool>()), 1..40),
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
                for k in 0u8..7 {
                    let key = [1, k];
                    let mut found = Vec::new();
                    index.stab(&key, &mut found);
                    found.sort_unstable();
                    let mut want: Vec<GroupId> = live
                        .iter()
                        .filter(|(lo, hi, _)| contains(lo, hi, &key))
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
