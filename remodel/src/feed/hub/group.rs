//! A group of identical feeds: what it watches, the items it makes of a change (once for all
//! its feeds), and its members.

use super::routes::{Route, TopReg};
use crate::db::write::Committed;
use crate::db::IndexState;
use crate::feed::aggregate::LiveAgg;
use crate::feed::change::{Change, ChangeFanout};
use crate::feed::join::LiveJoin;
use crate::feed::log::{Log, Producer};
use crate::feed::queue::Subscriber;
use crate::feed::spec::{Matcher, View};
use crate::feed::topn::TopN;
use crate::Error;
use serde_json::Value;
use std::sync::Arc;
use std::task::Waker;

pub(super) enum Kind {
    /// Rows feeds; with `agg`, a live aggregate of those rows (applied a commit at a time).
    Rows {
        matcher: Matcher,
        view: View,
        agg: Option<Box<LiveAgg>>,
        /// A live join of those rows with another table (applied a commit at a time).
        join: Option<Box<LiveJoin>>,
    },
    TopN(TopN),
}

impl Kind {
    /// Whether the group takes a commit at a time (top-N sets, aggregates).
    pub(super) fn per_commit(&self) -> bool {
        matches!(
            self,
            Kind::TopN(_) | Kind::Rows { agg: Some(_), .. } | Kind::Rows { join: Some(_), .. }
        )
    }
}

pub(super) struct Group {
    pub(super) signature: Arc<str>,
    pub(super) kind: Kind,
    pub(super) route: Route,
    /// The index this group reads, if any (dropping it aborts the group).
    pub(super) index: Option<String>,
    /// Top-N groups: where the group is registered in the top-N routes.
    pub(super) topn_reg: Option<TopReg>,
    pub(super) members: Members,
}

/// The feeds of a group: readers of the shared log, and feeds with a private queue (those
/// that squash, since merging is per consumer).
#[derive(Default)]
pub(super) struct Members {
    pub(super) log: Option<Producer>,
    pub(super) shared: usize,
    pub(super) own: Vec<(u64, Arc<Subscriber>)>,
}

impl Members {
    pub(super) fn deliver(&mut self, item: Change, wakes: &mut Vec<Waker>) {
        if self.deliver_deferred(item, wakes).is_some() {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            self.wake_waiting(wakes);
        }
    }

    /// [`Members::deliver`] without looking for waiting readers of the log; returns the
    /// log if it took the item, in which case the caller runs `fence(SeqCst)` and then
    /// [`Log::wake_waiting`] (once for every group a change reached). The pointer is the
    /// group's log, alive while the group is: it spares the caller a second lookup of the
    /// group per change (a cache miss each, for a change reaching a thousand groups).
    pub(super) fn deliver_deferred(
        &mut self,
        item: Change,
        wakes: &mut Vec<Waker>,
    ) -> Option<*const Log> {
        for (_, sub) in &self.own {
            if sub.push(item.clone()) {
                wakes.extend(sub.take_waker());
            }
        }
        let log = self.log.as_mut()?;
        log.append(item).then(|| Arc::as_ptr(log.log()))
    }

    pub(super) fn wake_waiting(&self, wakes: &mut Vec<Waker>) {
        if let Some(log) = &self.log {
            log.log().wake_waiting(wakes);
        }
    }

    pub(super) fn close(&self, why: &Error) {
        if let Some(log) = &self.log {
            log.log().close(why.clone());
        }
        self.own.iter().for_each(|(_, s)| s.close(why.clone()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.shared == 0 && self.own.is_empty()
    }
}

/// The keys of a change's old and new document in one index.
pub(super) struct DocKeys {
    /// The index, by address (it lives as long as the change).
    ix: *const IndexState,
    old: Vec<Vec<u8>>,
    new: Vec<Vec<u8>>,
    /// Whether the range routes were looked up with these keys (see [`ChangeCtx::count`]).
    routed: bool,
}

/// Per-change work shared by every rows group the change reaches: the row's key, the old
/// and new documents' keys in each index a range group reads, and the items of groups that
/// see whole rows (identical for all of them, so one allocation is shared).
pub(super) struct ChangeCtx<'a> {
    pub(super) c: &'a Committed,
    /// The row's key as items carry it, made when the first item is.
    key: Option<Arc<[u8]>>,
    index_keys: Vec<DocKeys>,
    /// Items of untransformed groups, by (row before, row after) presence.
    plain: [Option<ChangeFanout>; 3],
    /// How many groups may take a plain item (see [`ChangeCtx::plain`]).
    fan_out: usize,
}

impl<'a> ChangeCtx<'a> {
    pub(super) fn new(c: &'a Committed) -> Self {
        ChangeCtx {
            c,
            key: None,
            index_keys: Vec::new(),
            plain: [None, None, None],
            fan_out: 0,
        }
    }

    /// The row's key as items carry it (shared by all of them).
    pub(super) fn key(&mut self) -> Arc<[u8]> {
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
    pub(super) fn route_keys(&mut self, ix: &IndexState) -> impl Iterator<Item = &[u8]> {
        let k = self.doc_keys(ix);
        k.routed = true;
        k.old.iter().chain(&k.new).map(Vec::as_slice)
    }

    /// How many times the old or new document is in the matcher's rows.
    pub(super) fn count(&mut self, matcher: &Matcher, new: bool) -> usize {
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
    pub(super) fn reaches(&mut self, groups: usize) {
        self.fan_out = groups;
    }

    /// The shared item of an untransformed row entering, leaving or changing.
    pub(super) fn plain(&mut self, old: bool, new: bool) -> Change {
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

impl Group {
    /// The items a rows group's feeds get for a change.
    pub(super) fn items(&mut self, ctx: &mut ChangeCtx<'_>, out: &mut Vec<Change>) {
        let (matcher, view) = match &mut self.kind {
            Kind::TopN(_) => unreachable!("top-N groups take a commit at a time"),
            Kind::Rows { matcher, view, .. } => (matcher, view),
        };
        row_items(matcher, view, ctx, out);
    }
}

/// The items a rows feed (matcher and view) gets for a change: live, or replayed from the
/// change log when a feed resumes.
pub(super) fn row_items(
    matcher: &Matcher,
    view: &View,
    ctx: &mut ChangeCtx<'_>,
    out: &mut Vec<Change>,
) {
    let old_n = ctx.count(matcher, false);
    let new_n = ctx.count(matcher, true);
    if old_n == 0 && new_n == 0 {
        return;
    }
    if view.is_identity() && old_n <= 1 && new_n <= 1 {
        // The common case: whole rows, each once. Every such group delivers the same item.
        out.push(ctx.plain(old_n == 1, new_n == 1));
        return;
    }
    let c = ctx.c;
    let seen = |n: usize, doc: &Option<Arc<Value>>| match doc {
        Some(d) if n > 0 => view.apply(d),
        _ => None,
    };
    let (old, new) = (seen(old_n, &c.old), seen(new_n, &c.new));
    let old_n = if old.is_some() { old_n } else { 0 };
    let new_n = if new.is_some() { new_n } else { 0 };
    let key = &ctx.key();
    let both = old_n.min(new_n);
    // The row's places in the result, numbered: place i is there before the write when
    // i < old_n and after it when i < new_n (squashing merges per row and place).
    if old != new {
        for i in 0..both {
            out.push(
                Change::row(Some(key.clone()), old.clone(), new.clone())
                    .nth(i)
                    .at(c.seq, c.commit),
            );
        }
    }
    for i in both..old_n {
        out.push(
            Change::row(Some(key.clone()), old.clone(), None)
                .nth(i)
                .at(c.seq, c.commit),
        );
    }
    for i in both..new_n {
        out.push(
            Change::row(Some(key.clone()), None, new.clone())
                .nth(i)
                .at(c.seq, c.commit),
        );
    }
}
