//! How records are kept as bytes: JSON for an event and a notification's metadata, a
//! notification's body as-is after it.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{
    trace, AttemptRecord, DeliveryState, DisabledReceiver, EventRecord, NotificationRecord,
    TraceContext,
};
use crate::wire::ids::{EventId, NotificationId};

// Fields added later have defaults, so records written before them still read.

#[derive(Serialize, Deserialize)]
pub(super) struct StoredEvent {
    pub(super) notification_id: u64,
    #[serde(default)]
    pub(super) instance_id: u64,
    pub(super) target: String,
    #[serde(default)]
    pub(super) instance_url: bool,
    pub(super) accepted_at_ms: u64,
    pub(super) running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) trace: Option<Vec<(String, String)>>,
}

#[derive(Serialize, Deserialize)]
struct StoredNotification {
    event_id: u64,
    #[serde(default)]
    instance_id: u64,
    target: String,
    #[serde(default)]
    instance_url: bool,
    #[serde(default)]
    accepted_at_ms: u64,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<AttemptRecord>,
    next_attempt_at_ms: u64,
    last_error: Option<String>,
    state: u8,
    retain_until_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<Vec<(String, String)>>,
}

/// A disabled receiver but for its id, which is the key it is kept under.
#[derive(Serialize, Deserialize)]
struct StoredReceiver {
    instance_id: u64,
    origin: String,
    failing_since_ms: u64,
    disabled_at_ms: u64,
}

fn state_code(state: DeliveryState) -> u8 {
    match state {
        DeliveryState::Pending => 0,
        DeliveryState::Delivered => 1,
        DeliveryState::Dead => 2,
        DeliveryState::NotRequested => 3,
    }
}

fn state_from(code: u8) -> Result<DeliveryState, redb::Error> {
    Ok(match code {
        0 => DeliveryState::Pending,
        1 => DeliveryState::Delivered,
        2 => DeliveryState::Dead,
        3 => DeliveryState::NotRequested,
        _ => {
            return Err(redb::Error::Corrupted(format!(
                "unknown delivery state {code}"
            )))
        }
    })
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialize")
}

pub(super) fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, redb::Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| redb::Error::Corrupted(format!("unreadable record: {e}")))
}

pub(super) fn encode_event(event: &EventRecord) -> Vec<u8> {
    json(&StoredEvent {
        notification_id: event.notification_id.get(),
        instance_id: event.instance_id,
        target: event.target.clone(),
        instance_url: event.instance_url,
        accepted_at_ms: event.accepted_at_ms,
        running: event.running,
        trace: kept(event.trace.as_deref()),
    })
}

/// The trace a record keeps: none when it does not fit.
fn kept(trace: Option<&TraceContext>) -> Option<Vec<(String, String)>> {
    trace::kept(trace).map(<[_]>::to_vec)
}

/// A kept trace read back.
pub(super) fn trace_of(fields: Option<Vec<(String, String)>>) -> Option<Arc<TraceContext>> {
    fields.map(|fields| Arc::new(TraceContext { fields }))
}

/// `[meta length: u32 LE][meta JSON][body bytes]`: the body is stored as-is, not re-encoded.
pub(super) fn encode_notification(record: &NotificationRecord) -> Vec<u8> {
    let meta = json(&StoredNotification {
        event_id: record.event_id.get(),
        instance_id: record.instance_id,
        target: record.target.clone(),
        instance_url: record.instance_url,
        accepted_at_ms: record.accepted_at_ms,
        attempts: record.attempts,
        history: record.history.clone(),
        next_attempt_at_ms: record.next_attempt_at_ms,
        last_error: record.last_error.clone(),
        state: state_code(record.state),
        retain_until_ms: record.retain_until_ms,
        trace: kept(record.trace.as_deref()),
    });
    let mut out = Vec::with_capacity(4 + meta.len() + record.body.len());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&record.body);
    out
}

pub(super) fn decode_notification(
    id: u64,
    bytes: &[u8],
) -> Result<NotificationRecord, redb::Error> {
    let corrupted = || redb::Error::Corrupted("truncated notification record".into());
    let len = u32::from_le_bytes(
        bytes
            .get(..4)
            .ok_or_else(corrupted)?
            .try_into()
            .map_err(|_| corrupted())?,
    ) as usize;
    let meta: StoredNotification = decode_json(bytes.get(4..4 + len).ok_or_else(corrupted)?)?;
    Ok(NotificationRecord {
        event_id: EventId::new(meta.event_id),
        notification_id: NotificationId::new(id),
        instance_id: meta.instance_id,
        instance_url: meta.instance_url,
        target: meta.target,
        body: Bytes::copy_from_slice(&bytes[4 + len..]),
        accepted_at_ms: meta.accepted_at_ms,
        attempts: meta.attempts,
        history: meta.history,
        next_attempt_at_ms: meta.next_attempt_at_ms,
        last_error: meta.last_error,
        state: state_from(meta.state)?,
        retain_until_ms: meta.retain_until_ms,
        progress: None,
        trace: trace_of(meta.trace),
    })
}

pub(super) fn encode_receiver(receiver: &DisabledReceiver) -> Vec<u8> {
    json(&StoredReceiver {
        instance_id: receiver.instance_id,
        origin: receiver.origin.clone(),
        failing_since_ms: receiver.failing_since_ms,
        disabled_at_ms: receiver.disabled_at_ms,
    })
}

pub(super) fn decode_receiver(id: &str, bytes: &[u8]) -> Result<DisabledReceiver, redb::Error> {
    let stored: StoredReceiver = decode_json(bytes)?;
    Ok(DisabledReceiver {
        id: id.to_owned(),
        instance_id: stored.instance_id,
        origin: stored.origin,
        failing_since_ms: stored.failing_since_ms,
        disabled_at_ms: stored.disabled_at_ms,
    })
}

/// An idempotency key's holder: the event id, the fingerprint and the expiry, 48 bytes.
pub(super) fn encode_key_holder(
    event_id: u64,
    fingerprint: &[u8; 32],
    expires_at_ms: u64,
) -> [u8; 48] {
    let mut bytes = [0; 48];
    bytes[..8].copy_from_slice(&event_id.to_be_bytes());
    bytes[8..40].copy_from_slice(fingerprint);
    bytes[40..].copy_from_slice(&expires_at_ms.to_be_bytes());
    bytes
}

/// The holder [`encode_key_holder`] wrote: (event id, fingerprint, expiry).
pub(super) fn decode_key_holder(bytes: &[u8]) -> Result<(u64, [u8; 32], u64), redb::Error> {
    if bytes.len() != 48 {
        return Err(redb::Error::Corrupted(
            "an idempotency key's record is not 48 bytes".into(),
        ));
    }
    let number = |range: std::ops::Range<usize>| {
        u64::from_be_bytes(bytes[range].try_into().expect("eight bytes"))
    };
    let fingerprint = bytes[8..40].try_into().expect("32 bytes");
    Ok((number(0..8), fingerprint, number(40..48)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_TRACE_CONTEXT_BYTES;

    #[test]
    fn records_written_before_instances_read_as_instance_0() {
        let meta = br#"{"event_id":5,"target":"https://example.com/","attempts":1,"next_attempt_at_ms":2,"last_error":null,"state":0,"retain_until_ms":3}"#;
        let mut bytes = (meta.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(meta);
        bytes.extend_from_slice(b"{}");
        let record = decode_notification(6, &bytes).unwrap();
        assert_eq!((record.instance_id, record.instance_url), (0, false));
        assert_eq!((record.accepted_at_ms, record.history.len()), (0, 0));
        assert_eq!(record.target, "https://example.com/");
        assert_eq!(
            decode_notification(6, &encode_notification(&record)).unwrap(),
            record
        );
    }

    fn event(trace: Option<TraceContext>) -> EventRecord {
        EventRecord {
            event_id: EventId::new(5),
            notification_id: NotificationId::new(6),
            instance_id: 7,
            target: "https://example.com/".into(),
            instance_url: false,
            accepted_at_ms: 1,
            running: false,
            progress: None,
            trace: trace.map(Arc::new),
        }
    }

    fn notification(trace: Option<TraceContext>) -> NotificationRecord {
        NotificationRecord {
            event_id: EventId::new(5),
            notification_id: NotificationId::new(6),
            instance_id: 7,
            target: "https://example.com/".into(),
            instance_url: false,
            body: Bytes::from_static(b"{}"),
            accepted_at_ms: 1,
            attempts: 2,
            history: Vec::new(),
            next_attempt_at_ms: 3,
            last_error: Some("503".into()),
            state: DeliveryState::Pending,
            retain_until_ms: 4,
            progress: None,
            trace: trace.map(Arc::new),
        }
    }

    fn event_trace(bytes: &[u8]) -> Option<Arc<TraceContext>> {
        trace_of(decode_json::<StoredEvent>(bytes).unwrap().trace)
    }

    #[test]
    fn records_written_before_traces_read_without_one() {
        let stored = br#"{"notification_id":6,"instance_id":7,"target":"https://example.com/","instance_url":false,"accepted_at_ms":1,"running":false}"#;
        assert_eq!(event_trace(stored), None);
        let meta = br#"{"event_id":5,"instance_id":7,"target":"https://example.com/","instance_url":false,"accepted_at_ms":1,"attempts":2,"next_attempt_at_ms":3,"last_error":"503","state":0,"retain_until_ms":4}"#;
        let mut bytes = (meta.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(meta);
        bytes.extend_from_slice(b"{}");
        assert_eq!(decode_notification(6, &bytes).unwrap(), notification(None));
        // And records without a trace are written as before (an older version reads them).
        assert_eq!(encode_event(&event(None)), stored);
        assert_eq!(encode_notification(&notification(None)), bytes);
    }

    #[test]
    fn a_trace_is_kept_with_the_record_unless_it_is_too_large() {
        let trace = crate::store::trace::tests::sample();
        assert_eq!(
            event_trace(&encode_event(&event(Some(trace.clone())))),
            Some(Arc::new(trace.clone()))
        );
        let traced = notification(Some(trace));
        assert_eq!(
            decode_notification(6, &encode_notification(&traced)).unwrap(),
            traced
        );
        let large = TraceContext {
            fields: vec![("tracestate".into(), "x".repeat(MAX_TRACE_CONTEXT_BYTES))],
        };
        assert_eq!(
            event_trace(&encode_event(&event(Some(large.clone())))),
            None
        );
        let record = decode_notification(6, &encode_notification(&notification(Some(large))));
        assert_eq!(record.unwrap(), notification(None));
    }
}
