//! Group commits: one thread owns every redb write transaction.
//!
//! Callers (holding the state lock) only encode their changes and queue
//! them, which costs microseconds; the thread writes everything queued
//! since its last commit in one transaction and fsyncs once for all of
//! it. A caller acknowledges its change only after [`Committer::wait`]
//! (or [`Committer::wait_async`]) says its batch is durable, and waits
//! with the state lock released, so neither an executor thread nor the
//! global state mutex is ever held across an fsync (on a router's SD card
//! one can take 50 ms or more). With fsync ~4 ms here, 64 concurrent
//! registrations cost one fsync instead of 64.
//!
//! Memory is updated when the change is queued, so other readers may see
//! a change shortly before it is durable; it is never acknowledged before.
//! If a commit fails (disk full, I/O error), memory is ahead of the disk:
//! every later change is refused until a restart reloads the durable
//! state, waiters of the lost batch get the error, and it is logged.

use super::store::{write_batch, Owned, StoreError};
use redb::Database;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A relaxed change becomes durable after this many relaxed commits …
const RELAXED_MAX_COMMITS: u32 = 256;
/// … or this long after the last durable commit.
const RELAXED_MAX_AGE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Queue {
    ops: Vec<Owned>,
    /// Changes queued so far (a caller's ticket is this after its queueing).
    queued: u64,
    /// Changes written (durably or not) and durable.
    committed: u64,
    durable: u64,
    /// A queued change or a waiter wants the next commit durable.
    want_durable: bool,
    relaxed_commits: u32,
    failed: Option<String>,
    shutdown: bool,
}

pub struct Committer {
    q: Mutex<Queue>,
    /// Wakes the commit thread.
    work: Condvar,
    /// Wakes blocking waiters.
    done: Condvar,
    /// Wakes async waiters.
    event: event_listener::Event,
}

impl Committer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the commit thread for `db`.
    pub(super) fn start(
        db: Arc<Database>,
    ) -> Result<(Arc<Committer>, std::thread::JoinHandle<()>), StoreError> {
        let c = Arc::new(Committer {
            q: Mutex::default(),
            work: Condvar::new(),
            done: Condvar::new(),
            event: event_listener::Event::new(),
        });
        let me = c.clone();
        let t = std::thread::Builder::new()
            .name("tinyscale-commit".into())
            .spawn(move || me.run(&db))
            .map_err(|e| StoreError(format!("starting the commit thread: {e}")))?;
        Ok((c, t))
    }

    /// Queues a batch (applied atomically); `durable` asks for an fsync
    /// before waiters are told. Refused once a commit has failed.
    pub(super) fn enqueue(&self, ops: Vec<Owned>, durable: bool) -> Result<u64, StoreError> {
        let mut q = self.lock();
        if let Some(e) = &q.failed {
            return Err(StoreError(format!(
                "database writes are failing ({e}); restart tinyscale once the disk is fixed"
            )));
        }
        q.ops.extend(ops);
        q.queued += 1;
        q.want_durable |= durable;
        let t = q.queued;
        drop(q);
        self.work.notify_one();
        Ok(t)
    }

    /// The ticket that covers every change queued so far.
    pub fn queued(&self) -> u64 {
        self.lock().queued
    }

    /// `Some` once ticket `t` is durable (or failed); else asks for a
    /// durable commit.
    fn check(&self, t: u64, durable: bool) -> Option<Result<(), StoreError>> {
        let mut q = self.lock();
        let reached = if durable { q.durable } else { q.committed };
        if reached >= t {
            return Some(Ok(()));
        }
        if let Some(e) = &q.failed {
            return Some(Err(StoreError(format!("database write failed: {e}"))));
        }
        if durable && !q.want_durable {
            q.want_durable = true;
            self.work.notify_one();
        }
        None
    }

    /// Blocks until every change up to ticket `t` is durable.
    pub fn wait(&self, t: u64) -> Result<(), StoreError> {
        self.wait_for(t, true)
    }

    /// Blocks until every change up to `t` is written (durable or not):
    /// what a reader of the database needs.
    pub(super) fn settle(&self, t: u64) -> Result<(), StoreError> {
        self.wait_for(t, false)
    }

    fn wait_for(&self, t: u64, durable: bool) -> Result<(), StoreError> {
        loop {
            if let Some(r) = self.check(t, durable) {
                return r;
            }
            let q = self.lock();
            let reached = if durable { q.durable } else { q.committed };
            if reached < t && q.failed.is_none() {
                drop(self.done.wait(q));
            }
        }
    }

    /// Like [`Committer::wait`], for async callers (register, lite updates).
    pub async fn wait_async(&self, t: u64) -> Result<(), StoreError> {
        loop {
            let listener = self.event.listen();
            if let Some(r) = self.check(t, true) {
                return r;
            }
            listener.await;
        }
    }

    /// Makes everything queued durable and stops the thread.
    pub(super) fn shutdown(&self) {
        self.lock().shutdown = true;
        self.work.notify_one();
    }

    fn run(&self, db: &Database) {
        let mut last_durable = Instant::now();
        loop {
            let mut q = self.lock();
            loop {
                let relaxed_due = q.committed > q.durable
                    && (q.relaxed_commits >= RELAXED_MAX_COMMITS
                        || last_durable.elapsed() >= RELAXED_MAX_AGE);
                if !q.ops.is_empty()
                    || q.shutdown
                    || relaxed_due
                    || (q.want_durable && q.committed > q.durable)
                {
                    break;
                }
                let wait = RELAXED_MAX_AGE.saturating_sub(last_durable.elapsed());
                q = self
                    .idle_wait(q, wait.max(Duration::from_millis(10)))
                    .unwrap_or_else(|e| e.into_inner());
            }
            if q.failed.is_some() || (q.shutdown && q.ops.is_empty() && q.committed == q.durable) {
                q.shutdown = true;
                drop(q);
                self.wake();
                return;
            }
            let ops = std::mem::take(&mut q.ops);
            let target = q.queued;
            let durable = q.want_durable
                || q.shutdown
                || q.relaxed_commits + 1 >= RELAXED_MAX_COMMITS
                || last_durable.elapsed() >= RELAXED_MAX_AGE;
            q.want_durable = false;
            drop(q);
            let res = write_batch(db, &ops, durable);
            drop(ops);
            let mut q = self.lock();
            match res {
                Ok(()) => {
                    q.committed = target;
                    if durable {
                        q.durable = target;
                        q.relaxed_commits = 0;
                        last_durable = Instant::now();
                    } else {
                        q.relaxed_commits += 1;
                    }
                }
                Err(e) => {
                    log::error!(
                        "database commit failed: {e}; the last changes are not stored and \
                         every further change is refused until tinyscale is restarted"
                    );
                    q.failed = Some(e.0);
                }
            }
            drop(q);
            self.wake();
        }
    }

    fn idle_wait<'a>(
        &self,
        q: std::sync::MutexGuard<'a, Queue>,
        d: Duration,
    ) -> std::sync::LockResult<std::sync::MutexGuard<'a, Queue>> {
        self.work.wait_timeout(q, d).map(|(g, _)| g).map_err(|e| {
            let (g, _) = e.into_inner();
            std::sync::PoisonError::new(g)
        })
    }

    fn wake(&self) {
        self.done.notify_all();
        self.event.notify(usize::MAX);
    }
}
