//! The direct CPU cost of the per-RPC layer ([`automl_common::rpc::RpcLayer`]) per call: the
//! same trivial handler called in a loop through the layer and without it, with the process's
//! tracing subscriber installed as the servers install it (text logs at info).
//!
//! Usage: `cargo bench -p automl-common --bench rpc_layer [-- --calls 200000]`

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use automl_common::config::TelemetryConfig;
use automl_common::rpc::RpcLayer;
use tonic::codegen::http;
use tower_layer::Layer;
use tower_service::Service;

/// A handler that answers at once with an empty response.
#[derive(Clone)]
struct Echo;

impl Service<http::Request<()>> for Echo {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

fn request() -> http::Request<()> {
    http::Request::builder()
        .uri("/metadata_store.MetadataStoreService/LogEpoch")
        .body(())
        .expect("request")
}

/// Nanoseconds per call of `service` over `calls` calls, each future spawned as its own task
/// (as hyper does for every HTTP/2 stream).
async fn per_call<S>(mut service: S, calls: usize) -> f64
where
    S: Service<http::Request<()>, Response = http::Response<()>>,
    S::Future: Future<Output = Result<http::Response<()>, S::Error>> + Send + 'static,
    S::Error: Send + 'static,
{
    let started = Instant::now();
    for _ in 0..calls {
        let future: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(service.call(request()));
        let _ = tokio::spawn(future).await;
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn main() {
    let mut calls = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--calls" {
            calls = args.next().and_then(|v| v.parse().ok()).unwrap_or(calls);
        }
    }
    automl_common::telemetry::init(&TelemetryConfig::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let layered = RpcLayer.layer(Echo);
        // Warm up both, then alternate.
        per_call(Echo, calls / 10).await;
        per_call(layered.clone(), calls / 10).await;
        let (mut bare, mut with) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            bare.push(per_call(Echo, calls).await);
            with.push(per_call(layered.clone(), calls).await);
        }
        bare.sort_by(f64::total_cmp);
        with.sort_by(f64::total_cmp);
        let (bare, with) = (bare[2], with[2]);
        println!(
            "per call: bare {bare:.0} ns, with the layer {with:.0} ns, the layer {:.0} ns",
            with - bare
        );
    });
}
