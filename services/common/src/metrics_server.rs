//! The Prometheus scrape endpoint: an axum router answering `GET /metrics` with
//! [`crate::metrics::Metrics::render`] (and `GET /` with a pointer to it). One per process; the
//! caller binds the listener (tests use `127.0.0.1:0`) and stops it with the shutdown token.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{CONTENT_TYPE, metrics};

pub use crate::metrics::sample;

/// The endpoint's routes.
pub fn router() -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics().render()) }),
        )
        .route("/", get(|| async { "automl metrics: GET /metrics\n" }))
}

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving /metrics");
    let served = axum::serve(listener, router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(err) = served {
        tracing::warn!(%err, "the metrics endpoint stopped");
    }
}

/// Fetches `http://{addr}/metrics` and returns the body: for `automl status` and tests.
pub async fn scrape(addr: &str) -> std::io::Result<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/metrics")
        .parse()
        .map_err(std::io::Error::other)?;
    let response = client.get(uri).await.map_err(std::io::Error::other)?;
    let status = response.status();
    if !status.is_success() {
        return Err(std::io::Error::other(format!("http status: {status}")));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scrape_answers_the_exposition_and_404_elsewhere() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shutdown.clone()));
        metrics().data.ingest_bytes.inc_by(5);
        let text = scrape(&addr).await.expect("scrape");
        assert!(text.contains("# TYPE automl_training_jobs counter"));
        assert!(sample(&text, "automl_ingest_bytes_total").is_some_and(|v| v >= 5.0));

        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let response = client
            .get(format!("http://{addr}/nope").parse().expect("uri"))
            .await
            .expect("get");
        assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
        let response = client
            .get(format!("http://{addr}/metrics").parse().expect("uri"))
            .await
            .expect("get");
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        shutdown.cancel();
        server.await.expect("server stops");
    }
}
