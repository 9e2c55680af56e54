//! One trace across the async boundary (cargo feature `opentelemetry`): the request's trace
//! context is captured when the event is accepted ([`capture`]), kept with the event
//! ([`TraceContext`]), made the parent of the job's span and of each delivery attempt's
//! ([`follow`]), and the attempt's own context is put on the callback ([`inject`]), so the
//! receiver's tracing continues the caller's trace.
//!
//! Everything goes through the globally installed propagator
//! (`opentelemetry::global::set_text_map_propagator`): W3C `traceparent`/`tracestate` with the
//! usual set-up, B3 or others if the application installs them. Without one, nothing is captured.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{global, Context};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::store::TraceContext;

/// The trace the request carries, if it carries a valid one: its propagation fields as the
/// installed propagator writes them; `None` when they would not fit a store
/// ([`TraceContext::fits`]).
pub(crate) fn capture(headers: &HeaderMap) -> Option<Box<TraceContext>> {
    let context =
        global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut trace = Fields(TraceContext::default());
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut trace));
    let trace = trace.0;
    (!trace.fields.is_empty() && trace.fits()).then(|| Box::new(trace))
}

/// Makes the stored trace the parent of `span` (the job's, an attempt's).
pub(crate) fn follow(span: &tracing::Span, trace: Option<&TraceContext>) {
    let Some(trace) = trace else {
        return;
    };
    let context = global::get_text_map_propagator(|propagator| propagator.extract(&Stored(trace)));
    if context.span().span_context().is_valid() {
        // Fails only when the span is not recorded by an OpenTelemetry layer: nothing to join.
        let _ = span.set_parent(context);
    }
}

/// Puts `span`'s context on a callback's headers (`traceparent`, `tracestate`), if it has one.
pub(crate) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let context: Context = span.context();
    if context.span().span_context().is_valid() {
        global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(headers))
        });
    }
}

/// Writes a propagator's fields into a [`TraceContext`].
struct Fields(TraceContext);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.fields.push((key.to_ascii_lowercase(), value));
    }
}

/// Reads a stored [`TraceContext`] as a propagator's carrier.
struct Stored<'a>(&'a TraceContext);

impl Extractor for Stored<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .fields
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .fields
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }
}
