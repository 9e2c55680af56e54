//! The trace an event belongs to, kept with it in every store, so that a job resumed after a
//! restart, or a notification retried or taken over by another node, still belongs to the
//! caller's trace.

use std::sync::Arc;

/// The most a store keeps of a [`TraceContext`]: the sum of its names' and values' lengths, in
/// bytes. A durable store does not keep a larger one (the event is kept without it).
pub const MAX_TRACE_CONTEXT_BYTES: usize = 1024;

/// The trace an event belongs to: the propagation fields of the request's context (W3C
/// `traceparent` and `tracestate` with the usual set-up) as the installed propagator wrote
/// them. Filled with the cargo feature `opentelemetry`; kept by every store with the event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// Header name (lower case) and value, in the order written.
    pub fields: Vec<(String, String)>,
}

impl TraceContext {
    /// Whether a store keeps it: its names and values add up to at most
    /// [`MAX_TRACE_CONTEXT_BYTES`].
    pub fn fits(&self) -> bool {
        let mut bytes = 0usize;
        for (name, value) in &self.fields {
            bytes = bytes.saturating_add(name.len()).saturating_add(value.len());
        }
        bytes <= MAX_TRACE_CONTEXT_BYTES
    }
}

/// The fields a durable store writes for `trace`: none when there is no trace or it does not
/// [fit](TraceContext::fits).
#[cfg(any(feature = "redb", feature = "postgres"))]
pub(crate) fn kept(trace: Option<&TraceContext>) -> Option<&[(String, String)]> {
    trace
        .filter(|trace| trace.fits())
        .map(|trace| trace.fields.as_slice())
}

/// A trace as a store keeps it: JSON pairs (`[["traceparent","00-…"],["tracestate","…"]]`);
/// `None` when it is not kept (see [`kept`]).
#[cfg(feature = "postgres")]
pub(crate) fn encode(trace: Option<&TraceContext>) -> Option<String> {
    kept(trace).map(|fields| serde_json::to_string(fields).expect("strings serialize"))
}

/// A stored trace read back.
#[cfg(feature = "postgres")]
pub(crate) fn decode(text: &str) -> Result<Arc<TraceContext>, serde_json::Error> {
    Ok(Arc::new(TraceContext {
        fields: serde_json::from_str(text)?,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A trace as the W3C propagator writes it.
    pub(crate) fn sample() -> TraceContext {
        TraceContext {
            fields: vec![
                (
                    "traceparent".into(),
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                ),
                ("tracestate".into(), "congo=t61rcWkgMzE".into()),
            ],
        }
    }

    fn trace(value_bytes: usize) -> TraceContext {
        TraceContext {
            fields: vec![
                ("traceparent".into(), "0".repeat(value_bytes)),
                ("tracestate".into(), String::new()),
            ],
        }
    }

    #[test]
    fn a_trace_fits_up_to_the_limit_of_names_and_values() {
        let names = "traceparent".len() + "tracestate".len();
        assert!(TraceContext::default().fits());
        assert!(trace(MAX_TRACE_CONTEXT_BYTES - names).fits());
        assert!(!trace(MAX_TRACE_CONTEXT_BYTES - names + 1).fits());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_kept_trace_reads_back_as_written_and_a_large_one_is_not_kept() {
        let small = sample();
        let text = encode(Some(&small)).unwrap();
        assert_eq!(
            text,
            r#"[["traceparent","00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],["tracestate","congo=t61rcWkgMzE"]]"#
        );
        assert_eq!(*decode(&text).unwrap(), small);
        assert_eq!(encode(Some(&trace(MAX_TRACE_CONTEXT_BYTES))), None);
        assert_eq!(encode(None), None);
    }
}
