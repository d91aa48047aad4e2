//! HTTP endpoints (hyper 1.x): the metrics path, `/healthz`, `/readyz` and a landing page.
//! Serves from memory only; a scrape never waits on AWS.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::{Metrics, VERSION};
use crate::snapshot::SharedSnapshot;

/// Content type of the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Time a client gets to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the handlers read.
pub struct AppState {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub metrics_path: String,
}

/// Accepts connections on `listener` until `shutdown`, then drains them.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(route(&req, &state)) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("HTTP server stopping");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("some HTTP connections did not finish before shutdown");
    }
}

fn route(req: &Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = path == state.metrics_path || matches!(path, "/" | "/healthz" | "/readyz");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let snapshot = state.snapshot.read();
            let scanned = snapshot.targets.iter().filter(|t| t.scanned).count();
            let total = snapshot.targets.len();
            if snapshot.all_scanned() {
                text(StatusCode::OK, "ready\n")
            } else if snapshot.pending_discovery {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: accounts and regions are being discovered\n",
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {scanned} of {total} targets scanned\n"),
                )
            }
        }
        "/" => landing_page(&state.metrics_path),
        _ => {
            let body = state.metrics.render(&state.snapshot);
            with_type(StatusCode::OK, METRICS_CONTENT_TYPE, Bytes::from(body))
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(body.to_owned()),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn landing_page(metrics_path: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<!DOCTYPE html>\n<html>\n<head><title>App-Tier CMK exporter</title></head>\n<body>\n\
         <h1>App-Tier CMK exporter</h1>\n\
         <p>Watches AWS accounts and regions for a customer-managed KMS key carrying the App-Tier tag. Version {VERSION}.</p>\n\
         <ul>\n<li><a href=\"{metrics_path}\">Metrics</a></li>\n\
         <li><a href=\"/healthz\">Health</a></li>\n<li><a href=\"/readyz\">Readiness</a></li>\n</ul>\n\
         </body>\n</html>\n",
        metrics_path = html_escape(metrics_path)
    );
    with_type(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from(body),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
