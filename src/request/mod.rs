//! The request: is it synchronous, asynchronous, or refused? The async and `Prefer`
//! headers are read, the callback URL and its address checked, the `Idempotency-Key` read and
//! the request's fingerprint taken, and a refusal (JSON, or a gRPC
//! error for a gRPC call) is the answer when the layer will not take it. Hands on a
//! classification that the [event](crate::event) stage dispatches.

pub(crate) mod address;
pub(crate) mod callback_url;
pub(crate) mod classify;
pub(crate) mod grpc;
pub(crate) mod idempotency;
pub(crate) mod prefer;
pub(crate) mod refusal;

pub use self::address::IpNetwork;
pub use self::callback_url::MAX_CALLBACK_URL_BYTES;
pub use self::idempotency::MAX_IDEMPOTENCY_KEY_LEN;
pub use self::prefer::MAX_PREFER_WAIT;
pub use self::refusal::RefusalCode;
