//! `--web.config.file` (exporter-toolkit format) with real TLS handshakes: TLS only, mutual
//! TLS, basic auth, extra headers, changes picked up without a restart, bad files refused.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::web::*;
use support::*;

/// Nothing listens there: scans fail fast, which these tests do not look at.
const NO_AWS: &str = "http://127.0.0.1:1";
const CONFIG: &str = "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1h\"\ntimeout = \"2s\"\n";

struct WebExporter {
    exporter: Exporter,
    dir: tempfile::TempDir,
    web_config: PathBuf,
}

impl WebExporter {
    /// Writes the PKI and `web_yaml` into a temp dir and starts the exporter with it.
    async fn start(pki: &TestPki, web_yaml: &str) -> WebExporter {
        let dir = tempfile::tempdir().expect("temp dir");
        pki.write(dir.path());
        let web_config = dir.path().join("web.yml");
        std::fs::write(&web_config, web_yaml).expect("write web config");
        let exporter = Exporter::builder(CONFIG)
            .moto(NO_AWS)
            .arg("--web.config.file")
            .arg(web_config.to_str().expect("utf-8 path"))
            .spawn();
        wait_for_port(exporter.port(), Duration::from_secs(20)).await;
        WebExporter {
            exporter,
            dir,
            web_config,
        }
    }

    fn port(&self) -> u16 {
        self.exporter.port()
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

const TLS_ONLY: &str = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_is_refused_on_a_tls_port() {
    let pki = TestPki::new("test CA");
    let web = WebExporter::start(&pki, TLS_ONLY).await;
    let raw = plain_request(web.port(), &request("GET", "/metrics", &[])).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("app_tier_cmk") && !text.starts_with("HTTP/1.1 200"),
        "plain HTTP was served on the TLS port: {text}"
    );
    let connector = tls_connector(&pki.ca.cert, None);
    let answer = tls_request(web.port(), &connector, &request("GET", "/metrics", &[]))
        .await
        .expect("TLS request");
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains("app_tier_cmk_build_info"),
        "{answer:?}"
    );

    // A client that does not trust the server's CA gets no answer.
    let stranger = TestPki::new("other CA");
    let untrusting = tls_connector(&stranger.ca.cert, None);
    assert!(
        tls_request(web.port(), &untrusting, &request("GET", "/healthz", &[]))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_ca() {
    let pki = TestPki::new("test CA");
    let rogue = TestPki::new("rogue CA");
    let web = WebExporter::start(
        &pki,
        &format!("{TLS_ONLY}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS13\n"),
    )
    .await;
    let get = request("GET", "/metrics", &[]);

    let right = tls_connector(&pki.ca.cert, Some(&pki.client));
    let answer = tls_request(web.port(), &right, &get)
        .await
        .expect("the CA's client is served");
    assert_eq!(answer.status, 200);

    let without = tls_connector(&pki.ca.cert, None);
    let refused = tls_request(web.port(), &without, &get).await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );

    let wrong = tls_connector(&pki.ca.cert, Some(&rogue.client));
    let refused = tls_request(web.port(), &wrong, &get).await;
    assert!(
        refused.is_err(),
        "served a certificate from another CA: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_answers_401_unless_the_password_is_right() {
    let pki = TestPki::new("test CA");
    let yaml = format!(
        "{TLS_ONLY}basic_auth_users:\n  alice: '{}'\n  bob: '{}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n",
        bcrypt_hash("alice-password"),
        bcrypt_hash("bob-password")
    );
    let web = WebExporter::start(&pki, &yaml).await;
    let tls = tls_connector(&pki.ca.cert, None);
    let get = |auth: Option<String>| {
        let headers: Vec<(&str, String)> = auth.into_iter().map(|a| ("Authorization", a)).collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        request("GET", "/metrics", &headers)
    };

    for (what, auth) in [
        ("no password", None),
        (
            "a wrong password",
            Some(basic_auth("alice", "bob-password")),
        ),
        (
            "an unknown user",
            Some(basic_auth("mallory", "alice-password")),
        ),
        ("another scheme", Some("Bearer alice-password".to_owned())),
    ] {
        let answer = tls_request(web.port(), &tls, &get(auth))
            .await
            .expect("answer");
        assert_eq!(answer.status, 401, "{what}: {answer:?}");
        assert!(
            answer
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic")),
            "{what}: {answer:?}"
        );
        assert!(!answer.body.contains("app_tier_cmk"), "{what}: {answer:?}");
        assert_eq!(
            answer.header("x-frame-options"),
            Some("deny"),
            "headers on 401 too"
        );
    }
    for _ in 0..2 {
        // The second time comes from the cache of checks.
        let answer = tls_request(
            web.port(),
            &tls,
            &get(Some(basic_auth("alice", "alice-password"))),
        )
        .await
        .expect("answer");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.body.contains("app_tier_cmk_build_info"));
        assert_eq!(answer.header("x-frame-options"), Some("deny"));
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }
    let probe = tls_request(
        web.port(),
        &tls,
        &request(
            "GET",
            "/healthz",
            &[("Authorization", &basic_auth("bob", "bob-password"))],
        ),
    )
    .await
    .expect("answer");
    assert_eq!(probe.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_config_changes_apply_without_a_restart() {
    let pki = TestPki::new("test CA");
    let users = |password: &str| {
        format!(
            "{TLS_ONLY}basic_auth_users:\n  alice: '{}'\n",
            bcrypt_hash(password)
        )
    };
    let web = WebExporter::start(&pki, &users("first")).await;
    let tls = tls_connector(&pki.ca.cert, None);
    let status = |password: &'static str| {
        let tls = tls.clone();
        let port = web.port();
        async move {
            tls_request(
                port,
                &tls,
                &request(
                    "GET",
                    "/metrics",
                    &[("Authorization", &basic_auth("alice", password))],
                ),
            )
            .await
            .expect("answer")
            .status
        }
    };
    assert_eq!(status("first").await, 200);

    rewrite(&web.web_config, &users("second"));
    assert_eq!(status("first").await, 401, "old password still accepted");
    assert_eq!(status("second").await, 200);

    // A broken file keeps the last good one.
    rewrite(&web.web_config, "basic_auth_users: [not, a, map]\n");
    assert_eq!(status("second").await, 200);
    assert!(web.exporter.logs().contains("web config file not reloaded"));

    // A new server certificate (rotation) is served to the next connection.
    let rotated = TestPki::new("rotated CA");
    std::fs::write(web.dir().join("server.key"), &rotated.server.key).expect("key");
    rewrite(&web.dir().join("server.pem"), &rotated.server.cert);
    rewrite(&web.web_config, &users("second"));
    let old_trust = tls_request(web.port(), &tls, &request("GET", "/healthz", &[])).await;
    assert!(
        old_trust.is_err(),
        "still the old certificate: {old_trust:?}"
    );
    let new_trust = tls_connector(&rotated.ca.cert, None);
    let answer = tls_request(
        web.port(),
        &new_trust,
        &request(
            "GET",
            "/metrics",
            &[("Authorization", &basic_auth("alice", "second"))],
        ),
    )
    .await
    .expect("rotated certificate");
    assert_eq!(answer.status, 200);

    // SIGHUP re-reads it too (and reloads the main configuration: no harm).
    web.exporter.send_signal("HUP").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut exporter = web.exporter;
    assert!(exporter.try_exit_status().is_none(), "{}", exporter.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_web_config_file_stops_the_start_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    let (_config_dir, config) = write_config(CONFIG);
    for (yaml, key) in [
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth: x\n",
            "client_auth",
        ),
        (
            "basic_auth_users:\n  alice: hunter2\n",
            "basic_auth_users.alice",
        ),
        ("http_server_config:\n  headers:\n    Server: x\n", "Server"),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: b\n",
            "missing.pem",
        ),
    ] {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, yaml).expect("write");
        let (code, stdout, stderr) = run_scan(
            &[
                "--config",
                config.to_str().expect("path"),
                "--web.config.file",
                web.to_str().expect("path"),
            ],
            &aws_env(NO_AWS),
        )
        .await;
        assert_eq!(code, 3, "{yaml}\nstdout: {stdout}\nstderr: {stderr}");
        assert!(
            stderr.contains("web.yml") && stderr.contains(key),
            "{yaml}\nstderr: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "the bad hash was echoed: {stderr}"
        );
    }
}
