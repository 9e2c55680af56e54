//! Captures tracing spans and events, to check what the layer's spans look like and where they
//! sit, and what it logs at which level.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

pub type FieldList = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// (span name, its fields, its parent's name)
    pub spans: Vec<(String, FieldList, Option<String>)>,
    /// (event message, its fields, names of the spans it happened in, root first)
    pub events: Vec<(String, FieldList, Vec<String>)>,
    /// The level of each event, in the order of `events`.
    pub levels: Vec<Level>,
}

impl Seen {
    pub fn span(&self, name: &str) -> Option<&(String, FieldList, Option<String>)> {
        self.spans.iter().find(|(n, ..)| n == name)
    }

    pub fn events(&self, message: &str) -> Vec<&(String, FieldList, Vec<String>)> {
        self.events.iter().filter(|(m, ..)| m == message).collect()
    }

    /// The events with this message logged at `level`.
    pub fn events_at(&self, level: Level, message: &str) -> Vec<&(String, FieldList, Vec<String>)> {
        self.events
            .iter()
            .zip(&self.levels)
            .filter(|((m, ..), l)| m == message && **l == level)
            .map(|(event, _)| event)
            .collect()
    }
}

/// What was captured so far; the capture starts again empty.
pub fn take(seen: &Mutex<Seen>) -> Seen {
    std::mem::take(&mut *seen.lock().unwrap())
}

pub fn field<'a>(fields: &'a FieldList, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

struct Capture(Arc<Mutex<Seen>>);

struct Fields(FieldList);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
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
        let message = field(&fields.0, "message").unwrap_or_default().to_owned();
        let scope = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().map(|s| s.name().to_owned()).collect())
            .unwrap_or_default();
        let mut seen = self.0.lock().unwrap();
        seen.events.push((message, fields.0, scope));
        seen.levels.push(*event.metadata().level());
    }
}

/// Captures this thread's spans and events (a `#[tokio::test]` runs its tasks on its thread).
pub fn capture() -> (Arc<Mutex<Seen>>, tracing::subscriber::DefaultGuard) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(seen.clone())),
    );
    (seen, guard)
}
