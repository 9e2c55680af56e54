use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::{CallbackSink, SinkError, SinkErrorKind};

/// A sink that hands each signed callback request to a [`CallbackReceiver`].
///
/// Made by [`ChannelSink::new`]; see the [module docs](super) for an example. The channel is
/// bounded: when the receiver falls behind, deliveries wait (back-pressure) rather than pile up in
/// memory. A request taken by the channel is answered `202 Accepted`; once the receiver is
/// dropped, sends fail with [`SinkErrorKind::Closed`].
#[derive(Debug, Clone)]
pub struct ChannelSink {
    sender: mpsc::Sender<Request<Bytes>>,
}

/// The receiving end of a [`ChannelSink`]: yields callback requests exactly as they would be sent.
#[derive(Debug)]
pub struct CallbackReceiver {
    receiver: mpsc::Receiver<Request<Bytes>>,
}

impl ChannelSink {
    /// A sink and its receiver, holding at most `capacity` undelivered requests.
    ///
    /// # Panics
    ///
    /// When `capacity` is zero.
    pub fn new(capacity: usize) -> (ChannelSink, CallbackReceiver) {
        let (sender, receiver) = mpsc::channel(capacity);
        (ChannelSink { sender }, CallbackReceiver { receiver })
    }
}

impl CallbackSink for ChannelSink {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        self.sender.send(request).await.map_err(|_| {
            SinkError::new(SinkErrorKind::Closed, "the CallbackReceiver was dropped")
        })?;
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::ACCEPTED;
        Ok(response)
    }
}

impl CallbackReceiver {
    /// The next callback request; `None` once every sink is dropped and the channel is empty.
    pub async fn recv(&mut self) -> Option<Request<Bytes>> {
        self.receiver.recv().await
    }

    /// The next callback request if one is waiting now.
    pub fn try_recv(&mut self) -> Option<Request<Bytes>> {
        self.receiver.try_recv().ok()
    }
}
