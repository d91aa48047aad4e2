//! Web-security helpers: certificates made at test time with rcgen, a rustls client, raw
//! HTTP/1.1 exchanges (over TCP or TLS) and basic-auth headers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate and its key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A CA with a server certificate (localhost, 127.0.0.1) and a client certificate.
pub struct TestPki {
    pub ca: Pem,
    pub server: Pem,
    pub client: Pem,
}

fn ca(name: &str) -> (CertifiedIssuer<'static, KeyPair>, Pem) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let key_pem = key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
    let pem = Pem {
        cert: issuer.pem(),
        key: key_pem,
    };
    (issuer, pem)
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str], cn: &str) -> Pem {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<String>>())
            .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl TestPki {
    /// A fresh CA named `name`, a server certificate and a client certificate from it.
    pub fn new(name: &str) -> TestPki {
        let (issuer, ca) = ca(name);
        let server = leaf(&issuer, &["localhost", "127.0.0.1"], "localhost");
        let client = leaf(&issuer, &["scraper.example"], "prometheus");
        TestPki { ca, server, client }
    }

    /// Writes ca.pem, server.pem, server.key, client.pem, client.key into `dir`.
    pub fn write(&self, dir: &Path) {
        for (name, text) in [
            ("ca.pem", &self.ca.cert),
            ("server.pem", &self.server.cert),
            ("server.key", &self.server.key),
            ("client.pem", &self.client.cert),
            ("client.key", &self.client.key),
        ] {
            std::fs::write(dir.join(name), text).expect("write PEM");
        }
    }
}

/// A rustls client that trusts `ca_pem`, optionally presenting `client`.
pub fn tls_connector(ca_pem: &str, client: Option<&Pem>) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("client chain");
            let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth cert")
        }
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// Parses what a server sent; None when it is not an HTTP answer.
pub fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `GET path` request bytes with `Connection: close` and extra header lines.
pub fn request(method: &str, path: &str, extra_headers: &[(&str, &str)]) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in extra_headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Sends `request` and reads until the server closes (errors end the read too: a TLS peer
/// that resets counts as closed). Returns the bytes received.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &str) -> Vec<u8> {
    let _ = stream.write_all(request.as_bytes()).await;
    let _ = stream.flush().await;
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One request over plain TCP to 127.0.0.1:`port`.
pub async fn plain_request(port: u16, request: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    exchange(&mut stream, request).await
}

/// One request over TLS; Err(message) when the handshake (or the first read) fails.
pub async fn tls_request(
    port: u16,
    connector: &tokio_rustls::TlsConnector,
    request: &str,
) -> Result<RawResponse, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let raw = exchange(&mut tls, request).await;
    parse_response(&raw).ok_or_else(|| {
        format!(
            "no HTTP answer (got {} bytes: {:?})",
            raw.len(),
            String::from_utf8_lossy(&raw)
        )
    })
}

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A bcrypt hash at the lowest cost (tests only: fast).
pub fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// Waits until 127.0.0.1:`port` accepts TCP connections.
pub async fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `text` to `path` and moves its modification time forward (so that a change within
/// the same timestamp tick is still seen).
pub fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).expect("rewrite file");
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open for mtime");
    file.set_modified(later).expect("set mtime");
}

/// `dir/name` as a PathBuf.
pub fn file_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
