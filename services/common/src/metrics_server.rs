//! The Prometheus scrape endpoint: a minimal HTTP/1.1 server answering `GET /metrics` with
//! [`crate::metrics::Metrics::render`] (and `GET /` with a pointer to it). One per process; the
//! caller binds the listener (tests use `127.0.0.1:0`) and stops it with the shutdown token.
//!
//! Each connection answers one request and closes, which is all a scraper needs, so no HTTP
//! library is involved; requests are bounded in size and time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::metrics;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The largest request head read before answering 431.
const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving /metrics");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    if let Err(err) = answer(stream).await {
                        tracing::debug!(%err, "metrics connection failed");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(%err, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        Ok(Err(err)) => return Err(err),
        Err(_) => return Ok(()),
    };
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            respond(&mut stream, "200 OK", CONTENT_TYPE, &metrics().render()).await
        }
        ("HEAD", "/metrics") => respond(&mut stream, "200 OK", CONTENT_TYPE, "").await,
        ("GET", "/") => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain",
                "automl metrics: GET /metrics\n",
            )
            .await
        }
        ("GET" | "HEAD", _) => {
            respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "method not allowed\n",
            )
            .await
        }
    }
}

/// The request line and headers, up to the blank line; `None` when they exceed [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetches `http://{addr}/metrics` and returns the body: for `automl status` and tests.
pub async fn scrape(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other("malformed http response"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(std::io::Error::other(format!("http status: {line}")));
    }
    Ok(body.to_string())
}

/// The value of a sample (`name` or `name{labels}` exactly as exposed) in a scrape.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok()).flatten()
        })
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
        metrics().data.ingest_bytes.with(&[]).add(5);
        let text = scrape(&addr).await.expect("scrape");
        assert!(text.contains("# TYPE automl_grpc_requests_total counter"));
        assert!(sample(&text, "automl_ingest_bytes_total").is_some_and(|v| v >= 5.0));

        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream
            .write_all(b"GET /nope HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        shutdown.cancel();
        server.await.expect("server stops");
    }
}
