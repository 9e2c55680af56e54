//! Reading notifications in id order, a page at a time; and the disabled receivers.

use redb::{Database, ReadableDatabase, TableError};

use super::encoding::{decode_notification, decode_receiver};
use super::tables::{DISABLED_RECEIVERS, NOTIFICATIONS};
use crate::store::{DisabledReceiver, NotificationRecord};

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

/// Every disabled receiver, by id; none in a file no receiver was ever disabled in (it has no
/// table for them).
pub(super) fn disabled_receivers(db: &Database) -> Result<Vec<DisabledReceiver>, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(DISABLED_RECEIVERS) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    let mut out = Vec::new();
    for entry in table.range::<&str>(..)? {
        let (id, bytes) = entry?;
        out.push(decode_receiver(id.value(), bytes.value())?);
    }
    Ok(out)
}
