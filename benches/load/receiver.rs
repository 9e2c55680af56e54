//! The callback receiver: checks each callback's signature and notes when it came.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tower_async_request::verify::ElementsVerifier;

use crate::app::SIGNING_KEY;

/// What the callback receiver saw.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) count: AtomicU64,
    pub(crate) bad_signatures: AtomicU64,
    pub(crate) arrivals: Mutex<Vec<(u64, Instant)>>,
}

async fn receive(
    State((received, verifier)): State<(Arc<Received>, ElementsVerifier)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = Instant::now();
    let event_id = headers
        .get("elements-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    if verifier.verify(&headers, &body).is_err() {
        received.bad_signatures.fetch_add(1, Ordering::Relaxed);
    }
    received.arrivals.lock().unwrap().push((event_id, now));
    received.count.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

/// The receiver's routes: callbacks on `/cb`, and its tally on `/__stats?since=N` (the count,
/// bad signatures and the arrivals from the N-th on, as Unix nanoseconds).
pub(crate) fn receiver_router(received: Arc<Received>) -> Router {
    Router::new()
        .route("/cb", post(receive))
        .with_state((received.clone(), ElementsVerifier::new(SIGNING_KEY)))
        .route(
            "/__stats",
            axum::routing::get(move |query: axum::extract::RawQuery| {
                let since: usize = query
                    .0
                    .as_deref()
                    .and_then(|q| q.strip_prefix("since="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let (now, unix_now) = (Instant::now(), unix_ns());
                let arrivals: Vec<(u64, u128)> = received
                    .arrivals
                    .lock()
                    .unwrap()
                    .get(since..)
                    .unwrap_or_default()
                    .iter()
                    .map(|(id, at)| (*id, unix_now - (now - *at).as_nanos()))
                    .collect();
                let body = serde_json::json!({
                    "count": received.count.load(Ordering::Relaxed),
                    "badSignatures": received.bad_signatures.load(Ordering::Relaxed),
                    "arrivals": arrivals,
                });
                std::future::ready(axum::Json(body))
            }),
        )
}

pub(crate) fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
