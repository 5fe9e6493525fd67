//! The synchronisation types of the log: std's (and parking_lot's mutex) in every normal
//! build, loom's under `--cfg loom`, where the model checker runs the log's own code (see
//! `loom_models`).
//!
//! A normal build gets the very types the log used before this shim: `Arc`, the atomics,
//! `fence`, `UnsafeCell` are std's, `Mutex` is parking_lot's. Loom's `UnsafeCell` and
//! atomics reach their content only through closures (`with`, `with_mut`), so that loom can
//! see each access; the two traits below give std's types those two methods, each an
//! inlined call of the std method it stands for (`UnsafeCell::get`, `AtomicUsize::get_mut`).

#[cfg(not(loom))]
pub(super) use parking_lot::Mutex;
#[cfg(not(loom))]
pub(super) use std::cell::UnsafeCell;
#[cfg(not(loom))]
pub(super) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(super) use std::sync::Arc;

#[cfg(loom)]
pub(super) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(super) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(super) use loom::sync::Arc;

/// Loom's mutex with parking_lot's `lock` (no poisoning).
#[cfg(loom)]
#[derive(Default)]
pub(super) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(super) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .expect("a model thread panicked holding the log's lock")
    }
}

/// Loom's access to a cell's content, on std's `UnsafeCell`: the pointer of
/// [`UnsafeCell::get`], for reading (`with`) or writing (`with_mut`).
#[cfg(not(loom))]
pub(super) trait CellAccess<T> {
    fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R;
    fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R;
}

#[cfg(not(loom))]
impl<T> CellAccess<T> for UnsafeCell<T> {
    #[inline(always)]
    fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.get())
    }

    #[inline(always)]
    fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.get())
    }
}

/// Loom's `with_mut` on std's `AtomicUsize`: [`AtomicUsize::get_mut`], for an atomic
/// reached through `&mut`.
#[cfg(not(loom))]
pub(super) trait AtomicAccess {
    fn with_mut<R>(&mut self, f: impl FnOnce(&mut usize) -> R) -> R;
}

#[cfg(not(loom))]
impl AtomicAccess for AtomicUsize {
    #[inline(always)]
    fn with_mut<R>(&mut self, f: impl FnOnce(&mut usize) -> R) -> R {
        f(self.get_mut())
    }
}

#[cfg(all(loom, not(test)))]
compile_error!("`--cfg loom` is for remodel's unit tests (loom is a dev-dependency): see .ci/run");
