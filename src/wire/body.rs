//! Body types: what the inner service receives and what the layer returns.
//!
//! Both are enums we own, so the inner body's error type survives and trailers pass through
//! unchanged (gRPC carries its status in trailers).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use pin_project_lite::pin_project;

use crate::error::BoxError;

pin_project! {
    /// The request body the inner service receives.
    ///
    /// On the synchronous path it is the client's body, streamed untouched. On the async path the
    /// layer has read the whole body before sending the receipt (a connection may close once the
    /// client has its `202`), so the inner service gets it from memory, trailers included.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    #[derive(Debug)]
    enum RequestKind<B> {
        Streaming { #[pin] body: B },
        // Boxed, so wrapping a streaming body adds little or nothing to the request's size: the
        // synchronous path moves the request, and small moves are cheaper ones.
        Buffered { body: Box<OwnBody> },
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn streaming(body: B) -> Self {
        Self {
            kind: RequestKind::Streaming { body },
        }
    }

    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: RequestKind::Buffered {
                body: Box::new(OwnBody::new(data, trailers)),
            },
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Streaming { body } => body.poll_frame(cx),
            RequestKindProj::Buffered { body } => Poll::Ready(body.next_frame().map(Ok)),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Streaming { body } => body.is_end_stream(),
            RequestKind::Buffered { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Streaming { body } => body.size_hint(),
            RequestKind::Buffered { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The response body of [`AsyncRequest`](crate::layer::AsyncRequest): the inner service's body
    /// (data and trailers forwarded unchanged), or the layer's own receipt or refusal.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    #[derive(Debug)]
    enum ResponseKind<B> {
        Inner { #[pin] body: B },
        // Boxed for the same reason as `RequestKind::Buffered`: every synchronous response is
        // moved into this enum, and the layer's own answers are the rare case.
        Own { body: Box<OwnBody> },
    }
}

/// An empty body, so layers that make their own responses (such as tower-http's `TimeoutLayer`)
/// can sit directly outside [`AsyncRequest`](crate::layer::AsyncRequest).
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::own(OwnBody::default())
    }
}

impl<B> ResponseBody<B> {
    #[inline]
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner { body },
        }
    }

    pub(crate) fn own(body: OwnBody) -> Self {
        Self {
            kind: ResponseKind::Own {
                body: Box::new(body),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => body.poll_frame(cx),
            ResponseKindProj::Own { body } => Poll::Ready(body.next_frame().map(Ok)),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Own { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Own { body } => body.size_hint(),
        }
    }
}

/// A body the layer holds in memory: its data, then its trailers, if any.
#[derive(Debug, Default)]
pub(crate) struct OwnBody {
    data: Option<Bytes>,
    // Boxed: trailers are rare (gRPC receipts) and `ResponseBody` should stay small.
    trailers: Option<Box<HeaderMap>>,
}

impl OwnBody {
    pub(crate) fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers: trailers.map(Box::new),
        }
    }

    fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(|t| Frame::trailers(*t)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl From<Bytes> for OwnBody {
    fn from(data: Bytes) -> Self {
        Self::new(data, None)
    }
}

impl Body for OwnBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().next_frame().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        OwnBody::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        OwnBody::size_hint(self)
    }
}

/// Reads `body` to its end, at most `limit` bytes (past it, the error is a
/// [`LengthLimitError`](http_body_util::LengthLimitError)): its bytes and its trailers.
///
/// What `Limited::collect` does, without a list of chunks to join: a body that arrives as one
/// chunk, as most small ones do, is kept as it came, and several are joined into one buffer.
pub(crate) async fn read_to_end<B>(
    body: B,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(Limited::new(body, limit));
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let mut data = match frame?.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    match &mut trailers {
                        Some(trailers) => trailers.extend(more),
                        None => trailers = Some(more),
                    }
                }
                continue;
            }
        };
        if !data.has_remaining() {
            continue;
        }
        if let Some(joined) = &mut joined {
            joined.put(data);
        } else if first.is_empty() {
            first = data.copy_to_bytes(data.remaining());
        } else {
            // Room for what is known to be coming, within the limit.
            let size = (first.len() + data.remaining())
                .saturating_add(body.size_hint().lower() as usize)
                .min(limit);
            let mut both = BytesMut::with_capacity(size);
            both.put(std::mem::take(&mut first));
            both.put(data);
            joined = Some(both);
        }
    }
    Ok((joined.map_or(first, BytesMut::freeze), trailers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn response_body_forwards_inner_data_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        // A body with data and trailers, standing in for a gRPC response body.
        let inner: RequestBody<Full<Bytes>> =
            RequestBody::buffered(Bytes::from_static(b"abc"), Some(trailers.clone()));
        let collected = ResponseBody::inner(inner).collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "abc");
    }

    #[tokio::test]
    async fn buffered_request_body_replays_data_then_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().unwrap());
        let body: RequestBody<Full<Bytes>> =
            RequestBody::buffered(Bytes::from_static(b"payload"), Some(trailers.clone()));
        assert_eq!(body.size_hint().exact(), Some(7));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "payload");
    }

    #[test]
    fn wrapping_a_boxed_body_grows_neither_request_nor_response() {
        // The synchronous path moves every request into `RequestBody` and every response into
        // `ResponseBody`: both must stay as small as the body they wrap (the layer's own variants
        // are boxed), or each request pays larger copies.
        type Boxed = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
        assert_eq!(
            std::mem::size_of::<http::Request<RequestBody<Boxed>>>(),
            std::mem::size_of::<http::Request<Boxed>>()
        );
        assert_eq!(
            std::mem::size_of::<http::Response<ResponseBody<Boxed>>>(),
            std::mem::size_of::<http::Response<Boxed>>()
        );
    }

    #[tokio::test]
    async fn own_body_is_sent_once() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::own(Bytes::from_static(b"{}").into());
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
        let empty: ResponseBody<Full<Bytes>> = ResponseBody::own(Bytes::new().into());
        assert!(empty.is_end_stream());
    }

    /// A body that yields the frames it was given, each in its own poll.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(data: &[&'static [u8]], trailers: &[(&'static str, &'static str)]) -> Frames {
        let mut frames: std::collections::VecDeque<_> = data
            .iter()
            .map(|chunk| Frame::data(Bytes::from_static(chunk)))
            .collect();
        for (name, value) in trailers {
            let mut map = HeaderMap::new();
            map.insert(*name, value.parse().unwrap());
            frames.push_back(Frame::trailers(map));
        }
        Frames(frames)
    }

    #[tokio::test]
    async fn one_chunk_is_kept_as_it_came() {
        static CHUNK: &[u8] = b"{\"a\":1}";
        let (bytes, trailers) = read_to_end(frames(&[b"", CHUNK, b""], &[]), 64)
            .await
            .unwrap();
        assert_eq!(bytes, CHUNK);
        assert_eq!(bytes.as_ptr(), CHUNK.as_ptr(), "not copied");
        assert!(trailers.is_none());
    }

    #[tokio::test]
    async fn several_chunks_are_joined_in_order_and_trailers_merged() {
        let body = frames(&[b"ab", b"", b"cd", b"e"], &[("x-a", "1"), ("x-b", "2")]);
        let (bytes, trailers) = read_to_end(body, 5).await.unwrap();
        assert_eq!(bytes, "abcde");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-a"], "1");
        assert_eq!(trailers["x-b"], "2");
    }

    #[tokio::test]
    async fn an_empty_body_is_empty_and_one_byte_past_the_limit_is_refused() {
        let (bytes, trailers) = read_to_end(frames(&[], &[]), 0).await.unwrap();
        assert!(bytes.is_empty() && trailers.is_none());
        let error = read_to_end(frames(&[b"ab", b"cd"], &[]), 3)
            .await
            .unwrap_err();
        assert!(error.is::<http_body_util::LengthLimitError>(), "{error}");
    }
}
