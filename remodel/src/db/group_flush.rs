//! Group commit: hard-durability writes from many tasks share fsyncs.
//!
//! A hard write waits until everything up to its commit is on disk. The syncs run on one
//! thread of the database's own, the *syncer*: a writer asks it for a sync covering its commit
//! and waits, asynchronously, until the syncer says how far the disk has caught up. A sync
//! covers every commit made before it starts, so the writers that arrive while one runs are
//! all covered by the next. One writer alone pays one sync per write.
//!
//! Why a thread of its own: a sync handed to tokio's blocking pool costs two thread hand-offs
//! besides the fsync (worker → pool thread → worker) for every group, and one of the waiting
//! tasks has to start it. The syncer is woken once per group (by the first writer that asks),
//! gathers the group (below), syncs, and wakes the writers through one `watch` channel.
//!
//! Gathering a group without a timer: started at the first request, a sync covers only the
//! writers that happened to be back, and the others form the next group. Eight writers then
//! settle into two alternating groups (one of 1 and one of 7, 0.27 syncs per write measured)
//! instead of one. So the syncer remembers how many writers its last sync covered, and before
//! the next one it waits, spinning and yielding its core (never parked: on the virtual
//! machines this was measured on, a timed park of even 30 µs costs a timer interrupt and two
//! context switches, and halved the rate of eight writers), until as many have asked again,
//! for at most half as long as the last sync took and never more than
//! [`MOST_GATHERING`]. A lone writer is the whole group when it
//! asks and waits for nothing; a writer that stopped writing costs one bounded wait, after
//! which the group is counted smaller.
//!
//! What a sync is: with the change log on (see `changelog/`, a redo log of every commit),
//! one `fdatasync` of its open segment; otherwise a flush of the storage engine.

use super::changelog::ChangeLog;
use super::Visibility;
use crate::storage::Storage;
use crate::{Error, Result};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The longest a sync waits for the rest of its group, whatever the last sync took.
const MOST_GATHERING: Duration = Duration::from_millis(1);

pub(crate) struct GroupFlush {
    shared: Arc<SyncState>,
    /// What the syncer needs, kept until it starts.
    syncer: Mutex<SyncerState>,
}

enum SyncerState {
    /// No hard write yet: the thread is started by the first.
    NotStarted(Syncer),
    Running(JoinHandle<()>),
    /// The thread could not start: every hard write fails with this.
    Failed(String),
    Stopped,
}

/// What the writers and the syncer share.
struct SyncState {
    /// How far the disk has caught up (and whether a sync failed).
    state: watch::Sender<Synced>,
    /// The highest commit a writer waits for.
    requested: AtomicU64,
    /// Requests made so far (writers that asked for a sync), to count a group.
    asked: AtomicU64,
    /// The syncer, to wake it.
    thread: OnceLock<Thread>,
    /// The syncer is parked, waiting for a request.
    idle: AtomicBool,
    /// The database is gone: the syncer ends.
    stop: AtomicBool,
    /// Syncs run so far.
    runs: AtomicU64,
}

#[derive(Clone, Default)]
struct Synced {
    /// Everything committed up to this number is on disk.
    upto: u64,
    /// Set when a sync failed: nothing after `upto` will reach the disk.
    failed: Option<Arc<str>>,
}

impl SyncState {
    fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

impl GroupFlush {
    /// Everything up to `seq` is on disk (from an earlier run). A sync runs `log`'s, or else
    /// flushes `storage`; `visibility` is told how far the disk has caught up.
    pub(crate) fn new(
        seq: u64,
        storage: Storage,
        log: Option<Arc<ChangeLog>>,
        visibility: Arc<Visibility>,
    ) -> Self {
        let shared = Arc::new(SyncState {
            state: watch::Sender::new(Synced {
                upto: seq,
                failed: None,
            }),
            requested: AtomicU64::new(seq),
            asked: AtomicU64::new(0),
            thread: OnceLock::new(),
            idle: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            runs: AtomicU64::new(0),
        });
        GroupFlush {
            syncer: Mutex::new(SyncerState::NotStarted(Syncer {
                shared: shared.clone(),
                storage,
                log,
                visibility,
            })),
            shared,
        }
    }

    /// How many syncs ran.
    pub(crate) fn runs(&self) -> u64 {
        self.shared.runs.load(Ordering::Relaxed)
    }

    /// Waits until every commit up to `seq` is on disk.
    pub(crate) async fn flush_upto(&self, seq: u64) -> Result<()> {
        let shared = &*self.shared;
        let mut rx = shared.state.subscribe();
        if rx.borrow().upto >= seq {
            return Ok(());
        }
        self.start_syncer()?;
        // Counted before it is asked for, so that a syncer woken by it counts it.
        shared.asked.fetch_add(1, Ordering::SeqCst);
        shared.requested.fetch_max(seq, Ordering::SeqCst);
        // The syncer sets `idle` before it looks at `requested` for the last time, and this
        // looks at `idle` after raising `requested` (both sequentially consistent): one of
        // the two sees the other.
        if shared.idle.load(Ordering::SeqCst) {
            shared.unpark();
        }
        let synced = rx
            .wait_for(|s| s.upto >= seq || s.failed.is_some())
            .await
            .map_err(|_| Error::Closed)?;
        match &synced.failed {
            _ if synced.upto >= seq => Ok(()),
            Some(cause) => Err(Error::storage(format!(
                "the database can no longer write to disk: {cause}"
            ))),
            None => Err(Error::Closed),
        }
    }

    fn start_syncer(&self) -> Result<()> {
        let mut state = self.syncer.lock();
        match &*state {
            SyncerState::NotStarted(_) => {}
            SyncerState::Running(_) => return Ok(()),
            SyncerState::Failed(why) => return Err(Error::storage(why.clone())),
            SyncerState::Stopped => return Err(Error::Closed),
        }
        let SyncerState::NotStarted(syncer) = std::mem::replace(&mut *state, SyncerState::Stopped)
        else {
            unreachable!("checked above");
        };
        let handle = match std::thread::Builder::new()
            .name("remodel-sync".into())
            .spawn(move || syncer.run())
        {
            Ok(handle) => handle,
            Err(e) => {
                let why = format!("the sync thread could not start: {e}");
                *state = SyncerState::Failed(why.clone());
                return Err(Error::storage(why));
            }
        };
        let _ = self.shared.thread.set(handle.thread().clone());
        *state = SyncerState::Running(handle);
        Ok(())
    }
}

impl Drop for GroupFlush {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.unpark();
        let state = std::mem::replace(&mut *self.syncer.lock(), SyncerState::Stopped);
        if let SyncerState::Running(handle) = state {
            // It ends once its sync (if one runs) returns; it holds the storage until then.
            let _ = handle.join();
        }
    }
}

/// The syncer thread: what it syncs and whom it tells.
struct Syncer {
    shared: Arc<SyncState>,
    storage: Storage,
    log: Option<Arc<ChangeLog>>,
    visibility: Arc<Visibility>,
}

impl Syncer {
    fn run(self) {
        let shared = &*self.shared;
        let mut upto = shared.state.borrow().upto;
        // The last sync: how many requests it covered, the requests made before it started,
        // and how long it took.
        let (mut group, mut asked_before, mut took) = (0, 0, Duration::ZERO);
        loop {
            // Parked until a writer waits for a commit the disk does not have.
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                shared.idle.store(true, Ordering::SeqCst);
                if shared.requested.load(Ordering::SeqCst) > upto {
                    shared.idle.store(false, Ordering::SeqCst);
                    break;
                }
                std::thread::park();
                shared.idle.store(false, Ordering::SeqCst);
            }
            // Wait for the rest of the last group (see the module docs).
            let gathering = Instant::now();
            let most = (took / 2).min(MOST_GATHERING);
            while shared.asked.load(Ordering::SeqCst) - asked_before < group
                && gathering.elapsed() < most
                && !shared.stop.load(Ordering::Relaxed)
            {
                std::thread::yield_now();
            }
            let asked = shared.asked.load(Ordering::SeqCst);
            (group, asked_before) = (asked - asked_before, asked);
            let started = Instant::now();
            // This sync covers every commit made before it starts.
            let target = self.visibility.last();
            shared.runs.fetch_add(1, Ordering::Relaxed);
            let synced = match &self.log {
                Some(log) => log.sync(&self.storage),
                None => self.storage.flush_blocking(),
            };
            took = started.elapsed();
            match synced {
                Ok(()) => {
                    upto = upto.max(target);
                    // Feeds first: a writer that returns can count on its write being shown.
                    self.visibility.durable(target);
                    shared.state.send_modify(|s| s.upto = upto);
                }
                Err(e) => {
                    // The storage refuses every write from now on: nothing more will reach
                    // the disk, and every waiting writer (now or later) gets the error.
                    tracing::error!("a sync failed: {e}");
                    let cause: Arc<str> = e.to_string().into();
                    shared.state.send_modify(|s| s.failed = Some(cause));
                    return;
                }
            }
        }
    }
}
