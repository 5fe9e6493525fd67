//! The domain: small, so that shrunk counterexamples are short and collisions are frequent.
//! Every description prints as the Rust that makes it.

use super::*;

pub(super) const KEYS: u8 = 8;
pub(super) const VALS: u8 = 5;
pub(super) const TAGS: u8 = 3;

/// The squash window of windowed feeds, in seconds; after each step the test sleeps a little
/// longer than this so that the batch is due.
pub(super) const WINDOW: f64 = 0.002;

pub(super) const WINDOW_WAIT: Duration = Duration::from_millis(4);

/// A document: `a` is ordered and indexed (absent: not in the index), `b` is not indexed,
/// `tags` is a multi index.
#[derive(Clone, PartialEq)]
pub(super) struct Doc {
    pub(super) id: u8,
    pub(super) a: Option<u8>,
    pub(super) b: u8,
    pub(super) tags: Vec<u8>,
}

impl Doc {
    pub(super) fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), json!(self.id));
        if let Some(a) = self.a {
            m.insert("a".into(), json!(a));
        }
        m.insert("b".into(), json!(self.b));
        if !self.tags.is_empty() {
            m.insert("tags".into(), json!(self.tags));
        }
        Value::Object(m)
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.json())
    }
}

/// An update: `a: Some(None)` sets `a` to null (the row leaves the `a` index).
#[derive(Clone, PartialEq)]
pub(super) struct Patch {
    pub(super) a: Option<Option<u8>>,
    pub(super) b: Option<u8>,
    pub(super) tags: Option<Vec<u8>>,
}

impl Patch {
    pub(super) fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(a) = self.a {
            m.insert("a".into(), a.map_or(Value::Null, |a| json!(a)));
        }
        if let Some(b) = self.b {
            m.insert("b".into(), json!(b));
        }
        if let Some(t) = &self.tags {
            m.insert("tags".into(), json!(t));
        }
        Value::Object(m)
    }
}

impl fmt::Debug for Patch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.json())
    }
}

/// The rows a write by query selects.
#[derive(Clone, PartialEq)]
pub(super) enum Sel {
    BEq(u8),
    /// `between(lo, hi).index("a")`, lo included, hi excluded.
    ARange(u8, u8),
    /// A primary key range, lo included, hi excluded.
    KeyRange(u8, u8),
    All,
}

impl Sel {
    pub(super) fn query(&self, t: &Table) -> Query {
        match *self {
            Sel::BEq(v) => t.filter(field("b").eq(v)),
            Sel::ARange(lo, hi) => t
                .between(Bound::Included(json!(lo)), Bound::Excluded(json!(hi)))
                .index("a"),
            Sel::KeyRange(lo, hi) => {
                t.between(Bound::Included(json!(lo)), Bound::Excluded(json!(hi)))
            }
            Sel::All => t.query(),
        }
    }
}

impl fmt::Debug for Sel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sel::BEq(v) => write!(f, "t.filter(b == {v})"),
            Sel::ARange(lo, hi) => write!(f, "t.between({lo}, {hi}).index(\"a\")"),
            Sel::KeyRange(lo, hi) => write!(f, "t.between({lo}, {hi})"),
            Sel::All => write!(f, "t"),
        }
    }
}

/// One write inside a `db.batch()`.
#[derive(Clone, PartialEq)]
pub(super) enum BOp {
    /// Conflict policy `Error`: an existing key fails the whole batch (nothing is written).
    Insert(Doc),
    Upsert(Doc),
    Update(u8, Patch),
    Replace(Doc),
    Delete(u8),
    UpdateWhere(Sel, Patch),
    DeleteWhere(Sel),
    /// An upsert into the other table, `u`.
    Other(Doc),
}

impl fmt::Debug for BOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BOp::Insert(d) => write!(f, ".insert(t, {d:?})"),
            BOp::Upsert(d) => write!(f, ".insert_with(t, {d:?}, Replace)"),
            BOp::Update(k, p) => write!(f, ".update(t, {k}, {p:?})"),
            BOp::Replace(d) => write!(f, ".replace(t, {}, {d:?})", d.id),
            BOp::Delete(k) => write!(f, ".delete(t, {k})"),
            BOp::UpdateWhere(s, p) => write!(f, ".update_where({s:?}, {p:?})"),
            BOp::DeleteWhere(s) => write!(f, ".delete_where({s:?})"),
            BOp::Other(d) => write!(f, ".insert_with(u, {d:?}, Replace)"),
        }
    }
}

/// One step of a case.
#[derive(Clone, PartialEq)]
pub(super) enum Op {
    /// Conflict policy `Error`: an existing key is counted as an error, nothing written.
    Insert(Doc),
    Upsert(Doc),
    /// Conflict policy `Update`: merged into an existing document.
    MergeInsert(Doc),
    /// One commit (`Conflict::Replace`; a key given twice is written twice).
    InsertMany(Vec<Doc>),
    Update(u8, Patch),
    /// Sets `b` and writes `a` back with its current value: the order value is kept.
    KeepOrder(u8, u8),
    Replace(Doc),
    /// Replaces the document with itself: a no-op write.
    Rewrite(u8),
    /// An empty update: a no-op write.
    Touch(u8),
    Delete(u8),
    UpdateWhere(Sel, Patch),
    DeleteWhere(Sel),
    Batch(Vec<BOp>),
    /// An upsert into the other table, `u`.
    Other(Doc),
    /// Several commits made while no feed is read (what squashing merges).
    Burst(Vec<Op>),
}

impl Op {
    /// Whether the step is one commit (so every feed must see it as one net change).
    pub(super) fn atomic(&self) -> bool {
        !matches!(self, Op::Burst(_))
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Insert(d) => write!(f, "t.insert({d:?})"),
            Op::Upsert(d) => write!(f, "t.insert({d:?}).conflict(Replace)"),
            Op::MergeInsert(d) => write!(f, "t.insert({d:?}).conflict(Update)"),
            Op::InsertMany(ds) => write!(f, "t.insert_many({ds:?}).conflict(Replace)"),
            Op::Update(k, p) => write!(f, "t.get({k}).update({p:?})"),
            Op::KeepOrder(k, b) => write!(f, "t.get({k}).update({{\"a\": <its a>, \"b\": {b}}})"),
            Op::Replace(d) => write!(f, "t.get({}).replace({d:?})", d.id),
            Op::Rewrite(k) => write!(f, "t.get({k}).replace(<itself>)"),
            Op::Touch(k) => write!(f, "t.get({k}).update({{}})"),
            Op::Delete(k) => write!(f, "t.get({k}).delete()"),
            Op::UpdateWhere(s, p) => write!(f, "{s:?}.update({p:?})"),
            Op::DeleteWhere(s) => write!(f, "{s:?}.delete()"),
            Op::Other(d) => write!(f, "u.insert({d:?}).conflict(Replace)"),
            Op::Batch(ops) => {
                write!(f, "db.batch()")?;
                for op in ops {
                    write!(f, "{op:?}")?;
                }
                Ok(())
            }
            Op::Burst(ops) => {
                write!(f, "burst[")?;
                for (i, op) in ops.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{op:?}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Which key a `get_all` or `between` reads through.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Ix {
    Id,
    A,
    Tags,
}

impl Ix {
    pub(super) fn name(self) -> &'static str {
        match self {
            Ix::Id => "id",
            Ix::A => "a",
            Ix::Tags => "tags",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum B {
    Unb,
    Inc(u8),
    Exc(u8),
}

impl B {
    pub(super) fn bound(self) -> Bound<Value> {
        match self {
            B::Unb => Bound::Unbounded,
            B::Inc(v) => Bound::Included(json!(v)),
            B::Exc(v) => Bound::Excluded(json!(v)),
        }
    }
}

impl fmt::Debug for B {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            B::Unb => write!(f, "Unbounded"),
            B::Inc(v) => write!(f, "Included({v})"),
            B::Exc(v) => write!(f, "Excluded({v})"),
        }
    }
}

/// A row transform after the source.
#[derive(Clone, PartialEq)]
pub(super) enum Tf {
    BEq(u8),
    BGe(u8),
    HasA,
    Pluck(&'static [&'static str]),
    Without(&'static [&'static str]),
}

impl Tf {
    pub(super) fn apply(&self, q: Query) -> Query {
        match self {
            Tf::BEq(v) => q.filter(field("b").eq(*v)),
            Tf::BGe(v) => q.filter(field("b").ge(*v)),
            Tf::HasA => q.filter(remodel::has_fields(["a"])),
            Tf::Pluck(fs) => q.pluck(fs.iter().copied()),
            Tf::Without(fs) => q.without(fs.iter().copied()),
        }
    }

    pub(super) fn predicate(&self) -> Option<Predicate> {
        match self {
            Tf::BEq(v) => Some(field("b").eq(*v)),
            Tf::BGe(v) => Some(field("b").ge(*v)),
            Tf::HasA => Some(remodel::has_fields(["a"])),
            _ => None,
        }
    }
}

impl fmt::Debug for Tf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tf::BEq(v) => write!(f, ".filter(b == {v})"),
            Tf::BGe(v) => write!(f, ".filter(b >= {v})"),
            Tf::HasA => write!(f, ".filter(has_fields([\"a\"]))"),
            Tf::Pluck(fs) => write!(f, ".pluck({fs:?})"),
            Tf::Without(fs) => write!(f, ".without({fs:?})"),
        }
    }
}

/// What a feed watches.
#[derive(Clone, PartialEq)]
pub(super) enum Kind {
    Table(Vec<Tf>),
    Point(u8),
    /// A point feed followed by transforms (`get(k).pluck(..)` and co.); see
    /// `point_feeds_with_transforms`.
    PointT(u8, Vec<Tf>),
    GetAll(Vec<u8>, Ix, Vec<Tf>),
    Between(B, B, Ix, Vec<Tf>),
    TopN {
        ix: Ix,
        desc: bool,
        n: usize,
        /// `between(lo, hi).index(ix)` before the ordering.
        range: Option<(B, B)>,
    },
    Min(Ix),
    Max(Ix),
}

impl Kind {
    pub(super) fn top_n(&self) -> bool {
        matches!(self, Kind::TopN { .. } | Kind::Min(_) | Kind::Max(_))
    }
    /// Whether the rows the feed shows carry their primary key (no `pluck` dropping `id`,
    /// no `without("id")`), so that equal rows are the same row.
    pub(super) fn keyed(&self) -> bool {
        let tfs = match self {
            Kind::Table(ts)
            | Kind::PointT(_, ts)
            | Kind::GetAll(_, _, ts)
            | Kind::Between(_, _, _, ts) => ts,
            _ => return true,
        };
        tfs.iter().all(|tf| match tf {
            Tf::Pluck(fs) => fs.contains(&"id"),
            Tf::Without(fs) => !fs.contains(&"id"),
            _ => true,
        })
    }

    pub(super) fn point(&self) -> Option<u8> {
        match self {
            Kind::Point(k) | Kind::PointT(k, _) => Some(*k),
            _ => None,
        }
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tfs = |f: &mut fmt::Formatter<'_>, tfs: &[Tf]| -> fmt::Result {
            for t in tfs {
                write!(f, "{t:?}")?;
            }
            Ok(())
        };
        let index = |ix: Ix| match ix {
            Ix::Id => String::new(),
            ix => format!(".index(\"{}\")", ix.name()),
        };
        match self {
            Kind::Table(ts) => {
                write!(f, "t")?;
                tfs(f, ts)
            }
            Kind::Point(k) => write!(f, "t.get({k})"),
            Kind::PointT(k, ts) => {
                write!(f, "t.get({k})")?;
                tfs(f, ts)
            }
            Kind::GetAll(keys, ix, ts) => {
                write!(f, "t.get_all({keys:?}){}", index(*ix))?;
                tfs(f, ts)
            }
            Kind::Between(lo, hi, ix, ts) => {
                write!(f, "t.between({lo:?}, {hi:?}){}", index(*ix))?;
                tfs(f, ts)
            }
            Kind::TopN { ix, desc, n, range } => {
                write!(f, "t")?;
                if let Some((lo, hi)) = range {
                    write!(f, ".between({lo:?}, {hi:?}).index(\"{}\")", ix.name())?;
                }
                let d = if *desc { ".desc()" } else { "" };
                write!(
                    f,
                    ".order_by(Order::index(\"{}\"){d}).limit({n})",
                    ix.name()
                )
            }
            Kind::Min(ix) => write!(f, "t.min_by_index(\"{}\")", ix.name()),
            Kind::Max(ix) => write!(f, "t.max_by_index(\"{}\")", ix.name()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Sq {
    Off,
    Merge,
    Window,
}

/// A feed and its options.
#[derive(Clone, PartialEq)]
pub(super) struct Case {
    pub(super) kind: Kind,
    pub(super) initial: bool,
    pub(super) states: bool,
    pub(super) types: bool,
    pub(super) offsets: bool,
    pub(super) squash: Sq,
    /// The feed is opened just before this step (after the steps before it).
    pub(super) open_before: usize,
    /// Two identical feeds are opened (they share their group's work and log).
    pub(super) twice: bool,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.open_before > 0 {
            write!(f, "[opened before step #{}] ", self.open_before)?;
        }
        if self.twice {
            write!(f, "[twice] ")?;
        }
        write!(f, "{:?}.changes()", self.kind)?;
        if self.initial {
            write!(f, ".include_initial(true)")?;
        }
        if self.states {
            write!(f, ".include_states(true)")?;
        }
        if self.types {
            write!(f, ".include_types(true)")?;
        }
        if self.offsets {
            write!(f, ".include_offsets(true)")?;
        }
        match self.squash {
            Sq::Off => Ok(()),
            Sq::Merge => write!(f, ".squash(true)"),
            Sq::Window => write!(f, ".squash_window({WINDOW})"),
        }
    }
}
