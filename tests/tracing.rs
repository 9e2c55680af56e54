//! The event's tracing span follows the work into the spawned task and carries its ids.

use std::sync::{Arc, Mutex};

use axum::{body::Body, routing::post, Router};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Instrument, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type FieldList = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
struct Seen {
    /// (span name, its fields, its parent's name)
    spans: Vec<(String, FieldList, Option<String>)>,
    /// (event message, names of the spans it happened in, root first)
    events: Vec<(String, Vec<String>)>,
}

struct Capture(Arc<Mutex<Seen>>);

struct Fields(FieldList);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields(Vec::new());
        attrs.record(&mut fields);
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_owned());
        self.0
            .lock()
            .unwrap()
            .spans
            .push((attrs.metadata().name().to_owned(), fields.0, parent));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        let message = fields
            .0
            .iter()
            .find(|(k, _)| k == "message")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let scope = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().map(|s| s.name().to_owned()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().events.push((message, scope));
    }
}

#[tokio::test]
async fn the_event_span_follows_the_work_and_names_its_ids() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(seen.clone())),
    );

    let (sink, mut callbacks) = ChannelSink::new(4);
    let layer = AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/in")
        .sink(sink)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/work",
            post(|| async {
                tracing::info!("handler ran");
                "done"
            }),
        )
        .layer(layer);

    let request = Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Body::empty())
        .unwrap();
    let outer = tracing::info_span!("incoming_request");
    // As `TraceLayer` does: the request's span is entered whenever its future is polled.
    let response = app.oneshot(request).instrument(outer).await.unwrap();
    let receipt: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let event_id = receipt["eventId"].to_string();
    let callback = callbacks.recv().await.unwrap();
    let notification: serde_json::Value = serde_json::from_slice(callback.body()).unwrap();

    let seen = seen.lock().unwrap().clone();
    let (_, fields, parent) = seen
        .spans
        .iter()
        .find(|(name, ..)| name == "async_request")
        .expect("an async_request span");
    assert!(
        fields.contains(&("event_id".to_owned(), event_id)),
        "{fields:?}"
    );
    assert!(
        fields.contains(&(
            "notification_id".to_owned(),
            notification["notificationId"].to_string()
        )),
        "{fields:?}"
    );
    assert_eq!(
        parent.as_deref(),
        Some("incoming_request"),
        "the caller's span is the parent"
    );

    let (_, scope) = seen
        .events
        .iter()
        .find(|(message, _)| message == "handler ran")
        .expect("the handler's event");
    assert_eq!(
        scope,
        &["incoming_request", "async_request"],
        "the spawned work runs inside the event's span"
    );

    let (_, fields, parent) = seen
        .spans
        .iter()
        .find(|(name, ..)| name == "delivery_attempt")
        .expect("a delivery_attempt span");
    assert_eq!(fields, &[("attempt".to_owned(), "1".to_owned())]);
    assert_eq!(parent.as_deref(), Some("async_request"));
}
