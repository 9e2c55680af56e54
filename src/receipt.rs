//! The receipt: the immediate answer to an accepted async request.
//!
//! `202 Accepted`, `content-type: application/json`, `Elements-Event-Id: <id>`, and the body
//! `{"eventId":N,"eventStatus":"dispatched"}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::header::ELEMENTS_EVENT_ID;
use crate::ids::EventId;

pub(crate) fn receipt(status: StatusCode, event_id: EventId) -> Response<Bytes> {
    // The id's digits are written once, for the header, and copied into the body from there.
    let id = HeaderValue::from(event_id.get());
    let (head, tail) = (br#"{"eventId":"#, br#","eventStatus":"dispatched"}"#);
    let mut body = Vec::with_capacity(head.len() + id.len() + tail.len());
    body.extend_from_slice(head);
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(tail);
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(ELEMENTS_EVENT_ID, id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_id_is_written_whole() {
        let response = receipt(StatusCode::ACCEPTED, EventId::new(u64::MAX));
        assert_eq!(
            response.body(),
            r#"{"eventId":18446744073709551615,"eventStatus":"dispatched"}"#
        );
    }

    #[test]
    fn receipt_is_202_json_with_the_event_id() {
        let response = receipt(StatusCode::ACCEPTED, EventId::new(1028));
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[ELEMENTS_EVENT_ID], "1028");
        assert_eq!(
            response.body(),
            r#"{"eventId":1028,"eventStatus":"dispatched"}"#
        );
    }
}
