//! Group commit: hard-durability writes from many tasks share fsyncs.
//!
//! A hard write waits until everything up to its commit is on disk. When a flush is already
//! running, it cannot cover commits made after it started, so a write arriving then waits
//! for it to end and for the next one, which one of the waiting writers starts for all of
//! them. However many writers there are, at most one flush runs and one more is due, so
//! eight writers cost about two fsyncs per round instead of eight.

use super::Visibility;
use crate::storage::Storage;
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) struct GroupFlush {
    /// Everything committed up to this number is on disk, and whether a flush is running.
    state: watch::Sender<Flushed>,
    /// Flushes run so far.
    runs: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Flushed {
    upto: u64,
    running: bool,
}

impl GroupFlush {
    pub(crate) fn new(seq: u64) -> Self {
        GroupFlush {
            state: watch::Sender::new(Flushed {
                upto: seq,
                running: false,
            }),
            runs: AtomicU64::new(0),
        }
    }

    /// How many flushes ran.
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Waits until every commit up to `seq` is on disk, flushing when no running flush
    /// will cover it. Feeds are told (`visibility`) how far the disk has caught up.
    pub(crate) async fn flush_upto(
        &self,
        seq: u64,
        storage: &Storage,
        visibility: &Arc<Visibility>,
    ) -> Result<()> {
        let mut rx = self.state.subscribe();
        loop {
            let mut start = false;
            self.state.send_if_modified(|s| {
                if s.upto >= seq || s.running {
                    return false;
                }
                s.running = true;
                start = true;
                true
            });
            if start {
                // This flush covers every commit made before it starts.
                let target = visibility.last();
                self.runs.fetch_add(1, Ordering::Relaxed);
                let storage = storage.clone();
                let flushed = tokio::task::spawn_blocking(move || storage.flush_blocking())
                    .await
                    .map_err(|e| Error::storage(format!("flush task failed: {e}")))
                    .and_then(|r| r);
                self.state.send_modify(|s| {
                    s.running = false;
                    if flushed.is_ok() {
                        s.upto = s.upto.max(target);
                    }
                });
                flushed?;
                visibility.durable(target);
                continue;
            }
            if rx.borrow_and_update().upto >= seq {
                return Ok(());
            }
            // A flush is running (or just finished): wait for the state to move.
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }
}
