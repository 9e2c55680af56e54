//! The operator's view over HTTP: events with their delivery attempts, dead letters, redelivery
//! and health, as a tower [`Service`](tower_service::Service) to mount behind your own
//! authentication (it has none: anyone who reaches it can read every event and replay
//! notifications).
//!
//! | route | answer |
//! |---|---|
//! | `GET /events/{eventId}` | the event: status, target, notification body, attempts (last 20, with status, error, duration) |
//! | `GET /dead-letters?instance=&after=&limit=` | one page of dead letters by notification id, `next` is the cursor of the following page |
//! | `POST /dead-letters/{notificationId}/redeliver` | `202`: the dead letter is pending again, on a fresh schedule |
//! | `POST /dead-letters/redeliver?instance=&limit=` | `202`: up to `limit` (default 100, at most 1000) dead letters pending again; `more` when some are left |
//! | `GET /health` | `200` when the store answers and the layer takes async requests, else `503`; in-flight counts |
//!
//! Answers are JSON. Errors are `{"code":"…","message":"…"}` with a stable code: `400
//! invalid_id`, `400 invalid_query`, `404 event_not_found`, `404 dead_letter_not_found`, `404
//! not_found` (no such route), `405 method_not_allowed`, `503 shutting_down`, `503
//! store_unavailable`. Every store (memory, redb, PostgreSQL) answers the same way; with
//! PostgreSQL any node's admin service sees and redelivers every node's events.
//!
//! - `service.rs`: [`Admin`], the service, and its future.
//! - `route.rs`: a request's method, path and query read into a route, strictly.
//! - `json.rs`: the answers' JSON.
//!
//! # Example
//!
//! Nested in an axum router on a separate listener, behind whatever authenticates operators:
//!
//! ```no_run
//! use tower_async_request::{admin::Admin, AsyncRequestLayer};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = AsyncRequestLayer::builder()
//!     .default_callback_url("https://hooks.example.com/in")
//!     .build()?;
//! let admin: axum::Router = axum::Router::new().nest_service("/admin", Admin::new(layer.handle()));
//! let app: axum::Router = axum::Router::new()
//!     .route("/work", axum::routing::post(|| async { "done" }))
//!     .layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! tokio::spawn(async move { axum::serve(listener, admin).await });
//! # drop(app);
//! # Ok(())
//! # }
//! ```

mod json;
mod route;
mod service;

pub use self::route::{DEFAULT_PAGE, MAX_PAGE};
pub use self::service::{Admin, ResponseFuture};
