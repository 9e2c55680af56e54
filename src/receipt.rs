//! The receipt: the immediate answer to an accepted async request.
//!
//! `202 Accepted`, `content-type: application/json`, `Elements-Event-Id: <id>`, and the body
//! `{"eventId":N,"eventStatus":"dispatched"}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::header::ELEMENTS_EVENT_ID;
use crate::ids::EventId;

pub(crate) fn receipt(status: StatusCode, event_id: EventId) -> Response<Bytes> {
    let body = format!(r#"{{"eventId":{event_id},"eventStatus":"dispatched"}}"#);
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(ELEMENTS_EVENT_ID, event_id.get().into());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
