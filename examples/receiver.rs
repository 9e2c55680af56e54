//! A webhook receiver written with the crate's axum extractor (feature `axum`): the handler gets a
//! verified, parsed notification and nothing else to check.
//!
//! `cargo run --features axum --example receiver` starts the receiver and an app behind the layer
//! on loopback, sends one async request, prints what the receiver got, and exits 0.

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::FromRef;
use axum::{extract::State, routing::post, Json, Router};
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{net::TcpListener, sync::mpsc};
use tower_async_request::receiver::{Callback, CallbackVerifier};
use tower_async_request::AsyncRequestLayer;

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The receiver's state: the verifier the extractor needs, and where to pass notifications on.
#[derive(Clone)]
struct Receiver {
    verifier: CallbackVerifier,
    received: mpsc::Sender<Callback>,
}

impl FromRef<Receiver> for CallbackVerifier {
    fn from_ref(state: &Receiver) -> Self {
        state.verifier.clone()
    }
}

/// The whole receiver: a handler that only ever sees verified notifications.
async fn hook(State(state): State<Receiver>, callback: Callback) -> &'static str {
    let _ = state.received.send(callback).await;
    "ok"
}

async fn run() -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel(4);
    let verifier = CallbackVerifier::new()
        .standard_webhooks_secret(WHSEC)
        .map_err(|e| e.to_string())?;
    let receiver = Router::new()
        .route("/hook", post(hook))
        .with_state(Receiver {
            verifier,
            received: tx,
        });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let receiver_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let layer = AsyncRequestLayer::builder()
        .default_callback_url(format!("http://{receiver_addr}/hook"))
        .standard_webhooks_secret(WHSEC)
        .build()
        .map_err(|e| e.to_string())?;
    let app = Router::new()
        .route(
            "/work",
            post(|| async { Json(serde_json::json!({"done": true})) }),
        )
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let app_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let request = http::Request::post(format!("http://{app_addr}/work"))
        .header("Elements-Async-Request", "true")
        .body(Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let receipt = Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    println!("receipt: {}", receipt.status());

    let callback = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| "no callback within 10 seconds".to_owned())?
        .ok_or("the receiver stopped")?;
    println!(
        "verified callback {} for event {}: {:?}, response {}",
        callback.headers["webhook-id"].to_str().unwrap_or("?"),
        callback.notification.event_id,
        callback.notification.event_status,
        callback.notification.response.clone().unwrap_or_default(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("receiver example failed: {message}");
            ExitCode::FAILURE
        }
    }
}
