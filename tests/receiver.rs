//! The axum extractor for receivers: verified callbacks in, forged or malformed ones refused.
#![cfg(feature = "axum")]

use axum::{body::Body, routing::post, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_async_request::receiver::{Callback, CallbackVerifier};
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};

const KEY: &str = "event-signature-key";
const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn receiver_app(verifier: CallbackVerifier) -> Router {
    Router::new()
        .route(
            "/hook",
            post(|callback: Callback| async move {
                format!(
                    "{} {:?}",
                    callback.notification.event_id, callback.notification.event_status
                )
            }),
        )
        .with_state(verifier)
}

/// A real signed callback, made by the layer and captured before it goes on the wire.
async fn signed_callback(elements: bool, standard: bool) -> http::Request<Bytes> {
    let (sink, mut callbacks) = ChannelSink::new(1);
    let mut builder = AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/hook")
        .sink(sink);
    if elements {
        builder = builder.signing_key(KEY);
    }
    if standard {
        builder = builder.standard_webhooks_secret(WHSEC);
    }
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(builder.build().unwrap());
    let request = Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.oneshot(request).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    callbacks.recv().await.unwrap()
}

async fn deliver(
    receiver: &Router,
    callback: http::Request<Bytes>,
) -> (StatusCode, serde_json::Value, String) {
    let response = receiver
        .clone()
        .oneshot(callback.map(Body::from))
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    )
}

fn both() -> CallbackVerifier {
    CallbackVerifier::new()
        .elements_key(KEY)
        .standard_webhooks_secret(WHSEC)
        .unwrap()
}

#[tokio::test]
async fn a_callback_signed_with_either_scheme_reaches_the_handler_parsed() {
    let receiver = receiver_app(both());
    for (elements, standard) in [(true, false), (false, true), (true, true)] {
        let callback = signed_callback(elements, standard).await;
        let event_id: serde_json::Value = serde_json::from_slice(callback.body()).unwrap();
        let (status, _, text) = deliver(&receiver, callback).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, format!("{} Completed", event_id["eventId"]));
    }
}

#[tokio::test]
async fn a_forged_or_unsigned_callback_is_401() {
    let receiver = receiver_app(both());
    let mut forged = signed_callback(true, true).await;
    *forged.body_mut() = Bytes::from(
        forged
            .body()
            .to_vec()
            .into_iter()
            .rev()
            .collect::<Vec<u8>>(),
    );
    let (status, body, _) = deliver(&receiver, forged).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_signature"))
    );

    let unsigned = signed_callback(false, false).await;
    let (status, body, _) = deliver(&receiver, unsigned).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_signature"))
    );

    let only_other_key = receiver_app(CallbackVerifier::new().elements_key("another-key"));
    let (status, _, _) = deliver(&only_other_key, signed_callback(true, false).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_signed_body_that_is_not_a_notification_is_400_and_a_huge_one_413() {
    use hmac::{Hmac, Mac};
    let body = br#"{"hello":"world"}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(body);
    use base64::Engine;
    let signature = format!(
        "sha256={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let request = Request::post("/hook")
        .header("elements-webhook-signature", signature)
        .body(Bytes::from_static(body))
        .unwrap();
    let (status, json, _) = deliver(&receiver_app(both()), request).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_notification"))
    );

    let small = receiver_app(both().max_bytes(16));
    let (status, json, _) = deliver(&small, signed_callback(true, false).await).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("callback_too_large"))
    );
}
