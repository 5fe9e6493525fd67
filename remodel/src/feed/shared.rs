//! A reference-counted pointer whose count is raised once for many clones.
//!
//! One change can reach thousands of feeds that do not share a group (a `between` feed per
//! browser tab), and each of them keeps its own handle on the item. With `Arc`, each handle
//! is an atomic add on the same counter inside the writer's loop over the groups, and an
//! atomic read-modify-write also waits for the stores and cache misses before it, so the
//! loop cannot overlap the misses of one group with the next. [`Fanout`] raises the count
//! by the number of handles the loop may hand out, once, and hands them out without
//! atomics; what it did not hand out is given back in one subtraction when it is dropped.
//!
//! Otherwise [`Shared`] is a plain `Arc` without weak references: clones add one, drops
//! subtract one, and the last drop frees the value (with the same orderings as `Arc`).
//!
//! A thousand feeds of one group read each item too, each on its own task, and a runtime
//! runs those tasks on a few worker threads: a clone per reader and a drop per consumer
//! would move the count's cache line between the workers a thousand times per item (the
//! cost that made a thousand tasks slower than one thread reading the same feeds). So
//! readers take their handles with [`Shared::clone_local`]: each thread keeps a few
//! handles paid for in advance per recent value it read more than once (`local`), hands
//! them out without atomics, and takes back the handles dropped on it. A value then costs each thread an atomic add
//! when it reads it a second time and a subtraction when its entry is reused (or the thread
//! ends): so a thread keeps up to [`local::WAYS`] values it read alive until it reads
//! others.
//!
//! The count is std's `AtomicUsize`; under `--cfg loom` it is loom's, and the model
//! checker runs this code (see `loom_models`; the per-thread cache is left out there: it
//! only moves counts between a thread's handles and the count, with the same orderings).

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicUsize};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicUsize};

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

#[cfg(all(test, loom))]
mod loom_models;

/// A shared, immutable value (see the module doc).
pub(crate) struct Shared<T> {
    ptr: NonNull<Inner<T>>,
    _owns: PhantomData<Inner<T>>,
}

// `repr(C)`: the count first, then the value's first fields, in one cache line (see
// `ChangeData`).
#[repr(C)]
struct Inner<T> {
    count: AtomicUsize,
    value: T,
}

/// Past this many handles the count could overflow: abort, as `Arc` does (it takes
/// `isize::MAX` leaked handles to get there).
const MAX_COUNT: usize = isize::MAX as usize;

// SAFETY: sending a handle to another thread lets that thread read the value through it
// while handles on other threads read it too, so `T: Sync`; and the handle it holds may be
// the last one, whose drop drops the value there, so `T: Send`; `make_mut` gives `&mut T`
// only to the last handle (no other thread can reach the value then), which `T: Send`
// covers. The count is an atomic, so changing it from several threads is sound. These are
// `Arc<T>`'s bounds for the same reasons.
unsafe impl<T: Send + Sync> Send for Shared<T> {}
// SAFETY: `&Shared<T>` on several threads gives shared reads of the value (`T: Sync`) and
// lets each thread clone a handle it may then drop last, dropping the value on that
// thread (`T: Send`); the count is changed only atomically.
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(crate) fn new(value: T) -> Self {
        let inner = Box::new(Inner {
            count: AtomicUsize::new(1),
            value,
        });
        Shared {
            ptr: NonNull::from(Box::leak(inner)),
            _owns: PhantomData,
        }
    }

    fn inner(&self) -> &Inner<T> {
        // SAFETY: `ptr` came from `Box::leak` in `new` and is freed only by the drop that
        // takes the count from 1 to 0. The count counts every live handle (each made by
        // `new`, by `clone` after adding one, or by a `Fanout` that added one for it in
        // advance) plus the handles a `Fanout` paid for and has not handed out (it holds a
        // handle itself meanwhile), so while `self` lives the count is at least one and
        // the allocation is not freed. No `&mut` to it is alive meanwhile: `make_mut`
        // makes one only from the last handle, borrowed mutably, so never while `&self`
        // is.
        unsafe { self.ptr.as_ref() }
    }

    /// Adds `n` to the count (relaxed, like `Arc::clone`: a new handle is made from an
    /// existing one, which keeps the value alive meanwhile).
    fn add(&self, n: usize) {
        let before = self.inner().count.fetch_add(n, Ordering::Relaxed);
        if before > MAX_COUNT - n.min(MAX_COUNT) {
            std::process::abort();
        }
    }

    /// A handle for which the count was already raised.
    ///
    /// # Safety
    /// The caller has added one to the count for this handle and not used it for another.
    unsafe fn prepaid(&self) -> Self {
        Shared {
            ptr: self.ptr,
            _owns: PhantomData,
        }
    }
}

impl<T: Clone> Shared<T> {
    /// A mutable reference to the value, copied first if another handle shares it.
    pub(crate) fn make_mut(&mut self) -> &mut T {
        // Acquire: the other handles' last uses happen before this access (they were
        // dropped with release).
        if self.inner().count.load(Ordering::Acquire) != 1 {
            *self = Shared::new(self.inner().value.clone());
        }
        // SAFETY: a unique reference to the value is sound when nothing else can reach it
        // while the reference lives, and every earlier access happens before.
        // - The allocation is live: `self` is a handle (it was just replaced by a fresh
        //   one if it was not the last).
        // - Nothing else can reach it: the count is 1 and it counts every handle and every
        //   handle a `Fanout` may still hand out (the `Fanout` holding a handle of its own
        //   meanwhile), so `self` is the only handle and no `Fanout` is left. New handles
        //   come only from existing ones (`clone`, `Fanout::next`), and `self` is borrowed
        //   mutably for as long as the reference lives, so none is made meanwhile.
        // - The other handles' reads happen before: each was dropped with a release
        //   subtraction (a `Fanout` gives back what it did not hand out likewise), and the
        //   acquire load above read the count they left.
        unsafe { &mut self.ptr.as_mut().value }
    }
}

/// Gives back `n` handles of the `Shared<T>` whose allocation is at `ptr`, freeing the value
/// if they were the last.
///
/// # Safety
/// `ptr` is the allocation of a live `Shared<T>` of this very `T`, and the caller owns `n`
/// handles of it (counted, not held by any `Shared`), which it does not use afterwards.
#[cfg(not(loom))]
unsafe fn release<T>(ptr: *const (), n: usize) {
    let inner = ptr.cast::<Inner<T>>();
    // SAFETY: the caller owns `n >= 1` counted handles, so the allocation is live here.
    let count = unsafe { &(*inner).count };
    if count.fetch_sub(n, Ordering::Release) != n {
        return;
    }
    fence(Ordering::Acquire);
    // SAFETY: as in `Shared::drop`: the count went from `n` to 0, the `n` handles were the
    // caller's, so no handle is left anywhere and no `Fanout` holds one; every other
    // handle's drop was a release subtraction, which the acquire fence synchronises with;
    // the allocation came from `Box::leak` in `Shared::new` as a `Box<Inner<T>>`.
    drop(unsafe { Box::from_raw(inner.cast_mut()) });
}

/// The per-thread cache of handles paid for in advance (see the module doc).
#[cfg(not(loom))]
pub(crate) mod local {
    use std::cell::Cell;

    /// How many values a thread may keep handles of: a direct-mapped table, by address, so
    /// that finding a value's entry is one comparison. Enough for a reader that is a few
    /// dozen items behind (it reads them in turn, then the next feed reads them again).
    pub(crate) const WAYS: usize = 32;
    /// How many handles a thread pays for at once when it reads a value a second time
    /// (dropped handles come back to it, so a reader that drops what it read rarely pays
    /// again).
    pub(super) const BATCH: usize = 32;

    /// `left` handles of the value at `ptr`, owned by this thread, and how to give them
    /// back (`release::<T>` for the value's `T`). With `left` 0 it owns nothing and only
    /// records that the thread has read the value at `ptr` once (it may be gone and its
    /// address reused since: then it is merely a wrong guess).
    #[derive(Clone, Copy)]
    pub(super) struct Entry {
        pub(super) ptr: *const (),
        pub(super) left: usize,
        pub(super) release: unsafe fn(*const (), usize),
    }

    /// No handles.
    unsafe fn nothing(_: *const (), _: usize) {}

    pub(super) const EMPTY: Entry = Entry {
        ptr: std::ptr::null(),
        left: 0,
        release: nothing,
    };

    pub(super) struct Cache {
        pub(super) ways: [Cell<Entry>; WAYS],
    }

    /// The way of the value at `ptr`.
    pub(super) fn way(ptr: *const ()) -> usize {
        // Allocations are 16-byte aligned; spread the rest over the ways (Fibonacci hashing).
        let h = (ptr as usize >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize);
        h >> (usize::BITS - WAYS.trailing_zeros())
    }

    impl Cache {
        /// Gives back every handle kept.
        pub(super) fn flush(&self) {
            for way in &self.ways {
                let e = way.replace(EMPTY);
                if e.left > 0 {
                    // SAFETY: `release`'s contract: an entry with `left > 0` owns that many
                    // handles of the live value at `ptr`, made by `Shared::<T>::take_local`
                    // with `release::<T>` of the same `T`; the entry was emptied above, so
                    // they are not used again.
                    unsafe { (e.release)(e.ptr, e.left) };
                }
            }
        }
    }

    impl Drop for Cache {
        fn drop(&mut self) {
            self.flush();
        }
    }

    thread_local! {
        pub(super) static CACHE: Cache = const {
            Cache {
                ways: [const { Cell::new(EMPTY) }; WAYS],
            }
        };
    }

    /// Gives back the handles this thread keeps (tests that count a value's owners).
    #[cfg(test)]
    pub(crate) fn flush() {
        let _ = CACHE.try_with(Cache::flush);
    }
}

impl<T> Shared<T> {
    /// A new handle, taken from this thread's handles paid for in advance when it has any
    /// of this value (see the module doc); a plain clone where the thread's cache is gone
    /// (while the thread ends) or under loom.
    pub(crate) fn clone_local(&self) -> Self {
        #[cfg(not(loom))]
        if let Ok(handle) = local::CACHE.try_with(|c| self.take_local(c)) {
            return handle;
        }
        self.clone()
    }

    #[cfg(not(loom))]
    fn take_local(&self, cache: &local::Cache) -> Self {
        let ptr = self.ptr.as_ptr() as *const ();
        let way = &cache.ways[local::way(ptr)];
        let mut e = way.get();
        if e.ptr == ptr && e.left > 0 {
            e.left -= 1;
            way.set(e);
            // SAFETY: `prepaid`'s contract: the entry owned `left` handles of this value
            // (`ptr` is this handle's, and with `left > 0` the entry's value is alive, so it
            // is this one), and one of them was just taken from it.
            return unsafe { self.prepaid() };
        }
        let again = e.ptr == ptr;
        // The way is this value's from now on: give back what it kept of another.
        way.set(local::Entry {
            ptr,
            left: 0,
            release: release::<T>,
        });
        if e.left > 0 {
            // SAFETY: `release`'s contract: the old entry owned `left` handles of the live
            // value at its `ptr`, made with `release::<T>` of that value's own type; it was
            // replaced above, so they are not used again.
            unsafe { (e.release)(e.ptr, e.left) };
        }
        if !again {
            // Read once so far: a plain clone (the entry now records it).
            return self.clone();
        }
        // Read again: pay for this handle and a batch more, kept in the way.
        self.add(1 + local::BATCH);
        way.set(local::Entry {
            ptr,
            left: local::BATCH,
            release: release::<T>,
        });
        // SAFETY: `prepaid`'s contract: one of the `1 + BATCH` just added is this handle's;
        // the entry owns the other `BATCH`.
        unsafe { self.prepaid() }
    }

    /// Keeps this (dropped) handle in this thread's cache if it keeps handles of the same
    /// value; returns whether it did.
    #[cfg(not(loom))]
    fn give_local(&self) -> bool {
        let ptr = self.ptr.as_ptr() as *const ();
        local::CACHE
            .try_with(|cache| {
                let way = &cache.ways[local::way(ptr)];
                let mut e = way.get();
                if e.ptr != ptr {
                    return false;
                }
                if e.left == 0 {
                    // The entry owns nothing (and may be about an earlier value at this
                    // address, of another type): from now on it owns this handle.
                    e.release = release::<T>;
                }
                // With `left > 0` the entry's value is alive, so an equal address is this
                // value, of this `T`, and its `release` is `release::<T>`.
                e.left += 1;
                way.set(e);
                true
            })
            .unwrap_or(false)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        self.add(1);
        // SAFETY: `prepaid`'s contract: one was just added to the count for this handle,
        // and is used for no other.
        unsafe { self.prepaid() }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // The handle joins this thread's kept handles of its value, if there are any: its
        // count stays, owned by the cache, and is given back with them (a release
        // subtraction after this thread's uses of the value, like the one below).
        #[cfg(not(loom))]
        if self.give_local() {
            return;
        }
        if self.inner().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other handle's drop (release) happens before the value is freed.
        fence(Ordering::Acquire);
        // SAFETY: freeing the allocation is sound when it came from `Box` and no one else
        // can reach it, now or later, and every access to it happens before this.
        // - It came from `Box::leak` in `new` (a `Box<Inner<T>>`), and was not freed yet:
        //   only the drop that takes the count to zero frees it, and the count reaches
        //   zero once (at zero no handle is left to raise it again).
        // - No one else can reach it: this drop took the count from 1 to 0, and the count
        //   counts every handle and every handle a `Fanout` may still hand out, so this
        //   was the last handle and no `Fanout` holds one.
        // - Every other access happens before: each other handle was dropped (and each
        //   `Fanout` gave back its unused count) with a release subtraction, which this
        //   thread's acquire fence, after reading the count they left, synchronises with.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        T::fmt(self, f)
    }
}

impl<T> Shared<T> {
    /// Whether both handles are on the same value.
    #[cfg(all(test, not(loom)))]
    fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }
}

/// Hands out handles on one value, the count raised once for up to `n` of them.
pub(crate) struct Fanout<T> {
    item: Shared<T>,
    /// Handles paid for and not handed out yet.
    left: usize,
}

impl<T> Fanout<T> {
    /// Raises the count of `item` for `n` handles to come.
    pub(crate) fn new(item: Shared<T>, n: usize) -> Self {
        if n > 0 {
            item.add(n);
        }
        Fanout { item, left: n }
    }

    /// One more handle: paid for in advance while any are left, otherwise a plain clone.
    pub(crate) fn next(&mut self) -> Shared<T> {
        if self.left == 0 {
            return self.item.clone();
        }
        self.left -= 1;
        // SAFETY: `prepaid`'s contract: `new` added `n` to the count, one for each handle
        // this `Fanout` hands out while `left > 0`; `left` counts those not handed out
        // yet and was just lowered for this one, so its one is used for no other.
        unsafe { self.item.prepaid() }
    }

    #[cfg(test)]
    fn get(&self) -> &Shared<T> {
        &self.item
    }
}

impl<T> Drop for Fanout<T> {
    fn drop(&mut self) {
        if self.left > 0 {
            // `self.item` still holds one, so this never takes the count to zero.
            self.item
                .inner()
                .count
                .fetch_sub(self.left, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// Counts its drops.
    #[derive(Clone)]
    struct Tally(Arc<AtomicUsize>);

    impl Drop for Tally {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_value_is_dropped_once_after_the_last_handle() {
        let drops = Arc::new(AtomicUsize::new(0));
        for (paid, taken) in [(0, 0), (5, 0), (5, 3), (5, 5), (2, 7)] {
            drops.store(0, Ordering::SeqCst);
            let mut fan = Fanout::new(Shared::new(Tally(drops.clone())), paid);
            let handles: Vec<_> = (0..taken).map(|_| fan.next()).collect();
            assert!(handles.iter().all(|h| Shared::ptr_eq(h, fan.get())));
            drop(fan);
            let out = usize::from(taken > 0);
            assert_eq!(
                drops.load(Ordering::SeqCst),
                1 - out,
                "dropped with handles out"
            );
            let threads: Vec<_> = handles
                .into_iter()
                .map(|h| std::thread::spawn(move || drop(h)))
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            assert_eq!(
                drops.load(Ordering::SeqCst),
                1,
                "{paid} paid, {taken} taken"
            );
        }
    }

    /// Handles taken from a thread's cache and dropped back into it: the value lives while
    /// the thread keeps handles of it, and goes once they are given back (by `flush`, or
    /// when the thread ends).
    #[test]
    fn handles_kept_per_thread_are_given_back() {
        let drops = Arc::new(AtomicUsize::new(0));
        let a = Shared::new(Tally(drops.clone()));
        let handles: Vec<_> = (0..100).map(|_| a.clone_local()).collect();
        assert!(handles.iter().all(|h| Shared::ptr_eq(h, &a)));
        drop(handles);
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "the thread keeps handles");
        local::flush();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let b = Shared::new(Tally(drops.clone()));
        let on_thread = b.clone();
        std::thread::spawn(move || {
            let mut here: Vec<_> = (0..10).map(|_| on_thread.clone_local()).collect();
            // Some dropped on another thread, which keeps none of them.
            let there = here.split_off(5);
            std::thread::spawn(move || drop(there)).join().unwrap();
            drop((here, on_thread));
        })
        .join()
        .unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1, "b is still held here");
        drop(b);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn make_mut_copies_only_a_shared_value() {
        let mut a = Shared::new(vec![1]);
        let before = a.ptr;
        a.make_mut().push(2);
        assert_eq!(a.ptr, before, "unshared: changed in place");
        let b = a.clone();
        a.make_mut().push(3);
        assert_eq!((&a[..], &b[..]), (&[1, 2, 3][..], &[1, 2][..]));
    }
}
