//! Retention: delivered and not-requested notifications, and idempotency keys, are dropped once
//! it is over.

use redb::{Database, Durability, ReadableTable};

use super::encoding::{decode_key_holder, decode_notification};
use super::tables::{EVENT_INDEX, IDEMPOTENCY_KEYS, NOTIFICATIONS};
use crate::store::{unix_ms, DeliveryState};

/// Drops delivered and not-requested notifications and idempotency keys past their retention,
/// in one transaction.
pub(super) fn prune(db: &Database) -> Result<(), redb::Error> {
    let now = unix_ms();
    let mut txn = db.begin_write()?;
    // Lost in a crash, it is done again: no need to wait for the disk.
    txn.set_durability(Durability::None)?;
    {
        let mut notifications = txn.open_table(NOTIFICATIONS)?;
        let mut index = txn.open_table(EVENT_INDEX)?;
        let mut expired = Vec::new();
        for entry in notifications.iter()? {
            let (id, bytes) = entry?;
            let record = decode_notification(id.value(), bytes.value())?;
            let retained = matches!(
                record.state,
                DeliveryState::Delivered | DeliveryState::NotRequested
            );
            if retained && record.retain_until_ms <= now {
                expired.push((id.value(), record.event_id.get()));
            }
        }
        for (notification_id, event_id) in expired {
            notifications.remove(notification_id)?;
            index.remove(event_id)?;
        }
        let mut keys = txn.open_table(IDEMPOTENCY_KEYS)?;
        let mut expired = Vec::new();
        for entry in keys.iter()? {
            let (scope, holder) = entry?;
            if decode_key_holder(holder.value())?.2 <= now {
                expired.push(scope.value().to_vec());
            }
        }
        for scope in expired {
            keys.remove(scope.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}
