//! The items that turn one ordered list of rows into another: how top-N feeds report a
//! commit (the set before it and after it) and how a squashing top-N feed reports a batch
//! (the list its consumer has and the set now).
//!
//! Items are list edits that a consumer applies one after the other: delete at `old_offset`,
//! then insert at `new_offset`. Offsets are those of the consumer's list at the moment it
//! applies the item, so a sequence of several items stays valid.
//!
//! Rows present on both sides with the same value keep their place without an item when they
//! keep their order relative to each other: the largest such set (a longest increasing
//! subsequence of their positions) stays, and every other row that is on both sides is
//! reported as `{old, new}` (it changed, or moved past rows that stayed). Rows that left are
//! paired with rows that entered (`{old: leaving row, new: entering row}`); what is left
//! over is a plain removal or addition. An item that would change nothing the consumer can
//! see (another row with the same value in the same place) is not sent.

use super::change::Change;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One row of an ordered list: its encoded primary key and its value as the feed shows it.
pub(crate) type ListRow = (Arc<[u8]>, Arc<Value>);

/// The edits that turn `before` into `after` (see the module doc). Items carry offsets and
/// the key of the row they insert (or delete, for a plain removal).
pub(crate) fn list_edits(before: &[ListRow], after: &[ListRow]) -> Vec<Change> {
    let old_pos: HashMap<&[u8], usize> = before
        .iter()
        .enumerate()
        .map(|(i, (pk, _))| (&**pk, i))
        .collect();
    // Rows on both sides with an unchanged value, as (position before, position after).
    let same: Vec<(usize, usize)> = after
        .iter()
        .enumerate()
        .filter_map(|(j, (pk, seen))| {
            let i = *old_pos.get(&**pk)?;
            crate::value::identical_rows(Some(&before[i].1), Some(seen)).then_some((i, j))
        })
        .collect();
    let mut stays_after = vec![false; after.len()];
    for k in longest_increasing(&same) {
        stays_after[same[k].1] = true;
    }

    // The list as the consumer has it while applying the items.
    let mut list: Vec<&[u8]> = before.iter().map(|(pk, _)| &**pk).collect();
    let in_after: HashSet<&[u8]> = after.iter().map(|(pk, _)| &**pk).collect();
    // Rows that left the list (a row on both sides is reported with its own new value).
    let mut leaving = (0..before.len()).filter(|&i| !in_after.contains(&*before[i].0));
    let mut out = Vec::new();
    // Insertions in increasing final position: each goes right after its final predecessor,
    // which is already in place (it stayed, or was inserted just before).
    for j in (0..after.len()).filter(|&j| !stays_after[j]) {
        let (pk, seen) = &after[j];
        let deleted = match old_pos.get(&**pk) {
            Some(&i) => Some(i),
            None => leaving.next(),
        };
        let old_offset = deleted.map(|i| {
            let at = position(&list, &before[i].0);
            list.remove(at);
            at
        });
        let new_offset = match j {
            0 => 0,
            _ => position(&list, &after[j - 1].0) + 1,
        };
        list.insert(new_offset, pk);
        let old = deleted.map(|i| &before[i].1);
        if crate::value::identical_rows(old, Some(seen)) && old_offset == Some(new_offset) {
            // Another row with the same value took this one's place: the consumer's list
            // looks the same, so there is nothing to say.
            continue;
        }
        out.push(
            Change::row(
                Some(pk.clone()),
                deleted.map(|i| before[i].1.clone()),
                Some(seen.clone()),
            )
            .with_offsets(old_offset, Some(new_offset)),
        );
    }
    for i in leaving {
        let at = position(&list, &before[i].0);
        list.remove(at);
        out.push(
            Change::row(Some(before[i].0.clone()), Some(before[i].1.clone()), None)
                .with_offsets(Some(at), None),
        );
    }
    out
}

fn position(list: &[&[u8]], pk: &[u8]) -> usize {
    list.iter()
        .position(|k| *k == pk)
        .expect("every row of the consumer's list is tracked")
}

/// The indexes into `pairs` (sorted by their second element) of a longest subsequence whose
/// first elements increase: the rows that can stay where they are. O(n log n).
fn longest_increasing(pairs: &[(usize, usize)]) -> Vec<usize> {
    // tails[l]: index into `pairs` of the smallest tail of an increasing run of length l+1.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev: Vec<Option<usize>> = vec![None; pairs.len()];
    for (k, &(i, _)) in pairs.iter().enumerate() {
        let l = tails.partition_point(|&t| pairs[t].0 < i);
        prev[k] = l.checked_sub(1).map(|p| tails[p]);
        if l == tails.len() {
            tails.push(k);
        } else {
            tails[l] = k;
        }
    }
    let mut out = Vec::with_capacity(tails.len());
    let mut cur = tails.last().copied();
    while let Some(k) = cur {
        out.push(k);
        cur = prev[k];
    }
    out.reverse();
    out
}

/// Applies an item's edit to a list (what a consumer with offsets does).
#[cfg(test)]
pub(crate) fn apply_edit(list: &mut Vec<ListRow>, item: &Change) {
    if let Some(o) = item.raw_old_offset() {
        if o < list.len() {
            list.remove(o);
        }
    }
    if let (Some(o), Some(new), Some(pk)) = (item.raw_new_offset(), item.new_arc(), item.key()) {
        let o = o.min(list.len());
        list.insert(o, (pk.clone(), new.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rows(spec: &[(u8, i64)]) -> Vec<ListRow> {
        spec.iter()
            .map(|&(k, v)| (Arc::from(&[k][..]), Arc::new(json!(v))))
            .collect()
    }

    /// What a consumer with offsets sees after applying the items: the values, in order.
    fn replay(before: &[ListRow], items: &[Change]) -> Vec<Value> {
        let mut list = before.to_vec();
        for item in items {
            apply_edit(&mut list, item);
        }
        values(&list)
    }

    fn values(list: &[ListRow]) -> Vec<Value> {
        list.iter().map(|(_, v)| (**v).clone()).collect()
    }

    #[test]
    fn an_updated_member_is_one_change_of_itself() {
        let before = rows(&[(1, 1), (2, 2)]);
        let after = rows(&[(1, 5), (2, 2)]);
        let items = list_edits(&before, &after);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].old_val(), Some(&json!(1)));
        assert_eq!(items[0].new_val(), Some(&json!(5)));
        assert_eq!(replay(&before, &items), values(&after));
    }

    #[test]
    fn leaving_rows_pair_with_entering_rows() {
        let before = rows(&[(1, 1), (2, 2), (3, 3)]);
        let after = rows(&[(4, 0), (1, 1), (3, 3)]);
        let items = list_edits(&before, &after);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].old_val(), Some(&json!(2)));
        assert_eq!(items[0].new_val(), Some(&json!(0)));
        assert_eq!(replay(&before, &items), values(&after));
    }

    #[test]
    fn nothing_changes_nothing_is_said() {
        let before = rows(&[(1, 1), (2, 2)]);
        assert!(list_edits(&before, &before).is_empty());
    }

    proptest! {
        /// Whatever the two lists, replaying the edits on the first gives the second, no
        /// item is a no-op, and rows that stay in place with their value get no item.
        #[test]
        fn edits_turn_before_into_after(
            a in proptest::collection::btree_map(0u8..12, 0i64..3, 0..8),
            b in proptest::collection::btree_map(0u8..12, 0i64..3, 0..8),
            shuffle_a in any::<u64>(), shuffle_b in any::<u64>(),
        ) {
            let order = |m: &std::collections::BTreeMap<u8, i64>, s: u64| {
                let mut v: Vec<(u8, i64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                v.sort_by_key(|(k, _)| ((u64::from(*k) * 0x9E37_79B9) ^ s) % 1009);
                rows(&v)
            };
            let (before, after) = (order(&a, shuffle_a), order(&b, shuffle_b));
            let items = list_edits(&before, &after);
            prop_assert_eq!(replay(&before, &items), values(&after));
            for item in &items {
                prop_assert!(item.old_val().is_some() || item.new_val().is_some());
                prop_assert!(!(item.old_val() == item.new_val()
                    && item.raw_old_offset() == item.raw_new_offset()));
            }
            prop_assert!(items.len() <= before.len().max(after.len()) + before.len());
        }
    }
}
