//! What the harness reads from the app and the receiver, in this process or (`--shape processes`)
//! from their `GET /__stats`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tower_async_request::AsyncRequestHandle;

use crate::client::HttpClient;
use crate::receiver::{unix_ns, Received};

async fn get_json(client: &HttpClient, url: String) -> serde_json::Value {
    let response = client
        .get(url.parse().unwrap())
        .await
        .expect("a child process answers");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

/// The receiver, in this process or its own.
pub(crate) enum ReceiverView {
    Local(Arc<Received>),
    Remote(SocketAddr),
}

/// What the receiver has seen: bad signatures, and when each event's callback came.
pub(crate) struct Arrivals {
    pub(crate) bad_signatures: u64,
    pub(crate) at: HashMap<u64, Instant>,
}

impl ReceiverView {
    pub(crate) async fn count(&self, client: &HttpClient) -> u64 {
        match self {
            Self::Local(received) => received.count.load(Ordering::Relaxed),
            Self::Remote(address) => {
                // Only the count: ask for arrivals from far past the end.
                get_json(
                    client,
                    format!("http://{address}/__stats?since={}", usize::MAX >> 1),
                )
                .await
                .get("count")
                .and_then(|c| c.as_u64())
                .unwrap_or(0)
            }
        }
    }

    /// Everything from the `since`-th callback on.
    pub(crate) async fn arrivals(&self, client: &HttpClient, since: u64) -> Arrivals {
        match self {
            Self::Local(received) => Arrivals {
                bad_signatures: received.bad_signatures.load(Ordering::Relaxed),
                at: received.arrivals.lock().unwrap()[since as usize..]
                    .iter()
                    .copied()
                    .collect(),
            },
            Self::Remote(address) => {
                let stats =
                    get_json(client, format!("http://{address}/__stats?since={since}")).await;
                // Both processes read the same clock: map Unix time onto this process's instants.
                let (now, unix_now) = (Instant::now(), unix_ns());
                let at = stats["arrivals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|pair| {
                        let id = pair.get(0)?.as_u64()?;
                        let unix = pair.get(1)?.as_u64()? as u128;
                        let ago = Duration::from_nanos(unix_now.saturating_sub(unix) as u64);
                        Some((id, now.checked_sub(ago)?))
                    })
                    .collect();
                Arrivals {
                    bad_signatures: stats["badSignatures"].as_u64().unwrap_or(0),
                    at,
                }
            }
        }
    }
}

/// The app, in this process or its own.
pub(crate) enum AppView {
    Local(AsyncRequestHandle),
    Remote(SocketAddr),
}

impl AppView {
    /// The layer's counters, as text.
    pub(crate) async fn metrics(&self, client: &HttpClient) -> String {
        match self {
            Self::Local(handle) => format!("{:?}", handle.metrics()),
            Self::Remote(address) => get_json(client, format!("http://{address}/__stats")).await
                ["metrics"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Allocations and bytes allocated so far, where counted (the app's own process).
    pub(crate) async fn allocations(&self, client: &HttpClient) -> Option<(u64, u64)> {
        match self {
            Self::Local(_) => None,
            Self::Remote(address) => {
                let stats = get_json(client, format!("http://{address}/__stats")).await;
                Some((stats["allocations"].as_u64()?, stats["bytes"].as_u64()?))
            }
        }
    }
}

/// Allocations and bytes per item between two readings.
pub(crate) fn allocations_per(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    items: u64,
) -> Option<(f64, f64)> {
    let ((count0, bytes0), (count1, bytes1)) = (before?, after?);
    let items = items.max(1) as f64;
    Some((
        count1.saturating_sub(count0) as f64 / items,
        bytes1.saturating_sub(bytes0) as f64 / items,
    ))
}
