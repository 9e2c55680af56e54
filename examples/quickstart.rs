//! The product in thirty seconds, on loopback, in one process:
//!
//! 1. an axum app serves `POST /hubs/documents/folders/copy` behind `AsyncRequestLayer`;
//! 2. a webhook receiver checks callbacks with the crate's verification helpers;
//! 3. a client sends the copy request with `Elements-Async-Request: True`, gets a `202` receipt at
//!    once, and the real response arrives at the receiver as a signed notification.
//!
//! Run it with `cargo run --example quickstart`. It exits 0 when every step checks out, and
//! non-zero with a message saying what went wrong otherwise.

use std::process::ExitCode;
use std::time::Duration;

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post, Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::mpsc};
use tower_async_request::{
    notification::Notification,
    verify::{ElementsVerifier, StandardWebhooksVerifier},
    AsyncRequestLayer,
};

const SIGNING_KEY: &str = "event-signature-key";
const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The endpoint: pretends to copy a folder and reports what it created.
async fn copy_folder(Json(request): Json<Value>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(200)).await; // the "long" work
    let to = request["to"]
        .as_str()
        .unwrap_or("/TestFolderCopy")
        .to_owned();
    let lower = to.to_lowercase();
    Json(json!({ "events": [
        { "path": lower, "metadata": { "path": to, "name": to.trim_start_matches('/'), "type": "folder" } },
        { "path": format!("{lower}/testuploadfile.txt"),
          "metadata": { "path": format!("{to}/testUploadFile.txt"), "name": "testUploadFile.txt", "type": "file" } },
    ]}))
}

/// What the receiver learned about one callback.
struct Received {
    notification: Notification,
    elements: Result<(), String>,
    standard: Result<(), String>,
}

/// The webhook receiver: verifies both signature schemes and passes the notification on.
async fn receive(
    State(tx): State<mpsc::Sender<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let elements = ElementsVerifier::new(SIGNING_KEY)
        .verify(&headers, &body)
        .map_err(|e| e.to_string());
    let standard = StandardWebhooksVerifier::new(WHSEC)
        .expect("a well-formed secret")
        .verify(&headers, &body)
        .map_err(|e| e.to_string());
    match serde_json::from_slice::<Notification>(&body) {
        Ok(notification) => {
            let _ = tx
                .send(Received {
                    notification,
                    elements,
                    standard,
                })
                .await;
            "ok"
        }
        Err(error) => {
            eprintln!("receiver: unreadable notification: {error}");
            "unreadable"
        }
    }
}

async fn serve(router: Router) -> Result<std::net::SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

async fn run() -> Result<(), String> {
    // 2. The receiver.
    let (tx, mut rx) = mpsc::channel(8);
    let receiver = serve(
        Router::new()
            .route("/webhooks", post(receive))
            .with_state(tx),
    )
    .await
    .map_err(|e| format!("could not start the receiver: {e}"))?;

    // 1. The app, with the layer in one line.
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .signing_key(SIGNING_KEY)
        .standard_webhooks_secret(WHSEC)
        .allow_private_callbacks(true) // the receiver is on loopback in this demo
        .build()
        .map_err(|e| e.to_string())?;
    let app = serve(
        Router::new()
            .route("/hubs/documents/folders/copy", post(copy_folder))
            .layer(layer),
    )
    .await
    .map_err(|e| format!("could not start the app: {e}"))?;

    // 3. The client.
    let callback_url = format!("http://{receiver}/webhooks");
    let request_body = json!({ "from": "/TestFolder", "to": "/TestFolderCopy" }).to_string();
    println!("→ POST http://{app}/hubs/documents/folders/copy");
    println!("  Elements-Async-Request: True");
    println!("  Elements-Async-Callback-Url: {callback_url}");
    println!("  {request_body}");
    let request = http::Request::post(format!("http://{app}/hubs/documents/folders/copy"))
        .header("content-type", "application/json")
        .header("Elements-Async-Request", "True")
        .header("Elements-Async-Callback-Url", &callback_url)
        .body(Full::new(Bytes::from(request_body)))
        .map_err(|e| e.to_string())?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let receipt_bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("receipt body failed: {e}"))?
        .to_bytes();
    let receipt: Value =
        serde_json::from_slice(&receipt_bytes).map_err(|e| format!("receipt is not JSON: {e}"))?;
    println!("\n← {status} (at once; the work runs in the background)\n  {receipt}");
    if status != http::StatusCode::ACCEPTED || receipt["eventStatus"] != "dispatched" {
        return Err(format!(
            "expected a 202 receipt with eventStatus dispatched, got {status} {receipt}"
        ));
    }

    let received = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| "no callback arrived within 10 seconds".to_owned())?
        .ok_or("the receiver stopped")?;
    let notification = &received.notification;
    println!("\n⇐ callback POST {callback_url}");
    println!(
        "{}",
        serde_json::to_string_pretty(notification).map_err(|e| e.to_string())?
    );
    if receipt["eventId"].as_u64() != Some(notification.event_id.get()) {
        return Err(format!(
            "the callback's eventId {} does not match the receipt's {}",
            notification.event_id, receipt["eventId"]
        ));
    }
    if notification.instance_id != 30 || notification.status_code != Some(200) {
        return Err("the callback does not carry instanceId 30 and statusCode 200".to_owned());
    }
    received
        .elements
        .map_err(|e| format!("Elements-Webhook-Signature rejected: {e}"))?;
    println!("\n✓ signature verified (Elements-Webhook-Signature, HMAC-SHA256)");
    received
        .standard
        .map_err(|e| format!("Standard Webhooks signature rejected: {e}"))?;
    println!("✓ signature verified (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature)");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("quickstart failed: {message}");
            ExitCode::FAILURE
        }
    }
}
