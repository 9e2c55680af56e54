//! This node's running jobs as clients see them through the status endpoint: each job's
//! cancellation token and last progress report, and the clients waiting for events to end.
//!
//! Kept only with a status endpoint (there is no one to cancel, watch or wait otherwise), so a
//! layer without one pays nothing here.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Counter, Counters};
use crate::store::{unix_ms, EventStore, ProgressRecord};
use crate::wire::ids::{EventId, IdMap};

/// Longest message a progress report keeps, in bytes (a longer one is cut at a character).
pub const MAX_PROGRESS_MESSAGE: usize = 256;

/// Least time between two store writes of one event's progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The default bound on status requests held waiting (`Prefer: wait`) at once.
pub const DEFAULT_MAX_STATUS_WAITERS: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Jobs {
    /// Whether clients may cancel (`DELETE` on a status URL).
    pub(crate) cancellation: bool,
    pub(crate) max_waiters: usize,
    running: Mutex<IdMap<EventId, Running>>,
    waiters: Mutex<Waiting>,
    /// Waits held now (also counted under `waiters`' lock), so an end with no one waiting does
    /// not take the lock.
    held: AtomicUsize,
    /// Cancelled when the layer shuts down: every held wait is answered at once.
    pub(crate) closing: CancellationToken,
}

/// Who waits for which event (its wake-up and how many wait), and how many waits are held.
#[derive(Debug, Default)]
struct Waiting {
    by_event: IdMap<EventId, (Arc<Notify>, usize)>,
    held: usize,
}

#[derive(Debug)]
struct Running {
    stop: Arc<Stop>,
    /// The token in the request's extensions (with cancellation on).
    token: Option<CancellationToken>,
    progress: Option<Report>,
}

/// A job's stop signal: set by a cancel, seen by the job's future when it is next polled (it is
/// woken for that). Lighter than polling a `CancellationToken` (a lock per poll, and a waiter
/// registered with its `Notify`) on every event.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    stopped: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Stop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

pin_project! {
    /// Runs a job's work unless its [`Stop`] is set first: then the work is dropped, never polled
    /// again (nor at all, if the stop came first), and the output is `None`.
    #[derive(Debug)]
    pub(crate) struct Stoppable<F> {
        stop: Option<Arc<Stop>>,
        #[pin]
        work: F,
    }
}

impl<F> Stoppable<F> {
    pub(crate) fn new(stop: Option<Arc<Stop>>, work: F) -> Self {
        Self { stop, work }
    }
}

impl<F: Future> Future for Stoppable<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(stop) = this.stop.as_deref() {
            if stop.is_stopped() {
                return Poll::Ready(None);
            }
            {
                let mut waker = lock(&stop.waker);
                match &*waker {
                    Some(kept) if kept.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
            }
            // A stop between the first look and the waker's registration is seen here.
            if stop.is_stopped() {
                return Poll::Ready(None);
            }
        }
        this.work.poll(cx).map(Some)
    }
}

/// A job's last progress report and where its write to the store is.
#[derive(Debug)]
struct Report {
    latest: ProgressRecord,
    /// Whether `latest` is not in the store yet.
    dirty: bool,
    /// Whether a task is writing this event's reports (one at a time, at most one a second).
    flushing: bool,
    written_at: Option<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each change is a few map operations that cannot panic half-way.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Jobs {
    pub(crate) fn new(cancellation: bool, max_waiters: usize) -> Self {
        Self {
            cancellation,
            max_waiters,
            running: Mutex::default(),
            waiters: Mutex::default(),
            held: AtomicUsize::new(0),
            closing: CancellationToken::new(),
        }
    }

    /// A job of this node starts: the signal that drops it when a client cancels, and (with
    /// cancellation on) the token its handler finds in the request's extensions.
    pub(crate) fn start(&self, event_id: EventId) -> (Arc<Stop>, Option<CancellationToken>) {
        let stop = Arc::new(Stop::default());
        let token = self.cancellation.then(CancellationToken::new);
        lock(&self.running).insert(
            event_id,
            Running {
                stop: Arc::clone(&stop),
                token: token.clone(),
                progress: None,
            },
        );
        (stop, token)
    }

    /// The job's work ended (or was dropped): its last report, if the store does not have it yet.
    pub(crate) fn end(&self, event_id: EventId) -> Option<ProgressRecord> {
        let running = lock(&self.running).remove(&event_id)?;
        running
            .progress
            .filter(|report| report.dirty)
            .map(|report| report.latest)
    }

    /// The event ended elsewhere (a client's cancel on any node, a takeover): its job, if it
    /// runs here, is dropped.
    pub(crate) fn drop_job(&self, event_id: EventId) -> bool {
        let Some(running) = lock(&self.running).remove(&event_id) else {
            return false;
        };
        // The token first: a handler's own tasks are told before its future is dropped.
        if let Some(token) = running.token {
            token.cancel();
        }
        running.stop.stop();
        true
    }

    /// The freshest progress this node knows of a job running here.
    pub(crate) fn progress(&self, event_id: EventId) -> Option<ProgressRecord> {
        lock(&self.running)
            .get(&event_id)?
            .progress
            .as_ref()
            .map(|report| report.latest.clone())
    }

    /// Records a report; true if a task must be started to write it.
    fn report(&self, event_id: EventId, latest: ProgressRecord) -> bool {
        let mut running = lock(&self.running);
        let Some(job) = running.get_mut(&event_id) else {
            return false;
        };
        match &mut job.progress {
            Some(report) => {
                report.latest = latest;
                report.dirty = true;
                !std::mem::replace(&mut report.flushing, true)
            }
            None => {
                job.progress = Some(Report {
                    latest,
                    dirty: true,
                    flushing: true,
                    written_at: None,
                });
                true
            }
        }
    }

    /// The report to write now, or how long to wait for it; `None` when there is nothing left to
    /// write (the flushing task ends).
    fn next_write(&self, event_id: EventId) -> Option<Result<ProgressRecord, Duration>> {
        let mut running = lock(&self.running);
        let report = running.get_mut(&event_id)?.progress.as_mut()?;
        if !report.dirty {
            report.flushing = false;
            return None;
        }
        let now = Instant::now();
        if let Some(due) = report.written_at.map(|at| at + PROGRESS_EVERY) {
            if due > now {
                return Some(Err(due - now));
            }
        }
        report.dirty = false;
        report.written_at = Some(now);
        Some(Ok(report.latest.clone()))
    }

    /// A client waits for `event_id` to end: the wait's registration, or `None` when
    /// `max_waiters` are held already.
    pub(crate) fn wait_for(self: &Arc<Self>, event_id: EventId) -> Option<Waiter> {
        let mut waiting = lock(&self.waiters);
        if waiting.held >= self.max_waiters {
            return None;
        }
        waiting.held += 1;
        self.held.fetch_add(1, Ordering::SeqCst);
        let entry = waiting
            .by_event
            .entry(event_id)
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Some(Waiter {
            jobs: Arc::clone(self),
            event_id,
            notify: Arc::clone(&entry.0),
        })
    }

    /// `event_id` ended: every client waiting for it is answered.
    pub(crate) fn ended(&self, event_id: EventId) {
        // A wait is counted before it reads the status, and the end was written before this
        // look: one of the two sees the other (the fence and the count's read-modify-write keep
        // the two orders), so a wait counted after this look finds the end in the store.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.held.load(Ordering::SeqCst) == 0 {
            return;
        }
        if let Some((notify, _)) = lock(&self.waiters).by_event.get(&event_id) {
            notify.notify_waiters();
        }
    }
}

/// A held wait, counted until dropped.
#[derive(Debug)]
pub(crate) struct Waiter {
    jobs: Arc<Jobs>,
    event_id: EventId,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = lock(&self.jobs.waiters);
        waiting.held -= 1;
        self.jobs.held.fetch_sub(1, Ordering::AcqRel);
        if let Some(entry) = waiting.by_event.get_mut(&self.event_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.by_event.remove(&self.event_id);
            }
        }
    }
}

/// A job's progress, for the status answer: found in the request's extensions of an async
/// request when the layer has a status endpoint.
///
/// ```
/// use http::Request;
/// use tower_async_request::Progress;
///
/// async fn copy(request: Request<String>) -> Result<String, std::convert::Infallible> {
///     let progress = request.extensions().get::<Progress>().cloned();
///     for done in 1..=10u8 {
///         // … copy a tenth of the files …
///         if let Some(progress) = &progress {
///             progress.set(done * 10, format!("copied {} of 1000 files", done as u32 * 100));
///         }
///     }
///     Ok("done".into())
/// }
/// # drop(copy(Request::new(String::new())));
/// ```
///
/// `set` never waits and never fails: the report shows in the status answer of this node at
/// once, and is written to the store at most once a second per event (not durably), so with
/// PostgreSQL any node's answer shows it within about a second. The last report stays in the
/// status answer after the job ends. A handler that never reports costs nothing.
#[derive(Clone)]
pub struct Progress {
    event_id: EventId,
    jobs: Arc<Jobs>,
    store: Arc<dyn EventStore>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("event_id", &self.event_id)
            .finish_non_exhaustive()
    }
}

impl Progress {
    pub(crate) fn new(event_id: EventId, jobs: Arc<Jobs>, store: Arc<dyn EventStore>) -> Self {
        Self {
            event_id,
            jobs,
            store,
        }
    }

    /// The event this handle reports for.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }

    /// Reports how far the job is: `percent` 0–100 (more counts as 100) and a message (cut to
    /// [`MAX_PROGRESS_MESSAGE`] bytes). After the job ended, does nothing.
    pub fn set(&self, percent: u8, message: impl AsRef<str>) {
        let message = message.as_ref();
        let mut end = message.len().min(MAX_PROGRESS_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let report = ProgressRecord {
            percent: percent.min(100),
            message: message[..end].to_owned(),
            updated_at_ms: unix_ms(),
        };
        if self.jobs.report(self.event_id, report) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (jobs, store) = (self.jobs.clone(), self.store.clone());
                runtime.spawn(flush(jobs, store, self.event_id));
            }
        }
    }
}

/// Writes an event's reports to the store, at most one a second, until none is left.
async fn flush(jobs: Arc<Jobs>, store: Arc<dyn EventStore>, event_id: EventId) {
    while let Some(next) = jobs.next_write(event_id) {
        match next {
            Err(wait) => tokio::time::sleep(wait).await,
            Ok(report) => {
                if let Err(error) = store.progress(event_id, &report).await {
                    tracing::debug!(%error, "could not record a job's progress");
                }
            }
        }
    }
}

/// Counts a held wait while it lives.
#[derive(Debug)]
pub(crate) struct Counted<'a>(&'a Counters);

impl<'a> Counted<'a> {
    pub(crate) fn new(counters: &'a Counters) -> Self {
        counters.add(Counter::Waiting);
        Self(counters)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.sub(Counter::Waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(percent: u8) -> ProgressRecord {
        ProgressRecord {
            percent,
            message: String::new(),
            updated_at_ms: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reports_are_written_at_most_once_a_second_and_the_last_is_kept() {
        let jobs = Jobs::new(true, 10);
        let id = EventId::new(7);
        let _started = jobs.start(id);
        assert!(
            jobs.report(id, report(10)),
            "the first report starts a writer"
        );
        assert_eq!(jobs.next_write(id), Some(Ok(report(10))));
        assert!(!jobs.report(id, report(20)), "one writer at a time");
        assert!(!jobs.report(id, report(30)));
        match jobs.next_write(id) {
            Some(Err(wait)) => assert_eq!(wait, PROGRESS_EVERY),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(PROGRESS_EVERY).await;
        assert_eq!(jobs.next_write(id), Some(Ok(report(30))), "only the latest");
        assert_eq!(jobs.next_write(id), None, "nothing left: the writer ends");
        assert!(
            jobs.report(id, report(40)),
            "a later report starts one again"
        );
        assert_eq!(jobs.progress(id), Some(report(40)));
        assert_eq!(jobs.end(id), Some(report(40)), "unwritten at the end");
        assert!(!jobs.report(id, report(50)), "after the end, nothing");
    }

    #[test]
    fn waits_are_bounded_and_counted_until_dropped() {
        let jobs = Arc::new(Jobs::new(true, 2));
        let (a, b) = (EventId::new(1), EventId::new(2));
        let first = jobs.wait_for(a).unwrap();
        let second = jobs.wait_for(b).unwrap();
        assert!(jobs.wait_for(a).is_none(), "the third is over the bound");
        drop(first);
        let third = jobs.wait_for(a).unwrap();
        drop((second, third));
        let waiting = lock(&jobs.waiters);
        assert!(waiting.by_event.is_empty());
        assert_eq!(waiting.held, 0);
    }

    #[test]
    fn a_job_dropped_elsewhere_has_its_stop_set_and_its_token_cancelled() {
        let jobs = Jobs::new(true, 1);
        let (stop, token) = jobs.start(EventId::new(3));
        assert!(!jobs.drop_job(EventId::new(4)));
        assert!(jobs.drop_job(EventId::new(3)));
        assert!(stop.is_stopped());
        assert!(token.unwrap().is_cancelled());
        assert_eq!(jobs.end(EventId::new(3)), None);
        let without = Jobs::new(false, 1);
        assert!(
            without.start(EventId::new(5)).1.is_none(),
            "no token without cancellation"
        );
    }

    /// Flips `polled` when polled, then never ends; flips `dropped` when dropped.
    struct Work {
        polled: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    }

    impl Future for Work {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polled.store(true, Ordering::SeqCst);
            Poll::Pending
        }
    }

    impl Drop for Work {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_stop_drops_the_work_and_work_stopped_before_it_started_never_starts() {
        let flags = || {
            (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            )
        };
        let work = |(polled, dropped): &(Arc<AtomicBool>, Arc<AtomicBool>)| Work {
            polled: polled.clone(),
            dropped: dropped.clone(),
        };
        // Stopped before it started: never polled, dropped.
        let jobs = Jobs::new(false, 1);
        let first = flags();
        let (stop, _) = jobs.start(EventId::new(1));
        jobs.drop_job(EventId::new(1));
        assert_eq!(Stoppable::new(Some(stop), work(&first)).await, None);
        assert!(
            !first.0.load(Ordering::SeqCst),
            "a job stopped before it started never starts"
        );
        assert!(first.1.load(Ordering::SeqCst));
        // Stopped while it runs: woken, dropped, never polled again.
        let second = flags();
        let (stop, _) = jobs.start(EventId::new(2));
        let running = tokio::spawn(Stoppable::new(Some(stop), work(&second)));
        while !second.0.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        assert!(!second.1.load(Ordering::SeqCst));
        jobs.drop_job(EventId::new(2));
        assert_eq!(running.await.unwrap(), None);
        assert!(second.1.load(Ordering::SeqCst));
    }
}
