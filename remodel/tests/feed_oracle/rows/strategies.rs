//! The strategies that generate the cases.

use super::*;

pub(super) fn key() -> impl Strategy<Value = u8> {
    0..KEYS
}

pub(super) fn val() -> impl Strategy<Value = u8> {
    0..VALS
}

pub(super) fn tags() -> impl Strategy<Value = Vec<u8>> {
    vec(0..TAGS, 0..3)
}

pub(super) fn doc() -> impl Strategy<Value = Doc> {
    (key(), prop::option::weighted(0.85, val()), val(), tags()).prop_map(|(id, a, b, tags)| Doc {
        id,
        a,
        b,
        tags,
    })
}

pub(super) fn patch() -> impl Strategy<Value = Patch> {
    (
        prop::option::weighted(0.6, prop::option::weighted(0.9, val())),
        prop::option::weighted(0.6, val()),
        prop::option::weighted(0.2, tags()),
    )
        .prop_map(|(a, b, tags)| Patch { a, b, tags })
}

pub(super) fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        3 => val().prop_map(Sel::BEq),
        3 => (val(), 1..=VALS).prop_map(|(lo, w)| Sel::ARange(lo, lo + w)),
        2 => (key(), 1..=KEYS).prop_map(|(lo, w)| Sel::KeyRange(lo, lo + w)),
        1 => Just(Sel::All),
    ]
}

/// Writes of one row.
pub(super) fn single_op() -> BoxedStrategy<Op> {
    prop_oneof![
        2 => doc().prop_map(Op::Insert),
        3 => doc().prop_map(Op::Upsert),
        1 => doc().prop_map(Op::MergeInsert),
        4 => (key(), patch()).prop_map(|(k, p)| Op::Update(k, p)),
        2 => (key(), val()).prop_map(|(k, b)| Op::KeepOrder(k, b)),
        2 => doc().prop_map(Op::Replace),
        1 => key().prop_map(Op::Rewrite),
        1 => key().prop_map(Op::Touch),
        3 => key().prop_map(Op::Delete),
        1 => doc().prop_map(Op::Other),
    ]
    .boxed()
}

pub(super) fn batch_op() -> impl Strategy<Value = BOp> {
    prop_oneof![
        1 => doc().prop_map(BOp::Insert),
        3 => doc().prop_map(BOp::Upsert),
        3 => (key(), patch()).prop_map(|(k, p)| BOp::Update(k, p)),
        1 => doc().prop_map(BOp::Replace),
        2 => key().prop_map(BOp::Delete),
        1 => (sel(), patch()).prop_map(|(s, p)| BOp::UpdateWhere(s, p)),
        1 => sel().prop_map(BOp::DeleteWhere),
        1 => doc().prop_map(BOp::Other),
    ]
}

/// Writes of several rows in one commit.
pub(super) fn multi_op() -> BoxedStrategy<Op> {
    prop_oneof![
        2 => vec(doc(), 1..6).prop_map(Op::InsertMany),
        2 => (sel(), patch()).prop_map(|(s, p)| Op::UpdateWhere(s, p)),
        1 => sel().prop_map(Op::DeleteWhere),
        4 => vec(batch_op(), 1..6).prop_map(Op::Batch),
    ]
    .boxed()
}

/// Batches of inserts and deletes only (no member is updated in place).
pub(super) fn insert_delete_commit() -> BoxedStrategy<Op> {
    prop_oneof![
        2 => vec(doc(), 1..6).prop_map(Op::InsertMany),
        1 => sel().prop_map(Op::DeleteWhere),
        4 => vec(
            prop_oneof![doc().prop_map(BOp::Upsert), key().prop_map(BOp::Delete)],
            1..6
        )
        .prop_map(Op::Batch),
    ]
    .boxed()
}

/// Any step, bursts of several commits included.
pub(super) fn any_op() -> BoxedStrategy<Op> {
    prop_oneof![
        6 => single_op(),
        3 => multi_op(),
        2 => vec(prop_oneof![3 => single_op(), 1 => multi_op()], 2..5).prop_map(Op::Burst),
    ]
    .boxed()
}

pub(super) fn bound() -> impl Strategy<Value = B> {
    prop_oneof![
        1 => Just(B::Unb),
        2 => (0..KEYS).prop_map(B::Inc),
        2 => (0..KEYS).prop_map(B::Exc),
    ]
}

pub(super) fn transforms() -> impl Strategy<Value = Vec<Tf>> {
    let tf = prop_oneof![
        2 => val().prop_map(Tf::BEq),
        2 => val().prop_map(Tf::BGe),
        1 => Just(Tf::HasA),
        1 => prop::sample::select(vec![&["id", "b"][..], &["a"][..], &["b", "tags"][..]])
            .prop_map(Tf::Pluck),
        1 => prop::sample::select(vec![&["b"][..], &["a", "tags"][..], &["id"][..]])
            .prop_map(Tf::Without),
    ];
    prop_oneof![2 => Just(Vec::new()), 2 => vec(tf, 1..3)]
}

pub(super) fn ix() -> impl Strategy<Value = Ix> {
    prop_oneof![Just(Ix::Id), Just(Ix::A), Just(Ix::Tags)]
}

/// Table, point, get_all and between feeds, with transforms.
///
/// With `dups`, also feeds whose result holds a row more than once (a key given twice to
/// `get_all`, a multi index matching a row by two elements).
pub(super) fn rows_kind(dups: bool) -> BoxedStrategy<Kind> {
    let ix = if dups {
        ix().boxed()
    } else {
        prop_oneof![Just(Ix::Id), Just(Ix::A)].boxed()
    };
    prop_oneof![
        2 => transforms().prop_map(Kind::Table),
        2 => key().prop_map(Kind::Point),
        3 => (vec(0..KEYS, 1..4), ix.clone(), transforms())
            .prop_map(move |(mut keys, ix, ts)| {
                if !dups {
                    keys.sort_unstable();
                    keys.dedup();
                }
                Kind::GetAll(keys, ix, ts)
            }),
        3 => (bound(), bound(), ix, transforms())
            .prop_map(|(lo, hi, ix, ts)| Kind::Between(lo, hi, ix, ts)),
    ]
    .boxed()
}

/// Top-N feeds on the primary key or on `a`, ascending or descending, optionally within a
/// range of the same index; min and max.
///
/// With `multi`, on the multi index `tags` only (a row is in the order once per element).
pub(super) fn top_n_kind_on(multi: bool) -> BoxedStrategy<Kind> {
    let oix = if multi {
        Just(Ix::Tags).boxed()
    } else {
        prop_oneof![1 => Just(Ix::Id), 3 => Just(Ix::A)].boxed()
    };
    prop_oneof![
        6 => (oix.clone(), any::<bool>(), 1usize..4, prop::option::weighted(0.2, (bound(), bound())))
            .prop_map(|(ix, desc, n, range)| Kind::TopN { ix, desc, n, range }),
        1 => oix.clone().prop_map(Kind::Min),
        1 => oix.prop_map(Kind::Max),
    ]
    .boxed()
}

pub(super) fn top_n_kind() -> BoxedStrategy<Kind> {
    top_n_kind_on(false)
}

pub(super) fn case(
    kind: BoxedStrategy<Kind>,
    squash: BoxedStrategy<Sq>,
    initial: bool,
) -> BoxedStrategy<Case> {
    let initial = if initial {
        any::<bool>().boxed()
    } else {
        Just(false).boxed()
    };
    (
        kind,
        initial,
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        any::<bool>(),
        squash,
        prop_oneof![3 => Just(0usize), 1 => 1usize..8],
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(kind, initial, states, types, offsets, squash, open_before, twice)| {
                let offsets = offsets && kind.top_n();
                Case {
                    open_before,
                    twice,
                    kind,
                    initial,
                    states,
                    types,
                    offsets,
                    squash,
                }
            },
        )
        .boxed()
}

pub(super) fn unsquashed() -> BoxedStrategy<Sq> {
    Just(Sq::Off).boxed()
}

pub(super) fn squashed() -> BoxedStrategy<Sq> {
    prop_oneof![2 => Just(Sq::Merge), 1 => Just(Sq::Window)].boxed()
}

pub(super) fn seed() -> impl Strategy<Value = Vec<Doc>> {
    vec(doc(), 0..8)
}
