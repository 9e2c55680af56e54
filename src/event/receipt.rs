//! The receipt: the immediate answer to an accepted async request.
//!
//! `202 Accepted`, `content-type: application/json`, `Elements-Event-Id: <id>`, and the body
//! `{"eventId":N,"eventStatus":"dispatched"}`.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::wire::header::ELEMENTS_EVENT_ID;
use crate::wire::ids::EventId;

pub(crate) fn receipt(status: StatusCode, event_id: EventId) -> Response<Bytes> {
    // The id's digits are written once, into the body, and the header is cut from there; the
    // length is one of twenty: no value of the receipt costs an allocation of its own.
    let mut body = String::with_capacity(HEAD.len() + 20 + TAIL.len());
    body.push_str(HEAD);
    write!(body, "{}", event_id.get()).expect("writing to a String does not fail");
    let digits = HEAD.len()..body.len();
    body.push_str(TAIL);
    let length = CONTENT_LENGTHS[digits.len() - 1].clone();
    let body = Bytes::from(body);
    let id = HeaderValue::from_maybe_shared(body.slice(digits)).expect("digits are header text");
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, length);
    headers.insert(ELEMENTS_EVENT_ID, id);
    response
}

const HEAD: &str = r#"{"eventId":"#;
const TAIL: &str = r#","eventStatus":"dispatched"}"#;

/// The receipt's length for ids of 1 to 20 digits.
const CONTENT_LENGTHS: [HeaderValue; 20] = {
    const fn length(text: &'static str) -> HeaderValue {
        HeaderValue::from_static(text)
    }
    [
        length("40"),
        length("41"),
        length("42"),
        length("43"),
        length("44"),
        length("45"),
        length("46"),
        length("47"),
        length("48"),
        length("49"),
        length("50"),
        length("51"),
        length("52"),
        length("53"),
        length("54"),
        length("55"),
        length("56"),
        length("57"),
        length("58"),
        length("59"),
    ]
};

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
    fn the_length_is_the_body_s_for_every_number_of_digits() {
        // The smallest and the largest id of each number of digits, 1 to 20.
        for digits in 1..=20u32 {
            let smallest = 10u64.pow(digits - 1);
            let largest = 10u64.checked_pow(digits).map_or(u64::MAX, |n| n - 1);
            for id in [smallest, largest] {
                let response = receipt(StatusCode::ACCEPTED, EventId::new(id));
                assert_eq!(
                    response.headers()[header::CONTENT_LENGTH],
                    response.body().len().to_string(),
                    "{id}"
                );
                assert_eq!(response.headers()[ELEMENTS_EVENT_ID], id.to_string());
            }
        }
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
