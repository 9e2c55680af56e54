//! What `tonic-build` would generate from:
//!
//! ```proto
//! package documents;
//! service Folders { rpc Copy(CopyRequest) returns (CopyReply); }
//! message CopyRequest { string folder_id = 1; string destination = 2; }
//! message CopyReply { string path = 1; uint32 files_copied = 2; }
//! ```
//!
//! trimmed to what `examples/tonic.rs` and `tests/grpc.rs` use (both include this file).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{http, Body, BoxFuture, Bytes, Service, StdError};

#[derive(Clone, PartialEq, prost::Message)]
pub struct CopyRequest {
    #[prost(string, tag = "1")]
    pub folder_id: String,
    #[prost(string, tag = "2")]
    pub destination: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CopyReply {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint32, tag = "2")]
    pub files_copied: u32,
}

pub const COPY_PATH: &str = "/documents.Folders/Copy";

/// The service trait the handler implements.
pub trait Folders: Send + Sync + 'static {
    fn copy(
        &self,
        request: tonic::Request<CopyRequest>,
    ) -> impl Future<Output = Result<tonic::Response<CopyReply>, tonic::Status>> + Send;
}

/// The server: routes the method path to `tonic::server::Grpc::unary` with the prost codec.
pub struct FoldersServer<T>(Arc<T>);

impl<T> FoldersServer<T> {
    pub fn new(handler: T) -> Self {
        Self(Arc::new(handler))
    }

    pub fn from_arc(handler: Arc<T>) -> Self {
        Self(handler)
    }
}

impl<T> Clone for FoldersServer<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> tonic::server::NamedService for FoldersServer<T> {
    const NAME: &'static str = "documents.Folders";
}

impl<T, B> Service<http::Request<B>> for FoldersServer<T>
where
    T: Folders,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != COPY_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        struct CopySvc<T>(Arc<T>);
        impl<T: Folders> tonic::server::UnaryService<CopyRequest> for CopySvc<T> {
            type Response = CopyReply;
            type Future = BoxFuture<tonic::Response<CopyReply>, tonic::Status>;
            fn call(&mut self, request: tonic::Request<CopyRequest>) -> Self::Future {
                let handler = Arc::clone(&self.0);
                Box::pin(async move { handler.copy(request).await })
            }
        }
        let method = CopySvc(Arc::clone(&self.0));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The client: one unary method on `tonic::client::Grpc`.
#[derive(Clone)]
pub struct FoldersClient<T>(tonic::client::Grpc<T>);

impl<T> FoldersClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    pub fn new(inner: T) -> Self {
        Self(tonic::client::Grpc::new(inner))
    }

    pub async fn copy(
        &mut self,
        request: impl tonic::IntoRequest<CopyRequest>,
    ) -> Result<tonic::Response<CopyReply>, tonic::Status> {
        self.0
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {}", e.into())))?;
        let path = http::uri::PathAndQuery::from_static(COPY_PATH);
        let codec = tonic_prost::ProstCodec::default();
        self.0.unary(request.into_request(), path, codec).await
    }
}
