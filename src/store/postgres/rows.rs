//! Reading rows back: the columns a record is read from, and the record they make.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::Row;

use crate::store::{
    history, trace, DeliveryState, EventRecord, NotificationRecord, ProgressRecord, StoreError,
    TraceContext,
};
use crate::wire::ids::{EventId, NotificationId};

/// The columns a record is read from, in [`record_of`]'s order.
pub(super) const COLUMNS: &str = "event_id, notification_id, instance_id, target, instance_url, \
    accepted_at_ms, state, body, attempts, next_attempt_at_ms, last_error, retain_until_ms, \
    history::text, progress_percent, progress_message, progress_at_ms, trace";

/// A row read back: an event whose job has not finished, or its notification.
pub(super) enum Stored {
    Unfinished(EventRecord),
    Finished(NotificationRecord),
}

impl Stored {
    pub(super) fn finished(self) -> Option<NotificationRecord> {
        match self {
            Self::Finished(notification) => Some(notification),
            Self::Unfinished(_) => None,
        }
    }
}

/// Reads a row of [`COLUMNS`].
pub(super) fn record_of(row: &Row) -> Result<Stored, StoreError> {
    let get_u64 = |index: usize| -> Result<u64, StoreError> {
        row.try_get::<_, i64>(index)
            .map(|value| value as u64)
            .map_err(StoreError::new)
    };
    let event_id = EventId::new(get_u64(0)?);
    let notification_id = NotificationId::new(get_u64(1)?);
    let instance_id = get_u64(2)?;
    let target: String = row.try_get(3).map_err(StoreError::new)?;
    let instance_url: bool = row.try_get(4).map_err(StoreError::new)?;
    let state: i16 = row.try_get(6).map_err(StoreError::new)?;
    let progress = progress_of(row)?;
    let trace = trace_of(row)?;
    let state = match state {
        0 => {
            return Ok(Stored::Unfinished(EventRecord {
                event_id,
                notification_id,
                instance_id,
                target,
                instance_url,
                accepted_at_ms: get_u64(5)?,
                running: false,
                progress,
                trace,
            }))
        }
        1 => DeliveryState::Pending,
        2 => DeliveryState::Delivered,
        3 => DeliveryState::Dead,
        4 => DeliveryState::NotRequested,
        other => return Err(StoreError::new(format!("unknown event state {other}"))),
    };
    Ok(Stored::Finished(NotificationRecord {
        event_id,
        notification_id,
        instance_id,
        target,
        instance_url,
        body: body_of(row.try_get(7).map_err(StoreError::new)?),
        accepted_at_ms: get_u64(5)?,
        attempts: row.try_get::<_, i32>(8).map_err(StoreError::new)? as u32,
        history: match row
            .try_get::<_, Option<&str>>(12)
            .map_err(StoreError::new)?
        {
            Some(text) => history::decode(text).map_err(StoreError::new)?,
            None => Vec::new(),
        },
        next_attempt_at_ms: get_u64(9)?,
        last_error: row.try_get(10).map_err(StoreError::new)?,
        state,
        retain_until_ms: get_u64(11)?,
        progress,
        trace,
    }))
}

/// The progress columns (13–15 of [`COLUMNS`]), if the job reported.
fn progress_of(row: &Row) -> Result<Option<Box<ProgressRecord>>, StoreError> {
    let percent: Option<i16> = row.try_get(13).map_err(StoreError::new)?;
    let Some(percent) = percent else {
        return Ok(None);
    };
    Ok(Some(Box::new(ProgressRecord {
        percent: percent.clamp(0, 100) as u8,
        message: row
            .try_get::<_, Option<String>>(14)
            .map_err(StoreError::new)?
            .unwrap_or_default(),
        updated_at_ms: row
            .try_get::<_, Option<i64>>(15)
            .map_err(StoreError::new)?
            .unwrap_or(0) as u64,
    })))
}

/// The trace column (16 of [`COLUMNS`]), if the event belongs to one.
fn trace_of(row: &Row) -> Result<Option<Arc<TraceContext>>, StoreError> {
    row.try_get::<_, Option<&str>>(16)
        .map_err(StoreError::new)?
        .map(trace::decode)
        .transpose()
        .map_err(StoreError::new)
}

/// A body as stored: the exact bytes.
pub(super) fn body_of(bytes: Option<Vec<u8>>) -> Bytes {
    bytes.map(Bytes::from).unwrap_or_default()
}
