//! Reading notifications in id order, a page at a time.

use redb::{Database, ReadableDatabase};

use super::encoding::decode_notification;
use super::tables::NOTIFICATIONS;
use crate::store::NotificationRecord;

/// The notifications `wanted` from the one after `after` on, at most `limit` of them.
pub(super) fn notifications_where(
    db: &Database,
    after: u64,
    limit: usize,
    wanted: impl Fn(&NotificationRecord) -> bool,
) -> Result<Vec<NotificationRecord>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(NOTIFICATIONS)?;
    let mut out = Vec::new();
    for entry in table.range(after.saturating_add(1)..)? {
        if out.len() >= limit {
            break;
        }
        let (id, bytes) = entry?;
        let record = decode_notification(id.value(), bytes.value())?;
        if wanted(&record) {
            out.push(record);
        }
    }
    Ok(out)
}
