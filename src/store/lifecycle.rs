//! What a client may do to an event before it ends, as stores keep it: a cancel's claim on the
//! outcome ([`CancelClaim`]) and the job's progress reports ([`ProgressRecord`]).

use super::NotificationRecord;

/// A job's last progress report, as the status answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressRecord {
    /// How far the job is, 0–100.
    pub percent: u8,
    /// What it is doing, at most 256 bytes.
    pub message: String,
    /// When the job reported it, Unix milliseconds.
    pub updated_at_ms: u64,
}

/// What [`EventStore::cancel`](super::EventStore::cancel) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelClaim {
    /// The event was unfinished: it now ends `cancelled`, and the cancel's notification is
    /// pending (or not requested) as if the job had finished.
    Cancelled,
    /// The event had an outcome already (its job finished, or an earlier cancel won): nothing
    /// was written. The notification as it is, if the store still keeps it.
    Finished(Option<NotificationRecord>),
}

/// Progress reports a store keeps in memory beside records that do not hold them (`RedbStore`:
/// a report is not worth a write to disk), the newest [`ProgressTable::MAX`] at most.
#[cfg(feature = "redb")]
#[derive(Debug, Default)]
pub(crate) struct ProgressTable(
    std::sync::Mutex<(
        std::collections::HashMap<crate::wire::ids::EventId, ProgressRecord>,
        std::collections::VecDeque<crate::wire::ids::EventId>,
    )>,
);

#[cfg(feature = "redb")]
impl ProgressTable {
    /// Reports kept at most: the events that reported first are forgotten first.
    pub(crate) const MAX: usize = 100_000;

    pub(crate) fn set(&self, event_id: crate::wire::ids::EventId, progress: &ProgressRecord) {
        let mut guard = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let (reports, order) = &mut *guard;
        // Only a newer report replaces one (an older one may arrive late).
        if reports
            .get(&event_id)
            .is_some_and(|kept| kept.updated_at_ms > progress.updated_at_ms)
        {
            return;
        }
        if reports.insert(event_id, progress.clone()).is_none() {
            order.push_back(event_id);
            while order.len() > Self::MAX {
                if let Some(oldest) = order.pop_front() {
                    reports.remove(&oldest);
                }
            }
        }
    }

    pub(crate) fn get(&self, event_id: crate::wire::ids::EventId) -> Option<ProgressRecord> {
        let guard = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        guard.0.get(&event_id).cloned()
    }
}

#[cfg(all(test, feature = "redb"))]
mod tests {
    use super::*;
    use crate::wire::ids::EventId;

    #[test]
    fn the_table_keeps_the_newest_reports_of_the_newest_events() {
        let table = ProgressTable::default();
        let report = |percent| ProgressRecord {
            percent,
            message: String::new(),
            updated_at_ms: 1,
        };
        for id in 0..ProgressTable::MAX as u64 + 2 {
            table.set(EventId::new(id), &report(1));
        }
        table.set(EventId::new(5), &report(7));
        assert_eq!(table.get(EventId::new(0)), None);
        assert_eq!(table.get(EventId::new(1)), None);
        assert_eq!(table.get(EventId::new(5)).map(|p| p.percent), Some(7));
    }
}
