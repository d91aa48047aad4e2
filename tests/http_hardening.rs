//! The HTTP server against hostile clients: huge headers, slow headers (slowloris), too many
//! connections, request bodies, unexpected methods, and the lifecycle endpoint left off.

mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::web::*;
use support::*;

const NO_AWS: &str = "http://127.0.0.1:1";
const CONFIG: &str = "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1h\"\ntimeout = \"2s\"\n";

/// Starts the exporter without the harness' HTTP client, whose pooled keep-alive connection
/// would hold one of the connection slots these tests count.
async fn exporter(args: &[&str]) -> Exporter {
    let mut builder = Exporter::builder(CONFIG).moto(NO_AWS);
    for arg in args {
        builder = builder.arg(arg);
    }
    let exporter = builder.spawn();
    wait_for_port(exporter.port(), Duration::from_secs(20)).await;
    exporter
}

fn status_of(raw: &[u8]) -> Option<u16> {
    parse_response(raw).map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused() {
    let exporter = exporter(&[]).await;
    let big = "x".repeat(32 * 1024);
    let raw = plain_request(
        exporter.port(),
        &request("GET", "/metrics", &[("X-Padding", &big)]),
    )
    .await;
    assert_eq!(
        status_of(&raw),
        Some(431),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // A normal request still works afterwards.
    let raw = plain_request(exporter.port(), &request("GET", "/healthz", &[])).await;
    assert_eq!(status_of(&raw), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_after_the_read_header_timeout() {
    let exporter = exporter(&["--web.read-header-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", exporter.port()))
        .await
        .expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    // One header byte every 200 ms: never finishing the head.
    let closed = loop {
        if stream.write_all(b"X").await.is_err() {
            break started.elapsed();
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => break started.elapsed(),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "a slowloris client was kept for 6 s"
        );
    };
    assert!(
        closed >= Duration::from_millis(900),
        "closed before the timeout: {closed:?}"
    );
    // Other clients were served meanwhile and still are.
    let raw = plain_request(exporter.port(), &request("GET", "/healthz", &[])).await;
    assert_eq!(status_of(&raw), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let exporter = exporter(&[
        "--web.max-connections",
        "2",
        "--web.read-header-timeout",
        "20s",
    ])
    .await;
    let port = exporter.port();
    // Two idle connections take both slots.
    let first = TcpStream::connect(("127.0.0.1", port)).await.expect("1st");
    let second = TcpStream::connect(("127.0.0.1", port)).await.expect("2nd");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut third = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("3rd: waits in the backlog");
    third
        .write_all(request("GET", "/healthz", &[]).as_bytes())
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served past --web.max-connections 2: {early:?}"
    );

    drop(first);
    let raw = exchange(&mut third, "").await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_other_methods_are_refused() {
    let exporter = exporter(&[]).await;
    let port = exporter.port();
    for (what, req) in [
        (
            "POST with a body",
            "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
                .to_owned(),
        ),
        (
            "GET with a body",
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
                .to_owned(),
        ),
        (
            "chunked body",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .to_owned(),
        ),
    ] {
        let raw = plain_request(port, &req).await;
        assert_eq!(status_of(&raw), Some(413), "{what}: {}", String::from_utf8_lossy(&raw));
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let raw = plain_request(port, &request(method, "/metrics", &[])).await;
        let answer = parse_response(&raw).expect("answer");
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method}");
    }
    let raw = plain_request(port, &request("HEAD", "/metrics", &[])).await;
    let answer = parse_response(&raw).expect("answer");
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty(), "HEAD carried a body");
    // An empty POST is no body; it is still the wrong method.
    let raw = plain_request(
        port,
        &request("POST", "/healthz", &[("Content-Length", "0")]),
    )
    .await;
    assert_eq!(status_of(&raw), Some(405));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_endpoint_is_off_unless_the_lifecycle_api_is_enabled() {
    let exporter = exporter(&[]).await;
    let raw = plain_request(exporter.port(), &request("POST", "/-/reload", &[])).await;
    let answer = parse_response(&raw).expect("answer");
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(answer.body.contains("--web.enable-lifecycle"));
    let raw = plain_request(exporter.port(), &request("GET", "/-/reload", &[])).await;
    assert_eq!(status_of(&raw), Some(405));
}
