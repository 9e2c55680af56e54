//! The load client: async requests at a fixed rate, round-robin over the nodes, each with a
//! sequence number in its body and as its `Idempotency-Key`, a job of 0–2 s, and its answer
//! recorded. Afterwards, each request without a receipt is sent again under the same key.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::now_ms;
use crate::schedule::Rng;

/// A client waits this long for an answer (longer than a stopped node's longest stop, so the
/// requests it holds are answered once it continues).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Receipt {
        event_id: u64,
        location: String,
        replayed: bool,
    },
    /// Another status, with the refusal's code.
    Refused { status: u16, code: String },
    /// No answer: the connection failed, or none came within the timeout.
    Silent(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) seq: u64,
    pub(crate) node: usize,
    pub(crate) job_ms: u64,
    pub(crate) sent_ms: u64,
    pub(crate) answered_ms: u64,
    pub(crate) answer: Answer,
}

/// The nodes' current addresses (a restarted node listens on a new port).
pub(crate) type Addresses = Arc<RwLock<Vec<String>>>;

#[derive(Clone)]
pub(crate) struct LoadClient {
    http: Client<HttpConnector, Full<Bytes>>,
    addresses: Addresses,
    pub(crate) sent: Arc<Mutex<Vec<Sent>>>,
}

impl LoadClient {
    pub(crate) fn new(addresses: Addresses) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        LoadClient {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector),
            addresses,
            sent: Arc::default(),
        }
    }

    /// Sends `rate` requests per second until `until_ms`; returns when every answer is in.
    pub(crate) async fn run(&self, rate: u64, until_ms: u64, seed: u64) {
        let mut rng = Rng::new(seed ^ 0x00C1_1E47);
        let started = now_ms();
        let mut seq = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = now_ms();
            if now >= until_ms {
                break;
            }
            let due = (now - started) * rate / 1000;
            let nodes = self.addresses.read().unwrap().len();
            while seq < due {
                seq += 1;
                // A third of the jobs end at once; the rest take up to 2 s.
                let job_ms = match rng.between(0, 2) {
                    0 => 0,
                    _ => rng.between(1, 2_000),
                };
                let node = seq as usize % nodes;
                let client = self.clone();
                tasks.spawn(async move {
                    let sent = client.send(seq, node, job_ms).await;
                    client.sent.lock().unwrap().push(sent);
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One request to `node`.
    pub(crate) async fn send(&self, seq: u64, node: usize, job_ms: u64) -> Sent {
        let address = self.addresses.read().unwrap()[node].clone();
        let sent_ms = now_ms();
        let request = http::Request::post(format!("http://{address}/work?ms={job_ms}"))
            .header("Elements-Async-Request", "true")
            .header("Idempotency-Key", format!("\"chaos-{seq}\""))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!("{{\"seq\":{seq}}}"))))
            .expect("a request");
        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => Answer::Silent("timeout".into()),
        };
        Sent {
            seq,
            node,
            job_ms,
            sent_ms,
            answered_ms: now_ms(),
            answer,
        }
    }

    async fn exchange(&self, request: http::Request<Full<Bytes>>) -> Answer {
        let response = match self.http.request(request).await {
            Ok(response) => response,
            Err(error) => return Answer::Silent(error_chain(&error)),
        };
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => return Answer::Silent(format!("body: {error}")),
        };
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match (status, json["eventId"].as_u64()) {
            (202, Some(event_id)) => Answer::Receipt {
                event_id,
                location,
                replayed,
            },
            _ => Answer::Refused {
                status,
                code: json["code"].as_str().unwrap_or("?").to_owned(),
            },
        }
    }
}

/// A node's answer to an event's status URL.
#[derive(Debug, Clone)]
pub(crate) struct StatusRead {
    pub(crate) event_id: u64,
    pub(crate) node: usize,
    pub(crate) status: u16,
    pub(crate) body: serde_json::Value,
}

impl LoadClient {
    /// Reads each `(event, status URL)` from every node, 16 at a time.
    pub(crate) async fn read_statuses(&self, sample: Vec<(u64, String)>) -> Vec<StatusRead> {
        let nodes = self.addresses.read().unwrap().clone();
        let reads: Vec<(u64, usize, String)> = sample
            .into_iter()
            .flat_map(|(id, location)| {
                nodes
                    .iter()
                    .enumerate()
                    .map(move |(node, address)| (id, node, format!("http://{address}{location}")))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut results = Vec::new();
        for chunk in reads.chunks(16) {
            let mut tasks = tokio::task::JoinSet::new();
            for (event_id, node, url) in chunk.iter().cloned() {
                let http = self.http.clone();
                tasks.spawn(async move {
                    let request = http::Request::get(url)
                        .body(Full::new(Bytes::new()))
                        .expect("a request");
                    let (status, body) = match http.request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let body = response.into_body().collect().await.map(|b| b.to_bytes());
                            let body = body
                                .ok()
                                .and_then(|b| serde_json::from_slice(&b).ok())
                                .unwrap_or_default();
                            (status, body)
                        }
                        Err(error) => (0, serde_json::Value::String(error_chain(&error))),
                    };
                    StatusRead {
                        event_id,
                        node,
                        status,
                        body,
                    }
                });
            }
            while let Some(read) = tasks.join_next().await {
                results.extend(read.ok());
            }
        }
        results
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
