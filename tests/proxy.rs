//! `proxy::Upstream` behind the layer, served on 127.0.0.1:0 and called with a real client, in
//! front of a real upstream on 127.0.0.1:0.
#![cfg(feature = "proxy")]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request as AxumRequest};
use axum::routing::{any, get, post};
use axum::Router;
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::recv_callback;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_async_request::proxy::{PeerAddr, Upstream};
use tower_async_request::sink::{CallbackReceiver, ChannelSink};
use tower_async_request::AsyncRequestLayer;

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    address
}

/// The request the upstream saw, as JSON: its path and query, and its headers.
async fn inspect(request: AxumRequest) -> axum::Json<Value> {
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .keys()
        .map(|name| {
            let values: Vec<Value> = request
                .headers()
                .get_all(name)
                .iter()
                .map(|v| Value::from(v.to_str().unwrap_or("?")))
                .collect();
            (name.as_str().to_owned(), Value::Array(values))
        })
        .collect();
    axum::Json(json!({
        "method": request.method().as_str(),
        "pathAndQuery": request.uri().path_and_query().map(|p| p.as_str()),
        "headers": headers,
    }))
}

/// Answers with the request body, and headers of its own: one kept, hop-by-hop ones dropped.
async fn echo(headers: HeaderMap, body: Bytes) -> (HeaderMap, Bytes) {
    let mut answer = HeaderMap::new();
    answer.insert("x-upstream", "yes".parse().unwrap());
    answer.insert("x-hop", "drop me".parse().unwrap());
    answer.insert(header::CONNECTION, "x-hop".parse().unwrap());
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        answer.insert(header::CONTENT_TYPE, kind.clone());
    }
    (answer, body)
}

/// The upstream: an API under `/base`.
async fn upstream() -> SocketAddr {
    serve(
        Router::new()
            .route("/base/inspect", any(inspect))
            .route("/base/echo", post(echo))
            .route("/base/upgrade", get(support::upgrade::echo))
            .route(
                "/base/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            ),
    )
    .await
}

/// The proxy: the layer (callbacks to a channel) over `Upstream`, its errors as JSON answers,
/// the client's address passed on as `PeerAddr`.
async fn proxy(upstream: Upstream) -> (SocketAddr, CallbackReceiver) {
    let (sink, callbacks) = ChannelSink::new(64);
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url("https://hooks.example.com/in")
        .signing_key("event-signature-key")
        .sink(sink)
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(layer).service(upstream);
    let front = tower::service_fn(move |mut request: AxumRequest| {
        let service = service.clone();
        async move {
            if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
                let peer = *peer;
                request.extensions_mut().insert(PeerAddr(peer));
            }
            let answer = match service.oneshot(request).await {
                Ok(response) => response.map(Body::new),
                Err(error) => error.into_response().map(Body::new),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    (
        serve(Router::new().fallback_service(front)).await,
        callbacks,
    )
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// A closed port on 127.0.0.1.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn a_sync_request_gets_exactly_what_the_upstream_answers() {
    let upstream = upstream().await;
    let (proxy, _callbacks) =
        proxy(Upstream::new(&format!("http://{upstream}/base")).unwrap()).await;
    // 1 MiB that is not valid UTF-8 anywhere near the chunk boundaries.
    let body: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let request = Request::post(format!("http://{proxy}/echo?x=1"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::from(body.clone()))
        .unwrap();
    let (status, headers, answer) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer.len(), body.len());
    assert!(answer == body, "byte for byte");
    assert_eq!(headers["x-upstream"], "yes");
    assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    assert!(
        !headers.contains_key("x-hop"),
        "a header the upstream's Connection named stays with that hop"
    );
}

#[tokio::test]
async fn the_upstream_sees_the_joined_path_forwarding_headers_and_no_hop_headers() {
    let upstream = upstream().await;
    let (proxy, _callbacks) =
        proxy(Upstream::new(&format!("http://{upstream}/base/")).unwrap()).await;
    let request = Request::get(format!("http://{proxy}/inspect?q=a%20b&r=%2F"))
        .header(header::CONNECTION, "x-hop-header")
        .header("x-hop-header", "1")
        .header("keep-alive", "timeout=5")
        .header(header::TE, "gzip, trailers")
        .header("x-custom", "kept")
        .header(header::FORWARDED, "for=192.0.2.60;proto=https")
        .body(Full::default())
        .unwrap();
    let (status, _, answer) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    let seen = json(&answer);
    assert_eq!(seen["pathAndQuery"], "/base/inspect?q=a%20b&r=%2F");
    let headers = &seen["headers"];
    for gone in ["x-hop-header", "keep-alive", "elements-async-request"] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    // Of `TE`, only `trailers` crosses a proxy.
    assert_eq!(headers["te"], json!(["trailers"]));
    assert_eq!(headers["x-custom"], json!(["kept"]));
    assert_eq!(headers["host"], json!([upstream.to_string()]));
    assert_eq!(
        headers["forwarded"],
        json!([format!(
            "for=192.0.2.60;proto=https, for=127.0.0.1;proto=http;host=\"{proxy}\""
        )])
    );
    assert_eq!(headers["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(headers["x-forwarded-proto"], json!(["http"]));
    assert_eq!(headers["x-forwarded-host"], json!([proxy.to_string()]));
}

#[tokio::test]
async fn an_async_request_is_answered_by_the_upstream_in_its_notification() {
    let upstream = upstream().await;
    let (proxy, mut callbacks) =
        proxy(Upstream::new(&format!("http://{upstream}/base")).unwrap()).await;
    let request = Request::get(format!("http://{proxy}/inspect?n=1"))
        .header("Elements-Async-Request", "true")
        .header(
            "Elements-Async-Callback-Url",
            "https://hooks.example.com/other",
        )
        .body(Full::default())
        .unwrap();
    let (status, _, receipt) = send(request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let event_id = json(&receipt)["eventId"].as_u64().unwrap();
    let callback = recv_callback(&mut callbacks).await;
    assert_eq!(callback.uri(), "https://hooks.example.com/other");
    let notification = json(callback.body());
    assert_eq!(notification["eventId"], event_id);
    assert_eq!(notification["eventStatus"], "completed");
    assert_eq!(notification["statusCode"], 200);
    let seen = &notification["response"];
    assert_eq!(seen["pathAndQuery"], "/base/inspect?n=1");
    for local in ["elements-async-request", "elements-async-callback-url"] {
        assert!(
            seen["headers"].get(local).is_none(),
            "{local} reached the upstream"
        );
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_for_sync_and_a_failed_notification_for_async() {
    let (proxy, mut callbacks) =
        proxy(Upstream::new(&format!("http://{}", closed_port())).unwrap()).await;
    let (status, headers, answer) = send(
        Request::get(format!("http://{proxy}/anything"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let answer = json(&answer);
    assert_eq!(answer["code"], "upstream_unavailable");
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("could not be reached"));

    let request = Request::post(format!("http://{proxy}/anything"))
        .header("Elements-Async-Request", "true")
        .body(Full::from("{}"))
        .unwrap();
    let (status, _, _) = send(request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let notification = json(recv_callback(&mut callbacks).await.body());
    assert_eq!(notification["eventStatus"], "failed", "{notification}");
    assert!(
        notification["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream_unavailable"),
        "{notification}"
    );
}

#[tokio::test]
async fn an_upstream_slower_than_the_timeout_is_504() {
    let upstream = upstream().await;
    let upstream = Upstream::new(&format!("http://{upstream}/base"))
        .unwrap()
        .timeout(Duration::from_millis(200));
    let (proxy, _callbacks) = proxy(upstream).await;
    let (status, _, answer) = send(
        Request::get(format!("http://{proxy}/slow"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(&answer)["code"], "upstream_timeout");
}

#[tokio::test]
async fn an_upgrade_passes_through_and_the_connections_are_joined() {
    let upstream = upstream().await;
    let (proxy, _callbacks) =
        proxy(Upstream::new(&format!("http://{upstream}/base")).unwrap()).await;
    support::upgrade::check_echo(proxy, "/upgrade").await;
}

/// An upstream written by hand: answers every `GET` on a connection with `200 ok` (keep-alive
/// framing), or closes each connection a moment after its first answer, as an upstream whose
/// idle timeout is short does; counts the connections.
async fn counting_upstream(close_after_each: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buffer.drain(..end);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    if close_after_each {
                        // Once the proxy has put the connection back.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return;
                    }
                }
            });
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn requests_one_after_another_share_one_upstream_connection() {
    let (upstream, accepted) = counting_upstream(false).await;
    let (proxy, _callbacks) = proxy(Upstream::new(&format!("http://{upstream}")).unwrap()).await;
    for _ in 0..5 {
        let (status, _, body) = send(
            Request::get(format!("http://{proxy}/again"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_gives_the_request_to_a_new_one() {
    let (upstream, accepted) = counting_upstream(true).await;
    let (proxy, _callbacks) = proxy(Upstream::new(&format!("http://{upstream}")).unwrap()).await;
    for round in 1..=3 {
        let (status, _, body) = send(
            Request::get(format!("http://{proxy}/once"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]), "{round}");
        // The upstream closes the idle connection before the next request.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// An HTTP/1.0 upstream written by hand: answers each connection's request with `200` and a
/// body whose end is the end of the connection.
async fn http10_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = b"HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nuntil closed";
                let _ = stream.write_all(answer).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn an_http10_upstreams_answer_comes_in_the_version_the_client_speaks() {
    let upstream = Upstream::new(&format!("http://{}", http10_upstream().await)).unwrap();
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        let request = Request::get("/old")
            .version(version)
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = upstream.clone().oneshot(request).await.unwrap();
        assert_eq!(response.version(), version);
        assert!(!response.headers().contains_key(header::CONNECTION));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"until closed");
    }
    // An HTTP/1.0 client is answered as HTTP/1.1 by the proxy; its server says it in HTTP/1.0.
    let request = Request::get("/old")
        .version(http::Version::HTTP_10)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = upstream.oneshot(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_11);
}

#[test]
fn upstream_urls_are_checked_when_built() {
    for bad in [
        "nope",
        "ftp://api.example.com",
        "http://u:p@api.example.com",
    ] {
        let error = Upstream::new(bad).unwrap_err();
        assert!(error.to_string().contains("upstream"), "{error}");
    }
    // A private CA for an https upstream: certificates that rustls accepts, or an error.
    let https = Upstream::new("https://api.example.com/v1").unwrap();
    let ca = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tls/ca.pem"
    ))
    .unwrap();
    https.clone().ca_certificates_pem(&ca).unwrap();
    for bad in [
        &b""[..],
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let error = https.clone().ca_certificates_pem(bad).unwrap_err();
        assert!(
            error.to_string().contains("upstream CA certificates"),
            "{error}"
        );
    }
    let mut upstream = Upstream::new("http://127.0.0.1:9/api").unwrap();
    // A plain tower service: always ready.
    let waker = std::task::Waker::noop();
    let ready = Service::<Request<Full<Bytes>>>::poll_ready(
        &mut upstream,
        &mut std::task::Context::from_waker(waker),
    );
    assert!(ready.is_ready());
}
