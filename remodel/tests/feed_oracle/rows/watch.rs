//! What the consumer of a feed holds, and the checks of each item and of each step.

use super::*;

pub(super) fn err(e: Error) -> String {
    format!("unexpected error: {e:?}")
}

/// Object keys sorted, so that equal rows print alike whatever their field order.
pub(super) fn canon(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let s: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(s.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            v => v.clone(),
        }
    }
    sorted(v).to_string()
}

pub(super) fn opt(v: Option<&Value>) -> String {
    v.map_or_else(|| "null".to_string(), canon)
}

/// How many times each row value occurs.
pub(super) fn bag<'a>(rows: impl IntoIterator<Item = &'a Value>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(canon(r)).or_insert(0) += 1;
    }
    m
}

pub(super) fn show(rows: &[Value]) -> String {
    let v: Vec<String> = rows.iter().map(canon).collect();
    format!("[{}]", v.join(", "))
}

pub(super) fn show_item(c: &Change) -> String {
    let mut s = format!("{{old: {}, new: {}", opt(c.old_val()), opt(c.new_val()));
    if c.old_offset().is_some() || c.new_offset().is_some() {
        s += &format!(
            ", old_offset: {:?}, new_offset: {:?}",
            c.old_offset(),
            c.new_offset()
        );
    }
    if let Some(seq) = c.seq() {
        s += &format!(", seq: {seq}");
    }
    s + "}"
}

/// What the consumer holds: a list (top-N with offsets) or a multiset of rows.
#[derive(Clone)]
pub(super) enum Held {
    List(Vec<Value>),
    Bag(Vec<Value>),
}

impl Held {
    pub(super) fn rows(&self) -> &[Value] {
        match self {
            Held::List(v) | Held::Bag(v) => v,
        }
    }

    /// Applies one change item; `Err` says why it cannot be applied.
    pub(super) fn apply(&mut self, c: &Change) -> Result<(), String> {
        match self {
            Held::List(list) => {
                match (c.old_val(), c.old_offset()) {
                    (None, None) => {}
                    (Some(old), Some(i)) => match list.get(i) {
                        Some(there) if there == old => {
                            list.remove(i);
                        }
                        there => {
                            return Err(format!(
                                "old_offset {i} holds {}, not the old_val",
                                opt(there)
                            ))
                        }
                    },
                    (old, off) => {
                        return Err(format!(
                            "old_val {} with old_offset {off:?}: one without the other",
                            opt(old)
                        ))
                    }
                }
                match (c.new_val(), c.new_offset()) {
                    (None, None) => {}
                    (Some(new), Some(i)) if i <= list.len() => list.insert(i, new.clone()),
                    (Some(_), Some(i)) => {
                        return Err(format!(
                            "new_offset {i} is past the end of a list of {}",
                            list.len()
                        ))
                    }
                    (new, off) => {
                        return Err(format!(
                            "new_val {} with new_offset {off:?}: one without the other",
                            opt(new)
                        ))
                    }
                }
            }
            Held::Bag(rows) => {
                if c.old_offset().is_some() || c.new_offset().is_some() {
                    return Err("offsets on a feed without include_offsets".into());
                }
                if let Some(old) = c.old_val() {
                    match rows.iter().position(|r| r == old) {
                        Some(i) => {
                            rows.swap_remove(i);
                        }
                        None => return Err("its old_val is not a row the consumer holds".into()),
                    }
                }
                if let Some(new) = c.new_val() {
                    rows.push(new.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether the consumer's rows equal the query's result.
    pub(super) fn equals(&self, result: &[Value]) -> bool {
        match self {
            Held::List(list) => {
                list.len() == result.len() && list.iter().zip(result).all(|(a, b)| a == b)
            }
            Held::Bag(rows) => bag(rows.iter()) == bag(result.iter()),
        }
    }
}

/// A feed under test, with what its consumer holds.
pub(super) struct Watch {
    pub(super) case: Case,
    pub(super) feed: Feed,
    pub(super) held: Held,
    /// The largest sequence number delivered so far.
    pub(super) last_seq: Option<u64>,
    /// Whether a `{new_val: null}` initial item on a non-point feed is reported (only some
    /// properties do, so that this one defect does not hide the others).
    pub(super) null_initial_fails: bool,
}

impl Watch {
    /// Opens the feed and checks its first items; `None` when the feed is refused as
    /// unwatchable and may be (top-N on a multi index: the documentation does not say).
    pub(super) async fn open(
        t: &Table,
        case: Case,
        null_initial_fails: bool,
        shown: Option<u64>,
    ) -> Result<Option<Watch>, String> {
        let multi_top_n = matches!(
            case.kind,
            Kind::TopN { ix: Ix::Tags, .. } | Kind::Min(Ix::Tags) | Kind::Max(Ix::Tags)
        );
        let feed = match changes(t, &case).await {
            Ok(feed) => feed,
            Err(Error::Unwatchable(_)) if multi_top_n => return Ok(None),
            Err(e) => return Err(format!("feed {case:?}: could not be opened: {e:?}")),
        };
        let mut w = Watch {
            held: if case.offsets {
                Held::List(Vec::new())
            } else {
                Held::Bag(Vec::new())
            },
            case,
            last_seq: feed.snapshot_seq(),
            feed,
            null_initial_fails,
        };
        let now = expected(t, &w.case.kind).await?;
        let exists = match w.case.kind.point() {
            Some(k) => t.get(k).await.map_err(err)?.is_some(),
            None => false,
        };
        let items = drain(&mut w.feed);
        // The snapshot is numbered: the changes after it are those numbered above it.
        let snapshot = match (w.last_seq, shown) {
            (None, _) => Err("the feed has no snapshot_seq".to_string()),
            (Some(s), Some(shown)) if s < shown => Err(format!(
                "snapshot_seq {s} is below commit {shown}, which a feed had already shown"
            )),
            _ => Ok(()),
        };
        snapshot
            .and_then(|()| w.opening(&items, &now, exists))
            .map_err(|why| w.report("opening the feed", &items, None, &now, &why))?;
        Ok(Some(w))
    }

    /// Checks the items delivered when the feed opens (states, initial rows) and takes the
    /// initial rows (or, without include_initial, the query's result) as the consumer's.
    pub(super) fn opening(
        &mut self,
        items: &[Result<Change, Error>],
        now: &[Value],
        exists: bool,
    ) -> Result<(), String> {
        let case = self.case.clone();
        let mut items: Vec<Change> = items
            .iter()
            .map(|i| i.clone().map_err(|e| format!("an error item: {e:?}")))
            .collect::<Result<_, _>>()?;
        if case.states {
            let want_first = if case.initial {
                FeedState::Initializing
            } else {
                FeedState::Ready
            };
            if items.first().and_then(Change::state) != Some(want_first) {
                return Err(format!("the first item is not the state {want_first:?}"));
            }
            items.remove(0);
            if case.initial {
                if items.last().and_then(Change::state) != Some(FeedState::Ready) {
                    return Err("the initial rows are not followed by the state Ready".into());
                }
                items.pop();
            }
        }
        if let Some(c) = items.iter().find(|c| c.state().is_some()) {
            return Err(format!("an unexpected state item {:?}", c.state()));
        }
        if !case.initial {
            if !items.is_empty() {
                return Err("items delivered before any write, without include_initial".into());
            }
            self.held = match &self.held {
                Held::List(_) => Held::List(now.to_vec()),
                Held::Bag(_) => Held::Bag(now.to_vec()),
            };
            return Ok(());
        }
        let mut nulls = 0;
        for (i, c) in items.iter().enumerate() {
            check_json(c, case.types)?;
            if c.kind() != ChangeKind::Initial || c.old_val().is_some() || c.seq().is_some() {
                return Err(format!(
                    "initial item #{i} is not {{new_val}} of kind initial"
                ));
            }
            let want_offset = (case.offsets).then_some(i - nulls);
            if c.new_val().is_some() && c.new_offset() != want_offset {
                return Err(format!(
                    "initial item #{i} has new_offset {:?}, expected {want_offset:?} (best first)",
                    c.new_offset()
                ));
            }
            match c.new_val() {
                None => nulls += 1,
                Some(_) => self.held.apply(c)?,
            }
        }
        match case.kind.point() {
            // A point feed on a missing row delivers one {new_val: null}; on a row it shows,
            // none. (A present row that a filter hides is not specified: 0 or 1.)
            Some(_) if !exists && nulls != 1 => {
                return Err(format!(
                    "a point feed on a missing row delivered {nulls} {{new_val: null}} items (expected 1)"
                ));
            }
            Some(_) if !now.is_empty() && nulls > 0 => {
                return Err(format!(
                    "a point feed on a row it shows delivered {nulls} {{new_val: null}} items"
                ));
            }
            Some(_) if nulls > 1 => {
                return Err(format!(
                    "a point feed delivered {nulls} {{new_val: null}} items"
                ));
            }
            None if nulls > 0 && self.null_initial_fails => {
                return Err(format!(
                    "{nulls} initial {{new_val: null}} item(s) on a feed whose query result is {}",
                    show(now)
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Takes what the feed delivered for one step and checks it.
    pub(super) async fn step(
        &mut self,
        t: &Table,
        step: &str,
        atomic: bool,
        before: &[Value],
    ) -> Result<(), String> {
        let items = drain(&mut self.feed);
        let after = expected(t, &self.case.kind).await?;
        let held_before = self.held.clone();
        self.take(&items, atomic, before, &after)
            .map_err(|why| self.report(step, &items, Some((before, &held_before)), &after, &why))
    }

    pub(super) fn take(
        &mut self,
        items: &[Result<Change, Error>],
        atomic: bool,
        before: &[Value],
        after: &[Value],
    ) -> Result<(), String> {
        let squashed = self.case.squash != Sq::Off;
        let floor = self.last_seq;
        let mut changes = Vec::new();
        for (n, item) in items.iter().enumerate() {
            let c = item
                .as_ref()
                .map_err(|e| format!("item #{n} is an error: {e:?}"))?;
            check_json(c, self.case.types)?;
            if c.state().is_some() || c.kind() == ChangeKind::Initial {
                return Err(format!(
                    "item #{n} is a state or an initial row after the start"
                ));
            }
            let want = match (c.old_val().is_some(), c.new_val().is_some()) {
                (false, _) => ChangeKind::Add,
                (true, false) => ChangeKind::Remove,
                (true, true) => ChangeKind::Change,
            };
            if c.kind() != want {
                return Err(format!("item #{n} has kind {:?}", c.kind()));
            }
            if c.old_val() == c.new_val() {
                return Err(format!("item #{n} has old_val == new_val"));
            }
            let Some(seq) = c.seq() else {
                return Err(format!("item #{n} has no sequence number"));
            };
            // Later steps commit later: their numbers are above every earlier step's.
            if floor.is_some_and(|f| seq <= f) {
                return Err(format!(
                    "item #{n} has seq {seq}, not above the previous step's {floor:?}"
                ));
            }
            // Within a step, unsquashed items come in commit order.
            if !squashed && self.last_seq.is_some_and(|l| seq < l) {
                return Err(format!("item #{n} has seq {seq}, below the item before it"));
            }
            self.last_seq = Some(self.last_seq.map_or(seq, |l| l.max(seq)));
            self.held
                .apply(c)
                .map_err(|why| format!("item #{n} cannot be applied: {why}"))?;
            changes.push(c);
        }
        if !self.held.equals(after) {
            return Err("the rows rebuilt from the feed differ from the query's result".into());
        }
        // One commit (or, squashed, one batch) is delivered as its net change.
        if atomic || squashed {
            let (b, a) = (bag(before.iter()), bag(after.iter()));
            let olds = bag(changes.iter().filter_map(|c| c.old_val()));
            let news = bag(changes.iter().filter_map(|c| c.new_val()));
            let keys: std::collections::BTreeSet<&String> = b
                .keys()
                .chain(a.keys())
                .chain(olds.keys())
                .chain(news.keys())
                .collect();
            for k in keys {
                let (bk, ak) = (
                    b.get(k).copied().unwrap_or(0),
                    a.get(k).copied().unwrap_or(0),
                );
                let (ok, nk) = (
                    olds.get(k).copied().unwrap_or(0),
                    news.get(k).copied().unwrap_or(0),
                );
                let (lost, gained) = ((bk - ak).max(0), (ak - bk).max(0));
                // Rows without their key can look alike: then only require that every
                // row shown was in a committed result.
                let wrong = if self.case.kind.keyed() {
                    ok != lost || nk != gained
                } else {
                    ok > bk || nk > ak
                };
                if wrong {
                    let what = if squashed { "batch" } else { "commit" };
                    return Err(format!(
                        "not the net change of the {what}: row {k} is {bk}x in the result before \
                         and {ak}x after, but leaves in {ok} item(s) and enters in {nk}"
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn report(
        &self,
        step: &str,
        items: &[Result<Change, Error>],
        before: Option<(&[Value], &Held)>,
        after: &[Value],
        why: &str,
    ) -> String {
        let mut s = format!("\n  feed:     {:?}\n  {step}\n", self.case);
        if let Some((before, held)) = before {
            s += &format!("  query before: {}\n", show(before));
            s += &format!("  held before:  {}\n", show(held.rows()));
        }
        s += &format!("  query after:  {}\n", show(after));
        s += "  items:\n";
        // Long lists (the 4,096-row commit) are cut in the middle.
        let cut = items.len() > 24;
        for (n, item) in items.iter().enumerate() {
            if cut && (12..items.len() - 4).contains(&n) {
                if n == 12 {
                    s += &format!("    ... {} more ...\n", items.len() - 16);
                }
                continue;
            }
            match item {
                Ok(c) if c.state().is_some() => s += &format!("    state {:?}\n", c.state()),
                Ok(c) if c.kind() == ChangeKind::Initial => {
                    s += &format!("    initial {}\n", show_item(c))
                }
                Ok(c) => s += &format!("    {}\n", show_item(c)),
                Err(e) => s += &format!("    error {e:?}\n"),
            }
        }
        s += &format!(
            "  held after:   {}\n  problem: {why}\n",
            show(self.held.rows())
        );
        s
    }
}

/// The JSON form shows `type` exactly when asked for.
pub(super) fn check_json(c: &Change, types: bool) -> Result<(), String> {
    let j = c.to_json();
    match (types, j.get("type")) {
        (true, Some(t)) if t == c.kind().as_str() => Ok(()),
        (false, None) => Ok(()),
        (_, t) => Err(format!(
            "to_json has type {t:?} with include_types({types}), kind {:?}",
            c.kind()
        )),
    }
}
