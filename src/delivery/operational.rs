//! Operational webhooks: what delivery tells an instance's operators at its `operations_url`
//! (a receiver's circuit opened or closed, a receiver was disabled, a notification died), and
//! their JSON. The event stage sends each as a notification of its own (`event::operational`):
//! signed with the instance's keys, recorded and retried like any other.

use bytes::Bytes;
use serde::Serialize;

use crate::wire::ids::{EventId, NotificationId};

/// Something an instance's operators are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Operational {
    /// A receiver's circuit opened: `receiver.failing`.
    ReceiverFailing {
        receiver_id: String,
        origin: String,
        consecutive_failures: u32,
        failing_since_ms: u64,
    },
    /// Its circuit closed again: `receiver.recovered`.
    ReceiverRecovered { receiver_id: String, origin: String },
    /// It failed for too long and is disabled: `receiver.disabled`.
    ReceiverDisabled {
        receiver_id: String,
        origin: String,
        failing_since_ms: u64,
        disabled_at_ms: u64,
    },
    /// A notification became a dead letter: `notification.dead`.
    NotificationDead {
        event_id: EventId,
        notification_id: NotificationId,
        /// Where it was going; never shown (it may carry a client's token), only compared.
        target: String,
        attempts: u32,
        reason: Option<String>,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, D: Serialize> {
    r#type: &'a str,
    instance_id: u64,
    notification_id: NotificationId,
    created_at: u64,
    data: D,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReceiverData<'a> {
    receiver_id: &'a str,
    origin: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failing_since: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_at: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadData<'a> {
    event_id: EventId,
    notification_id: NotificationId,
    attempts: u32,
    reason: Option<&'a str>,
}

/// A receiver's data without the optional fields.
fn receiver<'a>(receiver_id: &'a str, origin: &'a str) -> ReceiverData<'a> {
    ReceiverData {
        receiver_id,
        origin,
        consecutive_failures: None,
        failing_since: None,
        disabled_at: None,
    }
}

impl Operational {
    /// Its `type`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::ReceiverFailing { .. } => "receiver.failing",
            Self::ReceiverRecovered { .. } => "receiver.recovered",
            Self::ReceiverDisabled { .. } => "receiver.disabled",
            Self::NotificationDead { .. } => "notification.dead",
        }
    }

    /// The receiver's origin, or the dead notification's target: where it is about. Operators
    /// are told nothing about their own operations URL (it would tell them about itself, in a
    /// loop).
    pub(crate) fn about(&self) -> &str {
        match self {
            Self::ReceiverFailing { origin, .. }
            | Self::ReceiverRecovered { origin, .. }
            | Self::ReceiverDisabled { origin, .. } => origin,
            Self::NotificationDead { target, .. } => target,
        }
    }

    /// The webhook's body: `{"type", "instanceId", "notificationId", "createdAt", "data"}`,
    /// `notificationId` its own (the `webhook-id` it is signed with).
    pub(crate) fn to_json(
        &self,
        instance_id: u64,
        notification_id: NotificationId,
        created_at_ms: u64,
    ) -> Bytes {
        let envelope = |data| Envelope {
            r#type: self.kind(),
            instance_id,
            notification_id,
            created_at: created_at_ms,
            data,
        };
        let json = match self {
            Self::ReceiverFailing {
                receiver_id,
                origin,
                consecutive_failures,
                failing_since_ms,
            } => serde_json::to_vec(&envelope(ReceiverData {
                consecutive_failures: Some(*consecutive_failures),
                failing_since: Some(*failing_since_ms),
                ..receiver(receiver_id, origin)
            })),
            Self::ReceiverRecovered {
                receiver_id,
                origin,
            } => serde_json::to_vec(&envelope(receiver(receiver_id, origin))),
            Self::ReceiverDisabled {
                receiver_id,
                origin,
                failing_since_ms,
                disabled_at_ms,
            } => serde_json::to_vec(&envelope(ReceiverData {
                failing_since: Some(*failing_since_ms),
                disabled_at: Some(*disabled_at_ms),
                ..receiver(receiver_id, origin)
            })),
            Self::NotificationDead {
                event_id,
                notification_id: dead,
                attempts,
                reason,
                ..
            } => serde_json::to_vec(&Envelope {
                r#type: self.kind(),
                instance_id,
                notification_id,
                created_at: created_at_ms,
                data: DeadData {
                    event_id: *event_id,
                    notification_id: *dead,
                    attempts: *attempts,
                    reason: reason.as_deref(),
                },
            }),
        };
        Bytes::from(json.expect("operational webhooks serialize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(what: &Operational) -> serde_json::Value {
        serde_json::from_slice(&what.to_json(30, NotificationId::new(7), 1_700_000_000_000))
            .unwrap()
    }

    #[test]
    fn each_kind_has_its_documented_shape() {
        let failing = Operational::ReceiverFailing {
            receiver_id: "0123456789abcdef".into(),
            origin: "https://hooks.example.com:443".into(),
            consecutive_failures: 5,
            failing_since_ms: 1_699_999_000_000,
        };
        assert_eq!(
            json_of(&failing),
            json!({
                "type": "receiver.failing", "instanceId": 30, "notificationId": 7,
                "createdAt": 1_700_000_000_000u64,
                "data": {
                    "receiverId": "0123456789abcdef", "origin": "https://hooks.example.com:443",
                    "consecutiveFailures": 5, "failingSince": 1_699_999_000_000u64
                }
            })
        );
        let recovered = Operational::ReceiverRecovered {
            receiver_id: "0123456789abcdef".into(),
            origin: "https://hooks.example.com:443".into(),
        };
        assert_eq!(json_of(&recovered)["type"], "receiver.recovered");
        assert_eq!(
            json_of(&recovered)["data"],
            json!({"receiverId": "0123456789abcdef", "origin": "https://hooks.example.com:443"})
        );
        let disabled = Operational::ReceiverDisabled {
            receiver_id: "0123456789abcdef".into(),
            origin: "https://hooks.example.com:443".into(),
            failing_since_ms: 1,
            disabled_at_ms: 2,
        };
        assert_eq!(json_of(&disabled)["data"]["disabledAt"], 2);
        let dead = Operational::NotificationDead {
            event_id: EventId::new(1028),
            notification_id: NotificationId::new(1084),
            target: "https://hooks.example.com/in?token=secret".into(),
            attempts: 8,
            reason: Some("the receiver answered 500".into()),
        };
        let text = String::from_utf8(dead.to_json(30, NotificationId::new(7), 3).to_vec()).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["data"],
            json!({
                "eventId": 1028, "notificationId": 1084, "attempts": 8,
                "reason": "the receiver answered 500"
            })
        );
        assert_eq!(dead.about(), "https://hooks.example.com/in?token=secret");
    }
}
