//! Traces over OTLP (`--otlp-endpoint`): the subscriber's OpenTelemetry layer, a batch exporter
//! over HTTP/protobuf, the W3C propagator, and each forwarded request's span in its caller's
//! trace. Without an endpoint none of it is installed.

use http::Request;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::flags::Args;

/// OpenTelemetry's standard variable for the collector, read when `--otlp-endpoint` is not given.
const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The tracer provider exporting to `--otlp-endpoint`, and the runtime its batch processor and
/// exporter run on: one of their own, so that the proxy's runtime can end (every task dropped,
/// so every span closed) before the last spans are exported.
/// Whether spans are exported (set once, at start, by [`Traces::start`]).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) struct Traces {
    provider: SdkTracerProvider,
    runtime: tokio::runtime::Runtime,
}

impl Traces {
    /// `None` without an endpoint (nor OTEL_EXPORTER_OTLP_ENDPOINT); else the W3C propagator is
    /// installed globally too.
    pub(crate) fn start(args: &Args) -> Result<Option<Self>, String> {
        // The standard variable when the flag is not given.
        let standard = || match std::env::var(OTEL_EXPORTER_OTLP_ENDPOINT) {
            Ok(text) if !text.is_empty() => crate::flags::parse_otlp_endpoint(&text)
                .map(Some)
                .map_err(|error| format!("{OTEL_EXPORTER_OTLP_ENDPOINT}: {error}")),
            _ => Ok(None),
        };
        let endpoint = match &args.otlp_endpoint {
            Some(endpoint) => endpoint.clone(),
            None => match standard()? {
                Some(endpoint) => endpoint,
                None => return Ok(None),
            },
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|error| format!("no runtime for --otlp-endpoint: {error}"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.as_str())
            .build()
            .map_err(|error| format!("--otlp-endpoint {endpoint}: {error}"))?;
        // The batch's task is spawned on the runtime entered.
        let batch = {
            let _entered = runtime.enter();
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build()
        };
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(args.otel_sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(args.otel_service_name.clone())
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(Self { provider, runtime }))
    }

    /// The subscriber's layer recording spans with the provider's tracer.
    pub(crate) fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer(crate::LOG_TARGET))
    }

    /// Exports what is left, then stops the exporter and its runtime. Called once the proxy's
    /// runtime has ended, so that no span is still open.
    pub(crate) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            let _ = crate::fail(1, &format!("--otlp-endpoint: spans not exported: {error}"));
        }
        drop(self.runtime);
    }
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

/// The span of one request to the proxy, a child of the caller's trace context (what the
/// global propagator reads from its headers; none without `--otlp-endpoint`).
pub(crate) fn request_span<B>(request: &Request<B>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    // Without an exporter, no span: the log lines would not show it, and a request pays for it.
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: crate::LOG_TARGET,
        "proxy_request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
    );
    if !span.is_disabled() {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
        });
        // Fails only when no OpenTelemetry layer records the span: nothing to join.
        let _ = span.set_parent(parent);
    }
    span
}
