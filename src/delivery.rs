//! Delivery: signing a notification for an attempt, handing it to the sink, and judging the
//! answer.
//!
//! The stages are small and typed so retries slot in between them: [`Delivery::prepare`] builds
//! the signed request for one attempt (each attempt is re-signed with its own timestamp and keeps
//! the notification id), the sink sends it, and [`AttemptOutcome::judge`] decides what the answer
//! means. Today a notification gets one attempt whose outcome is logged.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};

use crate::header::ELEMENTS_EVENT_ID;
use crate::ids::{EventId, NotificationId};
use crate::signature::Signer;
use crate::sink::{CallbackSink, DynSink, SinkError, SinkErrorKind};

const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// A notification ready to be delivered: where, which ids, and the exact JSON body.
#[derive(Debug, Clone)]
pub(crate) struct PendingNotification {
    pub(crate) target: Uri,
    pub(crate) event_id: EventId,
    pub(crate) notification_id: NotificationId,
    pub(crate) body: Bytes,
}

/// What one attempt's answer means for the notification.
#[derive(Debug)]
pub(crate) enum AttemptOutcome {
    /// The receiver answered `2xx`.
    Delivered(StatusCode),
    /// A non-`2xx` answer (`3xx` included: redirects are not followed) that a later attempt may
    /// fix.
    Rejected(StatusCode),
    /// No answer (connection error, timeout) that a later attempt may fix.
    Unreachable(SinkError),
    /// An answer or error after which retrying is pointless: `410 Gone`, a forbidden target, a
    /// closed sink.
    Final(String),
}

impl AttemptOutcome {
    pub(crate) fn judge(result: Result<Response<Bytes>, SinkError>) -> Self {
        match result {
            Ok(answer) if answer.status().is_success() => Self::Delivered(answer.status()),
            Ok(answer) if answer.status() == StatusCode::GONE => {
                Self::Final("the receiver answered 410 Gone".to_owned())
            }
            Ok(answer) => Self::Rejected(answer.status()),
            Err(error)
                if matches!(
                    error.kind(),
                    SinkErrorKind::Forbidden | SinkErrorKind::Closed
                ) =>
            {
                Self::Final(error.to_string())
            }
            Err(error) => Self::Unreachable(error),
        }
    }
}

/// Signs and sends notifications through the configured sink.
#[derive(Clone)]
pub(crate) struct Delivery {
    sink: Arc<dyn DynSink>,
    sink_type: &'static str,
    signer: Signer,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("sink", &self.sink_type)
            .field("signer", &self.signer)
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new<K: CallbackSink>(sink: K, signer: Signer) -> Self {
        Self {
            sink: Arc::new(sink),
            sink_type: std::any::type_name::<K>(),
            signer,
        }
    }

    pub(crate) fn with_signer(mut self, signer: Signer) -> Self {
        self.signer = signer;
        self
    }

    /// The signed request for one attempt made at `timestamp` (Unix seconds).
    pub(crate) fn prepare(
        &self,
        notification: &PendingNotification,
        timestamp: u64,
    ) -> Request<Bytes> {
        let mut request = Request::new(notification.body.clone());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = notification.target.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(ELEMENTS_EVENT_ID, notification.event_id.get().into());
        self.signer.sign(
            headers,
            notification.notification_id,
            timestamp,
            &notification.body,
        );
        request
    }

    /// Makes one attempt now.
    pub(crate) async fn attempt(&self, notification: &PendingNotification) -> AttemptOutcome {
        let request = self.prepare(notification, unix_now());
        AttemptOutcome::judge(self.sink.send_boxed(request).await)
    }

    /// Delivers a notification and logs how it went.
    pub(crate) async fn deliver(&self, notification: PendingNotification) {
        match self.attempt(&notification).await {
            AttemptOutcome::Delivered(status) => {
                tracing::debug!(%status, "callback delivered");
            }
            AttemptOutcome::Rejected(status) => {
                tracing::warn!(%status, target = %notification.target, "callback rejected by the receiver");
            }
            AttemptOutcome::Unreachable(error) => {
                tracing::warn!(%error, target = %notification.target, "callback receiver unreachable");
            }
            AttemptOutcome::Final(reason) => {
                tracing::warn!(%reason, target = %notification.target, "callback not delivered");
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::ChannelSink;

    fn answer(status: u16) -> Result<Response<Bytes>, SinkError> {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(response)
    }

    #[test]
    fn only_2xx_is_delivered_and_410_is_final() {
        assert!(matches!(
            AttemptOutcome::judge(answer(200)),
            AttemptOutcome::Delivered(_)
        ));
        assert!(matches!(
            AttemptOutcome::judge(answer(204)),
            AttemptOutcome::Delivered(_)
        ));
        for status in [301, 302, 307, 400, 429, 500, 503] {
            assert!(
                matches!(AttemptOutcome::judge(answer(status)), AttemptOutcome::Rejected(s) if s.as_u16() == status)
            );
        }
        assert!(matches!(
            AttemptOutcome::judge(answer(410)),
            AttemptOutcome::Final(_)
        ));
        let forbidden = SinkError::new(SinkErrorKind::Forbidden, "private");
        assert!(matches!(
            AttemptOutcome::judge(Err(forbidden)),
            AttemptOutcome::Final(_)
        ));
        let refused = SinkError::new(SinkErrorKind::Connect, "refused");
        assert!(matches!(
            AttemptOutcome::judge(Err(refused)),
            AttemptOutcome::Unreachable(_)
        ));
    }

    #[tokio::test]
    async fn prepared_request_is_a_signed_json_post_to_the_target() {
        let (sink, mut callbacks) = ChannelSink::new(1);
        let delivery = Delivery::new(sink, Signer::new(Some(b"event-signature-key"), &[]));
        let notification = PendingNotification {
            target: "https://hooks.example.com/in".parse().unwrap(),
            event_id: EventId::new(1028),
            notification_id: NotificationId::new(1084),
            body: Bytes::from_static(b"{}"),
        };
        assert!(matches!(
            delivery.attempt(&notification).await,
            AttemptOutcome::Delivered(_)
        ));
        let sent = callbacks.recv().await.unwrap();
        assert_eq!(sent.method(), Method::POST);
        assert_eq!(sent.uri(), "https://hooks.example.com/in");
        assert_eq!(sent.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(sent.headers()[ELEMENTS_EVENT_ID], "1028");
        assert!(sent.headers()[header::USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("tower-async-request/"));
        assert!(sent.headers()[crate::header::ELEMENTS_WEBHOOK_SIGNATURE]
            .to_str()
            .unwrap()
            .starts_with("sha256="));
        assert_eq!(sent.body(), "{}");
    }
}
