//! Dispatch: what happens to an accepted async request before the client gets its receipt.
//!
//! Read the whole request body (a connection may close once the client has its `202`, so the
//! body cannot be left for later), take the event and notification ids, call the readied inner
//! service, and spawn one task that runs the job and delivers its notification — carrying the
//! caller's tracing span. If the client goes away while its body is being read, this future is
//! dropped and nothing was recorded or started.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_service::Service;
use tracing::Instrument;

use crate::body::RequestBody;
use crate::config::Config;
use crate::delivery::PendingNotification;
use crate::job;
use crate::receipt::receipt;
use crate::refusal::{Refusal, RefusalCode};
use crate::service::request_too_large;
use crate::BoxError;

pub(crate) async fn dispatch<S, ReqBody, ResBody>(
    mut ready: S,
    request: Request<ReqBody>,
    callback: Uri,
    config: Arc<Config>,
    parent: tracing::Span,
) -> Response<Bytes>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let collected = match Limited::new(body, config.max_request_bytes).collect().await {
        Ok(collected) => collected,
        Err(error) if error.is::<LengthLimitError>() => {
            return request_too_large(config.max_request_bytes).into_response()
        }
        Err(error) => {
            return Refusal::new(
                RefusalCode::RequestBodyError,
                format!("The request body could not be read: {error}."),
            )
            .into_response()
        }
    };
    let trailers = collected.trailers().cloned();
    let request = Request::from_parts(parts, RequestBody::buffered(collected.to_bytes(), trailers));

    let event_id = config.ids.event_id();
    let notification_id = config.ids.notification_id();
    let span = tracing::info_span!(
        parent: &parent,
        "async_request",
        event_id = event_id.get(),
        notification_id = notification_id.get(),
        instance_id = config.instance_id,
    );
    let work = span.in_scope(|| ready.call(request));
    let shared = config.clone();
    let job = async move {
        let outcome = job::run(work, shared.max_response_bytes).await;
        let body = outcome.to_json(event_id, shared.instance_id, notification_id);
        let notification = PendingNotification {
            target: callback,
            event_id,
            notification_id,
            body,
        };
        shared.delivery.deliver(notification).await;
    };
    tokio::spawn(job.instrument(span));
    receipt(config.receipt_status, event_id)
}
