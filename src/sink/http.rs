use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{CallbackSink, SinkError, SinkErrorKind};

/// Default time one attempt may take, connect to last byte of the answer.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of a receiver's answer body is kept (for logs and error reports).
const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// The default sink: posts callbacks over HTTP/1.1 or HTTPS.
///
/// One pooled keep-alive client per sink (clones share it); TLS through rustls with the bundled
/// Mozilla roots, certificates always verified; redirects are never followed (a `3xx` is reported
/// like any other status); each attempt ends after [`HttpSink::timeout`] (default 15 s). At most
/// 4 KiB of the receiver's answer body is read.
#[derive(Clone)]
pub struct HttpSink {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for HttpSink {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpSink {
    /// A sink with the default timeout and connection pool.
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(DEFAULT_ATTEMPT_TIMEOUT));
        let https = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("ring supports the default TLS versions")
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(https);
        Self {
            client,
            timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// How long one attempt may take, from connecting to the last byte of the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn exchange(&self, request: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        let response = self
            .client
            .request(request.map(Full::new))
            .await
            .map_err(|error| {
                let kind = if error.is_connect() {
                    SinkErrorKind::Connect
                } else {
                    SinkErrorKind::Protocol
                };
                SinkError::new(kind, error)
            })?;
        let (parts, mut body) = response.into_parts();
        let mut kept = BytesMut::new();
        while kept.len() < MAX_ANSWER_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = MAX_ANSWER_BYTES - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                // The status already arrived; a broken answer body does not undo it.
                Some(Err(_)) | None => break,
            }
        }
        Ok(Response::from_parts(parts, kept.freeze()))
    }
}

impl CallbackSink for HttpSink {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::new(
                SinkErrorKind::Timeout,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }
}
