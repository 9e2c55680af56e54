//! The operators' listener (`--admin-listen`): `/metrics` in Prometheus's text format, the
//! latencies as histograms, and the library's admin routes under `/admin`, as docs/operating.md
//! lists them.

use axum::Router;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tower_async_request::admin::Admin;
use tower_async_request::AsyncRequestHandle;

/// Upper bounds of `async_request_receipt_seconds`: reading a body and committing to the store,
/// from a tenth of a millisecond (memory) to seconds (a slow client, a busy database).
const RECEIPT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Upper bounds of `async_request_delivery_seconds`: the job and every retry, from a quick job
/// delivered at once to the retry schedule's last steps, hours later (it spans about 28 h).
const DELIVERY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    7200.0, 18000.0, 36000.0, 86400.0, 172800.0,
];

/// Installs the Prometheus recorder, before the layer is built: the layer registers its metrics
/// then. The two latencies are histograms, as documented, not the exporter's default summaries
/// (which cannot be aggregated across proxies).
pub(crate) fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("async_request_receipt_seconds".into()),
            RECEIPT_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("async_request_delivery_seconds".into()),
            DELIVERY_BUCKETS,
        )?
        .install_recorder()
}

/// `/metrics`, the admin routes under `/admin` (`/admin/health`, `/admin/events/{id}`, …), and
/// the same routes at the root, where earlier versions served them (health checks that name
/// `/health` keep working).
pub(crate) fn router(handle: AsyncRequestHandle, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(prometheus.render())),
        )
        .nest_service("/admin", Admin::new(handle.clone()))
        .fallback_service(Admin::new(handle))
}
