//! Routes across tables: how a write of one table finds the groups of other tables that
//! follow it ([`Route::Followed`](crate::feed::ops::Route::Followed): a live join's right
//! rows, by join key). Kept apart from the tables' own routes, under a lock of their own: a
//! group's followed routes change under its table's routes lock (which may then take this
//! one), and a write of the followed table looks its targets up here first and releases
//! this lock before it takes theirs (never the other way round).

use super::routes::GroupId;
use crate::db::write::Committed;
use crate::db::IndexState;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A key space of a followed table: the table, and its index (`None`: its primary key).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Space {
    table: String,
    index: Option<String>,
}

/// The followed routes of one key space.
struct SpaceRoutes {
    /// The index (`None`: the primary key), to find a written row's keys in it.
    ix: Option<Arc<IndexState>>,
    /// Key -> the groups following it, as (their table, their id).
    by_key: HashMap<Vec<u8>, Vec<(String, GroupId)>>,
}

#[derive(Default)]
pub(super) struct Followers {
    spaces: Mutex<HashMap<Space, SpaceRoutes>>,
    /// How many key spaces have routes (writers skip this when there are none).
    routed: AtomicUsize,
}

/// Changes to followed routes of groups of one table, collected while its routes are held
/// (see [`Followers::apply`]).
#[derive(Default)]
pub(super) struct FollowedEdits {
    edits: Vec<Edit>,
}

/// Route changes of one group in one key space, in order (`true`: added).
struct Edit {
    group: GroupId,
    space: Space,
    ix: Option<Arc<IndexState>>,
    keys: Vec<(bool, Vec<u8>)>,
}

impl FollowedEdits {
    /// Notes that group `group` follows (`add`) or no longer follows key `key` of `table`'s
    /// key space `ix`.
    pub(super) fn push(
        &mut self,
        group: GroupId,
        add: bool,
        (table, ix): (&str, Option<&Arc<IndexState>>),
        key: &[u8],
    ) {
        let index = ix.map(|ix| ix.name.as_str());
        match self.edits.last_mut() {
            // A join changes many keys of its one key space: one entry for all of them.
            Some(e)
                if e.group == group
                    && e.space.table == table
                    && e.space.index.as_deref() == index =>
            {
                e.keys.push((add, key.to_vec()))
            }
            _ => self.edits.push(Edit {
                group,
                space: Space {
                    table: table.to_owned(),
                    index: index.map(str::to_owned),
                },
                ix: ix.cloned(),
                keys: vec![(add, key.to_vec())],
            }),
        }
    }
}

impl Followers {
    /// Whether any group follows any table.
    pub(super) fn any(&self) -> bool {
        self.routed.load(Ordering::Acquire) > 0
    }

    /// Makes the route changes of groups of table `table`, in order.
    pub(super) fn apply(&self, table: &str, edits: FollowedEdits) {
        if edits.edits.is_empty() {
            return;
        }
        let mut spaces = self.spaces.lock();
        for e in edits.edits {
            if !spaces.contains_key(&e.space) {
                self.routed.fetch_add(1, Ordering::AcqRel);
                let routes = SpaceRoutes {
                    ix: e.ix,
                    by_key: HashMap::new(),
                };
                spaces.insert(e.space.clone(), routes);
            }
            let routes = spaces.get_mut(&e.space).expect("inserted above");
            for (add, key) in e.keys {
                if add {
                    let gs = routes.by_key.entry(key).or_default();
                    gs.push((table.to_owned(), e.group));
                } else if let Some(gs) = routes.by_key.get_mut(&key) {
                    gs.retain(|(t, g)| !(t == table && *g == e.group));
                    if gs.is_empty() {
                        routes.by_key.remove(&key);
                    }
                }
            }
            if routes.by_key.is_empty() {
                spaces.remove(&e.space);
                self.routed.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The groups that changes of `table` reach through their followed routes, each with
    /// the change (a group reached by several keys of one change, once for it).
    pub(super) fn targets<'c>(
        &self,
        table: &str,
        changes: &'c [Committed],
    ) -> Vec<(String, GroupId, &'c Committed)> {
        let mut targets: Vec<(String, GroupId, &Committed)> = Vec::new();
        let spaces = self.spaces.lock();
        for (space, routes) in spaces.iter() {
            if space.table != table {
                continue;
            }
            for c in changes {
                // The keys of the old and new document in the space.
                let first = targets.len();
                let mut keys = Vec::new();
                for d in [&c.old, &c.new].into_iter().flatten() {
                    match &routes.ix {
                        None => keys.push(c.key.clone()),
                        Some(ix) => keys
                            .extend(ix.compiled.values(d).iter().map(crate::value::encode_value)),
                    }
                }
                for k in keys {
                    for (t, g) in routes.by_key.get(&k).into_iter().flatten() {
                        if !targets[first..].iter().any(|(l, h, _)| l == t && h == g) {
                            targets.push((t.clone(), *g, c));
                        }
                    }
                }
            }
        }
        targets
    }
}
