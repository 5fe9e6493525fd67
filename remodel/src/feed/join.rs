//! Live joins: `eq_join(field, other)` feeds (optionally `.index(name)` on the other table).
//!
//! A join feed's group lives with its left query (routed like a rows feed of that query) and
//! keeps, for each left row in the result, the key it joins on; a reverse map from join key
//! to left rows is registered in the hub's join routes of the right table (per key space:
//! its primary key or one of its indexes). So a write to the left table costs what a rows
//! feed costs plus the lookup of its right rows, and a write to the right table finds the
//! left rows joined to it through the routes, by the keys it had and has: no feed is
//! scanned.
//!
//! Items are `{"left": .., "right": ..}` pairs: a pair appears when a left row starts to
//! join a right row (either moved), changes when either row changes, and goes away when one
//! leaves. The right rows under each routed key are kept as last reported, and pairs are
//! made from them: a commit that writes both tables gives the same items whichever table is
//! applied first, and a left row joining an already known key reads nothing.
//!
//! The write path is kept to what a change needs: rows are held as the `Arc`s the changes
//! carry (never copied), a primary key is one shared allocation for every map naming the
//! row, a key's left rows and right rows are one entry (one lookup per change), and a pair's
//! value is built only for the items that carry it (a change that leaves a pair as it was
//! builds nothing).

use super::change::{Change, Val};
use super::spec::{Matcher, View};
use crate::db::write::Committed;
use crate::db::{IndexState, TableState};
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

/// A watched join and the left query whose rows it joins (read when its group is made).
#[derive(Clone)]
pub(crate) struct JoinPlan {
    pub def: JoinDef,
    pub source: crate::query::Query,
}

/// Where a join's keys are routed: the right table and its key space (`None`: primary key).
pub(crate) type JoinSpace = (String, Option<String>);

/// A change to the join routes of a group: a key gained its first left row, or lost its last.
pub(crate) enum RouteDelta {
    Add(Vec<u8>),
    Remove(Vec<u8>),
}

impl JoinDef {
    pub(crate) fn signature(&self) -> String {
        format!(
            "|join:{}:{}:{}",
            self.field,
            self.right.name,
            self.index.as_ref().map_or("", |ix| ix.name.as_str())
        )
    }

    pub(crate) fn space(&self) -> JoinSpace {
        (
            self.right.name.clone(),
            self.index.as_ref().map(|ix| ix.name.clone()),
        )
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
    pub(crate) fn right_keys(&self, pk: &[u8], doc: &Value) -> Vec<Vec<u8>> {
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

/// A primary key (encoded), one allocation shared by every map that names the row.
type Pk = Arc<[u8]>;

struct Left {
    seen: Arc<Value>,
    /// How many times the row is in the left result (a key given twice to `get_all`).
    times: usize,
    /// The join key (shared with its entry in `LiveJoin::keys`).
    key: Option<Arc<[u8]>>,
    /// Where the row is in its key's `Joined::lefts`.
    slot: usize,
}

/// The right rows under one join key, as the join's consumers know them, sorted by primary
/// key.
type Rights = Vec<(Pk, Arc<Value>)>;

/// One routed join key: the left rows joining on it and the right rows under it.
struct Joined {
    /// The key itself (shared by the left rows that join on it).
    key: Arc<[u8]>,
    /// In no order: a left row enters by a push and leaves by a swap with the last one (its
    /// `Left::slot` says where it is), so a popular key costs nothing more per change; a
    /// right change sorts them, to report its pairs in left key order.
    lefts: Vec<Pk>,
    /// Shared (not copied) while a left change pairs its row with them.
    rights: Arc<Rights>,
}

/// A live join's state.
pub(crate) struct LiveJoin {
    pub def: JoinDef,
    left: Map<Pk, Left>,
    /// Join key -> the left rows joining on it and the right rows under it, as last
    /// reported (read from storage when a key gets its first left row, then kept up to date
    /// by the right table's changes). Pairs are made from these, so a commit that writes
    /// both tables gives the same items in whichever order its two tables are applied.
    keys: Map<Arc<[u8]>, Joined>,
    /// Reused for encoding the join key of a left row.
    buf: Vec<u8>,
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
    let mut k = Vec::with_capacity(l.len() + r.len() + 4);
    k.extend_from_slice(&(l.len() as u32).to_be_bytes());
    k.extend_from_slice(l);
    k.extend_from_slice(r);
    Arc::from(k)
}

/// A pair on one side of a change: the left row as seen, the right row, and how many times
/// the left row is in the result.
type Side<'a> = Option<(&'a Arc<Value>, &'a Arc<Value>, usize)>;

fn same(a: &Arc<Value>, b: &Arc<Value>) -> bool {
    Arc::ptr_eq(a, b) || a == b
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
    old: Option<(&Left, &Rights)>,
    new: Option<(&Left, &Rights)>,
    out: &mut impl FnMut(Change),
) {
    let empty: &Rights = &Vec::new();
    let (os, ol) = old.map_or((empty, None), |(l, rs)| (rs, Some(l)));
    let (ns, nl) = new.map_or((empty, None), |(l, rs)| (rs, Some(l)));
    fn side<'a>(l: Option<&'a Left>, r: &'a (Pk, Arc<Value>)) -> Side<'a> {
        l.map(|l| (&l.seen, &r.1, l.times))
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

impl LiveJoin {
    /// Builds the state from the left rows (pk, row as the query sees it, with repeats).
    /// Returns it with the join keys to route.
    pub(crate) fn load(
        def: JoinDef,
        rows: impl Iterator<Item = Result<(Vec<u8>, Value)>>,
    ) -> Result<(Self, Vec<Vec<u8>>)> {
        let mut j = LiveJoin {
            def,
            left: Map::default(),
            keys: Map::default(),
            buf: Vec::new(),
        };
        let mut deltas = Vec::new();
        for row in rows {
            let (pk, doc) = row?;
            if let Some(l) = j.left.get_mut(&pk[..]) {
                l.times += 1;
                continue;
            }
            let pk = Pk::from(pk);
            let seen = Arc::new(doc);
            let (key, slot) = j.enter(&pk, &seen, &mut deltas)?;
            j.left.insert(
                pk,
                Left {
                    seen,
                    times: 1,
                    key,
                    slot,
                },
            );
        }
        let keys = deltas
            .into_iter()
            .filter_map(|d| match d {
                RouteDelta::Add(k) => Some(k),
                RouteDelta::Remove(_) => None,
            })
            .collect();
        Ok((j, keys))
    }

    /// Adds left row `pk` (as `seen`) under the key it joins on, reading the key's right
    /// rows if it is new here; returns the key and the row's slot under it.
    fn enter(
        &mut self,
        pk: &Pk,
        seen: &Value,
        deltas: &mut Vec<RouteDelta>,
    ) -> Result<(Option<Arc<[u8]>>, usize)> {
        let mut buf = std::mem::take(&mut self.buf);
        let joins = self.def.key_of(seen, &mut buf);
        let out = if !joins {
            Ok((None, 0))
        } else if let Some(j) = self.keys.get_mut(&buf[..]) {
            j.lefts.push(pk.clone());
            Ok((Some(j.key.clone()), j.lefts.len() - 1))
        } else {
            // The key's first left row: its right rows as they are now.
            match self.def.right_rows(&buf) {
                Ok(rights) => {
                    let key: Arc<[u8]> = Arc::from(&buf[..]);
                    self.keys.insert(
                        key.clone(),
                        Joined {
                            key: key.clone(),
                            lefts: vec![pk.clone()],
                            rights: Arc::new(rights),
                        },
                    );
                    deltas.push(RouteDelta::Add(buf.clone()));
                    Ok((Some(key), 0))
                }
                Err(e) => Err(e),
            }
        };
        self.buf = buf;
        out
    }

    /// Removes a left row (no longer in `self.left`) from under its key; returns the key's
    /// right rows.
    fn leave(&mut self, l: &Left, deltas: &mut Vec<RouteDelta>) -> Arc<Rights> {
        let Some(key) = &l.key else {
            return Arc::default();
        };
        let Some(j) = self.keys.get_mut(key) else {
            return Arc::default();
        };
        if l.slot < j.lefts.len() {
            debug_assert!(
                self.left.get(&j.lefts[l.slot]).is_none(),
                "the slot of a row that has left"
            );
            j.lefts.swap_remove(l.slot);
            if let Some(moved) = j.lefts.get(l.slot) {
                // The last row took the slot.
                if let Some(m) = self.left.get_mut(moved) {
                    m.slot = l.slot;
                }
            }
        }
        if !j.lefts.is_empty() {
            return j.rights.clone();
        }
        let j = self.keys.remove(key).expect("looked up above");
        deltas.push(RouteDelta::Remove(key.to_vec()));
        j.rights
    }

    /// The join keys routed for this group (to unroute it).
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        self.keys.keys().map(|k| k.to_vec()).collect()
    }

    /// The current pairs.
    pub(crate) fn rows(&self) -> Result<Vec<Arc<Value>>> {
        let mut out = Vec::new();
        let mut pks: Vec<&Pk> = self.left.keys().collect();
        pks.sort();
        for pk in pks {
            let l = &self.left[pk];
            let Some(k) = &l.key else { continue };
            for (_, r) in self.keys.get(k).into_iter().flat_map(|j| j.rights.iter()) {
                let p = pair(&l.seen, r);
                out.extend(std::iter::repeat_n(p, l.times));
            }
        }
        Ok(out)
    }

    /// Applies changes of the left table: each one's items (with its sequence number), and
    /// the route changes.
    pub(crate) fn apply_left(
        &mut self,
        (matcher, view): (&Matcher, &View),
        changes: &[&Committed],
        deltas: &mut Vec<RouteDelta>,
    ) -> Result<Vec<(u64, Change)>> {
        let mut out = Vec::new();
        for c in changes {
            // A row that did not exist before cannot have been in the result (every change
            // of the left rows comes here): an insert skips the lookup.
            let before = match c.old {
                Some(_) => self.left.remove_entry(&c.key[..]),
                None => None,
            };
            let seen = match &c.new {
                Some(d) => {
                    let n = matcher.count(&c.key, d);
                    (n > 0).then(|| view.apply(d)).flatten().map(|s| (s, n))
                }
                None => None,
            };
            let Some((seen, times)) = seen else {
                // The row leaves (or was never in) the result.
                if let Some((pk, b)) = before {
                    if b.key.is_some() {
                        let rights = self.leave(&b, deltas);
                        left_items(&pk, Some((&b, &rights)), None, &mut |i| {
                            out.push((c.seq, i))
                        });
                    }
                }
                continue;
            };
            let (pk, before) = match before {
                Some((pk, b)) => (pk, Some(b)),
                None => (Pk::from(&c.key[..]), None),
            };
            // Where the row joins now: under the key it had (the common update), or another.
            let stays = match before.as_ref().and_then(|b| b.key.as_ref()) {
                Some(k) => {
                    let mut buf = std::mem::take(&mut self.buf);
                    let joins = self.def.key_of(&seen, &mut buf);
                    let stays = joins && buf[..] == k[..];
                    self.buf = buf;
                    stays.then(|| k.clone())
                }
                None => None,
            };
            let after = match stays {
                Some(k) => {
                    let b = before.as_ref().expect("a kept key is the row's before");
                    let after = Left {
                        seen,
                        times,
                        key: Some(k.clone()),
                        slot: b.slot,
                    };
                    if let Some(j) = self.keys.get(&k) {
                        left_items(
                            &pk,
                            Some((b, &j.rights)),
                            Some((&after, &j.rights)),
                            &mut |i| out.push((c.seq, i)),
                        );
                    }
                    after
                }
                None => {
                    let r_old = match &before {
                        Some(b) if b.key.is_some() => Some(self.leave(b, deltas)),
                        _ => None,
                    };
                    let (key, slot) = self.enter(&pk, &seen, deltas)?;
                    let after = Left {
                        seen,
                        times,
                        key,
                        slot,
                    };
                    // Looked up again rather than shared: the entry was just touched (a
                    // cheap probe), a shared count is one more cold write and its undoing.
                    let r_new = after
                        .key
                        .as_ref()
                        .and_then(|k| self.keys.get(k))
                        .map(|j| &*j.rights);
                    left_items(
                        &pk,
                        before.as_ref().zip(r_old.as_deref()),
                        r_new.map(|r| (&after, r)),
                        &mut |i| out.push((c.seq, i)),
                    );
                    after
                }
            };
            self.left.insert(pk, after);
        }
        Ok(out)
    }

    /// Applies a change of the right table (routed here by one of its keys): every left row
    /// joined under a key the right row had or has gets its pair's change.
    pub(crate) fn apply_right(&mut self, c: &Committed) -> Vec<Change> {
        let keys_of = |d: &Option<Arc<Value>>| {
            d.as_deref()
                .map(|d| self.def.right_keys(&c.key, d))
                .unwrap_or_default()
        };
        let (old_keys, new_keys) = (keys_of(&c.old), keys_of(&c.new));
        let mut keys: Vec<&Vec<u8>> = old_keys.iter().chain(new_keys.iter()).collect();
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for k in keys {
            let Some(j) = self.keys.get_mut(&k[..]) else {
                continue;
            };
            // As the consumers know it, and as it is now.
            let rows = Arc::make_mut(&mut j.rights);
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
            let mut lefts: Vec<&Pk> = j.lefts.iter().collect();
            lefts.sort_unstable();
            for lpk in lefts {
                let Some(l) = self.left.get(lpk) else {
                    continue;
                };
                pair_items(
                    lpk,
                    &c.key,
                    old.as_ref().map(|r| (&l.seen, r, l.times)),
                    new.map(|r| (&l.seen, r, l.times)),
                    &mut |i| out.push(i),
                );
            }
        }
        out
    }
}
