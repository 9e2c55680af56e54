use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::connection::{Connection, Connections};

pin_project! {
    /// The body of an [`Upstream`](super::Upstream) answer: the upstream's own, streamed as it
    /// arrives, or the proxy's JSON error.
    #[derive(Debug)]
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Upstream { #[pin] body: Incoming },
        // The upstream's, on a connection this body drives until its end, then gives back.
        Driven {
            #[pin] body: Incoming,
            connection: Option<Connection>,
            connections: Arc<Connections>,
        },
        Own { body: Option<Bytes> },
    }
}

impl ProxyBody {
    pub(super) fn upstream(body: Incoming) -> Self {
        Self {
            kind: Kind::Upstream { body },
        }
    }

    pub(super) fn driven(
        body: Incoming,
        connection: Connection,
        connections: Arc<Connections>,
    ) -> Self {
        let mut this = Self {
            kind: Kind::Driven {
                body,
                connection: Some(connection),
                connections,
            },
        };
        this.release_at_end();
        this
    }

    /// Gives the connection back once nothing more will be read on it (an empty answer ends
    /// before its first poll).
    fn release_at_end(&mut self) {
        if let Kind::Driven {
            body,
            connection,
            connections,
        } = &mut self.kind
        {
            if body.is_end_stream() {
                if let Some(connection) = connection.take() {
                    connections.release(connection);
                }
            }
        }
    }

    pub(super) fn own(body: Bytes) -> Self {
        Self {
            kind: Kind::Own { body: Some(body) },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project().kind.project() {
            KindProj::Upstream { body } => body.poll_frame(cx),
            KindProj::Driven {
                mut body,
                connection,
                connections,
            } => {
                if let Some(connection) = connection.as_mut() {
                    connection.drive(cx);
                }
                let polled = body.as_mut().poll_frame(cx);
                let ended = match &polled {
                    // A body that knows its length says it ended with its last frame, before
                    // it is asked again (and it may not be): the connection goes back now.
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Ready(None) => true,
                    // Broken off: the connection closes with this body.
                    Poll::Ready(Some(Err(_))) => {
                        *connection = None;
                        false
                    }
                    Poll::Pending => false,
                };
                if ended {
                    if let Some(connection) = connection.take() {
                        connections.release(connection);
                    }
                }
                polled
            }
            KindProj::Own { body } => Poll::Ready(body.take().map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } | Kind::Driven { body, .. } => body.is_end_stream(),
            Kind::Own { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } | Kind::Driven { body, .. } => body.size_hint(),
            Kind::Own { body } => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
