//! The receiver: plain HTTP/1.1 over TCP, written by hand so that it can reset a connection
//! after reading a request. It answers `200` unless a spell says otherwise, and records every
//! notification it read with what it answered.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::now_ms;
use crate::schedule::Spell;

/// What the receiver answered a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// `200` at once: the notification is taken.
    Accepted,
    Unavailable,
    /// `200`, after the nodes' attempt timeout. Taken all the same: the receiver said yes, and a
    /// node stopped (SIGSTOP) while waiting reads that `200` before its timeout when it
    /// continues; a node that timed out sends it again (a re-send).
    Late,
    Reset,
}

#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) at_ms: u64,
    pub(crate) answered: Answered,
    pub(crate) body: bytes::Bytes,
}

#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    spell: Arc<AtomicU8>,
    pub(crate) hits: Arc<Mutex<Vec<Hit>>>,
}

const NONE: u8 = 0;

fn code(spell: Option<Spell>) -> u8 {
    match spell {
        None => NONE,
        Some(Spell::Unavailable) => 1,
        Some(Spell::Slow) => 2,
        Some(Spell::Reset) => 3,
    }
}

impl Answered {
    /// Whether the receiver answered `200`: it has the notification.
    pub(crate) fn taken(self) -> bool {
        matches!(self, Answered::Accepted | Answered::Late)
    }
}

impl Receiver {
    /// `slow`: how long a slow answer waits (beyond the nodes' attempt timeout).
    pub(crate) async fn start(slow: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        let receiver = Receiver {
            url: format!("http://{address}/hook"),
            spell: Arc::new(AtomicU8::new(NONE)),
            hits: Arc::default(),
        };
        let shared = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, shared.clone(), slow));
            }
        });
        receiver
    }

    pub(crate) fn set(&self, spell: Option<Spell>) {
        self.spell.store(code(spell), Ordering::SeqCst);
    }
}

/// Requests on one keep-alive connection, until it closes or a spell resets it.
async fn serve(stream: TcpStream, receiver: Receiver, slow: Duration) {
    let mut stream = BufReader::new(stream);
    loop {
        let Some(body) = read_request(&mut stream).await else {
            return;
        };
        let spell = receiver.spell.load(Ordering::SeqCst);
        let answered = match spell {
            1 => Answered::Unavailable,
            2 => Answered::Late,
            3 => Answered::Reset,
            _ => Answered::Accepted,
        };
        receiver.hits.lock().unwrap().push(Hit {
            at_ms: now_ms(),
            answered,
            body,
        });
        let reply: &[u8] = match answered {
            Answered::Reset => {
                // SO_LINGER 0: close sends RST instead of FIN.
                let _ = stream.get_ref().set_zero_linger();
                return;
            }
            Answered::Unavailable => {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
            }
            Answered::Late => {
                tokio::time::sleep(slow).await;
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
            }
            Answered::Accepted => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        };
        if stream.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

/// One request's body (`content-length` framing, which the crate's sink uses); `None` when the
/// connection closes or the request cannot be read.
async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<bytes::Bytes> {
    let mut length = 0usize;
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            if first {
                continue;
            }
            break;
        }
        first = false;
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(body.into())
}
