//! Live joins: `eq_join(field, other)` feeds (optionally `.index(name)` on the other table).
//!
//! A join feed's group lives with its left query (routed like a rows feed of that query) and
//! keeps its left rows under the key each joins on; every such key is a followed route of
//! the group in the right table ([`Route::Followed`], per key space: the right table's
//! primary key or one of its indexes), added when a key gets its first left row and removed
//! when it loses its last. So a write to the left table costs what a rows feed costs plus
//! the lookup of its right rows, and a write to the right table finds the left rows joined
//! to it through the routes, by the keys it had and has: no feed is scanned.
//!
//! Items are `{"left": .., "right": ..}` pairs: a pair appears when a left row starts to
//! join a right row (either moved), changes when either row changes, and goes away when one
//! leaves. The right rows under each routed key are kept as last reported, and pairs are
//! made from them, and a left row joining an already known key reads nothing. A commit that
//! writes both tables reaches the join as one step: its changes of both, in commit order
//! (runs of left changes, each right change on its own: `hub/publish.rs`), so its items
//! come in their positions' order, each pair's `old_val` what the item before left it.
//!
//! The write path is kept to what a change needs (a join-row insert entering one of 1,000
//! feeds costs about a fifth of the insert; `insert_1k_join_feeds_vs_none`):
//! - one lookup per change: a key's left rows and right rows are one entry, and there is no
//!   map of the left rows at all (a change brings the row as it was, so the key it joined
//!   on is found from it);
//! - rows are held as the `Arc`s the changes carry, never copied, and a pair's value is not
//!   made by the writer: an item refers to its two rows and a consumer makes the
//!   `{left, right}` value on first read ([`Val::pair`]), once for every feed sharing the
//!   item; a change that leaves a pair as it was makes no item;
//! - a right change reaches its key's left rows in place, one item each.

use super::rows::{Rows, RowsKey};
use super::{check_live, keyed_rows, Commit, Operator, Plan, Reroute, Route, Step};
use crate::db::write::Committed;
use crate::db::{IndexState, TableState};
use crate::feed::change::{Change, Val};
use crate::feed::spec::{Matcher, View};
use crate::value::{encode_key, encode_value, encode_value_into, FieldPath};
use crate::Result;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// What a join matches: the left rows' `field` against the right table's primary key or
/// index.
#[derive(Clone)]
pub(crate) struct JoinDef {
    pub field: FieldPath,
    pub right: Arc<TableState>,
    pub index: Option<Arc<IndexState>>,
}

/// A watched join: its left rows (a rows plan), what they join, and the query that reads
/// those rows when its group is made.
pub(crate) struct JoinPlan {
    pub(crate) rows: Rows,
    pub(crate) def: JoinDef,
    pub(crate) source: crate::query::Query,
}

/// What tells joins of a table apart: their left rows and what they join on.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct JoinKey {
    rows: RowsKey,
    field: FieldPath,
    right: String,
    index: Option<String>,
}

impl Plan for JoinPlan {
    type Operator = Box<EqJoin>;
    // Boxed: a group keeps its key, and rows keys (most groups) are much smaller.
    type Key = Box<JoinKey>;

    fn table(&self) -> &Arc<TableState> {
        &self.rows.table
    }

    fn key(&self) -> Box<JoinKey> {
        Box::new(JoinKey {
            rows: self.rows.key(),
            field: self.def.field.clone(),
            right: self.def.right.name.clone(),
            index: self.def.index.as_ref().map(|ix| ix.name.clone()),
        })
    }

    fn check_live(&self) -> Result<()> {
        self.rows.check_live()?;
        check_live(&self.def.right, self.def.index.as_ref())
    }

    fn load(self) -> Result<Box<EqJoin>> {
        let JoinPlan { rows, def, source } = self;
        let join = LiveJoin::load(def, keyed_rows(&source)?)?;
        Ok(Box::new(EqJoin { rows, join }))
    }
}

/// A live join's group: its left rows (routed like a rows feed of them) and the join.
pub(crate) struct EqJoin {
    rows: Rows,
    join: LiveJoin,
}

impl Operator for EqJoin {
    fn step(&self) -> Step {
        Step::Commit
    }

    /// Those of its left rows, and every join key with a left row in the right table.
    fn routes(&self, each: &mut dyn FnMut(Route<'_>)) {
        self.rows.routes(each);
        let def = &self.join.def;
        for key in self.join.keys.keys() {
            each(def.followed(key));
        }
    }

    fn reads_index(&self, name: &str) -> bool {
        self.rows.reads_index(name)
    }

    /// The right table, in its index or primary key (the key space its join keys are in).
    fn follows(&self, table: &str, index: Option<&str>) -> bool {
        let def = &self.join.def;
        let in_space = match index {
            None => true,
            Some(name) => def.index.as_ref().is_some_and(|ix| ix.name == name),
        };
        def.right.name == table && in_space
    }

    fn apply_commit(
        &mut self,
        commit: &Commit<'_>,
        out: &mut Vec<Change>,
        routes: &mut impl Reroute,
    ) -> Result<()> {
        let rows = (&self.rows.matcher, &self.rows.view);
        self.join.apply_left(rows, commit.changes, out, routes)
    }

    fn apply_followed(&mut self, c: &Committed, out: &mut Vec<Change>) {
        self.join.apply_right(c, out);
    }

    fn initial(&self, _read: impl FnOnce() -> Result<Vec<Arc<Value>>>) -> Result<Vec<Arc<Value>>> {
        self.join.rows()
    }

    fn name(&self) -> &'static str {
        "the join"
    }
}

/// Route changes nobody follows (a join being loaded: its routes are registered once it is).
struct Unrouted;

impl Reroute for Unrouted {
    fn add(&mut self, _route: Route<'_>) {}
    fn remove(&mut self, _route: Route<'_>) {}
}

impl JoinDef {
    /// The route by which the right table's writes under join key `key` find the join.
    fn followed<'a>(&'a self, key: &'a [u8]) -> Route<'a> {
        Route::Followed {
            table: &self.right.name,
            ix: self.index.as_ref(),
            key,
        }
    }

    /// Writes the key a left row joins on into `out`; false when it joins nothing.
    fn key_of(&self, seen: &Value, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(v) = self.field.get(seen) else {
            return false;
        };
        match &self.index {
            None => match encode_key(v) {
                Ok(k) => {
                    *out = k;
                    true
                }
                // Not a valid primary key (null, an object, too long): no right row has it.
                Err(_) => false,
            },
            Some(_) => {
                encode_value_into(v, out);
                true
            }
        }
    }

    /// The right rows under a join key, as they are now, in primary key order.
    fn right_rows(&self, key: &[u8]) -> Result<Rights> {
        let mut out = Vec::new();
        match &self.index {
            None => {
                if let Some(d) = self.right.get_doc(key)? {
                    out.push((Pk::from(key), Arc::new(d)));
                }
            }
            Some(ix) => {
                for entry in ix.tree.scan_prefix(key) {
                    let (_, pk) = entry?;
                    if let Some(d) = self.right.get_doc(&pk)? {
                        out.push((Pk::from(&pk[..]), Arc::new(d)));
                    }
                }
                // Index entries are the value then the primary key, so they come in primary
                // key order already; sorting keeps the invariant whatever the tree returns.
                out.sort_by(|a, b| a.0.cmp(&b.0));
                out.dedup_by(|a, b| a.0 == b.0);
            }
        }
        Ok(out)
    }

    /// The join keys a right document is found under.
    fn right_keys(&self, pk: &[u8], doc: &Value) -> Vec<Vec<u8>> {
        match &self.index {
            None => vec![pk.to_vec()],
            Some(ix) => ix.compiled.values(doc).iter().map(encode_value).collect(),
        }
    }
}

/// The maps a join keeps of its rows, keyed by encoded keys: hashed with a seeded hash
/// (foldhash, per map), several times faster than SipHash on the few bytes of a key, and
/// looked up on every change.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A primary key (encoded), one allocation shared by every place that names the row.
type Pk = Arc<[u8]>;

/// A left row in the result, kept with the key it joins on (rows joining nothing are not
/// kept: they pair with nothing, and a change brings the row as it was).
struct Left {
    pk: Pk,
    seen: Arc<Value>,
    /// How many times the row is in the left result (a key given twice to `get_all`).
    times: usize,
}

/// A left row as a change has it: as its query sees it, and how many times it is there.
type Seen = (Arc<Value>, usize);

/// The right rows under one join key, as the join's consumers know them, sorted by primary
/// key.
type Rights = Vec<(Pk, Arc<Value>)>;

/// A key with more left rows than this finds them through a map; fewer are searched, so
/// that a row entering a small key touches nothing but the key's entry.
const SEARCHED: usize = 32;

/// One routed join key: the left rows joining on it and the right rows under it.
struct Joined {
    /// In no particular order: a row enters by a push and leaves by a swap with the last one.
    lefts: Vec<Left>,
    /// Where each left row is in `lefts`, once there are more than [`SEARCHED`] (boxed:
    /// the entries stay small, a lookup reads fewer lines).
    at: Option<Box<Map<Pk, usize>>>,
    /// In the entry itself (no indirection on the insert path); a row that moves away takes
    /// a copy of the references, as many as the items it makes of them.
    rights: Rights,
}

impl Joined {
    fn position(&self, pk: &[u8]) -> Option<usize> {
        match &self.at {
            // Checked, so that a slot gone wrong can never move another row.
            Some(at) => at
                .get(pk)
                .copied()
                .filter(|&i| self.lefts.get(i).is_some_and(|l| *l.pk == *pk)),
            None => self.lefts.iter().position(|l| *l.pk == *pk),
        }
    }

    fn push(&mut self, l: Left) {
        if let Some(at) = &mut self.at {
            at.insert(l.pk.clone(), self.lefts.len());
        }
        self.lefts.push(l);
        if self.at.is_none() && self.lefts.len() > SEARCHED {
            let mut at = Map::default();
            for (i, l) in self.lefts.iter().enumerate() {
                at.insert(l.pk.clone(), i);
            }
            self.at = Some(Box::new(at));
        }
    }

    fn remove(&mut self, pos: usize) -> Left {
        let l = self.lefts.swap_remove(pos);
        if let Some(at) = &mut self.at {
            at.remove(&l.pk);
            if let Some(moved) = self.lefts.get(pos) {
                at.insert(moved.pk.clone(), pos);
            }
        }
        l
    }
}

/// A live join's state: no map of the left rows (a change brings the row as it was, so
/// where it was is found from that), only the routed join keys.
struct LiveJoin {
    def: JoinDef,
    /// Join key -> the left rows joining on it and the right rows under it, as last
    /// reported (read from storage when a key gets its first left row, then kept up to date
    /// by the right table's changes). Pairs are made from these.
    keys: Map<Arc<[u8]>, Joined>,
    /// Reused for encoding the join keys of a left row before and after a change.
    bufs: [Vec<u8>; 2],
}

/// The pair of a left row as seen and a right row, made now (initial rows).
fn pair(l: &Value, r: &Value) -> Arc<Value> {
    // Built as a map directly: `json!` would run both rows through the serializer.
    let mut m = serde_json::Map::with_capacity(2);
    m.insert("left".to_owned(), l.clone());
    m.insert("right".to_owned(), r.clone());
    Arc::new(Value::Object(m))
}

/// The squash key of a pair: its left and right primary keys.
fn pair_key(l: &[u8], r: &[u8]) -> Arc<[u8]> {
    // Collected straight into the shared allocation (an exact-size iterator), not into a
    // vector that `Arc::from` would copy and free.
    let len = (l.len() as u32).to_be_bytes();
    len.iter().chain(l).chain(r).copied().collect()
}

/// A pair on one side of a change: the left row as seen, the right row, and how many times
/// the left row is in the result.
type Side<'a> = Option<(&'a Arc<Value>, &'a Arc<Value>, usize)>;

fn same(a: &Arc<Value>, b: &Arc<Value>) -> bool {
    crate::value::identical_rows(Some(a), Some(b))
}

/// Items for the pair of `lpk` and `rpk` as it was (`old`) and is (`new`), each place
/// numbered. The pair values are only referred to (made when a consumer reads them), and
/// only when an item carries them.
fn pair_items(lpk: &[u8], rpk: &[u8], old: Side<'_>, new: Side<'_>, out: &mut impl FnMut(Change)) {
    let old_n = old.map_or(0, |s| s.2);
    let new_n = new.map_or(0, |s| s.2);
    let both = old_n.min(new_n);
    let unchanged = match (old, new) {
        (Some((ol, or, _)), Some((nl, nr, _))) => same(ol, nl) && same(or, nr),
        _ => false,
    };
    let changed = if unchanged { 0 } else { both };
    if changed == 0 && old_n == both && new_n == both {
        return;
    }
    let key = pair_key(lpk, rpk);
    let old_pair = old
        .filter(|_| changed > 0 || old_n > both)
        .map(|(l, r, _)| Val::pair(l.clone(), r.clone()));
    let new_pair = new
        .filter(|_| changed > 0 || new_n > both)
        .map(|(l, r, _)| Val::pair(l.clone(), r.clone()));
    // Place 0 is what an item is about unless numbered (`nth` would re-check the item's
    // sharing for nothing).
    let nth = |c: Change, i: usize| if i == 0 { c } else { c.nth(i) };
    for i in 0..changed {
        out(nth(
            Change::row_of(Some(key.clone()), old_pair.clone(), new_pair.clone()),
            i,
        ));
    }
    for i in both..old_n {
        out(nth(
            Change::row_of(Some(key.clone()), old_pair.clone(), None),
            i,
        ));
    }
    for i in both..new_n {
        out(nth(
            Change::row_of(Some(key.clone()), None, new_pair.clone()),
            i,
        ));
    }
}

/// Items for a left row's pairs with the right rows it joined (`old`, against the row as it
/// was) and joins (`new`, against the row as it is): both lists sorted by primary key, so one
/// walk pairs a right row on both sides (a change) and reports the others as they come.
fn left_items(
    lpk: &[u8],
    old: Option<(&Seen, &Rights)>,
    new: Option<(&Seen, &Rights)>,
    out: &mut impl FnMut(Change),
) {
    let empty: &Rights = &Vec::new();
    let (os, ol) = old.map_or((empty, None), |(l, rs)| (rs, Some(l)));
    let (ns, nl) = new.map_or((empty, None), |(l, rs)| (rs, Some(l)));
    fn side<'a>(l: Option<&'a Seen>, r: &'a (Pk, Arc<Value>)) -> Side<'a> {
        l.map(|(seen, times)| (seen, &r.1, *times))
    }
    let (mut i, mut j) = (0, 0);
    while i < os.len() || j < ns.len() {
        let ord = match (os.get(i), ns.get(j)) {
            (Some(o), Some(n)) => o.0.cmp(&n.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                pair_items(lpk, &os[i].0, side(ol, &os[i]), None, out);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                pair_items(lpk, &ns[j].0, None, side(nl, &ns[j]), out);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                pair_items(lpk, &os[i].0, side(ol, &os[i]), side(nl, &ns[j]), out);
                i += 1;
                j += 1;
            }
        }
    }
}

/// A document as the left query sees it, when it is in the result.
fn seen_of(
    (matcher, view): (&Matcher, &View),
    key: &[u8],
    doc: Option<&Arc<Value>>,
) -> Option<Seen> {
    let d = doc?;
    let n = matcher.count(key, d);
    if n == 0 {
        return None;
    }
    view.apply(d).map(|s| (s, n))
}

impl LiveJoin {
    /// Builds the state from the left rows (pk, row as the query sees it, with repeats).
    fn load(def: JoinDef, rows: impl Iterator<Item = Result<(Vec<u8>, Value)>>) -> Result<Self> {
        let mut j = LiveJoin {
            def,
            keys: Map::default(),
            bufs: [Vec::new(), Vec::new()],
        };
        // The rows with how many times each is there, in the order first seen.
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut rows_of: HashMap<Vec<u8>, Seen> = HashMap::new();
        for row in rows {
            let (pk, doc) = row?;
            match rows_of.get_mut(&pk) {
                Some((_, n)) => *n += 1,
                None => {
                    rows_of.insert(pk.clone(), (Arc::new(doc), 1));
                    order.push(pk);
                }
            }
        }
        for pk in order {
            let (seen, times) = rows_of.remove(&pk).expect("recorded above");
            let mut key = std::mem::take(&mut j.bufs[0]);
            if j.def.key_of(&seen, &mut key) {
                let left = Left {
                    pk: Pk::from(pk),
                    seen,
                    times,
                };
                let entered = j.enter(&key, left, &mut Unrouted);
                j.bufs[0] = key;
                entered?;
            } else {
                j.bufs[0] = key;
            }
        }
        Ok(j)
    }

    /// Adds a left row under `key`, reading the key's right rows if it is new here (and
    /// routing the key).
    fn enter(&mut self, key: &[u8], left: Left, routes: &mut impl Reroute) -> Result<()> {
        if let Some(j) = self.keys.get_mut(key) {
            j.push(left);
            return Ok(());
        }
        // The key's first left row: its right rows as they are now.
        let rights = self.def.right_rows(key)?;
        self.keys.insert(
            Arc::from(key),
            Joined {
                lefts: vec![left],
                at: None,
                rights,
            },
        );
        routes.add(self.def.followed(key));
        Ok(())
    }

    /// Removes left row `pk` from under `key` (unrouting the key when it was the last);
    /// returns the key's right rows (as the row's pairs were made with).
    fn leave(&mut self, key: &[u8], pk: &[u8], routes: &mut impl Reroute) -> Rights {
        let Some(j) = self.keys.get_mut(key) else {
            return Rights::new();
        };
        if let Some(pos) = j.position(pk) {
            j.remove(pos);
        }
        if !j.lefts.is_empty() {
            return j.rights.clone();
        }
        let j = self.keys.remove(key).expect("looked up above");
        routes.remove(self.def.followed(key));
        j.rights
    }

    /// The current pairs, by left primary key.
    fn rows(&self) -> Result<Vec<Arc<Value>>> {
        let mut lefts: Vec<(&Left, &Rights)> = self
            .keys
            .values()
            .flat_map(|j| j.lefts.iter().map(|l| (l, &j.rights)))
            .collect();
        lefts.sort_by(|a, b| a.0.pk.cmp(&b.0.pk));
        let mut out = Vec::new();
        for (l, rights) in lefts {
            for (_, r) in rights {
                let p = pair(&l.seen, r);
                out.extend(std::iter::repeat_n(p, l.times));
            }
        }
        Ok(out)
    }

    /// Applies changes of the left table: each one's items (stamped with the change), and
    /// the route changes.
    fn apply_left(
        &mut self,
        (matcher, view): (&Matcher, &View),
        changes: &[&Committed],
        out: &mut Vec<Change>,
        routes: &mut impl Reroute,
    ) -> Result<()> {
        let [mut old_key, mut new_key] = std::mem::take(&mut self.bufs);
        let mut result = Ok(());
        for c in changes {
            // The row as it was and is in the result, and the keys it joined and joins on.
            let old = seen_of((matcher, view), &c.key, c.old.as_ref());
            let new = seen_of((matcher, view), &c.key, c.new.as_ref());
            let had = old
                .as_ref()
                .is_some_and(|(s, _)| self.def.key_of(s, &mut old_key));
            let has = new
                .as_ref()
                .is_some_and(|(s, _)| self.def.key_of(s, &mut new_key));
            let mut emit = |i: Change| out.push(i.at(c.seq, c.commit));
            if had && has && old_key == new_key {
                // The common update: under the same key, with the same right rows.
                let Some(j) = self.keys.get_mut(&old_key[..]) else {
                    continue;
                };
                let (old, new) = (old.expect("had"), new.expect("has"));
                match j.position(&c.key) {
                    Some(pos) => {
                        let l = &mut j.lefts[pos];
                        l.seen = new.0.clone();
                        l.times = new.1;
                    }
                    None => j.push(Left {
                        pk: Pk::from(&c.key[..]),
                        seen: new.0.clone(),
                        times: new.1,
                    }),
                }
                left_items(
                    &c.key,
                    Some((&old, &j.rights)),
                    Some((&new, &j.rights)),
                    &mut emit,
                );
                continue;
            }
            let r_old = had.then(|| self.leave(&old_key, &c.key, routes));
            if has {
                let (seen, times) = new.clone().expect("has");
                let left = Left {
                    pk: Pk::from(&c.key[..]),
                    seen,
                    times,
                };
                if let Err(e) = self.enter(&new_key, left, routes) {
                    result = Err(e);
                    break;
                }
            }
            let r_new = if has {
                self.keys.get(&new_key[..]).map(|j| &j.rights)
            } else {
                None
            };
            left_items(
                &c.key,
                old.as_ref().zip(r_old.as_ref()),
                new.as_ref().zip(r_new),
                &mut emit,
            );
        }
        self.bufs = [old_key, new_key];
        result
    }

    /// Applies a change of the right table (routed here by one of its keys): every left row
    /// joined under a key the right row had or has gets its pair's change (stamped with it).
    fn apply_right(&mut self, c: &Committed, out: &mut Vec<Change>) {
        let keys_of = |d: &Option<Arc<Value>>| {
            d.as_deref()
                .map(|d| self.def.right_keys(&c.key, d))
                .unwrap_or_default()
        };
        let (old_keys, new_keys) = (keys_of(&c.old), keys_of(&c.new));
        let mut keys: Vec<&Vec<u8>> = old_keys.iter().chain(new_keys.iter()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let Some(j) = self.keys.get_mut(&k[..]) else {
                continue;
            };
            // As the consumers know it, and as it is now.
            let rows = &mut j.rights;
            let at = rows.binary_search_by(|(pk, _)| pk[..].cmp(&c.key[..]));
            let new = c.new.as_ref().filter(|_| new_keys.contains(k));
            let old = match (at, new) {
                (Ok(i), Some(n)) => Some(std::mem::replace(&mut rows[i].1, n.clone())),
                (Ok(i), None) => Some(rows.remove(i).1),
                (Err(i), Some(n)) => {
                    rows.insert(i, (Pk::from(&c.key[..]), n.clone()));
                    None
                }
                (Err(_), None) => None,
            };
            // In the key's own order (deterministic for a given history): a right row joined
            // to many left rows costs one item each, nothing more.
            for l in &j.lefts {
                pair_items(
                    &l.pk,
                    &c.key,
                    old.as_ref().map(|r| (&l.seen, r, l.times)),
                    new.map(|r| (&l.seen, r, l.times)),
                    &mut |i: Change| out.push(i.at(c.seq, c.commit)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_key_is_the_left_key_length_then_both_keys() {
        assert_eq!(&*pair_key(b"ab", b"c"), &[0, 0, 0, 2, b'a', b'b', b'c']);
        // Keys that concatenate alike stay apart.
        assert_ne!(pair_key(b"a", b"bc"), pair_key(b"ab", b"c"));
    }
}
