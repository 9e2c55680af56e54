//! The app under test: an endpoint behind `AsyncRequestLayer`, and serving a router (the app's or
//! the receiver's) on a side's runtime.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use http::header;
use tokio::net::TcpListener;
use tower_async_request::{AsyncRequestLayer, AsyncRequestLayerBuilder};

use crate::options::Signatures;
use crate::sides::{Side, ACCEPTED};

pub(crate) const SIGNING_KEY: &str = "event-signature-key";
const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

pub(crate) fn layer_builder(signatures: Signatures) -> AsyncRequestLayerBuilder {
    let builder = AsyncRequestLayer::builder()
        .instance_id(30)
        .signing_key(SIGNING_KEY)
        .allow_private_callbacks(true);
    match signatures {
        Signatures::Both => builder.standard_webhooks_secret(WHSEC),
        Signatures::Elements => builder,
    }
}

/// The endpoint: echoes the request body as JSON, so each notification carries the payload.
pub(crate) async fn work(body: Bytes) -> ([(header::HeaderName, &'static str); 1], Bytes) {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Serves `router` on 127.0.0.1 (an ephemeral port, TCP_NODELAY) on `side`'s runtime until the
/// process ends.
pub(crate) async fn serve(router: Router, side: Side) -> SocketAddr {
    side.runtime()
        .spawn(serve_here(router, side))
        .await
        .expect("serve")
}

/// Serves `router` on the runtime this is called on.
pub(crate) async fn serve_here(router: Router, side: Side) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |tcp| {
        let _ = tcp.set_nodelay(true);
        ACCEPTED[side as usize].fetch_add(1, Ordering::Relaxed);
    });
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    address
}
