//! One trace across the async boundary (cargo feature `opentelemetry`): the request's trace
//! context is captured when the event is accepted ([`capture`]), kept with the event
//! ([`TraceContext`]), made the parent of the job's span and of each delivery attempt's
//! ([`follow`]), and the attempt's own context is put on the callback ([`inject`]), so the
//! receiver's tracing continues the caller's trace.
//!
//! Everything goes through the globally installed propagator
//! (`opentelemetry::global::set_text_map_propagator`): W3C `traceparent`/`tracestate` with the
//! usual set-up, B3 or others if the application installs them. Without one, nothing is captured.

use std::sync::Arc;

use http::HeaderMap;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{global, Context};
use opentelemetry_http::HeaderInjector;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::store::TraceContext;

/// The trace the request carries: the headers the installed propagator reads (its `fields`),
/// as received — parsed only where a span is made its child, so an event costs no parse when
/// nothing records spans. `None` when the request has none of them, or they would not fit a
/// store ([`TraceContext::fits`]); one that does not parse is ignored where it is read.
pub(crate) fn capture(headers: &HeaderMap) -> Option<Arc<TraceContext>> {
    let mut trace = TraceContext::default();
    global::get_text_map_propagator(|propagator| {
        for name in propagator.fields() {
            if let Some(value) = headers.get(name).and_then(|value| value.to_str().ok()) {
                trace
                    .fields
                    .push((name.to_ascii_lowercase(), value.to_owned()));
            }
        }
    });
    (!trace.fields.is_empty() && trace.fits()).then(|| Arc::new(trace))
}

/// Makes the stored trace the parent of `span` (the job's, an attempt's).
pub(crate) fn follow(span: &tracing::Span, trace: Option<&TraceContext>) {
    let Some(trace) = trace else {
        return;
    };
    if span.is_disabled() {
        return;
    }
    let context = global::get_text_map_propagator(|propagator| propagator.extract(&Stored(trace)));
    if context.span().span_context().is_valid() {
        // Fails only when the span is not recorded by an OpenTelemetry layer: nothing to join.
        let _ = span.set_parent(context);
    }
}

/// Puts `span`'s context on a callback's headers (`traceparent`, `tracestate`), if it has one.
pub(crate) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context: Context = span.context();
    if context.span().span_context().is_valid() {
        global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(headers))
        });
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
