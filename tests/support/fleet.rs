//! Harness for whole-fleet tests: AWS Organizations in moto, a resource carrying a tag (so
//! that tag:GetTagKeys reports its key), and a stand-in for the Account API.
//!
//! moto 5.2.1 facts these helpers live with:
//!
//! * **Organizations.** `CreateOrganization` from the default account makes
//!   `123456789012` the management account (listed as `master`). `CreateAccount` succeeds at
//!   once (state `SUCCEEDED`), gives a random 12-digit ID and lists the account `ACTIVE`.
//!   `RemoveAccountFromOrganization` drops it from `ListAccounts`; `CloseAccount` keeps it
//!   listed as `SUSPENDED`. AssumeRole into any of them works (no role check, see mod.rs).
//! * **tag:GetTagKeys** only looks at S3 buckets, EC2 resources and Glue, not KMS keys, and is
//!   per account and region. [`tag_region`] creates a tagged EC2 volume. The EC2 call is
//!   sent as a raw query request: moto does not check signatures, and an EC2 SDK would cost
//!   minutes of build.
//! * **No Account API** (`account:ListRegions`): moto 5.2.1 only has the alternate-contact
//!   calls. [`AccountApiStub`] answers ListRegions from a fixed table on a loopback port;
//!   point the exporter at it with `AWS_ENDPOINT_URL_ACCOUNT`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::{Seeder, http_client};

impl Seeder {
    /// Organizations client in the default account (the management account).
    pub async fn organizations(&self) -> aws_sdk_organizations::Client {
        let config = self
            .sdk_config("us-east-1", Self::static_credentials())
            .await;
        let conf = aws_sdk_organizations::config::Builder::from(&config)
            .endpoint_url(self.endpoint())
            .build();
        aws_sdk_organizations::Client::from_conf(conf)
    }
}

/// Creates the organization, with the default account as its management account.
pub async fn create_organization(org: &aws_sdk_organizations::Client) {
    org.create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateOrganization: {e:?}"));
}

/// Creates a member account; returns its ID.
pub async fn create_account(org: &aws_sdk_organizations::Client, name: &str) -> String {
    let out = org
        .create_account()
        .account_name(name)
        .email(format!("{name}@example.com"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateAccount {name}: {e:?}"));
    out.create_account_status()
        .and_then(|s| s.account_id())
        .expect("CreateAccount returned no account ID")
        .to_string()
}

pub async fn remove_account(org: &aws_sdk_organizations::Client, account_id: &str) {
    org.remove_account_from_organization()
        .account_id(account_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("RemoveAccountFromOrganization {account_id}: {e:?}"));
}

pub async fn close_account(org: &aws_sdk_organizations::Client, account_id: &str) {
    org.close_account()
        .account_id(account_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CloseAccount {account_id}: {e:?}"));
}

/// Makes `tag_key` "in use" in (account, region): creates an EC2 volume carrying it.
/// `account` None: the default account.
pub async fn tag_region(seeder: &Seeder, account: Option<&str>, region: &str, tag_key: &str) {
    let access_key = match account {
        None => super::TEST_ACCESS_KEY.to_string(),
        Some(account) => seeder
            .assume_role_credentials(account)
            .await
            .access_key_id()
            .to_string(),
    };
    let body = format!(
        "Action=CreateVolume&Version=2016-11-15&AvailabilityZone={region}a&Size=1\
         &TagSpecification.1.ResourceType=volume\
         &TagSpecification.1.Tag.1.Key={tag_key}&TagSpecification.1.Tag.1.Value=x"
    );
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/20250101/{region}/ec2/aws4_request, \
         SignedHeaders=host, Signature=0000"
    );
    let resp = http_client()
        .post(format!("{}/", seeder.endpoint()))
        .header("Authorization", authorization)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("EC2 CreateVolume: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(
        status.is_success(),
        "EC2 CreateVolume answered {status}: {text}"
    );
}

/// A stand-in for the Account API's ListRegions on 127.0.0.1, two regions per page.
pub struct AccountApiStub {
    port: u16,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AccountApiStub {
    /// Serves `regions` as (name, RegionOptStatus) to every account.
    pub async fn start(regions: &[(&str, &str)]) -> AccountApiStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stub");
        let port = listener.local_addr().expect("addr").port();
        let regions: Arc<Vec<(String, String)>> = Arc::new(
            regions
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let task = {
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let regions = Arc::clone(&regions);
                    let calls = Arc::clone(&calls);
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let regions = Arc::clone(&regions);
                            let calls = Arc::clone(&calls);
                            async move { Ok::<_, Infallible>(answer(req, &regions, &calls).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        AccountApiStub { port, calls, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// ListRegions requests served so far (pages included).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for AccountApiStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    regions: &[(String, String)],
    calls: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if path != "/listRegions" {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            br#"{"message":"only ListRegions is stubbed"}"#,
        )));
        *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
        return resp;
    }
    calls.fetch_add(1, Ordering::SeqCst);
    let input: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let wanted: Vec<&str> = input["RegionOptStatusContains"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let matching: Vec<&(String, String)> = regions
        .iter()
        .filter(|(_, status)| wanted.is_empty() || wanted.contains(&status.as_str()))
        .collect();
    let start: usize = input["NextToken"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page: Vec<serde_json::Value> = matching
        .iter()
        .skip(start)
        .take(2)
        .map(|(name, status)| serde_json::json!({"RegionName": name, "RegionOptStatus": status}))
        .collect();
    let mut out = serde_json::json!({ "Regions": page });
    if start + 2 < matching.len() {
        out["NextToken"] = serde_json::Value::String((start + 2).to_string());
    }
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
