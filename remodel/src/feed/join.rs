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

use super::change::Change;
use super::spec::{Matcher, View};
use crate::db::write::Committed;
use crate::db::{IndexState, TableState};
use crate::value::{encode_key, encode_value, FieldPath};
use crate::Result;
use serde_json::{json, Value};
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

    /// The key a left row joins on (`None`: it joins nothing).
    fn key_of(&self, seen: &Value) -> Option<Vec<u8>> {
        let v = self.field.get(seen)?;
        match &self.index {
            None => encode_key(v).ok(),
            Some(_) => Some(encode_value(v)),
        }
    }

    /// The right rows under a join key, as they are now.
    fn right_rows(&self, key: &[u8]) -> Result<Vec<(Vec<u8>, Arc<Value>)>> {
        match &self.index {
            None => Ok(self
                .right
                .get_doc(key)?
                .map(|d| vec![(key.to_vec(), Arc::new(d))])
                .unwrap_or_default()),
            Some(ix) => {
                let mut out = Vec::new();
                for entry in ix.tree.scan_prefix(key) {
                    let (_, pk) = entry?;
                    if let Some(d) = self.right.get_doc(&pk)? {
                        out.push((pk.to_vec(), Arc::new(d)));
                    }
                }
                Ok(out)
            }
        }
    }

    /// The join keys a right document is found under.
    pub(crate) fn right_keys(&self, pk: &[u8], doc: &Value) -> Vec<Vec<u8>> {
        match &self.index {
            None => vec![pk.to_vec()],
            Some(ix) => ix.compiled.values(doc).iter().map(encode_value).collect(),
        }
    }
}

struct Left {
    seen: Arc<Value>,
    /// How many times the row is in the left result (a key given twice to `get_all`).
    times: usize,
    key: Option<Vec<u8>>,
}

/// The right rows under one join key, as the join's consumers know them.
type Rights = Vec<(Vec<u8>, Arc<Value>)>;

/// A live join's state.
pub(crate) struct LiveJoin {
    pub def: JoinDef,
    left: HashMap<Vec<u8>, Left>,
    /// Join key -> the left rows joining on it.
    reverse: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    /// Join key -> the right rows under it, as last reported (read from storage when a key
    /// gets its first left row, then kept up to date by the right table's changes). Pairs
    /// are made from these, so a commit that writes both tables gives the same items in
    /// whichever order its two tables are applied.
    rights: HashMap<Vec<u8>, Rights>,
}

fn pair(l: &Value, r: &Value) -> Arc<Value> {
    Arc::new(json!({"left": l, "right": r}))
}

/// The squash key of a pair: its left and right primary keys.
fn pair_key(l: &[u8], r: &[u8]) -> Arc<[u8]> {
    let mut k = Vec::with_capacity(l.len() + r.len() + 4);
    k.extend_from_slice(&(l.len() as u32).to_be_bytes());
    k.extend_from_slice(l);
    k.extend_from_slice(r);
    Arc::from(k)
}

/// Items for a pair seen `old_n` times before and `new_n` times after (numbered places).
fn pair_items(
    key: Arc<[u8]>,
    old: Option<Arc<Value>>,
    old_n: usize,
    new: Option<Arc<Value>>,
    new_n: usize,
    out: &mut Vec<Change>,
) {
    let (old_n, new_n) = (
        if old.is_some() { old_n } else { 0 },
        if new.is_some() { new_n } else { 0 },
    );
    let both = old_n.min(new_n);
    if old != new {
        for i in 0..both {
            out.push(Change::row(Some(key.clone()), old.clone(), new.clone()).nth(i));
        }
    }
    for i in both..old_n {
        out.push(Change::row(Some(key.clone()), old.clone(), None).nth(i));
    }
    for i in both..new_n {
        out.push(Change::row(Some(key.clone()), None, new.clone()).nth(i));
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
            left: HashMap::new(),
            reverse: HashMap::new(),
            rights: HashMap::new(),
        };
        let mut deltas = Vec::new();
        for row in rows {
            let (pk, doc) = row?;
            if let Some(l) = j.left.get_mut(&pk) {
                l.times += 1;
                continue;
            }
            let seen = Arc::new(doc);
            let key = j.def.key_of(&seen);
            j.enter(&pk, key.clone(), &mut deltas)?;
            j.left.insert(
                pk,
                Left {
                    seen,
                    times: 1,
                    key,
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

    fn enter(
        &mut self,
        pk: &[u8],
        key: Option<Vec<u8>>,
        deltas: &mut Vec<RouteDelta>,
    ) -> Result<()> {
        if let Some(k) = key {
            if !self.reverse.contains_key(&k) {
                // The key's first left row: its right rows as they are now.
                let rows = self.def.right_rows(&k)?;
                self.rights.insert(k.clone(), rows);
                deltas.push(RouteDelta::Add(k.clone()));
            }
            self.reverse.entry(k).or_default().push(pk.to_vec());
        }
        Ok(())
    }

    fn leave(&mut self, pk: &[u8], key: &Option<Vec<u8>>, deltas: &mut Vec<RouteDelta>) {
        if let Some(k) = key {
            if let Some(list) = self.reverse.get_mut(k) {
                list.retain(|p| p != pk);
                if list.is_empty() {
                    self.reverse.remove(k);
                    self.rights.remove(k);
                    deltas.push(RouteDelta::Remove(k.clone()));
                }
            }
        }
    }

    /// The join keys routed for this group (to unroute it).
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        self.reverse.keys().cloned().collect()
    }

    /// The current pairs.
    pub(crate) fn rows(&self) -> Result<Vec<Arc<Value>>> {
        let mut out = Vec::new();
        let mut pks: Vec<&Vec<u8>> = self.left.keys().collect();
        pks.sort();
        for pk in pks {
            let l = &self.left[pk];
            let Some(k) = &l.key else { continue };
            for (_, r) in self.rights.get(k).into_iter().flatten() {
                for _ in 0..l.times {
                    out.push(pair(&l.seen, r));
                }
            }
        }
        Ok(out)
    }

    /// The right rows a left row is joined to, as last reported.
    fn rights_of(&self, l: &Option<Left>) -> Rights {
        l.as_ref()
            .and_then(|l| l.key.as_ref())
            .and_then(|k| self.rights.get(k))
            .cloned()
            .unwrap_or_default()
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
        let mut items = Vec::new();
        for c in changes {
            let before = self.left.remove(&c.key);
            let after = match &c.new {
                Some(d) => {
                    let n = matcher.count(&c.key, d);
                    match (n > 0).then(|| view.apply(d)).flatten() {
                        Some(seen) => Some(Left {
                            key: self.def.key_of(&seen),
                            seen,
                            times: n,
                        }),
                        None => None,
                    }
                }
                None => None,
            };
            let r_old = self.rights_of(&before);
            if let Some(b) = &before {
                self.leave(&c.key, &b.key, deltas);
            }
            if let Some(a) = &after {
                self.enter(&c.key, a.key.clone(), deltas)?;
            }
            let r_new = self.rights_of(&after);
            let mut right_pks: Vec<&Vec<u8>> =
                r_old.iter().chain(r_new.iter()).map(|(k, _)| k).collect();
            right_pks.sort();
            right_pks.dedup();
            for rpk in right_pks {
                let find = |rs: &[(Vec<u8>, Arc<Value>)], l: &Option<Left>| {
                    let l = l.as_ref()?;
                    let r = rs.iter().find(|(k, _)| k == rpk)?;
                    Some((pair(&l.seen, &r.1), l.times))
                };
                let (o, on) = find(&r_old, &before).map_or((None, 0), |(p, n)| (Some(p), n));
                let (n, nn) = find(&r_new, &after).map_or((None, 0), |(p, n)| (Some(p), n));
                pair_items(pair_key(&c.key, rpk), o, on, n, nn, &mut items);
            }
            out.extend(items.drain(..).map(|i| (c.seq, i)));
            if let Some(a) = after {
                self.left.insert(c.key.clone(), a);
            }
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
            let Some(rows) = self.rights.get_mut(k) else {
                continue;
            };
            // As the consumers know it, and as it is now.
            let old = rows
                .iter()
                .position(|(pk, _)| *pk == c.key)
                .map(|i| rows.remove(i).1);
            let new = c.new.clone().filter(|_| new_keys.contains(k));
            if let Some(n) = &new {
                rows.push((c.key.clone(), n.clone()));
                rows.sort_by(|a, b| a.0.cmp(&b.0));
            }
            for lpk in self.reverse.get(k).into_iter().flatten() {
                let Some(l) = self.left.get(lpk) else {
                    continue;
                };
                pair_items(
                    pair_key(lpk, &c.key),
                    old.as_ref().map(|r| pair(&l.seen, r)),
                    l.times,
                    new.as_ref().map(|r| pair(&l.seen, r)),
                    l.times,
                    &mut out,
                );
            }
        }
        out
    }
}
