//! What the layer costs a synchronous request (no async header): the same service bare and behind
//! `AsyncRequestLayer`, side by side, in-process.
//!
//! `cargo bench --bench passthrough`
//!
//! Criterion measures each function on its own, one after the other; on a shared machine the
//! speed of the whole machine can change between two of them. So the bench ends with an
//! interleaved comparison as well: bare and layered take turns (bare, layered, layered, bare) in
//! rounds of a few thousand calls, and the median of the per-round ratios is printed.

use std::hint::black_box;

use axum::body::Body;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use tower::{Layer, Service};
use tower_async_request::layer::RequestBody;

mod support;
use support::interleaved;
use support::sync_path::{handler, layer, now, request, routers, Routers};

fn passthrough(c: &mut Criterion) {
    let mut group = c.benchmark_group("passthrough");

    let Routers {
        mut bare,
        mut noop,
        mut layered,
    } = routers();
    group.bench_function("axum_bare", |b| {
        b.iter(|| now(bare.call(request())).unwrap())
    });
    group.bench_function("axum_noop_layer", |b| {
        b.iter(|| now(noop.call(request())).unwrap())
    });
    group.bench_function("axum_layered", |b| {
        b.iter(|| now(layered.call(request())).unwrap())
    });

    let mut bare_fn = tower::service_fn(handler::<Body>);
    let mut layered_fn = layer().layer(tower::service_fn(handler::<RequestBody<Body>>));
    group.bench_function("service_fn_bare", |b| {
        b.iter(|| now(bare_fn.call(request())).unwrap())
    });
    group.bench_function("service_fn_layered", |b| {
        b.iter(|| now(layered_fn.call(request())).unwrap())
    });
    group.finish();
}

/// Calls `service` a few thousand times with fresh requests: one batch for [`interleaved`].
fn batch<S>(service: &mut S)
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..5_000 {
        black_box(now(service.call(request())).unwrap());
    }
}

fn passthrough_interleaved(_: &mut Criterion) {
    let mut bare_fn = tower::service_fn(handler::<Body>);
    let mut layered_fn = layer().layer(tower::service_fn(handler::<RequestBody<Body>>));
    let Routers {
        mut bare,
        mut noop,
        mut layered,
    } = routers();
    // For scale: tower-http's body-size limit, another layer that wraps both bodies, in front of
    // the same service.
    let mut limited_fn = tower_http::limit::RequestBodyLimitLayer::new(1 << 20).layer(
        tower::service_fn(handler::<tower_http::body::Limited<Body>>),
    );
    let service_fn = interleaved(|| batch(&mut bare_fn), || batch(&mut layered_fn));
    let limit = interleaved(|| batch(&mut bare_fn), || batch(&mut limited_fn));
    let axum = interleaved(|| batch(&mut bare), || batch(&mut layered));
    // What is left once axum's own charge for any `Router::layer` is taken out.
    let axum_noop = interleaved(|| batch(&mut noop), || batch(&mut layered));
    for (name, ratio) in [
        ("service_fn", service_fn),
        ("service_fn_tower_http_limit", limit),
        ("axum", axum),
        ("axum_vs_noop_layer", axum_noop),
    ] {
        println!("passthrough/interleaved/{name}: layered \u{f7} bare = {ratio}");
    }
}

criterion_group!(benches, passthrough, passthrough_interleaved);
criterion_main!(benches);
