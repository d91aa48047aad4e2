//! No credential, session token or web password reaches the logs or the metrics, even at
//! debug level for every crate (the AWS SDK included), through AssumeRole, credential refresh,
//! basic auth with right and wrong passwords.

mod support;

use std::time::Duration;

use support::fault_proxy::{FaultProxy, Faults};
use support::web::{basic_auth, bcrypt_hash};
use support::*;

const STATIC_SECRET: &str = "StaticSecretKeyOfTheHarness0123456789abcd";
const STATIC_TOKEN: &str = "StaticSessionTokenOfTheHarnessQWERTY987";
const PASSWORD: &str = "scrape-password-7Qx";
const WRONG_PASSWORD: &str = "wrong-password-Zp3";
/// moto's session tokens start with this.
const MOTO_TOKEN_PREFIX: &str = "FQoGZXIvYXdzE";

/// Values of `<Name>...</Name>` elements in an XML text.
fn xml_values(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_or_metrics_at_debug_level() {
    let moto = Moto::start().await;
    let seeder = Seeder::new(moto.endpoint());
    create_key(
        &seeder.kms(Some("111111111111"), "us-east-1").await,
        &[("app_tier", "prod")],
    )
    .await;
    let proxy = FaultProxy::start(&moto.endpoint()).await;
    // Short sessions: the exporter refreshes, so several tokens pass through it.
    proxy.set(Faults {
        session_lifetime: Some(Duration::from_secs(4)),
        ..Faults::default()
    });

    let dir = tempfile::tempdir().expect("dir");
    let hash = bcrypt_hash(PASSWORD);
    let web_config = dir.path().join("web.yml");
    std::fs::write(
        &web_config,
        format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    )
    .expect("web config");
    let config = format!(
        "regions = [\"us-east-1\"]\n[scan]\ninterval = \"1s\"\n[[accounts]]\nname = \"tooling\"\n[[accounts]]\nrole_arn = \"{}\"\nexternal_id = \"external-id-not-secret\"\n",
        scanner_role_arn("111111111111")
    );
    let exporter = Exporter::builder(&config)
        .moto(&proxy.endpoint())
        .env("AWS_SECRET_ACCESS_KEY", STATIC_SECRET)
        .env("AWS_SESSION_TOKEN", STATIC_TOKEN)
        .env("RUST_LOG", "debug")
        .arg("--web.config.file")
        .arg(web_config.to_str().expect("path"))
        .spawn();
    support::web::wait_for_port(exporter.port(), Duration::from_secs(20)).await;

    let client = http_client();
    let url = format!("{}/metrics", exporter.base_url());
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let body = loop {
        let wrong = client
            .get(&url)
            .header("Authorization", basic_auth("prometheus", WRONG_PASSWORD))
            .send()
            .await
            .expect("scrape");
        assert_eq!(wrong.status().as_u16(), 401);
        let right = client
            .get(&url)
            .header("Authorization", basic_auth("prometheus", PASSWORD))
            .send()
            .await
            .expect("scrape");
        assert_eq!(right.status().as_u16(), 200);
        let body = right.text().await.expect("body");
        let refreshed = proxy.stats().requests("AssumeRole") >= 3;
        let scanned = sample_value(
            &body,
            "app_tier_cmk_present",
            &[("account", "111111111111"), ("region", "us-east-1")],
        ) == Some(1.0);
        if refreshed && scanned {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scan with refreshed credentials\nlogs:\n{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let logs = exporter.logs();
    assert!(
        logs.contains("DEBUG") && logs.lines().count() > 50,
        "debug logging is not on, the check would prove nothing:\n{logs}"
    );

    let answers = proxy.stats().assume_role_answers;
    let mut secrets: Vec<(String, String)> = vec![
        ("static secret key".into(), STATIC_SECRET.into()),
        ("static session token".into(), STATIC_TOKEN.into()),
        ("web password".into(), PASSWORD.into()),
        ("wrong web password".into(), WRONG_PASSWORD.into()),
        (
            "Authorization header".into(),
            basic_auth("prometheus", PASSWORD),
        ),
        ("bcrypt hash".into(), hash.clone()),
        ("moto session token prefix".into(), MOTO_TOKEN_PREFIX.into()),
    ];
    for answer in &answers {
        for (what, element) in [
            ("assumed secret key", "SecretAccessKey"),
            ("assumed session token", "SessionToken"),
        ] {
            for value in xml_values(answer, element) {
                secrets.push((what.into(), value));
            }
        }
    }
    assert!(
        secrets.len() >= 7 + 2 * 3,
        "the proxy saw no AssumeRole answers with credentials: {answers:?}"
    );
    for (what, secret) in &secrets {
        assert!(secret.len() >= 12, "{what} too short to grep for: {secret}");
        assert!(
            !logs.contains(secret.as_str()),
            "{what} found in the logs:\n{}",
            logs.lines()
                .filter(|l| l.contains(secret.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!body.contains(secret.as_str()), "{what} found in /metrics");
    }
}
