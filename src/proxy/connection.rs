//! Keep-alive connections to the upstream that no task of their own drives: the request using
//! one polls it, while it waits for the answer's head and while the answer's body streams back
//! (see [`ProxyBody`](super::ProxyBody)), so a request and its answer cross no channel between
//! tasks. An idle connection is polled by nobody; one the upstream closed meanwhile gives the
//! unsent request back and the next is tried.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::BoxError;

pub(super) type OutBody = UnsyncBoxBody<Bytes, BoxError>;

type Driver = http1::Connection<TokioIo<TcpStream>, OutBody>;

/// Most idle connections kept.
const MAX_IDLE: usize = 256;

/// How long an idle connection is kept (an upstream that closed it meanwhile is found out when
/// it is next used).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The idle connections to one upstream.
#[derive(Debug)]
pub(super) struct Connections {
    /// `host:port`, to connect to.
    address: String,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

/// One connection: the handle requests are sent on, and the connection itself, which must be
/// polled for anything to happen on it.
pub(super) struct Connection {
    sender: SendRequest<OutBody>,
    driver: Pin<Box<Driver>>,
    ended: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Lets the connection read and write what it can.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && self.driver.as_mut().poll(cx).is_ready() {
            self.ended = true;
        }
    }

    fn usable(&self) -> bool {
        !self.ended && !self.sender.is_closed()
    }
}

impl Connections {
    pub(super) fn new(address: String) -> Self {
        Self {
            address,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Keeps `connection` for the next request, if it can carry one.
    pub(super) fn release(&self, connection: Connection) {
        if connection.usable() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push((connection, Instant::now()));
            }
        }
    }

    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The most recently used first: the oldest ones age out.
        let now = Instant::now();
        while let Some((connection, since)) = idle.pop() {
            if connection.usable() && now.duration_since(since) < IDLE_TIMEOUT {
                return Some(connection);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Connection, BoxError> {
        let stream = TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Connection {
            sender,
            driver: Box::pin(driver),
            ended: false,
        })
    }

    /// Sends `request` (in origin form, with its `Host`) on an idle connection or a new one;
    /// the answer's head and the connection its body still comes on.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut request: Request<OutBody>,
    ) -> Result<(Response<Incoming>, Connection), BoxError> {
        loop {
            let (mut connection, reused) = match self.checkout() {
                Some(connection) => (connection, true),
                None => (self.connect().await?, false),
            };
            let ready = poll_fn(|cx| {
                connection.drive(cx);
                if connection.ended {
                    return Poll::Ready(false);
                }
                connection.sender.poll_ready(cx).map(|ready| ready.is_ok())
            })
            .await;
            if !ready {
                if reused {
                    continue;
                }
                return Err("the upstream closed a new connection".into());
            }
            let mut answer = std::pin::pin!(connection.sender.try_send_request(request));
            let answered = poll_fn(|cx| {
                connection.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answered {
                Ok(response) => return Ok((response, connection)),
                Err(mut error) => match error.take_message() {
                    // Closed before a byte was written: the next connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }
}
