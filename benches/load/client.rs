//! The load client: pooled keep-alive connections, client tasks on the client's runtime, and what
//! they send and see.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::sides::Side;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// What to send in one phase.
#[derive(Clone)]
pub(crate) struct Shot {
    pub(crate) uri: Uri,
    pub(crate) payload: Bytes,
    /// `Some(callback URL)` (or `Some("")` for none): an async request.
    pub(crate) asynchronous: Option<String>,
    /// With `--rate`: how often each connection sends.
    pub(crate) period: Option<Duration>,
}

impl Shot {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(callback) = &self.asynchronous {
            builder = builder.header("Elements-Async-Request", "true");
            if !callback.is_empty() {
                builder = builder.header("Elements-Async-Callback-Url", callback.as_str());
            }
        }
        builder.body(Full::new(self.payload.clone())).unwrap()
    }
}

/// What the client tasks of one phase saw.
#[derive(Default)]
pub(crate) struct Tally {
    /// `200` (sync) or `202` (async) answers.
    pub(crate) ok: u64,
    pub(crate) overloaded: u64,
    pub(crate) other_status: u64,
    pub(crate) errors: u64,
    pub(crate) latencies: Vec<Duration>,
    /// eventId and the instant its request was sent (async only).
    pub(crate) events: Vec<(u64, Instant)>,
    pub(crate) first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.overloaded += other.overloaded;
        self.other_status += other.other_status;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        self.events.extend(other.events);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs `concurrency` client tasks until `deadline` or until `limit` requests were sent.
pub(crate) async fn drive(
    client: &HttpClient,
    shot: &Shot,
    concurrency: usize,
    deadline: Instant,
    limit: u64,
) -> Tally {
    let issued = Arc::new(AtomicU64::new(0));
    let expected = if shot.asynchronous.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (client, shot, issued) = (client.clone(), shot.clone(), issued.clone());
            Side::Client.runtime().spawn(async move {
                let mut tally = Tally::default();
                // Paced: the connections take turns, evenly spread over each period.
                let mut ticker = shot.period.map(|period| {
                    let offset = period.mul_f64(task as f64 / concurrency as f64);
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticker
                });
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < limit {
                    if let Some(ticker) = &mut ticker {
                        ticker.tick().await;
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    let sent = Instant::now();
                    let response = match client.request(shot.request()).await {
                        Ok(response) => response,
                        Err(error) => {
                            tally.errors += 1;
                            tally
                                .first_error
                                .get_or_insert_with(|| format!("{error:?}"));
                            continue;
                        }
                    };
                    let (parts, body) = response.into_parts();
                    let body = match body.collect().await {
                        Ok(body) => body.to_bytes(),
                        Err(error) => {
                            tally.errors += 1;
                            tally
                                .first_error
                                .get_or_insert_with(|| format!("{error:?}"));
                            continue;
                        }
                    };
                    let latency = sent.elapsed();
                    if parts.status == expected {
                        tally.ok += 1;
                        tally.latencies.push(latency);
                        if expected == StatusCode::ACCEPTED {
                            let event_id = parts
                                .headers
                                .get("elements-event-id")
                                .and_then(|value| value.to_str().ok())
                                .and_then(|text| text.parse().ok())
                                .expect("a receipt carries Elements-Event-Id");
                            tally.events.push((event_id, sent));
                        }
                    } else if parts.status == StatusCode::SERVICE_UNAVAILABLE {
                        tally.overloaded += 1;
                    } else {
                        tally.other_status += 1;
                        tally.first_error.get_or_insert_with(|| {
                            format!("{} {}", parts.status, String::from_utf8_lossy(&body))
                        });
                    }
                    black_box(body);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("client task"));
    }
    total
}

/// A JSON document of exactly `len` bytes (at least `{"d":""}`, 8 bytes).
pub(crate) fn payload(len: usize) -> Bytes {
    let len = len.max(8);
    let mut text = String::with_capacity(len);
    text.push_str(r#"{"d":""#);
    text.extend(std::iter::repeat_n('x', len - 8));
    text.push_str(r#""}"#);
    Bytes::from(text)
}
