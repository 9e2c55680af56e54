//! The resolved configuration every clone of the layer and service shares through one `Arc`.

use http::{HeaderName, StatusCode, Uri};

use crate::delivery::Delivery;
use crate::ids::IdGenerator;

#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) async_header: HeaderName,
    pub(crate) callback_header: HeaderName,
    pub(crate) receipt_status: StatusCode,
    pub(crate) instance_id: u64,
    pub(crate) default_callback: Option<Uri>,
    pub(crate) allow_private_callbacks: bool,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) delivery: Delivery,
    pub(crate) ids: &'static IdGenerator,
}
