//! Loom models of the log: the producer, the readers and the blocks are the log's own code,
//! with loom's atomics, mutex, `Arc` (of the blocks) and cells (`super::sync`), and blocks
//! of [`BLOCK`] = 2 slots so that a few items cross block boundaries.
//!
//! Run by .ci/run: `RUSTFLAGS="--cfg loom" cargo test -p remodel --release --lib loom`.
//! Loom runs each model under every interleaving of its threads (up to
//! `LOOM_MAX_PREEMPTIONS` forced switches) and every value a load may see under the memory
//! model, and fails the model on a read of a slot that is not ordered after its write, a
//! slot emptied or rewritten while a reader may read it (a block reused too early), a
//! block `Arc` leaked, or all threads blocked (a lost wakeup: a reader parked on its waker
//! while an item it has not read is in the log). Each model also checks what the readers
//! see: every item once and in order, or an overflow count that covers the gap exactly,
//! then the end; and that every item is dropped once (no leak, no double drop).
//!
//! The hub's serialisation is kept: readers join on the producer's thread (the hub joins
//! and appends under the routes lock), and the producer runs `push` (append, the
//! sequentially consistent fence, `wake_waiting`), as the hub does for each change.

use super::*;
use loom::thread;
use serde_json::{json, Value};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

/// What a reader got from [`Log::next`], in order.
#[derive(Debug, PartialEq)]
enum Got {
    Item(i64),
    Overflow(u64),
}

/// The values of `n` items (a reference count per item, to see each dropped once).
fn values(n: i64) -> Vec<Arc<Value>> {
    (0..n).map(|i| Arc::new(json!(i))).collect()
}

/// Appends the item of `v` and wakes the readers that were waiting, as the hub does.
fn push(p: &mut Producer, v: &Arc<Value>) {
    let mut wakes = Vec::new();
    p.push(Change::row(None, None, Some(v.clone())), &mut wakes);
    wakes.into_iter().for_each(Waker::wake);
}

/// Ends the log, as the hub does when a group goes.
fn close(p: &Producer) {
    p.log().close(Error::FeedAborted("end of the model".into()));
}

/// Reads the log as a feed's consumer does (parking on its waker when caught up) until it
/// reads the item of value `last` or, with `None`, until the log is closed.
///
/// A reader that stops at an item, with no close to follow, parks for good if the push of
/// that item does not wake it: loom reports the lost wakeup as a deadlock. (A close wakes
/// every listed reader, so a model that reads until the close would not see it.)
fn read(log: &Log, r: &mut Reader, last: Option<i64>) -> Vec<Got> {
    let mut got = Vec::new();
    loom::future::block_on(poll_fn(|cx| loop {
        match log.next(r, cx.waker()) {
            Next::Item(c) => {
                let v = c.new_val().and_then(Value::as_i64).expect("a number");
                got.push(Got::Item(v));
                if Some(v) == last {
                    return Poll::Ready(());
                }
            }
            Next::Overflow(k) => got.push(Got::Overflow(k)),
            Next::Closed(_) => return Poll::Ready(()),
            Next::Empty => return Poll::Pending,
        }
    }));
    got
}

/// Checks that `got` reads positions `from..to` once each, in order, overflows
/// accounting for the items not read, and that only a reader of capacity `cap` that fell
/// behind by more than `cap` overflowed.
fn check_reads(got: &[Got], from: i64, to: i64, may_overflow: bool) {
    let mut next = from;
    for g in got {
        match *g {
            Got::Item(v) => {
                assert_eq!(v, next, "every item once, in order: {got:?}");
                next += 1;
            }
            Got::Overflow(k) => {
                assert!(may_overflow, "only a small reader overflows: {got:?}");
                assert!(k > 0, "an overflow skips at least one item: {got:?}");
                next += k as i64;
            }
        }
    }
    assert_eq!(next, to, "read up to the end: {got:?}");
}

/// Checks that every item was dropped once: only the model's own reference to each value
/// is left (a leaked item would hold one more; a double drop would take one too many).
fn check_dropped(vals: &[Arc<Value>]) {
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(Arc::strong_count(v), 1, "item {i} dropped once");
    }
}

/// One producer appends across block boundaries (5 items: blocks from 0, 2 and 4; a block
/// the reader has passed is trimmed, and kept as the spare if nothing holds it) while its sole
/// reader reads in place, moving the items out of the slots; then the log is closed, and
/// the reader, parked or not, reads the rest and then the end.
#[test]
fn loom_one_reader_moves_items_out_across_blocks() {
    loom::model(|| {
        let vals = values(5);
        let mut p = Producer::default();
        let log = p.log().clone();
        let mut r = log.join(16);
        let reader = thread::spawn(move || {
            let got = read(&log, &mut r, None);
            log.leave(&r);
            got
        });
        for v in &vals {
            push(&mut p, v);
        }
        close(&p);
        let got = reader.join().unwrap();
        check_reads(&got, 0, 5, false);
        drop(p);
        check_dropped(&vals);
    });
}

/// Two readers read in place while the producer appends across a block boundary. The
/// second joins after the first item, in the middle of a block: the first reader moves
/// item 0 out (it alone can read it) and both clone the later ones.
#[test]
fn loom_two_readers_share_items_across_blocks() {
    loom::model(|| {
        let vals = values(3);
        let mut p = Producer::default();
        let log = p.log().clone();
        let a = log.join(16);
        push(&mut p, &vals[0]);
        let b = log.join(16);
        let readers: Vec<_> = [(a, 0), (b, 1)]
            .into_iter()
            .map(|(mut r, from)| {
                let log = log.clone();
                thread::spawn(move || {
                    let got = read(&log, &mut r, Some(2));
                    log.leave(&r);
                    (got, from)
                })
            })
            .collect();
        push(&mut p, &vals[1]);
        push(&mut p, &vals[2]);
        for t in readers {
            let (got, from) = t.join().unwrap();
            check_reads(&got, from, 3, false);
        }
        drop((p, log));
        check_dropped(&vals);
    });
}

/// A reader of capacity 1 falls behind while the producer appends 7 items: the blocks it
/// has not read are trimmed (more than its queue size behind the end), an emptied one is
/// kept as the spare and reused for a later block, possibly while the reader still reads
/// the block it holds. The reader overflows (the count covers the gap exactly) and reads
/// what is left (always the last item), and no slot of a block is emptied or rewritten
/// while it may read it.
#[test]
fn loom_lagging_reader_while_blocks_are_trimmed_and_reused() {
    loom::model(|| {
        let vals = values(7);
        let mut p = Producer::default();
        let log = p.log().clone();
        let mut r = log.join(1);
        let reader = thread::spawn(move || {
            let got = read(&log, &mut r, Some(6));
            log.leave(&r);
            got
        });
        for v in &vals {
            push(&mut p, v);
        }
        let got = reader.join().unwrap();
        check_reads(&got, 0, 7, true);
        drop(p);
        check_dropped(&vals);
    });
}

/// Two readers; one reads an item and is dropped in the middle of a block (it leaves the
/// log and lets go of the block it held) while the producer appends across the block
/// boundary and the other reader reads everything. With one reader left, the next block
/// may be made unshared: the remaining reader then moves its items out.
#[test]
fn loom_reader_dropped_mid_block() {
    loom::model(|| {
        let vals = values(3);
        let mut p = Producer::default();
        let log = p.log().clone();
        let mut a = log.join(16);
        let mut b = log.join(16);
        let log_a = log.clone();
        let stays = thread::spawn(move || {
            let got = read(&log_a, &mut a, Some(2));
            log_a.leave(&a);
            got
        });
        let leaves = thread::spawn(move || {
            let got = read(&log, &mut b, Some(0));
            log.leave(&b);
            drop(b);
            got
        });
        for v in &vals {
            push(&mut p, v);
        }
        assert_eq!(leaves.join().unwrap(), [Got::Item(0)]);
        check_reads(&stays.join().unwrap(), 0, 3, false);
        drop(p);
        check_dropped(&vals);
    });
}
