//! gRPC through `AsyncRequestLayer`, end to end with tonic: a real tonic server
//! (`Server::builder().layer(layer)`) and a real tonic client over a `Channel` on loopback, with a
//! `ChannelSink` capturing the callbacks.
//!
//! - plain calls pass through, OK and error statuses alike, trailers included;
//! - an async call gets an OK answer with the empty default message and the receipt in metadata;
//! - its callback carries the real message (base64) and the call's `grpcStatus`/`grpcMessage`;
//! - refusals are gRPC errors with `elements-error-code` and no `Retry-After`, and the handler is
//!   not called.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::transport::{server::TcpIncoming, Channel, Server};
use tonic::{Code, Status};
use tower::{Layer, ServiceExt};
use tower_async_request::notification::{EventStatus, Notification};
use tower_async_request::sink::{CallbackReceiver, ChannelSink};
use tower_async_request::verify::ElementsVerifier;
use tower_async_request::{AsyncRequestLayer, AsyncRequestLayerBuilder};

use proto::{CopyReply, CopyRequest, Folders, FoldersClient, FoldersServer};

/// Hang guard: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);
const SIGNING_KEY: &str = "event-signature-key";
const CALLBACK_URL: &str = "https://hooks.example.com/grpc";

#[path = "../examples/support/folders.rs"]
#[allow(dead_code)] // the example and the tests use different parts
mod proto;

/// The handler: counts its calls; folder `missing` is `NOT_FOUND`; folder `empty` answers the
/// empty default message; folder `slow` waits for a permit on `gate` (so a test decides when it
/// ends).
struct TestFolders {
    calls: AtomicUsize,
    gate: Semaphore,
}

impl Folders for TestFolders {
    async fn copy(
        &self,
        request: tonic::Request<CopyRequest>,
    ) -> Result<tonic::Response<CopyReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        match request.folder_id.as_str() {
            "missing" => return Err(Status::not_found("no such folder")),
            "slow" => self.gate.acquire().await.expect("gate open").forget(),
            // An OK answer whose message is the empty default.
            "empty" => return Ok(tonic::Response::new(CopyReply::default())),
            _ => {}
        }
        Ok(tonic::Response::new(CopyReply {
            path: request.destination,
            files_copied: 2,
        }))
    }
}

impl Default for TestFolders {
    fn default() -> Self {
        Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

impl TestFolders {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Harness {
    client: FoldersClient<Channel>,
    /// The same connection, for requests at the HTTP level.
    channel: Channel,
    handler: Arc<TestFolders>,
    callbacks: CallbackReceiver,
}

fn layer() -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .instance_id(30)
        .signing_key(SIGNING_KEY)
}

/// A tonic server on loopback behind the layer (callbacks captured by a `ChannelSink`), and a
/// tonic client connected to it.
async fn start(builder: AsyncRequestLayerBuilder) -> Harness {
    let (sink, callbacks) = ChannelSink::new(16);
    let layer = builder.sink(sink).build().expect("a valid configuration");
    let handler = Arc::new(TestFolders::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let serving = Server::builder()
        .layer(layer)
        .add_service(FoldersServer::from_arc(handler.clone()))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(serving);
    let channel = within(
        Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect(),
    )
    .await
    .expect("connect to the gRPC server");
    Harness {
        client: FoldersClient::new(channel.clone()),
        channel,
        handler,
        callbacks,
    }
}

/// Any future, failing (not hanging) after `WAIT`.
async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out: a bug made this wait forever")
}

fn copy(folder_id: &str) -> CopyRequest {
    CopyRequest {
        folder_id: folder_id.into(),
        destination: format!("/{folder_id}Copy"),
    }
}

/// The call with metadata `elements-async-request: true` and, if given, a callback URL.
fn async_call(message: CopyRequest, callback_url: Option<&str>) -> tonic::Request<CopyRequest> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("elements-async-request", "true".parse().unwrap());
    if let Some(url) = callback_url {
        metadata.insert("elements-async-callback-url", url.parse().unwrap());
    }
    request
}

/// A receipt's `elements-event-id`, checking the rest of the receipt on the way.
fn receipt_event_id(receipt: &tonic::Response<CopyReply>) -> u64 {
    let metadata = receipt.metadata();
    assert_eq!(
        metadata
            .get("elements-event-status")
            .map(|v| v.to_str().unwrap()),
        Some("dispatched"),
        "receipt metadata: {metadata:?}"
    );
    assert_eq!(
        receipt.get_ref(),
        &CopyReply::default(),
        "the receipt is the empty default message"
    );
    metadata
        .get("elements-event-id")
        .expect("the receipt names its event")
        .to_str()
        .unwrap()
        .parse()
        .expect("a numeric event id")
}

/// The next callback: checks what every callback has, verifies its signature, and parses it.
async fn next_notification(harness: &mut Harness) -> Notification {
    let callback = next_callback(harness).await;
    serde_json::from_slice(callback.body()).expect("a notification")
}

/// The next callback as it was sent, after checking what every callback has and its signature.
async fn next_callback(harness: &mut Harness) -> http::Request<Bytes> {
    let callback = within(harness.callbacks.recv())
        .await
        .expect("the callback channel closed");
    assert_eq!(callback.method(), http::Method::POST);
    assert_eq!(callback.uri(), CALLBACK_URL);
    assert_eq!(callback.headers()["content-type"], "application/json");
    ElementsVerifier::new(SIGNING_KEY)
        .verify(callback.headers(), callback.body())
        .expect("a valid Elements signature");
    let notification: Notification =
        serde_json::from_slice(callback.body()).expect("a notification");
    assert_eq!(
        callback.headers()["elements-event-id"],
        notification.event_id.get().to_string()
    );
    callback
}

#[tokio::test]
async fn plain_calls_pass_through_with_their_status() {
    let mut harness = start(layer()).await;

    let answer = within(harness.client.copy(copy("TestFolder")))
        .await
        .expect("an OK answer");
    assert_eq!(
        answer.get_ref(),
        &CopyReply {
            path: "/TestFolderCopy".into(),
            files_copied: 2
        }
    );
    assert!(answer.metadata().get("elements-event-id").is_none());

    // A non-OK status from the handler reaches the client as that status.
    let status = within(harness.client.copy(copy("missing")))
        .await
        .expect_err("the handler's NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such folder");
    assert!(status.metadata().get("elements-error-code").is_none());

    // `elements-async-request: false` is a plain call too.
    let mut request = tonic::Request::new(copy("TestFolder"));
    request
        .metadata_mut()
        .insert("elements-async-request", "false".parse().unwrap());
    let answer = within(harness.client.copy(request)).await.expect("OK");
    assert_eq!(answer.get_ref().path, "/TestFolderCopy");

    assert_eq!(harness.handler.calls(), 3);
    assert!(harness.callbacks.try_recv().is_none(), "no callbacks");
}

/// One length-prefixed, uncompressed gRPC message.
fn frame(message: &impl Message) -> Bytes {
    let bytes = message.encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    framed.into()
}

/// The same at the HTTP level, to see the trailers themselves: the layer forwards the inner
/// response's `grpc-status` trailer (and a trailers-only error's headers) unchanged.
#[tokio::test]
async fn plain_calls_keep_their_trailers_on_the_wire() {
    let (sink, _callbacks) = ChannelSink::new(16);
    let layer = layer().sink(sink).build().unwrap();
    let service = layer.layer(FoldersServer::from_arc(Arc::new(TestFolders::default())));
    let request = |message: &CopyRequest| {
        http::Request::post(format!("http://localhost{}", proto::COPY_PATH))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(Full::new(frame(message))))
            .unwrap()
    };

    let response = within(service.clone().oneshot(request(&copy("TestFolder"))))
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let collected = within(response.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    let expected = CopyReply {
        path: "/TestFolderCopy".into(),
        files_copied: 2,
    };
    assert_eq!(collected.to_bytes(), frame(&expected));

    let response = within(service.oneshot(request(&copy("missing"))))
        .await
        .unwrap();
    let headers = response.headers().clone();
    let collected = within(response.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or(headers.get("grpc-status"))
        .expect("a grpc-status in the trailers or a trailers-only answer");
    assert_eq!(status, "5");
}

#[tokio::test]
async fn async_call_gets_an_ok_receipt_and_the_callback_carries_the_message() {
    let mut harness = start(layer()).await;
    let plain = within(harness.client.copy(copy("TestFolder")))
        .await
        .expect("the plain answer")
        .into_inner();

    let receipt = within(
        harness
            .client
            .copy(async_call(copy("TestFolder"), Some(CALLBACK_URL))),
    )
    .await
    .expect("an OK receipt");
    let event_id = receipt_event_id(&receipt);

    let notification = next_notification(&mut harness).await;
    assert_eq!(notification.event_id.get(), event_id);
    assert_eq!(notification.instance_id, 30);
    assert_eq!(notification.event_status, EventStatus::Completed);
    assert_eq!(notification.status_code, Some(200));
    assert_eq!(notification.grpc_status, Some(0));
    assert_eq!(notification.grpc_message, None);
    assert_eq!(notification.response_encoding.as_deref(), Some("base64"));
    assert!(notification.error.is_none());
    let bytes = notification.response_bytes().expect("a response");
    let message = CopyReply::decode(bytes.as_slice()).expect("the response message");
    assert_eq!(message, plain, "the callback carries the real answer");
    assert_eq!(harness.handler.calls(), 2);
}

#[tokio::test]
async fn async_call_failing_in_the_handler_reports_its_status_in_the_callback() {
    let mut harness = start(layer()).await;

    let receipt = within(
        harness
            .client
            .copy(async_call(copy("missing"), Some(CALLBACK_URL))),
    )
    .await
    .expect("the receipt is OK even though the work will fail");
    let event_id = receipt_event_id(&receipt);

    let notification = next_notification(&mut harness).await;
    assert_eq!(notification.event_id.get(), event_id);
    assert_eq!(notification.event_status, EventStatus::Completed);
    assert_eq!(notification.status_code, Some(200));
    assert_eq!(notification.grpc_status, Some(5), "{notification:?}");
    assert_eq!(notification.grpc_message.as_deref(), Some("no such folder"));
    assert_eq!(
        notification.response_bytes().as_deref(),
        Some(&[][..]),
        "no message: {notification:?}"
    );
    assert_eq!(harness.handler.calls(), 1);
}

#[tokio::test]
async fn an_empty_answer_message_comes_back_empty() {
    let mut harness = start(layer()).await;
    let receipt = within(
        harness
            .client
            .copy(async_call(copy("empty"), Some(CALLBACK_URL))),
    )
    .await
    .expect("an OK receipt");
    let event_id = receipt_event_id(&receipt);

    let callback = next_callback(&mut harness).await;
    // Zero message bytes: `"response":null` as for any empty body, and so no `responseEncoding`.
    let sent: serde_json::Value = serde_json::from_slice(callback.body()).unwrap();
    assert_eq!(sent["response"], serde_json::Value::Null, "{sent}");
    assert!(sent.as_object().unwrap().contains_key("response"), "{sent}");
    assert!(sent.get("responseEncoding").is_none(), "{sent}");
    let notification: Notification = serde_json::from_slice(callback.body()).unwrap();
    assert_eq!(notification.event_id.get(), event_id);
    assert_eq!(notification.grpc_status, Some(0));
    // `Notification::response_bytes` gives the empty message back, which decodes to the default.
    let bytes = notification.response_bytes().expect("a response");
    assert!(bytes.is_empty(), "{notification:?}");
    assert_eq!(
        CopyReply::decode(bytes.as_slice()).unwrap(),
        CopyReply::default()
    );
}

/// A refused async call as the tonic client sees it.
async fn refused(harness: &mut Harness, request: tonic::Request<CopyRequest>) -> Status {
    within(harness.client.copy(request))
        .await
        .expect_err("a refusal")
}

fn error_code(status: &Status) -> &str {
    status
        .metadata()
        .get("elements-error-code")
        .unwrap_or_else(|| panic!("no elements-error-code in {status:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn refusals_are_grpc_errors_and_the_handler_is_not_called() {
    let mut harness = start(layer()).await;

    let status = refused(
        &mut harness,
        async_call(copy("TestFolder"), Some("ftp://x")),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_code(&status), "invalid_callback_url");
    assert!(!status.message().is_empty());

    // No callback URL in the metadata and no default.
    let status = refused(&mut harness, async_call(copy("TestFolder"), None)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_code(&status), "missing_callback_url");

    // A loopback callback without `allow_private_callbacks`.
    let status = refused(
        &mut harness,
        async_call(copy("TestFolder"), Some("http://127.0.0.1:9/hook")),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_code(&status), "forbidden_callback_url");

    let mut request = tonic::Request::new(copy("TestFolder"));
    request
        .metadata_mut()
        .insert("elements-async-request", "maybe".parse().unwrap());
    let status = refused(&mut harness, request).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_code(&status), "invalid_async_header");

    assert_eq!(harness.handler.calls(), 0, "no refusal reaches the handler");
    assert!(harness.callbacks.try_recv().is_none(), "no callbacks");
}

#[tokio::test]
async fn an_async_request_over_the_body_limit_is_resource_exhausted() {
    let mut harness = start(layer().max_request_bytes(64)).await;
    let mut big = copy("TestFolder");
    big.destination = "/".repeat(200);

    let status = refused(&mut harness, async_call(big.clone(), Some(CALLBACK_URL))).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_code(&status), "request_too_large");
    assert_eq!(harness.handler.calls(), 0);

    // The limit is for async requests only.
    within(harness.client.copy(big))
        .await
        .expect("a plain call");
    assert_eq!(harness.handler.calls(), 1);
    assert!(harness.callbacks.try_recv().is_none(), "no callbacks");
}

/// The receipt does not wait for the work: the first call's job is still blocked on the gate
/// when its receipt arrives.
#[tokio::test]
async fn overloaded_is_unavailable_and_work_in_flight_still_completes() {
    let mut harness = start(layer().max_in_flight(1)).await;

    // The one slot: a job that waits until the test opens the gate.
    let receipt = within(
        harness
            .client
            .copy(async_call(copy("slow"), Some(CALLBACK_URL))),
    )
    .await
    .expect("the first async call is accepted");
    let event_id = receipt_event_id(&receipt);

    let status = refused(
        &mut harness,
        async_call(copy("TestFolder"), Some(CALLBACK_URL)),
    )
    .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status), "overloaded");
    // Unlike the HTTP refusal, the gRPC one carries no `Retry-After`.
    assert!(status.metadata().get("retry-after").is_none(), "{status:?}");

    // Synchronous calls are never limited.
    within(harness.client.copy(copy("TestFolder")))
        .await
        .expect("a plain call while overloaded");

    harness.handler.gate.add_permits(1);
    let notification = next_notification(&mut harness).await;
    assert_eq!(notification.event_id.get(), event_id);
    assert_eq!(notification.grpc_status, Some(0));
    let message = CopyReply::decode(notification.response_bytes().unwrap().as_slice()).unwrap();
    assert_eq!(message.path, "/slowCopy");
    // The plain call and the slow job reached the handler; the refused call did not.
    assert_eq!(harness.handler.calls(), 2);
}

/// An async call whose request body never arrives is `DEADLINE_EXCEEDED`, sent over the same
/// HTTP/2 connection a tonic client uses (a tonic client itself always sends its whole message).
#[tokio::test]
async fn an_async_call_whose_body_does_not_arrive_is_deadline_exceeded() {
    use tower::Service;
    let mut harness = start(layer().request_body_timeout(Duration::from_millis(100))).await;
    let request = http::Request::post(proto::COPY_PATH)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("elements-async-request", "true")
        .header("elements-async-callback-url", CALLBACK_URL)
        .body(tonic::body::Body::new(Stalled))
        .unwrap();
    let ready = within(harness.channel.ready())
        .await
        .expect("a ready channel");
    let response = within(ready.call(request)).await.expect("an answer");
    assert_eq!(response.status(), http::StatusCode::OK);
    let status = Status::from_header_map(response.headers()).expect("a trailers-only error");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_code(&status), "request_body_timeout");
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(harness.handler.calls(), 0);
    assert!(harness.callbacks.try_recv().is_none(), "no callbacks");
}

/// A request body that never yields a frame nor ends.
struct Stalled;

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test]
async fn an_async_call_naming_no_instance_is_unauthenticated() {
    use tower_async_request::instance::{Instance, InstanceMap};
    // Metadata `x-instance: N` names instance N.
    let instances =
        InstanceMap::new(|parts| parts.headers.get("x-instance")?.to_str().ok()?.parse().ok());
    instances.insert(
        Instance::builder(30)
            .callback_url(CALLBACK_URL)
            .signing_key(SIGNING_KEY)
            .build()
            .unwrap(),
    );
    let mut harness = start(AsyncRequestLayer::builder().instances(instances)).await;

    let status = refused(&mut harness, async_call(copy("TestFolder"), None)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(error_code(&status), "unknown_instance");
    assert!(status.metadata().get("retry-after").is_none());
    assert_eq!(harness.handler.calls(), 0);

    // Naming the instance, the same call is taken and notified as that instance.
    let mut request = async_call(copy("TestFolder"), None);
    request
        .metadata_mut()
        .insert("x-instance", "30".parse().unwrap());
    let receipt = within(harness.client.copy(request))
        .await
        .expect("a receipt");
    let event_id = receipt_event_id(&receipt);
    let notification = next_notification(&mut harness).await;
    assert_eq!(notification.event_id.get(), event_id);
    assert_eq!(notification.instance_id, 30);
    assert_eq!(harness.handler.calls(), 1);
}

/// `idempotency-key` metadata: the same call again gets the first receipt, replayed, and the
/// handler runs once; the key with another message is `FAILED_PRECONDITION`
/// (`idempotency_key_mismatch`).
#[tokio::test]
async fn an_async_call_sent_again_with_its_idempotency_key_gets_the_first_receipt() {
    let mut harness = start(layer()).await;
    let keyed = |folder: &str| {
        let mut request = async_call(copy(folder), Some(CALLBACK_URL));
        request
            .metadata_mut()
            .insert("idempotency-key", "\"copy-7\"".parse().unwrap());
        request
    };
    let first = within(harness.client.copy(keyed("TestFolder")))
        .await
        .expect("an OK receipt");
    let event_id = receipt_event_id(&first);
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let again = within(harness.client.copy(keyed("TestFolder")))
        .await
        .expect("an OK receipt");
    assert_eq!(receipt_event_id(&again), event_id);
    assert_eq!(
        again
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let mismatch = refused(&mut harness, keyed("OtherFolder")).await;
    assert_eq!(mismatch.code(), tonic::Code::FailedPrecondition);
    assert_eq!(error_code(&mismatch), "idempotency_key_mismatch");

    assert_eq!(
        next_notification(&mut harness).await.event_id.get(),
        event_id
    );
    assert_eq!(harness.handler.calls(), 1);
    assert!(
        harness.callbacks.try_recv().is_none(),
        "one notification in all"
    );
}
