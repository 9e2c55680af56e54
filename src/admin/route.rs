//! Which admin route a request asks for, read strictly: unknown paths, methods, query parameters
//! and malformed values are refused with a stable code rather than guessed at.

use http::{Method, StatusCode, Uri};

use crate::store::DeadLetterQuery;
use crate::wire::ids::{EventId, NotificationId, MAX_SAFE_ID};

/// Dead letters a page lists, and a bulk redelivery starts, unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 100;
/// Most dead letters a page lists, and a bulk redelivery starts.
pub const MAX_PAGE: usize = 1000;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Event(EventId),
    DeadLetters(DeadLetterQuery),
    Redeliver(NotificationId),
    RedeliverAll { instance: Option<u64>, limit: usize },
    Receivers(ReceiverQuery),
    EnableReceiver { id: String, redeliver: bool },
    Health,
}

/// Which receivers a page lists: of one instance or all, those with an id above `after`, at
/// most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReceiverQuery {
    pub(super) instance: Option<u64>,
    pub(super) after: Option<String>,
    pub(super) limit: usize,
}

/// A request the admin service will not serve: status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// The methods the path takes, for `405`'s `Allow`.
    pub(super) allow: Option<&'static str>,
}

impl Refused {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("This route takes {allow} only."),
            )
        }
    }

    fn invalid_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }
}

/// The route `method` and `uri` ask for (the path relative to where the service is mounted).
pub(super) fn route(method: &Method, uri: &Uri) -> Result<Route, Refused> {
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let (allow, route) = match segments.as_slice() {
        ["events", id] => ("GET", Route::Event(EventId::new(id_from(id)?))),
        ["dead-letters"] => {
            let query = Query::parse(uri.query(), &["instance", "after", "limit"])?;
            let route = Route::DeadLetters(DeadLetterQuery {
                instance: query.number("instance")?,
                after: query.number("after")?.map(NotificationId::new),
                limit: query.limit()?,
            });
            ("GET", route)
        }
        ["dead-letters", "redeliver"] => {
            let query = Query::parse(uri.query(), &["instance", "limit"])?;
            let route = Route::RedeliverAll {
                instance: query.number("instance")?,
                limit: query.limit()?,
            };
            ("POST", route)
        }
        ["dead-letters", id, "redeliver"] => {
            ("POST", Route::Redeliver(NotificationId::new(id_from(id)?)))
        }
        ["receivers"] => {
            let query = Query::parse(uri.query(), &["instance", "after", "limit"])?;
            let route = Route::Receivers(ReceiverQuery {
                instance: query.number("instance")?,
                after: query
                    .value("after")
                    .map(|after| receiver_id_from(after, "after="))
                    .transpose()?,
                limit: query.limit()?,
            });
            ("GET", route)
        }
        ["receivers", id, "enable"] => {
            let query = Query::parse(uri.query(), &["redeliver"])?;
            let redeliver = match query.value("redeliver") {
                None => false,
                Some("since") => true,
                Some(other) => {
                    return Err(Refused::invalid_query(format!(
                        "redeliver={:?}: the one value is \"since\" (the dead letters its \
                         disabling made).",
                        clip(other)
                    )))
                }
            };
            let id = receiver_id_from(id, "")?;
            ("POST", Route::EnableReceiver { id, redeliver })
        }
        ["health"] => ("GET", Route::Health),
        _ => {
            return Err(Refused::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "No admin route has this path.",
            ))
        }
    };
    let allowed = method.as_str() == allow || (allow == "GET" && method == Method::HEAD);
    if !allowed {
        return Err(Refused::method_not_allowed(allow));
    }
    // Routes without parameters take no query either: a typo must not pass silently.
    if !matches!(
        route,
        Route::DeadLetters(_)
            | Route::RedeliverAll { .. }
            | Route::Receivers(_)
            | Route::EnableReceiver { .. }
    ) {
        Query::parse(uri.query(), &[])?;
    }
    Ok(route)
}

/// An event or notification id in a path: decimal digits only, at most 2^53 − 1.
fn id_from(text: &str) -> Result<u64, Refused> {
    parse_number(text).ok_or_else(|| {
        Refused::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!(
                "{:?} is not an id (a decimal integer from 0 to {MAX_SAFE_ID}).",
                clip(text)
            ),
        )
    })
}

/// A receiver id: 16 lowercase hex digits.
fn receiver_id_from(text: &str, what: &str) -> Result<String, Refused> {
    if text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Ok(text.to_owned());
    }
    Err(Refused::new(
        StatusCode::BAD_REQUEST,
        "invalid_id",
        format!(
            "{what}{:?} is not a receiver id (16 lowercase hex digits).",
            clip(text)
        ),
    ))
}

fn parse_number(text: &str) -> Option<u64> {
    // `u64::from_str` also takes a leading `+`; ids are plain digits.
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| *n <= MAX_SAFE_ID)
}

/// At most 64 characters of what a client sent, for a message.
fn clip(text: &str) -> &str {
    text.char_indices()
        .nth(64)
        .map_or(text, |(end, _)| &text[..end])
}

/// A query's parameters, each known to the route and given at most once; an empty value is the
/// same as none.
struct Query<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Query<'a> {
    fn parse(query: Option<&'a str>, known: &[&str]) -> Result<Self, Refused> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !known.contains(&name) {
                let expected = if known.is_empty() {
                    "this route takes none".to_owned()
                } else {
                    format!("expected {}", known.join(", "))
                };
                return Err(Refused::invalid_query(format!(
                    "Unknown query parameter {:?}: {expected}.",
                    clip(name)
                )));
            }
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(Refused::invalid_query(format!(
                    "The query parameter {name:?} is given twice."
                )));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    fn value(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(n, v)| *n == name && !v.is_empty())
            .map(|(_, v)| *v)
    }

    fn number(&self, name: &str) -> Result<Option<u64>, Refused> {
        self.value(name)
            .map(|value| {
                parse_number(value).ok_or_else(|| {
                    Refused::invalid_query(format!(
                        "{name}={:?} is not a decimal integer from 0 to {MAX_SAFE_ID}.",
                        clip(value)
                    ))
                })
            })
            .transpose()
    }

    fn limit(&self) -> Result<usize, Refused> {
        match self.number("limit")? {
            None => Ok(DEFAULT_PAGE),
            Some(limit) if (1..=MAX_PAGE as u64).contains(&limit) => Ok(limit as usize),
            Some(limit) => Err(Refused::invalid_query(format!(
                "limit={limit} is out of range: from 1 to {MAX_PAGE}."
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> Result<Route, Refused> {
        route(&Method::GET, &uri.parse().unwrap())
    }

    fn post(uri: &str) -> Result<Route, Refused> {
        route(&Method::POST, &uri.parse().unwrap())
    }

    fn code(result: Result<Route, Refused>) -> (u16, &'static str) {
        let refused = result.unwrap_err();
        (refused.status.as_u16(), refused.code)
    }

    #[test]
    fn routes_are_read_with_their_parameters() {
        assert_eq!(get("/events/1028"), Ok(Route::Event(EventId::new(1028))));
        assert_eq!(get("/health"), Ok(Route::Health));
        assert_eq!(
            get("/dead-letters?instance=30&after=1084&limit=5"),
            Ok(Route::DeadLetters(DeadLetterQuery {
                instance: Some(30),
                after: Some(NotificationId::new(1084)),
                limit: 5,
            }))
        );
        assert_eq!(
            get("/dead-letters?instance=&after=&limit="),
            Ok(Route::DeadLetters(DeadLetterQuery {
                instance: None,
                after: None,
                limit: DEFAULT_PAGE,
            })),
            "empty values are no values"
        );
        assert_eq!(
            post("/dead-letters/1084/redeliver"),
            Ok(Route::Redeliver(NotificationId::new(1084)))
        );
        assert_eq!(
            post("/dead-letters/redeliver?instance=31"),
            Ok(Route::RedeliverAll {
                instance: Some(31),
                limit: DEFAULT_PAGE
            })
        );
        assert_eq!(
            route(&Method::HEAD, &"/health".parse().unwrap()),
            Ok(Route::Health)
        );
    }

    #[test]
    fn bad_ids_and_query_values_are_400() {
        for bad in [
            "/events/abc",
            "/events/+5",
            "/events/-1",
            "/events/9007199254740992",
            "/events/99999999999999999999999",
            "/events/1%32",
        ] {
            assert_eq!(code(get(bad)), (400, "invalid_id"), "{bad}");
        }
        assert_eq!(code(post("/dead-letters/x/redeliver")), (400, "invalid_id"));
        for bad in [
            "/dead-letters?limit=0",
            "/dead-letters?limit=1001",
            "/dead-letters?limit=ten",
            "/dead-letters?after=-3",
            "/dead-letters?instance=1&instance=2",
            "/dead-letters?page=2",
            "/events/5?x=1",
            "/health?verbose",
        ] {
            assert_eq!(code(get(bad)), (400, "invalid_query"), "{bad}");
        }
        assert_eq!(
            code(post("/dead-letters/redeliver?after=5")),
            (400, "invalid_query")
        );
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        for bad in [
            "/",
            "/events",
            "/events/1/x",
            "/dead-letters/1",
            "/metrics",
            "/health/",
        ] {
            assert_eq!(code(get(bad)), (404, "not_found"), "{bad}");
        }
        let refused = post("/events/1").unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.allow), (405, Some("GET")));
        let refused = get("/dead-letters/1/redeliver").unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.allow),
            (405, Some("POST"))
        );
        assert_eq!(
            code(route(&Method::DELETE, &"/dead-letters".parse().unwrap())).0,
            405
        );
    }

    #[test]
    fn messages_quote_at_most_64_characters_of_input() {
        let long = format!("/events/{}", "9".repeat(500));
        let refused = get(&long).unwrap_err();
        assert!(refused.message.len() < 150, "{}", refused.message);
    }
}
