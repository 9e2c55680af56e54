//! The job runner's limits: how many events may be unfinished at once, and whether new async work
//! is taken at all.
//!
//! An event holds one permit from its receipt until its notification is delivered or dead, so
//! `max_in_flight` bounds running jobs *and* undelivered notifications together: memory stays
//! bounded however long a receiver is down. At the bound, and while shutting down, new async
//! requests are refused with `503`; synchronous traffic never asks for a permit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::share::Share;
use crate::instance::Instance;
use crate::metrics::{Counter, Counters};
use crate::request::refusal::{Refusal, RefusalCode};

/// Default bound on unfinished events.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Runner {
    permits: Arc<Semaphore>,
    max_in_flight: u32,
    shutting_down: AtomicBool,
}

/// Held by an event until it is finished for good: its place under the layer's
/// `max_in_flight` and, when the layer serves many instances, under its instance's. Counting goes
/// through it, so an event's counts reach its instance's counters as well as the layer's.
#[derive(Debug)]
pub(crate) struct Permit {
    _place: OwnedSemaphorePermit,
    share: Option<Arc<Share>>,
}

impl Permit {
    fn new(place: OwnedSemaphorePermit) -> Self {
        Self {
            _place: place,
            share: None,
        }
    }

    /// Takes a place under the instance's own `max_in_flight` too, or says why not.
    pub(crate) fn join(&mut self, share: Arc<Share>, instance: &Instance) -> Result<(), Refusal> {
        let limit = instance.max_in_flight_u32();
        if !share.try_enter(limit) {
            return Err(Refusal::new(
                RefusalCode::Overloaded,
                format!(
                    "Instance {} already holds its maximum of {} unfinished async requests; retry later.",
                    instance.id(),
                    limit.unwrap_or_default(),
                ),
            ));
        }
        self.share = Some(share);
        Ok(())
    }

    /// Counts the event in its instance's share whatever the bound (recovered and redelivered
    /// work was accepted earlier and is not refused now).
    pub(crate) fn join_anyway(&mut self, share: Arc<Share>) {
        share.enter();
        self.share = Some(share);
    }

    /// Adds one to a counter of the layer's and of the event's instance.
    pub(crate) fn add(&self, counters: &Counters, counter: Counter) {
        counters.add(counter);
        if let Some(share) = &self.share {
            share.counters.add(counter);
        }
    }

    /// The counters of the event's instance: its share's, or the layer's when the layer has one
    /// instance (for what only the instance's report counts: attempts, latencies).
    pub(crate) fn instance_counters<'a>(&'a self, layer: &'a Counters) -> &'a Counters {
        self.share.as_ref().map_or(layer, |share| &share.counters)
    }

    /// The event's instance's share, when the layer serves many.
    pub(crate) fn share(&self) -> Option<&Arc<Share>> {
        self.share.as_ref()
    }

    /// Takes one from a counter of the layer's and of the event's instance.
    pub(crate) fn sub(&self, counters: &Counters, counter: Counter) {
        counters.sub(counter);
        if let Some(share) = &self.share {
            share.counters.sub(counter);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(share) = &self.share {
            share.leave();
        }
    }
}

impl Runner {
    pub(crate) fn new(max_in_flight: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// A permit for a new event, or the refusal to send instead.
    pub(crate) fn admit(&self) -> Result<Permit, Refusal> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Refusal::new(
                RefusalCode::ShuttingDown,
                "The service is shutting down and takes no new async requests.",
            ));
        }
        self.permits.clone().try_acquire_owned().map(Permit::new).map_err(|_| {
            Refusal::new(
                RefusalCode::Overloaded,
                format!(
                    "The service already holds its maximum of {} unfinished async requests; retry later.",
                    self.max_in_flight
                ),
            )
        })
    }

    /// A permit for recovered or redelivered work, waiting for one if needed.
    pub(crate) async fn wait_for_permit(&self) -> Permit {
        Permit::new(
            self.permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed"),
        )
    }

    /// Events holding a permit now.
    pub(crate) fn in_flight(&self) -> u64 {
        u64::from(self.max_in_flight) - self.permits.available_permits() as u64
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn stop_admitting(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Waits until no event is unfinished or `deadline` passes; true when drained.
    pub(crate) async fn drained(&self, deadline: Duration) -> bool {
        match tokio::time::timeout(deadline, self.permits.acquire_many(self.max_in_flight)).await {
            Ok(Ok(all)) => {
                drop(all);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_bound_then_refuses_overloaded() {
        let runner = Runner::new(2);
        let first = runner.admit().unwrap();
        let _second = runner.admit().unwrap();
        assert_eq!(runner.admit().unwrap_err().code, RefusalCode::Overloaded);
        assert_eq!(runner.in_flight(), 2);
        drop(first);
        assert!(runner.admit().is_ok());
    }

    #[tokio::test]
    async fn a_permit_holds_its_instance_place_until_dropped() {
        let runner = Runner::new(10);
        let share = Arc::new(Share::default());
        let instance = Instance::builder(30).max_in_flight(1).build().unwrap();
        let mut first = runner.admit().unwrap();
        first.join(share.clone(), &instance).unwrap();
        let mut second = runner.admit().unwrap();
        let refusal = second.join(share.clone(), &instance).unwrap_err();
        assert_eq!(refusal.code, RefusalCode::Overloaded);
        assert!(
            refusal.message.contains("Instance 30"),
            "{}",
            refusal.message
        );
        second.join_anyway(share.clone()); // recovered work is counted anyway
        let counters = Counters::default();
        first.add(&counters, Counter::Accepted);
        second.add(&counters, Counter::Accepted);
        assert_eq!(counters.snapshot().accepted, 2);
        assert_eq!(share.counters.snapshot().accepted, 2);
        drop((first, second));
        runner.admit().unwrap().join(share, &instance).unwrap();
    }

    #[tokio::test]
    async fn shutting_down_refuses_and_drains() {
        let runner = Runner::new(4);
        let permit = runner.admit().unwrap();
        runner.stop_admitting();
        assert_eq!(runner.admit().unwrap_err().code, RefusalCode::ShuttingDown);
        assert!(!runner.drained(Duration::from_millis(20)).await);
        drop(permit);
        assert!(runner.drained(Duration::from_secs(5)).await);
    }
}
