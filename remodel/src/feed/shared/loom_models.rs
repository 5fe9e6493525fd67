//! Loom models of [`Shared`] and [`Fanout`]: their own code, with loom's atomic count and
//! fences, on a value whose every read and write loom tracks.
//!
//! Run by .ci/run: `RUSTFLAGS="--cfg loom" cargo test -p remodel --release --lib loom`.
//! Loom fails a model when the value is written (dropped, or changed through `make_mut`)
//! without every other handle's read happening before; each model also checks that the
//! value is dropped exactly once (the count reached zero once) and not leaked. Freeing
//! the allocation itself is outside what loom sees (it is a plain `Box`): the unit tests
//! in `shared.rs` cover it under Miri.

use super::{Fanout, Shared};
use loom::cell::UnsafeCell;
use loom::model::Builder;
use loom::thread;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many values were made and dropped (plain atomics: the model reads them only after
/// joining its threads).
#[derive(Default)]
struct Counts {
    made: AtomicUsize,
    dropped: AtomicUsize,
}

/// A value whose reads and writes loom checks, counted when made and dropped.
struct Probe {
    data: UnsafeCell<u64>,
    counts: Arc<Counts>,
}

// SAFETY: the model's point: handles on several threads read `data` through `&Probe`, and
// loom checks that every write (`set`, `Drop`) is ordered after every read on other
// threads, failing the model otherwise; a real race would be reported, not undefined.
unsafe impl Sync for Probe {}

impl Probe {
    fn new(v: u64, counts: &Arc<Counts>) -> Self {
        counts.made.fetch_add(1, Ordering::Relaxed);
        Probe {
            data: UnsafeCell::new(v),
            counts: counts.clone(),
        }
    }

    fn get(&self) -> u64 {
        // SAFETY: loom checks that no write of `data` races with this read.
        self.data.with(|p| unsafe { *p })
    }

    fn set(&mut self, v: u64) {
        // SAFETY: loom checks that this write is ordered after every read.
        self.data.with_mut(|p| unsafe { *p = v });
    }
}

impl Clone for Probe {
    fn clone(&self) -> Self {
        Probe::new(self.get(), &self.counts)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // The value is gone: a write, which loom checks is ordered after every read.
        self.set(0);
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// These models are small: loom runs every interleaving, however `LOOM_MAX_PREEMPTIONS`
/// is set.
fn exhaustive(model: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound = None;
    builder.check(model);
}

fn check_counts(counts: &Counts) {
    let made = counts.made.load(Ordering::Relaxed);
    let dropped = counts.dropped.load(Ordering::Relaxed);
    assert_eq!(dropped, made, "every value dropped once");
}

/// The fan-out hands one item to two feeds on other threads, paid for in advance (the
/// count raised once) for two, three (one given back when the fan-out goes) or one (the
/// second handle a plain clone). The feeds read the item and drop their handles while the
/// writer reads it and drops the fan-out: whichever drop comes last frees the value, once,
/// after every read.
#[test]
fn loom_fanout_handles_dropped_concurrently() {
    for paid in [2, 3, 1] {
        exhaustive(move || {
            let counts = Arc::new(Counts::default());
            let mut fan = Fanout::new(Shared::new(Probe::new(7, &counts)), paid);
            let feeds: Vec<_> = (0..2)
                .map(|_| {
                    let h = fan.next();
                    thread::spawn(move || {
                        assert_eq!(h.get(), 7);
                        drop(h);
                    })
                })
                .collect();
            assert_eq!(fan.get().get(), 7);
            drop(fan);
            feeds.into_iter().for_each(|t| t.join().unwrap());
            check_counts(&counts);
            assert_eq!(counts.made.load(Ordering::Relaxed), 1);
        });
    }
}

/// A handle changed through `make_mut` while another thread reads its own handle and drops
/// it: changed in place only when the other handle is gone and its read happened before,
/// copied otherwise; both values are dropped once.
#[test]
fn loom_make_mut_after_a_concurrent_drop() {
    exhaustive(|| {
        let counts = Arc::new(Counts::default());
        let mut a = Shared::new(Probe::new(1, &counts));
        let b = a.clone();
        let reader = thread::spawn(move || {
            assert_eq!(b.get(), 1);
            drop(b);
        });
        a.make_mut().set(2);
        assert_eq!(a.get(), 2);
        reader.join().unwrap();
        drop(a);
        check_counts(&counts);
    });
}
