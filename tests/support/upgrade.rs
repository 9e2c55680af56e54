//! An upstream route that takes over its connection (`Upgrade: echo`), and a client for it:
//! what a WebSocket does, without a WebSocket library.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{header, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers `101 Switching Protocols` and echoes every byte that follows.
pub async fn echo(mut request: Request) -> Response {
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let mut io = TokioIo::new(upgraded.await.unwrap());
        let mut buffer = [0u8; 1024];
        loop {
            match io.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => io.write_all(&buffer[..n]).await.unwrap(),
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "echo")
        .body(Body::empty())
        .unwrap()
}

/// Asks `address` to upgrade `GET path`, checks the `101`, then that bytes sent over the joined
/// connection come back.
pub async fn check_echo(address: SocketAddr, path: &str) {
    open_echo(address, path).await;
}

/// [`check_echo`], and the joined connection, still open.
#[allow(dead_code)] // Not every test binary keeps one open.
pub async fn open_echo(address: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "the head ended early"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream
        .write_all(b"ping over the joined connection")
        .await
        .unwrap();
    let mut echoed = [0u8; 31];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echoed in time")
        .unwrap();
    assert_eq!(&echoed, b"ping over the joined connection");
    stream
}
