//! HTTP endpoints (hyper 1.x): the metrics path, `/healthz`, `/readyz`, a landing page and
//! `/-/reload`, behind the web configuration's TLS and basic auth. Serves from memory only; a
//! scrape never waits on AWS.
//!
//! Hardened for an untrusted network: bounded header size and header read time (slowloris), a
//! cap on open connections (past it, new ones wait in the listen backlog, as with Prometheus'
//! `--web.max-connections`), request bodies refused, only the methods each path needs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::body::Chunks;
use crate::metrics::{Metrics, VERSION};
use crate::reload::ReloadRequest;
use crate::snapshot::SharedSnapshot;
use crate::web_config::{Authenticator, WebConfigWatcher, WebSecurity};

/// Content type of the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request head (request line and headers) accepted; hyper answers 431 past it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time open connections get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Path of the reload endpoint (Prometheus' name).
pub const RELOAD_PATH: &str = "/-/reload";

/// What the handlers read.
pub struct AppState {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub metrics_path: String,
    /// `--web.config.file`; None: plain HTTP, no authentication.
    pub web: Option<Arc<WebConfigWatcher>>,
    pub auth: Authenticator,
    /// Where `POST /-/reload` goes; None unless `--web.enable-lifecycle`.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
}

/// Bounds on what clients may cost the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once (`--web.max-connections`).
    pub max_connections: usize,
    /// Time a client gets for the TLS handshake and then for its request headers.
    pub read_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            read_header_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, then drains them.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    loop {
        // A slot first: past the cap, connections wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
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
        let shutdown = shutdown.clone();
        let tls = state.web.as_ref().and_then(|w| w.current().tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, state, limits, shutdown).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let handshake =
                        tokio::time::timeout(limits.read_header_timeout, acceptor.accept(stream));
                    let stream = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    };
                    serve_connection(stream, state, limits, shutdown).await;
                }
            }
        });
    }
    info!("HTTP server stopping");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!("some HTTP connections did not finish before shutdown");
    }
}

async fn serve_connection<S>(
    stream: S,
    state: Arc<AppState>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(req, &state).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, state: &AppState) -> Response<Chunks> {
    let security = state.web.as_ref().map(|w| w.current());
    let mut response = respond(&req, state, security.as_deref()).await;
    if let Some(security) = &security {
        for (name, value) in &security.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

async fn respond(
    req: &Request<Incoming>,
    state: &AppState,
    security: Option<&WebSecurity>,
) -> Response<Chunks> {
    if has_body(req) {
        // Nothing here takes a body; not reading one keeps a slow sender from holding us.
        let mut response = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are not accepted\n",
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    if let Some(security) = security
        && !state
            .auth
            .allows(security, req.headers().get(header::AUTHORIZATION))
            .await
    {
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"app-tier-cmk-exporter\""),
        );
        return response;
    }
    if req.uri().path() == RELOAD_PATH {
        return reload(req, state).await;
    }
    route(req, state)
}

/// A request that announces a body (any length but 0, or a chunked one).
fn has_body(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

async fn reload(req: &Request<Incoming>, state: &AppState) -> Response<Chunks> {
    if req.method() != Method::POST && req.method() != Method::PUT {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
        return response;
    }
    let Some(sender) = &state.reload else {
        return text(
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled (start with --web.enable-lifecycle).\n",
        );
    };
    let (reply, answer) = oneshot::channel();
    if sender
        .send(ReloadRequest { reply: Some(reply) })
        .await
        .is_err()
    {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match answer.await {
        Ok(Ok(())) => text(StatusCode::OK, "configuration reloaded\n"),
        Ok(Err(message)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("failed to reload config: {message}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

fn route(req: &Request<Incoming>, state: &AppState) -> Response<Chunks> {
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
            // Shared chunks: the cached text is not copied per scrape.
            let body = Chunks::new(state.metrics.body(&state.snapshot));
            with_type(StatusCode::OK, METRICS_CONTENT_TYPE, body)
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Chunks> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Chunks::from(Bytes::from(body.to_owned())),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Chunks) -> Response<Chunks> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn landing_page(metrics_path: &str) -> Response<Chunks> {
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
        Chunks::from(Bytes::from(body)),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
