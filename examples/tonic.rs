//! Async gRPC calls with tonic, on loopback, in one process:
//!
//! 1. a tonic server serves `documents.Folders/Copy` behind `AsyncRequestLayer`
//!    (`Server::builder().layer(layer)`);
//! 2. a webhook receiver (axum) verifies each callback and parses its notification;
//! 3. a tonic client makes (a) a plain call, (b) the same call with metadata
//!    `elements-async-request: true`, which is answered at once with an empty message and the
//!    receipt in response metadata while the real message arrives in the callback, and (c) an
//!    async call the handler fails with `NOT_FOUND`, whose status the callback carries.
//!
//! There is no `protoc` here, so the messages and the service/client glue that `tonic-build`
//! would generate are written by hand below (module `proto`).
//!
//! Run it with `cargo run --example tonic`. It exits 0 when every step checks out, and non-zero
//! with a message saying what went wrong otherwise.

use std::process::ExitCode;
use std::time::Duration;

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post, Router};
use base64::{engine::general_purpose::STANDARD, Engine};
use prost::Message;
use tokio::{net::TcpListener, sync::mpsc};
use tonic::transport::{server::TcpIncoming, Channel, Server};
use tower_async_request::{
    notification::Notification, verify::ElementsVerifier, AsyncRequestLayer,
};

use proto::{CopyReply, CopyRequest, Folders, FoldersClient, FoldersServer};

const SIGNING_KEY: &str = "event-signature-key";
/// How long any call or callback may take before the example gives up.
const TIMEOUT: Duration = Duration::from_secs(10);

#[path = "support/folders.rs"]
#[allow(dead_code)] // the example and the tests use different parts
mod proto;

/// The handler: "copies" a folder after a little work; an unknown folder is `NOT_FOUND`.
struct CopyFolders;

impl Folders for CopyFolders {
    async fn copy(
        &self,
        request: tonic::Request<CopyRequest>,
    ) -> Result<tonic::Response<CopyReply>, tonic::Status> {
        let request = request.into_inner();
        tokio::time::sleep(Duration::from_millis(200)).await; // the "long" work
        if request.folder_id == "missing" {
            return Err(tonic::Status::not_found("no such folder"));
        }
        Ok(tonic::Response::new(CopyReply {
            path: request.destination,
            files_copied: 2,
        }))
    }
}

/// The webhook receiver: verifies the signature and passes the notification on.
async fn receive(
    State(tx): State<mpsc::Sender<Result<Notification, String>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    let received = ElementsVerifier::new(SIGNING_KEY)
        .verify(&headers, &body)
        .map_err(|e| format!("signature check failed: {e}"))
        .and_then(|()| {
            serde_json::from_slice::<Notification>(&body)
                .map_err(|e| format!("unreadable notification: {e}"))
        });
    let status = match received {
        Ok(_) => axum::http::StatusCode::NO_CONTENT,
        Err(_) => axum::http::StatusCode::BAD_REQUEST,
    };
    let _ = tx.send(received).await;
    status
}

/// Metadata as `key: value` pairs, for printing.
fn show(metadata: &tonic::metadata::MetadataMap, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|key| Some(format!("{key}: {}", metadata.get(*key)?.to_str().ok()?)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `elements-event-id` of a receipt.
fn receipt_event_id<T>(receipt: &tonic::Response<T>) -> Option<u64> {
    let value = receipt.metadata().get("elements-event-id")?;
    value.to_str().ok()?.parse().ok()
}

/// An optional number for printing.
fn shown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
}

/// An async copy call: the request with the two metadata entries.
fn async_call(
    request: CopyRequest,
    callback_url: &str,
) -> Result<tonic::Request<CopyRequest>, String> {
    let mut request = tonic::Request::new(request);
    let metadata = request.metadata_mut();
    metadata.insert(
        "elements-async-request",
        "true".parse().map_err(|_| "bad value")?,
    );
    metadata.insert(
        "elements-async-callback-url",
        callback_url.parse().map_err(|_| "bad callback URL")?,
    );
    Ok(request)
}

/// Makes one call, giving up after `TIMEOUT`.
async fn call(
    client: &mut FoldersClient<Channel>,
    request: impl tonic::IntoRequest<CopyRequest>,
    what: &str,
) -> Result<tonic::Response<CopyReply>, String> {
    tokio::time::timeout(TIMEOUT, client.copy(request))
        .await
        .map_err(|_| format!("{what}: no answer within {TIMEOUT:?}"))?
        .map_err(|status| format!("{what} failed: {status}"))
}

async fn next_callback(
    rx: &mut mpsc::Receiver<Result<Notification, String>>,
) -> Result<Notification, String> {
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .map_err(|_| format!("no callback arrived within {TIMEOUT:?}"))?
        .ok_or("the receiver stopped")?
}

async fn run() -> Result<(), String> {
    // 2. The webhook receiver.
    let (tx, mut rx) = mpsc::channel(8);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("could not start the receiver: {e}"))?;
    let receiver = listener.local_addr().map_err(|e| e.to_string())?;
    let hooks = Router::new().route("/hook", post(receive)).with_state(tx);
    tokio::spawn(async move { axum::serve(listener, hooks).await });

    // 1. The tonic server, with the layer in one line.
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .signing_key(SIGNING_KEY)
        .allow_private_callbacks(true) // the receiver is on loopback in this demo
        .build()
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("could not start the gRPC server: {e}"))?;
    let server = listener.local_addr().map_err(|e| e.to_string())?;
    let serving = Server::builder()
        .layer(layer)
        .add_service(FoldersServer::new(CopyFolders))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move {
        if let Err(error) = serving.await {
            eprintln!("gRPC server: {error}");
        }
    });

    // 3. The client.
    let channel = Channel::from_shared(format!("http://{server}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("could not connect to the gRPC server: {e}"))?;
    let mut client = FoldersClient::new(channel);
    let callback_url = format!("http://{receiver}/hook");
    let copy = CopyRequest {
        folder_id: "TestFolder".into(),
        destination: "/TestFolderCopy".into(),
    };

    // (a) A plain call passes straight through.
    println!("(a) plain call  Copy({copy:?})");
    let plain = call(&mut client, copy.clone(), "the plain call")
        .await?
        .into_inner();
    println!("    answer      {plain:?}");

    // (b) The same call, async.
    println!("\n(b) async call  Copy({copy:?})");
    println!("    elements-async-request: true, elements-async-callback-url: {callback_url}");
    let receipt = call(
        &mut client,
        async_call(copy.clone(), &callback_url)?,
        "the async call",
    )
    .await?;
    let keys = ["elements-event-id", "elements-event-status"];
    println!(
        "    receipt     {} (at once)",
        show(receipt.metadata(), &keys)
    );
    println!(
        "    answer      {:?} (the empty default message)",
        receipt.get_ref()
    );
    let event_id =
        receipt_event_id(&receipt).ok_or("the receipt has no elements-event-id metadata")?;
    if receipt
        .metadata()
        .get("elements-event-status")
        .and_then(|v| v.to_str().ok())
        != Some("dispatched")
    {
        return Err("the receipt does not say elements-event-status: dispatched".into());
    }
    if *receipt.get_ref() != CopyReply::default() {
        return Err(format!(
            "the receipt's message is not empty: {:?}",
            receipt.get_ref()
        ));
    }

    let notification = next_callback(&mut rx).await?;
    if notification.event_id.get() != event_id {
        return Err(format!("a callback for another event: {notification:?}"));
    }
    let bytes = match (
        &notification.response,
        notification.response_encoding.as_deref(),
    ) {
        (Some(serde_json::Value::String(text)), Some("base64")) => STANDARD
            .decode(text)
            .map_err(|e| format!("response is not base64: {e}"))?,
        _ => return Err(format!("expected a base64 response, got {notification:?}")),
    };
    let message = CopyReply::decode(bytes.as_slice())
        .map_err(|e| format!("response is not a CopyReply: {e}"))?;
    println!(
        "    callback    signature verified; eventId {}, statusCode {}, grpcStatus {}",
        notification.event_id.get(),
        shown(notification.status_code),
        shown(notification.grpc_status),
    );
    println!(
        "    response    {} (base64 of the message bytes)",
        notification
            .response
            .as_ref()
            .and_then(|r| r.as_str())
            .unwrap_or_default()
    );
    println!("    decoded     {message:?}");
    if notification.grpc_status != Some(0) || notification.status_code != Some(200) {
        return Err(format!(
            "expected statusCode 200 and grpcStatus 0, got {notification:?}"
        ));
    }
    if message != plain {
        return Err(format!(
            "the callback's message {message:?} differs from the plain answer {plain:?}"
        ));
    }
    println!("    = the plain call's answer");

    // (c) An async call the handler answers with NOT_FOUND.
    let missing = CopyRequest {
        folder_id: "missing".into(),
        destination: "/Nowhere".into(),
    };
    println!("\n(c) async call  Copy({missing:?})");
    let receipt = call(
        &mut client,
        async_call(missing, &callback_url)?,
        "the async call",
    )
    .await?;
    println!("    receipt     {}", show(receipt.metadata(), &keys));
    let notification = next_callback(&mut rx).await?;
    println!(
        "    callback    signature verified; eventId {}, grpcStatus {}, grpcMessage {:?}",
        notification.event_id.get(),
        shown(notification.grpc_status),
        notification.grpc_message.as_deref().unwrap_or_default(),
    );
    if Some(notification.event_id.get()) != receipt_event_id(&receipt)
        || notification.grpc_status != Some(5)
        || notification.grpc_message.as_deref() != Some("no such folder")
    {
        return Err(format!(
            "expected grpcStatus 5 with \"no such folder\", got {notification:?}"
        ));
    }
    println!("\nall checks passed");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
