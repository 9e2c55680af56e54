//! A scriptable webhook receiver on 127.0.0.1:0 for delivery tests.
#![allow(dead_code)] // each test file uses a different part

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use tokio::{net::TcpListener, sync::mpsc};

/// One answer the receiver gives: a status, optional headers, an optional delay before answering.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What the receiver saw.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub answered: StatusCode,
}

impl Hit {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    hits: mpsc::UnboundedSender<Hit>,
    arrivals: mpsc::UnboundedSender<Hit>,
}

/// A receiver that answers from `script` in order, then `200` forever, reporting every hit.
pub struct Receiver {
    pub addr: SocketAddr,
    pub hits: mpsc::UnboundedReceiver<Hit>,
    /// Every request as it arrives, before its answer's delay (with the status it will get).
    pub arrivals: mpsc::UnboundedReceiver<Hit>,
    answers: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    pub async fn start(script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, script).await
    }

    pub async fn start_on(listener: TcpListener, script: Vec<Answer>) -> Self {
        let addr = listener.local_addr().unwrap();
        let (hits_tx, hits) = mpsc::unbounded_channel();
        let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(VecDeque::from(script)));
        let state = Script {
            answers: answers.clone(),
            hits: hits_tx,
            arrivals: arrivals_tx,
        };
        let router = Router::new().route("/hook", post(answer)).with_state(state);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            addr,
            hits,
            arrivals,
            answers,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Forgets the scripted answers left: `200` from now on.
    pub fn answers_clear(&self) {
        self.answers.lock().unwrap().clear();
    }

    /// Queues more scripted answers.
    pub fn then(&self, answers: impl IntoIterator<Item = Answer>) {
        self.answers.lock().unwrap().extend(answers);
    }

    /// The next hit, failing the test after 20 s.
    pub async fn next(&mut self) -> Hit {
        tokio::time::timeout(Duration::from_secs(20), self.hits.recv())
            .await
            .expect("the receiver got nothing within 20 s")
            .expect("the receiver stopped")
    }

    /// The next request to arrive, before it is answered, failing the test after 20 s.
    pub async fn arrival(&mut self) -> Hit {
        tokio::time::timeout(Duration::from_secs(20), self.arrivals.recv())
            .await
            .expect("nothing arrived at the receiver within 20 s")
            .expect("the receiver stopped")
    }
}

async fn answer(State(script): State<Script>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = script
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Answer::status(200));
    let _ = script.arrivals.send(Hit {
        headers: headers.clone(),
        body: body.clone(),
        at: Instant::now(),
        answered: answer.status,
    });
    tokio::time::sleep(answer.delay).await;
    let _ = script.hits.send(Hit {
        headers,
        body,
        at: Instant::now(),
        answered: answer.status,
    });
    let mut response = answer.status.into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// Polls `condition` every 10 ms for up to 20 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
