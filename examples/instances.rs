//! One layer, two customers, on loopback, in one process:
//!
//! 1. two element instances, 30 (Acme) and 31 (Globex), each with its own webhook receiver and its
//!    own keys, sit in an `InstanceMap` that tells requests apart by the `Element <token>` part of
//!    `Authorization: User <secret>, Element <token>`;
//! 2. an axum app serves `POST /hubs/documents/folders/copy` behind
//!    `AsyncRequestLayer::builder().instances(..)`;
//! 3. a client sends an async request as each customer: each receiver gets exactly its own
//!    customer's notification, which verifies with that customer's keys and not with the other's;
//! 4. a request with an unknown element token gets `401 unknown_instance`;
//! 5. the operator rotates Acme's signing key while the app runs: the next callback is signed
//!    with the new key only.
//!
//! Run it with `cargo run --example instances`. It exits 0 when every step checks out, and
//! non-zero with a message saying what went wrong otherwise.

use std::process::ExitCode;
use std::time::Duration;

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post, Json, Router};
use http::{header::AUTHORIZATION, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::mpsc, time::timeout};
use tower_async_request::{
    instance::{element_token, Instance, InstanceMap},
    notification::Notification,
    verify::{ElementsVerifier, StandardWebhooksVerifier},
    AsyncRequestLayer,
};

/// How long any one step may take before the example gives up.
const STEP: Duration = Duration::from_secs(10);

/// The keys one instance's callbacks are signed with.
#[derive(Clone, Copy)]
struct Keys {
    signing_key: &'static str,
    whsec: &'static str,
}

/// One customer: its instance id, the element token its requests carry, and its keys.
struct Tenant {
    id: u64,
    name: &'static str,
    element_token: &'static str,
    keys: Keys,
}

const ACME: Tenant = Tenant {
    id: 30,
    name: "Acme",
    element_token: "acme-element-token",
    keys: Keys {
        signing_key: "acme-signing-key",
        whsec: "whsec_YWNtZS1zdGFuZGFyZC1zZWNyZXQtMDAx",
    },
};

const GLOBEX: Tenant = Tenant {
    id: 31,
    name: "Globex",
    element_token: "globex-element-token",
    keys: Keys {
        signing_key: "globex-signing-key",
        whsec: "whsec_Z2xvYmV4LXN0YW5kYXJkLXNlY3JldC0x",
    },
};

/// Acme's Elements signing key after the rotation in step 5.
const ACME_ROTATED_KEY: &str = "acme-signing-key-2";

/// The endpoint: pretends to copy a folder and reports what it created.
async fn copy_folder(Json(request): Json<Value>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(100)).await; // the "long" work
    let to = request["to"].as_str().unwrap_or("/copy").to_owned();
    Json(json!({ "path": to.to_lowercase(), "type": "folder" }))
}

/// One callback as it reached a receiver: the exact bytes the signatures cover.
struct Callback {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver: passes every callback on, unverified, so `run` can try several keys.
async fn receive(
    State(tx): State<mpsc::Sender<Callback>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let _ = tx.send(Callback { headers, body }).await;
    "ok"
}

async fn serve(router: Router) -> Result<std::net::SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// Starts a receiver; returns its URL and the callbacks it gets.
async fn start_receiver(tenant: &Tenant) -> Result<(String, mpsc::Receiver<Callback>), String> {
    let (tx, rx) = mpsc::channel(8);
    let addr = serve(
        Router::new()
            .route("/webhooks", post(receive))
            .with_state(tx),
    )
    .await
    .map_err(|e| format!("could not start {}'s receiver: {e}", tenant.name))?;
    Ok((format!("http://{addr}/webhooks"), rx))
}

/// A tenant's instance. Its element token is its credential: the `InstanceMap` finds a request's
/// token in `Authorization: User <secret>, Element <token>` and knows whose it is. (Checking the
/// user secret is the app's business, not the layer's.)
fn instance(tenant: &Tenant, callback_url: &str, keys: Keys) -> Result<Instance, String> {
    Instance::builder(tenant.id)
        .credential(tenant.element_token)
        .callback_url(callback_url)
        .signing_key(keys.signing_key)
        .standard_webhooks_secret(keys.whsec)
        .build()
        .map_err(|e| e.to_string())
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends an async copy request with this element token; returns the status and the JSON body.
async fn copy_as(
    client: &HttpClient,
    app: &str,
    element_token: &str,
    callback_url: Option<&str>,
    to: &str,
) -> Result<(StatusCode, Value), String> {
    let authorization = format!("User demo-user-secret, Element {element_token}");
    let body = json!({ "from": "/Reports", "to": to }).to_string();
    println!("→ POST {app}/hubs/documents/folders/copy");
    println!("  Authorization: {authorization}");
    println!("  Elements-Async-Request: True");
    let mut request = http::Request::post(format!("{app}/hubs/documents/folders/copy"))
        .header("content-type", "application/json")
        .header(AUTHORIZATION, authorization)
        .header("Elements-Async-Request", "True");
    if let Some(url) = callback_url {
        println!("  Elements-Async-Callback-Url: {url}");
        request = request.header("Elements-Async-Callback-Url", url);
    }
    println!("  {body}");
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = timeout(STEP, client.request(request))
        .await
        .map_err(|_| "the app did not answer within 10 seconds".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let bytes = timeout(STEP, response.into_body().collect())
        .await
        .map_err(|_| "the answer's body did not arrive within 10 seconds".to_owned())?
        .map_err(|e| format!("answer body failed: {e}"))?
        .to_bytes();
    let answer = serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    println!("← {status} {answer}");
    Ok((status, answer))
}

/// Sends an async request as `tenant` and checks it gets a `202` receipt; returns the event id.
async fn dispatch(
    client: &HttpClient,
    app: &str,
    tenant: &Tenant,
    to: &str,
) -> Result<u64, String> {
    let (status, receipt) = copy_as(client, app, tenant.element_token, None, to).await?;
    match receipt["eventId"].as_u64() {
        Some(event_id)
            if status == StatusCode::ACCEPTED && receipt["eventStatus"] == "dispatched" =>
        {
            Ok(event_id)
        }
        _ => Err(format!(
            "expected a 202 receipt with eventStatus dispatched for {}, got {status} {receipt}",
            tenant.name
        )),
    }
}

/// Waits for the next callback at `tenant`'s receiver and checks it is the notification of event
/// `event_id`, of `tenant`'s instance, completed with `200`.
async fn expect_callback(
    rx: &mut mpsc::Receiver<Callback>,
    tenant: &Tenant,
    event_id: u64,
) -> Result<Callback, String> {
    let callback = timeout(STEP, rx.recv())
        .await
        .map_err(|_| {
            format!(
                "no callback reached {}'s receiver within 10 seconds",
                tenant.name
            )
        })?
        .ok_or_else(|| format!("{}'s receiver stopped", tenant.name))?;
    let notification: Notification = serde_json::from_slice(&callback.body).map_err(|e| {
        format!(
            "{}'s receiver got an unreadable notification: {e}",
            tenant.name
        )
    })?;
    println!(
        "⇐ {}'s receiver: {}",
        tenant.name,
        String::from_utf8_lossy(&callback.body)
    );
    if notification.instance_id != tenant.id || notification.event_id.get() != event_id {
        return Err(format!(
            "{}'s receiver got event {} of instance {}, expected event {event_id} of instance {}",
            tenant.name, notification.event_id, notification.instance_id, tenant.id
        ));
    }
    if notification.status_code != Some(200) {
        return Err(format!(
            "event {event_id} did not complete with 200: {:?}",
            notification.status_code
        ));
    }
    println!(
        "  ✓ event {event_id} of instance {}, statusCode 200",
        tenant.id
    );
    Ok(callback)
}

/// A key and whose it is, for the messages.
#[derive(Clone, Copy)]
struct Named<'a> {
    whose: &'a str,
    key: &'a str,
}

/// Checks that `callback` verifies under `right` and not under `wrong`, in the Elements scheme.
fn check_elements(callback: &Callback, right: Named<'_>, wrong: Named<'_>) -> Result<(), String> {
    let verify = |key: &str| ElementsVerifier::new(key).verify(&callback.headers, &callback.body);
    verify(right.key).map_err(|e| {
        format!(
            "Elements-Webhook-Signature rejected with {}: {e}",
            right.whose
        )
    })?;
    let error = verify(wrong.key).err().ok_or_else(|| {
        format!(
            "Elements-Webhook-Signature also verifies with {}",
            wrong.whose
        )
    })?;
    println!(
        "  ✓ Elements-Webhook-Signature verifies with {}; with {}: {error}",
        right.whose, wrong.whose
    );
    Ok(())
}

/// Checks that `callback` verifies under `right` and not under `wrong`, in Standard Webhooks.
fn check_standard(callback: &Callback, right: Named<'_>, wrong: Named<'_>) -> Result<(), String> {
    let verify = |secret: &str| {
        StandardWebhooksVerifier::new(secret)
            .map(|verifier| verifier.verify(&callback.headers, &callback.body))
            .map_err(|e| e.to_string())
    };
    verify(right.key)?.map_err(|e| {
        format!(
            "Standard Webhooks signature rejected with {}: {e}",
            right.whose
        )
    })?;
    let error = verify(wrong.key)?.err().ok_or_else(|| {
        format!(
            "the Standard Webhooks signature also verifies with {}",
            wrong.whose
        )
    })?;
    println!(
        "  ✓ Standard Webhooks signature verifies with {}; with {}: {error}",
        right.whose, wrong.whose
    );
    Ok(())
}

/// Checks a callback is signed with `own`'s keys in both schemes and with neither of `other`'s.
fn check_signed_by_own_keys(
    callback: &Callback,
    own: &Tenant,
    other: &Tenant,
) -> Result<(), String> {
    let (own_key, other_key) = (
        format!("{}'s key", own.name),
        format!("{}'s key", other.name),
    );
    let (own_secret, other_secret) = (
        format!("{}'s secret", own.name),
        format!("{}'s secret", other.name),
    );
    check_elements(
        callback,
        Named {
            whose: &own_key,
            key: own.keys.signing_key,
        },
        Named {
            whose: &other_key,
            key: other.keys.signing_key,
        },
    )?;
    check_standard(
        callback,
        Named {
            whose: &own_secret,
            key: own.keys.whsec,
        },
        Named {
            whose: &other_secret,
            key: other.keys.whsec,
        },
    )
}

async fn run() -> Result<(), String> {
    println!("== 1. two instances, each with its own receiver and keys");
    let (acme_url, mut acme_rx) = start_receiver(&ACME).await?;
    let (globex_url, mut globex_rx) = start_receiver(&GLOBEX).await?;
    let instances = InstanceMap::by_credential(element_token);
    for (tenant, url) in [(&ACME, &acme_url), (&GLOBEX, &globex_url)] {
        instances.insert(instance(tenant, url, tenant.keys)?);
        println!(
            "instance {} ({}): element token {}, callbacks to {url}",
            tenant.id, tenant.name, tenant.element_token
        );
    }

    println!("\n== 2. the app, one layer for both");
    // No `.allow_private_callbacks(true)`, although both receivers are on loopback: an instance's
    // URL is operator configuration and trusted. Only URLs that requests bring themselves in
    // `Elements-Async-Callback-Url` are held to the public-address rule (step 4 shows one).
    let layer = AsyncRequestLayer::builder()
        .instances(instances.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let handle = layer.handle();
    let app = serve(
        Router::new()
            .route("/hubs/documents/folders/copy", post(copy_folder))
            .layer(layer),
    )
    .await
    .map_err(|e| format!("could not start the app: {e}"))?;
    let app = format!("http://{app}");
    println!("AsyncRequestLayer::builder().instances(instances.clone()) in front of {app}");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    println!("\n== 3. one async request as each customer");
    let acme_event = dispatch(&client, &app, &ACME, "/AcmeCopy").await?;
    let globex_event = dispatch(&client, &app, &GLOBEX, "/GlobexCopy").await?;
    let acme_callback = expect_callback(&mut acme_rx, &ACME, acme_event).await?;
    check_signed_by_own_keys(&acme_callback, &ACME, &GLOBEX)?;
    let globex_callback = expect_callback(&mut globex_rx, &GLOBEX, globex_event).await?;
    check_signed_by_own_keys(&globex_callback, &GLOBEX, &ACME)?;

    println!("\n== 4. refusals");
    let (status, refusal) = copy_as(&client, &app, "initech-element-token", None, "/Nope").await?;
    if status != StatusCode::UNAUTHORIZED || refusal["code"] != "unknown_instance" {
        return Err(format!(
            "expected 401 unknown_instance, got {status} {refusal}"
        ));
    }
    println!("  ✓ an element token no instance has: 401 unknown_instance, nothing started");
    let (status, refusal) =
        copy_as(&client, &app, ACME.element_token, Some(&acme_url), "/Nope").await?;
    if status != StatusCode::BAD_REQUEST || refusal["code"] != "forbidden_callback_url" {
        return Err(format!(
            "expected 400 forbidden_callback_url, got {status} {refusal}"
        ));
    }
    println!("  ✓ the same loopback URL named by the request itself: 400 forbidden_callback_url");

    println!(
        "\n== 5. the operator rotates {}'s signing key while the app runs",
        ACME.name
    );
    let rotated = Keys {
        signing_key: ACME_ROTATED_KEY,
        ..ACME.keys
    };
    if instances
        .insert(instance(&ACME, &acme_url, rotated)?)
        .is_none()
    {
        return Err(format!("instance {} was not in the map", ACME.id));
    }
    println!(
        "instances.insert(instance {} with signing key \"{ACME_ROTATED_KEY}\"): replaces the old one",
        ACME.id
    );
    let event = dispatch(&client, &app, &ACME, "/AcmeCopy2").await?;
    let callback = expect_callback(&mut acme_rx, &ACME, event).await?;
    check_elements(
        &callback,
        Named {
            whose: "the new key",
            key: ACME_ROTATED_KEY,
        },
        Named {
            whose: "the old key",
            key: ACME.keys.signing_key,
        },
    )?;

    // A delivery is counted once the receiver has answered, a moment after it got the callback.
    println!("\n== counters per instance");
    let delivered = |id| handle.instance_metrics(id).map_or(0, |m| m.delivered);
    timeout(STEP, async {
        while delivered(ACME.id) < 2 || delivered(GLOBEX.id) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .map_err(|_| "the deliveries were not counted within 10 seconds".to_owned())?;
    let mut counts = Vec::new();
    for tenant in [&ACME, &GLOBEX] {
        let metrics = handle
            .instance_metrics(tenant.id)
            .ok_or_else(|| format!("no counters for instance {}", tenant.id))?;
        println!(
            "handle.instance_metrics({}): accepted {}, completed {}, delivered {}, dead {}",
            tenant.id, metrics.accepted, metrics.completed, metrics.delivered, metrics.dead
        );
        counts.push((metrics.accepted, metrics.delivered, metrics.dead));
    }
    if counts != [(2, 2, 0), (1, 1, 0)] {
        return Err(format!(
            "expected (accepted, delivered, dead) = (2, 2, 0) for instance 30 and (1, 1, 0) for 31, got {counts:?}"
        ));
    }
    if acme_rx.try_recv().is_ok() || globex_rx.try_recv().is_ok() {
        return Err("a receiver got a callback it should not have".to_owned());
    }
    println!(
        "\n✓ each receiver got exactly its own instance's callbacks, signed with its own keys"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("instances failed: {message}");
            ExitCode::FAILURE
        }
    }
}
