//! What the hub hands an operator: one change with the work shared by every group it reaches
//! ([`ChangeCtx`], for operators that take a change at a time), or one commit
//! ([`Commit`], for those that take a commit at a time).

use crate::db::write::Committed;
use crate::db::{IndexState, TableState};
use crate::feed::change::{Change, ChangeFanout};
use crate::feed::spec::Matcher;
use serde_json::Value;
use std::sync::Arc;

/// The keys of a change's old and new document in one index.
struct DocKeys {
    /// The index, by address (it lives as long as the change; compared, never read).
    ix: *const IndexState,
    old: Vec<Vec<u8>>,
    new: Vec<Vec<u8>>,
    /// Whether the range routes were looked up with these keys (see [`ChangeCtx::count`]).
    routed: bool,
}

/// Per-change work shared by every group the change reaches: the row's key, the old and new
/// documents' keys in each index a range group reads, and the items of groups that see
/// whole rows (identical for all of them, so one allocation is shared).
pub(crate) struct ChangeCtx<'a> {
    pub(crate) c: &'a Committed,
    /// The row's key as items carry it, made when the first item is.
    key: Option<Arc<[u8]>>,
    index_keys: Vec<DocKeys>,
    /// Items of untransformed groups, by (row before, row after) presence.
    plain: [Option<ChangeFanout>; 3],
    /// How many groups may take a plain item (see [`ChangeCtx::plain`]).
    fan_out: usize,
}

impl<'a> ChangeCtx<'a> {
    pub(crate) fn new(c: &'a Committed) -> Self {
        ChangeCtx {
            c,
            key: None,
            index_keys: Vec::new(),
            plain: [None, None, None],
            fan_out: 0,
        }
    }

    /// The row's key as items carry it (shared by all of them).
    #[inline]
    pub(crate) fn key(&mut self) -> Arc<[u8]> {
        let c = self.c;
        self.key
            .get_or_insert_with(|| Arc::from(&c.key[..]))
            .clone()
    }

    /// The keys of the old and new document in `ix`, computed once.
    fn doc_keys(&mut self, ix: &IndexState) -> &mut DocKeys {
        let id = ix as *const IndexState;
        let at = match self.index_keys.iter().position(|k| k.ix == id) {
            Some(at) => at,
            None => {
                let of = |d: &Option<Arc<Value>>| {
                    d.as_deref()
                        .map(|d| ix.compiled.keys(d, &self.c.key))
                        .unwrap_or_default()
                };
                self.index_keys.push(DocKeys {
                    ix: id,
                    old: of(&self.c.old),
                    new: of(&self.c.new),
                    routed: false,
                });
                self.index_keys.len() - 1
            }
        };
        &mut self.index_keys[at]
    }

    /// Both documents' keys in `ix`, to look the range routes of `ix` up with: the groups
    /// found through them may then trust them (see [`ChangeCtx::count`]).
    pub(crate) fn route_keys(&mut self, ix: &IndexState) -> impl Iterator<Item = &[u8]> {
        let k = self.doc_keys(ix);
        k.routed = true;
        k.old.iter().chain(&k.new).map(Vec::as_slice)
    }

    /// How many times the old or new document is in the matcher's rows.
    #[inline]
    pub(crate) fn count(&mut self, matcher: &Matcher, new: bool) -> usize {
        let doc = if new { &self.c.new } else { &self.c.old };
        let Some(d) = doc else { return 0 };
        match matcher {
            Matcher::IndexRange { ix, .. } => {
                // A range group is found only by the index keys its range contains, so when
                // the routes were looked up with this very index's keys and the change has a
                // single one, that key is in the range: the bounds (memory of their own, in
                // every group) need not be read. The common case of inserts and deletes.
                // (Keys of another object for an index of the same name, or a feed replaying
                // the change log, are checked against the bounds.)
                let k = self.doc_keys(ix);
                let (old_n, new_n) = (k.old.len(), k.new.len());
                if k.routed && old_n + new_n == 1 {
                    return if new { new_n } else { old_n };
                }
                matcher.count_keys(if new { &k.new } else { &k.old })
            }
            _ => matcher.count(&self.c.key, d),
        }
    }

    /// Says how many groups the change reaches at most: the first plain item made raises
    /// its reference count for that many at once.
    #[inline]
    pub(crate) fn reaches(&mut self, groups: usize) {
        self.fan_out = groups;
    }

    /// The shared item of an untransformed row entering, leaving or changing.
    #[inline]
    pub(crate) fn plain(&mut self, old: bool, new: bool) -> Change {
        let slot = match (old, new) {
            (true, true) => 0,
            (true, false) => 1,
            _ => 2,
        };
        if let Some(item) = &mut self.plain[slot] {
            return item.next();
        }
        // Only the first group to need this item makes it (and clones the key), and the
        // handles of the groups after it are paid for in one atomic add, not one each: an
        // atomic add waits for the cache misses before it (see `feed::shared`).
        let c = self.c;
        let item = Change::row(
            Some(self.key()),
            c.old.clone().filter(|_| old),
            c.new.clone().filter(|_| new),
        )
        .at(c.seq, c.commit);
        self.plain[slot].insert(item.fan_out(self.fan_out)).next()
    }
}

/// One commit of a table as a group that takes a commit at a time sees it: the changes of
/// the commit that reached the group (each key at most once, with its document before and
/// after the commit), in commit order. Storage holds exactly the commit's state (the hub
/// runs under the commit lock, right after the commit), so what an operator reads from it
/// is the state after the commit.
pub(crate) struct Commit<'a> {
    pub(crate) table: &'a Arc<TableState>,
    pub(crate) changes: &'a [&'a Committed],
    /// The number of the commit's last change (of all its changes to the table).
    pub(crate) last_seq: u64,
    /// The commit's position: the number of its first change.
    pub(crate) position: u64,
}

impl Commit<'_> {
    /// Stamps an item that is about the whole commit: it carries the commit's position and
    /// the place of the commit's last change (see [`Change::position_in_commit`]).
    pub(crate) fn stamp(&self, item: Change) -> Change {
        item.at(self.last_seq, self.position)
    }
}
