//! An engine held in the process's memory: each tree an ordered map behind a lock.
//!
//! For databases that no crash must survive and that are rebuilt when the process starts
//! ([`Config::in_memory`](crate::Config::in_memory), and a PostgreSQL backend's replica):
//! there, sled's page cache, log and epoch-based reclamation are pure cost. A write here is
//! one map update under a write lock; a read hands out the stored value itself (`Arc<[u8]>`,
//! no copy). Flushing has nothing to do.
//!
//! Iterators follow sled's: lazy and weakly consistent. Each step reads the map under the
//! read lock, a chunk of entries at a time, from where the last step left off; a write made
//! meanwhile is seen or not depending on where it falls, and no entry is returned twice or
//! out of order. A dropped tree refuses every later operation with
//! [`EngineError::MissingTree`], as sled's does.

use super::engine::{Bytes, Engine, EngineError, EngineIter, EngineResult, EngineTree};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most entries an iterator takes from the map per lock.
const CHUNK: usize = 64;
/// The entries an iterator's first refill takes.
const FIRST_CHUNK: usize = 4;

/// The trees of one in-memory database, by name.
pub(crate) struct MemoryEngine {
    trees: Mutex<HashMap<String, Arc<MemoryTree>>>,
    folder: Option<Arc<Folder>>,
}

/// A temporary database's folder (where its change log's files are), removed once the
/// engine, its trees and their iterators are all gone, as sled removes a temporary
/// database's.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "a temporary database's folder {} stays: {e}",
                    self.0.display()
                );
            }
        }
    }
}

impl MemoryEngine {
    /// An empty engine whose temporary folder `dir` (if any) it removes when it goes.
    pub(crate) fn new(dir: Option<&Path>) -> Self {
        MemoryEngine {
            trees: Mutex::default(),
            folder: dir.map(|d| Arc::new(Folder(d.to_path_buf()))),
        }
    }
}

/// Keys and values shared with what reads them (a read or an iterator step copies nothing).
type Map = BTreeMap<Arc<[u8]>, Arc<[u8]>>;

/// A tree's entries; `None` once the tree is dropped.
type Shared = Arc<RwLock<Option<Map>>>;

/// One tree (its iterators share its map).
struct MemoryTree {
    map: Shared,
    /// Kept while the tree is: the folder goes with the last of the engine's parts.
    folder: Option<Arc<Folder>>,
}

impl Engine for MemoryEngine {
    fn open_tree(&self, name: &str) -> EngineResult<Arc<dyn EngineTree>> {
        let tree = self
            .trees
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(MemoryTree {
                    map: Arc::new(RwLock::new(Some(Map::new()))),
                    folder: self.folder.clone(),
                })
            })
            .clone();
        Ok(tree)
    }

    fn drop_tree(&self, name: &str) -> EngineResult<bool> {
        let Some(tree) = self.trees.lock().remove(name) else {
            return Ok(false);
        };
        // Handles still held see the tree gone; its entries are freed now, not when the
        // last handle goes.
        *tree.map.write() = None;
        Ok(true)
    }

    fn flush(&self) -> EngineResult<()> {
        Ok(())
    }
}

impl EngineTree for MemoryTree {
    fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        let map = self.map.read();
        let map = map.as_ref().ok_or(EngineError::MissingTree)?;
        Ok(map.get(key).map(|v| Bytes::from(v.clone())))
    }

    fn write(&self, key: &[u8], value: Option<&[u8]>) -> EngineResult<Option<Bytes>> {
        // Built before the lock is taken: the lock is held for the map update only.
        let value: Option<Arc<[u8]>> = value.map(Arc::from);
        let mut map = self.map.write();
        let map = map.as_mut().ok_or(EngineError::MissingTree)?;
        // One descent either way: a key made for an update that finds its key stored is
        // dropped (an allocation is cheaper than a second search of a large map).
        let old = match value {
            Some(v) => map.insert(Arc::from(key), v),
            None => map.remove(key),
        };
        Ok(old.map(Bytes::from))
    }

    fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> EngineIter {
        Box::new(MemoryIter {
            map: self.map.clone(),
            _folder: self.folder.clone(),
            lo,
            hi,
            front: VecDeque::new(),
            back: VecDeque::new(),
            chunk: FIRST_CHUNK,
            failed: false,
        })
    }

    fn scan_prefix(&self, prefix: &[u8]) -> EngineIter {
        let hi = match successor(prefix) {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        self.range(Bound::Included(prefix.to_vec()), hi)
    }

    fn len(&self) -> usize {
        self.map.read().as_ref().map_or(0, BTreeMap::len)
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: there is none,
/// the prefix is all `0xff`).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// A lazy iterator over a range of one tree (see the module doc): the entries taken from the
/// map but not yet returned are in `front` (ascending) and `back` (descending); the bounds
/// cover what is still in the map, so the three never overlap.
struct MemoryIter {
    map: Shared,
    _folder: Option<Arc<Folder>>,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    front: VecDeque<(Bytes, Bytes)>,
    back: VecDeque<(Bytes, Bytes)>,
    /// Entries the next refill takes: a few at first (a reader that wants one row copies
    /// little), doubling up to [`CHUNK`].
    chunk: usize,
    /// The tree was found dropped: the error was returned, nothing follows.
    failed: bool,
}

impl MemoryIter {
    /// Takes the next chunk of the range into `front` (`ascending`) or `back`; false when
    /// the range in the map is empty. Err when the tree was dropped.
    fn refill(&mut self, ascending: bool) -> EngineResult<bool> {
        let map = self.map.read();
        let map = map.as_ref().ok_or(EngineError::MissingTree)?;
        if range_is_empty(&self.lo, &self.hi) {
            return Ok(false);
        }
        let bounds = (as_slice(&self.lo), as_slice(&self.hi));
        let mut range = map.range::<[u8], _>(bounds);
        let mut last = None;
        let take = self.chunk;
        self.chunk = (self.chunk * 2).min(CHUNK);
        for _ in 0..take {
            let entry = if ascending {
                range.next()
            } else {
                range.next_back()
            };
            let Some((k, v)) = entry else { break };
            let item = (Bytes::from(k.clone()), Bytes::from(v.clone()));
            if ascending {
                self.front.push_back(item);
            } else {
                self.back.push_back(item);
            }
            last = Some(k);
        }
        let Some(last) = last else {
            return Ok(false);
        };
        if ascending {
            self.lo = Bound::Excluded(last.to_vec());
        } else {
            self.hi = Bound::Excluded(last.to_vec());
        }
        Ok(true)
    }

    fn step(&mut self, ascending: bool) -> Option<EngineResult<(Bytes, Bytes)>> {
        if self.failed {
            return None;
        }
        loop {
            let taken = if ascending {
                self.front.pop_front()
            } else {
                self.back.pop_front()
            };
            if let Some(item) = taken {
                return Some(Ok(item));
            }
            match self.refill(ascending) {
                Ok(true) => continue,
                // The map has nothing left between the bounds: what remains was taken by the
                // other end. This end's bound moves past what it hands over, so that a key
                // written behind it later is not returned out of order.
                Ok(false) => {
                    let item = if ascending {
                        self.back.pop_back()
                    } else {
                        self.front.pop_back()
                    }?;
                    let past = Bound::Excluded(item.0.to_vec());
                    if ascending {
                        self.lo = past;
                    } else {
                        self.hi = past;
                    }
                    return Some(Ok(item));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Iterator for MemoryIter {
    type Item = EngineResult<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for MemoryIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v),
        Bound::Excluded(v) => Bound::Excluded(v),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Bounds that `BTreeMap::range` would refuse (it panics on a start above the end, or on
/// equal bounds both excluded) hold no key.
fn range_is_empty(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    match (lo, hi) {
        (Bound::Included(l), Bound::Included(h)) => l > h,
        (Bound::Included(l), Bound::Excluded(h))
        | (Bound::Excluded(l), Bound::Included(h))
        | (Bound::Excluded(l), Bound::Excluded(h)) => l >= h,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(engine: &MemoryEngine) -> Arc<dyn EngineTree> {
        engine.open_tree("t").unwrap()
    }

    fn keys(it: impl Iterator<Item = EngineResult<(Bytes, Bytes)>>) -> Vec<Vec<u8>> {
        it.map(|r| r.unwrap().0.to_vec()).collect()
    }

    fn bound(kind: u8, key: Vec<u8>) -> Bound<Vec<u8>> {
        match kind % 3 {
            0 => Bound::Included(key),
            1 => Bound::Excluded(key),
            _ => Bound::Unbounded,
        }
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // Short keys over few byte values: ties, prefixes of each other and 0xff all occur.
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(0xfe), Just(0xff)],
            0..4,
        )
    }

    proptest! {
        /// Writes, reads and every kind of range against a `BTreeMap`, stepping from both
        /// ends in a random interleaving (over several chunks), with no write meanwhile.
        #[test]
        fn matches_an_ordered_map(
            writes in proptest::collection::vec((key(), proptest::option::of(0u8..4)), 0..300),
            lo in (0u8..3, key()),
            hi in (0u8..3, key()),
            steps in proptest::collection::vec(any::<bool>(), 0..400),
            prefix in key(),
        ) {
            let engine = MemoryEngine::new(None);
            let t = tree(&engine);
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for (k, v) in &writes {
                let v = v.map(|b| vec![b; usize::from(b)]);
                let old = t.write(k, v.as_deref()).unwrap().map(|b| b.to_vec());
                let want = match v {
                    Some(v) => model.insert(k.clone(), v),
                    None => model.remove(k),
                };
                prop_assert_eq!(old, want);
            }
            prop_assert_eq!(t.len(), model.len());
            for k in model.keys() {
                prop_assert_eq!(t.get(k).unwrap().map(|b| b.to_vec()), model.get(k).cloned());
            }
            let (lo, hi) = (bound(lo.0, lo.1), bound(hi.0, hi.1));
            let want: Vec<Vec<u8>> = if range_is_empty(&lo, &hi) {
                Vec::new()
            } else {
                model.range::<Vec<u8>, _>((lo.clone(), hi.clone())).map(|(k, _)| k.clone()).collect()
            };
            // Both ends at once: what comes from the front and the back (reversed) make up
            // the range, once each, in order.
            let mut it = t.range(lo, hi);
            let (mut front, mut back) = (Vec::new(), Vec::new());
            for &from_front in steps.iter().chain(std::iter::repeat_n(&true, want.len() + 1)) {
                let next = if from_front { it.next() } else { it.next_back() };
                match next {
                    Some(r) => {
                        let k = r.unwrap().0.to_vec();
                        if from_front { front.push(k) } else { back.push(k) }
                    }
                    None => break,
                }
            }
            prop_assert!(it.next().is_none() && it.next_back().is_none());
            back.reverse();
            front.extend(back);
            prop_assert_eq!(front, want);
            let want: Vec<Vec<u8>> =
                model.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
            prop_assert_eq!(keys(t.scan_prefix(&prefix)), want.clone());
            let mut reversed = keys(t.scan_prefix(&prefix).rev());
            reversed.reverse();
            prop_assert_eq!(reversed, want);
        }
    }

    proptest! {
        /// Both ends in a random interleaving with writes between the steps: the front only
        /// ascends, the back only descends, they never cross, and every key present from the
        /// start to the end of the iteration is returned once (as sled's iterators do).
        #[test]
        fn both_ends_stay_in_order_under_writes(
            start in proptest::collection::btree_set(0u8..64, 0..40),
            steps in proptest::collection::vec((any::<bool>(), 0u8..64, any::<bool>()), 0..120),
        ) {
            let engine = MemoryEngine::new(None);
            let t = tree(&engine);
            for k in &start {
                t.write(&[*k], Some(b"")).unwrap();
            }
            let mut it = t.range(Bound::Unbounded, Bound::Unbounded);
            let (mut front, mut back): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
            let mut touched = std::collections::BTreeSet::new();
            let mut ended = false;
            for (from_front, k, insert) in steps.iter().copied().chain(
                std::iter::repeat_n((true, 0, true), 200)) {
                let next = if from_front { it.next() } else { it.next_back() };
                match next {
                    Some(r) => {
                        let got = r.unwrap().0[0];
                        if from_front { front.push(got) } else { back.push(got) }
                    }
                    None => { ended = true; break }
                }
                if !ended && steps.len() > front.len() + back.len() {
                    // A write between steps (not once the tail of plain steps runs).
                    touched.insert(k);
                    t.write(&[k], insert.then_some(&b""[..])).unwrap();
                }
            }
            prop_assert!(ended);
            prop_assert!(front.windows(2).all(|w| w[0] < w[1]), "front ascends: {:?}", front);
            prop_assert!(back.windows(2).all(|w| w[0] > w[1]), "back descends: {:?}", back);
            if let (Some(f), Some(b)) = (front.last(), back.last()) {
                prop_assert!(f < b, "the ends never cross: {:?} {:?}", front, back);
            }
            for k in start.iter().filter(|k| !touched.contains(*k)) {
                prop_assert_eq!(
                    front.iter().chain(&back).filter(|g| *g == k).count(), 1,
                    "key {} kept throughout is returned once", k
                );
            }
        }
    }

    #[test]
    fn the_folder_goes_with_the_engine() {
        let dir =
            std::env::temp_dir().join(format!("remodel-memory-engine-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("changelog")).unwrap();
        let engine = MemoryEngine::new(Some(&dir));
        let t = tree(&engine);
        t.write(b"k", Some(b"v")).unwrap();
        let it = t.range(Bound::Unbounded, Bound::Unbounded);
        drop((engine, t));
        assert!(dir.exists(), "an iterator still reads the database");
        drop(it);
        assert!(
            !dir.exists(),
            "removed as sled removes a temporary database"
        );
    }

    #[test]
    fn an_iterator_sees_no_entry_twice_and_stays_in_order_under_writes() {
        let engine = MemoryEngine::new(None);
        let t = tree(&engine);
        for i in 0..1_000u32 {
            t.write(&(i * 2).to_be_bytes(), Some(b"v")).unwrap();
        }
        let mut it = t.range(Bound::Unbounded, Bound::Unbounded);
        let mut seen = Vec::new();
        let mut i = 0u32;
        for r in it.by_ref() {
            seen.push(u32::from_be_bytes((*r.unwrap().0).try_into().unwrap()));
            // Writes behind and ahead of the iterator, and removals of entries ahead.
            if i < 1_000 {
                t.write(&(i * 2 + 1).to_be_bytes(), Some(b"w")).unwrap();
                t.write(&(1_999 - i).to_be_bytes(), None).unwrap();
                i += 1;
            }
        }
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "ascending, no repeats"
        );
        // Every entry present from the start to the end of the iteration was returned.
        let kept: Vec<u32> = (0..1_000u32)
            .map(|i| i * 2)
            .filter(|k| *k < 1_000)
            .collect();
        assert!(kept.iter().all(|k| seen.contains(k)));
    }

    #[test]
    fn a_dropped_tree_refuses_its_handles_and_a_new_one_starts_empty() {
        let engine = MemoryEngine::new(None);
        let t = tree(&engine);
        t.write(b"a", Some(b"1")).unwrap();
        let mut it = t.range(Bound::Unbounded, Bound::Unbounded);
        assert!(engine.drop_tree("t").unwrap());
        assert!(!engine.drop_tree("t").unwrap());
        assert!(matches!(t.get(b"a"), Err(EngineError::MissingTree)));
        assert!(matches!(t.write(b"b", None), Err(EngineError::MissingTree)));
        assert!(matches!(it.next(), Some(Err(EngineError::MissingTree))));
        assert!(it.next().is_none());
        assert_eq!(t.len(), 0);
        let again = tree(&engine);
        assert_eq!(again.get(b"a").unwrap(), None);
        assert!(matches!(t.get(b"a"), Err(EngineError::MissingTree)));
    }

    #[test]
    fn a_prefix_of_0xff_bytes_reaches_the_end() {
        assert_eq!(successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff, 0xff]), None);
        assert_eq!(successor(&[]), None);
        let engine = MemoryEngine::new(None);
        let t = tree(&engine);
        for k in [&[0xfe][..], &[0xff], &[0xff, 0], &[0xff, 0xff, 1]] {
            t.write(k, Some(b"")).unwrap();
        }
        assert_eq!(keys(t.scan_prefix(&[0xff])).len(), 3);
        assert_eq!(
            keys(t.scan_prefix(&[0xff, 0xff])),
            vec![vec![0xff, 0xff, 1]]
        );
    }
}
