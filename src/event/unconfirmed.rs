//! Events whose record this node could not confirm: the store's write of a new event failed, so
//! the client was refused (`503 store_unavailable`), yet the write may have been committed (a
//! PostgreSQL server that stopped between the commit and its answer). Such an event would stay
//! unfinished for as long as this node lives, and a client that sends the request again under its
//! `Idempotency-Key` would be answered with its receipt. Dispatch hands them here; once the store
//! answers again, each one it holds is ended `failed`/`interrupted` (its job never started) and
//! notified like any other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::store::EventRecord;

/// Most events kept for checking; beyond that the oldest are given up (and logged): a store
/// that is down refuses every request, and each would be checked.
pub(crate) const MAX_UNCONFIRMED: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Unconfirmed {
    events: Mutex<Vec<EventRecord>>,
    /// Whether a task is checking them.
    checking: AtomicBool,
}

impl Unconfirmed {
    /// Keeps `event` for checking; true if a task must be started to check it.
    pub(crate) fn add(&self, event: EventRecord) -> bool {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= MAX_UNCONFIRMED {
            let given_up = events.remove(0);
            tracing::warn!(
                event_id = given_up.event_id.get(),
                "too many events whose record could not be confirmed; not checking the oldest"
            );
        }
        events.push(event);
        !self.checking.swap(true, Ordering::AcqRel)
    }

    /// The events to check now; when there are none, the checking task ends (false).
    pub(crate) fn take(&self) -> Option<Vec<EventRecord>> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.is_empty() {
            self.checking.store(false, Ordering::Release);
            return None;
        }
        Some(std::mem::take(&mut *events))
    }

    /// Events the store could not be asked about yet: checked on the next round.
    pub(crate) fn put_back(&self, mut later: Vec<EventRecord>) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        later.append(&mut events);
        *events = later;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ids::{EventId, NotificationId};

    fn event(id: u64) -> EventRecord {
        EventRecord {
            event_id: EventId::new(id),
            notification_id: NotificationId::new(id + 1),
            instance_id: 0,
            target: String::new(),
            instance_url: false,
            accepted_at_ms: 0,
            running: false,
            progress: None,
            trace: None,
        }
    }

    #[test]
    fn one_task_checks_them_until_none_is_left() {
        let unconfirmed = Unconfirmed::default();
        assert!(unconfirmed.add(event(1)), "the first starts a task");
        assert!(!unconfirmed.add(event(2)), "one task at a time");
        let taken = unconfirmed.take().unwrap();
        assert_eq!(taken.len(), 2);
        unconfirmed.put_back(vec![event(1)]);
        assert_eq!(unconfirmed.take().unwrap(), vec![event(1)]);
        assert_eq!(unconfirmed.take(), None, "none left: the task ends");
        assert!(unconfirmed.add(event(3)), "a later one starts a task again");
    }

    #[test]
    fn at_most_max_unconfirmed_are_kept() {
        let unconfirmed = Unconfirmed::default();
        for id in 0..MAX_UNCONFIRMED as u64 + 1 {
            unconfirmed.add(event(id));
        }
        let kept = unconfirmed.take().unwrap();
        assert_eq!(kept.len(), MAX_UNCONFIRMED);
        assert_eq!(kept[0].event_id, EventId::new(1), "the oldest went");
    }
}
