//! Shared integration-test harness for `app-tier-cmk-exporter`.
//!
//! Every test file pulls this in with `mod support;`. It provides:
//!
//! * [`free_port`]: an unused loopback TCP port.
//! * [`Moto`]: a private `moto_server` process (one per test), killed on drop,
//!   also when the test panics.
//! * [`aws_env`]: the environment that points a process at moto and nowhere else.
//! * [`Seeder`] plus free functions ([`create_key`], [`disable_key`],
//!   [`schedule_deletion`], [`deny_describe_key`], ...): seeding KMS state through
//!   the real AWS SDK, in the default moto account or in another account reached
//!   through `sts:AssumeRole`.
//! * [`Exporter`] / [`ExporterBuilder`]: the compiled exporter binary, run as a
//!   server with an injected `listen_address`, its logs captured to a file;
//!   [`run_scan`] for the one-shot `scan` mode.
//! * [`parse_metrics`], [`sample_value`], [`promtool_check_metrics`]: assertions
//!   on the Prometheus text format.
//! * [`fault_proxy`]: a loopback proxy between the exporter and moto that throttles,
//!   fails, stalls, pages and refuses AssumeRole on demand (see its module docs).
//! * [`web`]: test certificates (rcgen), a rustls client and raw HTTP exchanges.
//!
//! Nothing here talks to any address other than 127.0.0.1.
//!
//! # moto 5.2.1 behaviour that the tests (and the exporter) must live with
//!
//! Checked against `moto_server` 5.2.1 while writing this harness:
//!
//! * **Accounts / AssumeRole.** moto maps access keys to accounts. Any access key it
//!   did not issue (e.g. `testing`) is the default account `123456789012`.
//!   `sts:AssumeRole` into `arn:aws:iam::111111111111:role/X` returns `ASIA...`
//!   credentials that moto really treats as account `111111111111`
//!   (GetCallerIdentity says so, and KMS keys created with them get ARNs in that
//!   account and are invisible from the default account). The role does NOT have to
//!   exist in IAM, there is no trust policy evaluation, any `ExternalId` (or none) is
//!   accepted, and the secret key / session token are never checked (signatures are
//!   not verified). (AWS requires `RoleSessionName` to be 2..=64 characters;
//!   boto3 checks that client-side.) The `AssumedRoleId` that AssumeRole returns
//!   differs from the `UserId` that GetCallerIdentity later reports (both random).
//! * **Reset forgets STS sessions.** After `POST /moto-api/reset`, credentials that
//!   were issued by AssumeRole before the reset silently map to the *default*
//!   account again (no error). Build new clients via [`Seeder::kms`] after a reset.
//! * **KMS is per account and per region**: a key made in us-east-1 is not listed in
//!   us-west-2, as in AWS.
//! * **ListKeys / ListAliases never page.** `Limit` is ignored, everything comes
//!   back in one page with `Truncated: false` and no `NextMarker`. Paging code in
//!   the exporter is therefore not exercised by moto.
//! * **AWS-managed aliases.** ListAliases always includes the 14 reserved aliases
//!   `alias/aws/acm`, `alias/aws/ebs`, ... with fixed `TargetKeyId`s (the same in every
//!   account and region) whose keys do *not* exist: ListKeys does not return them,
//!   DescribeKey on the target key id gives NotFoundException. But DescribeKey on
//!   the alias name (`alias/aws/ebs`) lazily creates a key behind it — with
//!   `KeyManager: CUSTOMER` (real AWS says `AWS`) and no tags — which from then on
//!   shows up in ListKeys. Scanners must not DescribeKey `alias/aws/*` names.
//! * **Key policies: only an explicit Deny on DescribeKey is enforced.** moto
//!   evaluates the key policy for `DescribeKey` only; every other call
//!   (ListResourceTags, GetKeyRotationStatus, GetKeyPolicy, ...) ignores it. A
//!   statement counts when `Effect` is `Deny`, `Resource` is exactly the *string*
//!   `"*"` (not the key ARN, not a list), and `Action` names one of `kms:*`,
//!   `kms:Describe*`, `kms:DescribeKey` (a list, or a single string). `Principal`
//!   and `Condition` are ignored. The error is `AccessDeniedException` (HTTP 400).
//!   See [`deny_describe_key`].
//! * **ScheduleKeyDeletion outside 7..=30 days is a silent no-op** (the key stays as
//!   it was, `DeletionDate` comes back null), so [`schedule_deletion`] asserts the
//!   range. Within range the key goes `PendingDeletion`, `Enabled: false`, and
//!   DescribeKey returns `DeletionDate` (but no `PendingDeletionWindowInDays`).
//! * CreateKey without `KeyUsage` gives metadata with `KeyUsage: null` and
//!   `MultiRegion: null` (real AWS: `ENCRYPT_DECRYPT`, `false`) and
//!   `SigningAlgorithms: []`; don't rely on those fields being set.
//! * DisableKey gives `KeyState: Disabled`, `Enabled: false`.

#![allow(dead_code)]

pub mod fault_proxy;
pub mod fleet;
pub mod web;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_types::region::Region;
use tokio::process::{Child, Command};

/// The account moto uses for credentials it did not issue itself.
pub const DEFAULT_ACCOUNT: &str = "123456789012";
/// Role name the exporter assumes in each scanned account.
pub const SCANNER_ROLE_NAME: &str = "AppTierCmkScanner";
/// Static test credentials (moto accepts anything).
pub const TEST_ACCESS_KEY: &str = "testing";
pub const TEST_SECRET_KEY: &str = "testing";
/// A path that never exists: AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE point here
/// so that no profile of the machine leaks into a test.
pub const NONEXISTENT_AWS_FILE: &str = "/nonexistent/app-tier-cmk-exporter-tests/aws";
/// Path of the compiled exporter binary (cargo sets it for integration tests).
pub const EXPORTER_BIN: &str = env!("CARGO_BIN_EXE_app-tier-cmk-exporter");

const MOTO_START_TIMEOUT: Duration = Duration::from_secs(20);
const EXPORTER_START_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// Ports and small utilities
// ---------------------------------------------------------------------------

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0,
/// read the port, drop the listener). Racy by nature; [`Moto::start`] and
/// [`ExporterBuilder::start`] retry with another port if the bind loses the race.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A reqwest client for loopback use: no proxy, short timeouts.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

/// A fresh, empty temporary file (kept until the returned handle is dropped).
fn temp_log_file(prefix: &str) -> tempfile::NamedTempFile {
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".log")
        .tempfile()
        .expect("create temp log file")
}

fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}

/// Sends `kill -<signal> <pid>` (e.g. `signal = "TERM"`, `"INT"`, `"HUP"`).
async fn kill_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run `kill`");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

// ---------------------------------------------------------------------------
// moto
// ---------------------------------------------------------------------------

/// A `moto_server` listening on 127.0.0.1, killed when dropped.
pub struct Moto {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers HTTP.
    pub async fn start() -> Moto {
        let mut last_logs = String::new();
        for _ in 0..3 {
            match Self::try_start_on(free_port()).await {
                Ok(moto) => return moto,
                // Lost the race for the port (or moto died for another reason): retry.
                Err(logs) => last_logs = logs,
            }
        }
        panic!("moto_server exited three times before answering; last log:\n{last_logs}");
    }

    /// Starts moto on the given port (e.g. one that an exporter was already told
    /// about, to simulate AWS coming back) and waits until it answers HTTP.
    pub async fn start_on(port: u16) -> Moto {
        match Self::try_start_on(port).await {
            Ok(moto) => moto,
            Err(logs) => panic!("moto_server on port {port} exited before answering; log:\n{logs}"),
        }
    }

    /// `Err(logs)` when the process exited before it answered; panics on timeout
    /// or when `moto_server` is missing.
    async fn try_start_on(port: u16) -> Result<Moto, String> {
        let log = temp_log_file("moto-");
        let out = log.reopen().expect("reopen moto log");
        let err = out.try_clone().expect("clone moto log handle");
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // moto reads a few environment variables (MOTO_ACCOUNT_ID, AWS_*...);
        // keep the machine's out of it.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("MOTO_") || k.starts_with("AWS_") || k == "TEST_SERVER_MODE" {
                cmd.env_remove(&key);
            }
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => panic!(
                "could not start `moto_server` ({e}); it must be on PATH: \
                 pip install 'moto[server]'"
            ),
        };
        let mut moto = Moto { child, port, log };

        let client = http_client();
        let url = format!("{}/moto-api/", moto.endpoint());
        let deadline = Instant::now() + MOTO_START_TIMEOUT;
        loop {
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(moto);
            }
            if let Ok(Some(_status)) = moto.child.try_wait() {
                return Err(moto.logs());
            }
            if Instant::now() >= deadline {
                panic!(
                    "moto_server did not answer GET {url} within {MOTO_START_TIMEOUT:?}. \
                     Is moto installed? pip install 'moto[server]'\nmoto log:\n{}",
                    moto.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops all state (keys, aliases, and also STS sessions: see the module docs).
    pub async fn reset(&self) {
        let url = format!("{}/moto-api/reset", self.endpoint());
        let resp = http_client()
            .post(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(
            resp.status().is_success(),
            "POST {url} answered {}",
            resp.status()
        );
    }

    /// What moto printed so far (request log, tracebacks).
    pub fn logs(&self) -> String {
        read_lossy(self.log.path())
    }

    /// Kills moto now and waits for it to be gone (to simulate an outage).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // kill_on_drop(true) would do it too; be explicit.
        let _ = self.child.start_kill();
    }
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// The environment that points an AWS SDK (in a child process) at moto and
/// nowhere else.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", NONEXISTENT_AWS_FILE),
        ("AWS_SHARED_CREDENTIALS_FILE", NONEXISTENT_AWS_FILE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The few variables kept from the test's own environment for child processes
/// (everything else, in particular `APP_TIER_CMK_*` and `AWS_*`, is cleared).
pub fn base_env() -> Vec<(OsString, OsString)> {
    ["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"]
        .into_iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect()
}

// ---------------------------------------------------------------------------
// Seeding through the AWS SDK
// ---------------------------------------------------------------------------

/// `arn:aws:iam::<account>:role/AppTierCmkScanner`
pub fn scanner_role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/{SCANNER_ROLE_NAME}")
}

/// Builds SDK clients against moto, independent of the process environment
/// (explicit endpoint, region and static credentials).
#[derive(Clone, Debug)]
pub struct Seeder {
    endpoint: String,
}

impl Seeder {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Seeder {
            endpoint: endpoint.into(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Shared config: explicit endpoint, region and credentials, and empty
    /// profile files, so nothing comes from the machine's ~/.aws or AWS_* vars.
    // The aws-config aliases are deprecated in favour of aws-runtime's types, which
    // are not a dependency of this crate; the aliases are the same types.
    #[allow(deprecated)]
    async fn sdk_config(&self, region: &str, credentials: Credentials) -> aws_types::SdkConfig {
        use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
        let no_profiles = ProfileFiles::builder()
            .with_contents(ProfileFileKind::Config, "")
            .with_contents(ProfileFileKind::Credentials, "")
            .build();
        aws_config::defaults(BehaviorVersion::latest())
            .profile_files(no_profiles)
            .profile_name("default")
            .endpoint_url(&self.endpoint)
            .region(Region::new(region.to_string()))
            .credentials_provider(credentials)
            .load()
            .await
    }

    fn kms_client(&self, config: &aws_types::SdkConfig) -> aws_sdk_kms::Client {
        // Set the endpoint on the service config too: it beats AWS_ENDPOINT_URL_KMS.
        let conf = aws_sdk_kms::config::Builder::from(config)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_kms::Client::from_conf(conf)
    }

    fn sts_client(&self, config: &aws_types::SdkConfig) -> aws_sdk_sts::Client {
        let conf = aws_sdk_sts::config::Builder::from(config)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_sts::Client::from_conf(conf)
    }

    fn static_credentials() -> Credentials {
        Credentials::new(
            TEST_ACCESS_KEY,
            TEST_SECRET_KEY,
            None,
            None,
            "harness-static",
        )
    }

    /// STS client in the default account.
    pub async fn sts(&self, region: &str) -> aws_sdk_sts::Client {
        self.sts_client(&self.sdk_config(region, Self::static_credentials()).await)
    }

    /// Temporary credentials for `account`, obtained by `sts:AssumeRole` into
    /// [`scanner_role_arn`]`(account)` from the default account.
    pub async fn assume_role_credentials(&self, account: &str) -> Credentials {
        let role_arn = scanner_role_arn(account);
        let out = self
            .sts("us-east-1")
            .await
            .assume_role()
            .role_arn(&role_arn)
            .role_session_name("harness-seeder")
            .send()
            .await
            .unwrap_or_else(|e| panic!("sts:AssumeRole {role_arn}: {e:?}"));
        let c = out
            .credentials()
            .expect("AssumeRole returned no credentials");
        Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "harness-assume-role",
        )
    }

    /// KMS client in `region`: for `None` the default account (123456789012) with
    /// static test credentials; for `Some(account)` via AssumeRole into that account.
    pub async fn kms(&self, account: Option<&str>, region: &str) -> aws_sdk_kms::Client {
        let creds = match account {
            None => Self::static_credentials(),
            Some(account) => self.assume_role_credentials(account).await,
        };
        self.kms_client(&self.sdk_config(region, creds).await)
    }

    /// STS client with the given account's credentials (None: default account).
    pub async fn sts_as(&self, account: Option<&str>, region: &str) -> aws_sdk_sts::Client {
        let creds = match account {
            None => Self::static_credentials(),
            Some(account) => self.assume_role_credentials(account).await,
        };
        self.sts_client(&self.sdk_config(region, creds).await)
    }
}

/// Creates a symmetric key (default spec) with the given tags; returns its key id.
pub async fn create_key(client: &aws_sdk_kms::Client, tags: &[(&str, &str)]) -> String {
    create_key_described(client, "", tags).await
}

/// Like [`create_key`] with a description.
pub async fn create_key_described(
    client: &aws_sdk_kms::Client,
    description: &str,
    tags: &[(&str, &str)],
) -> String {
    let mut req = client.create_key().description(description);
    for (k, v) in tags {
        req = req.tags(kms_tag(k, v));
    }
    let out = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateKey: {e:?}"));
    out.key_metadata()
        .expect("CreateKey returned no KeyMetadata")
        .key_id()
        .to_string()
}

fn kms_tag(k: &str, v: &str) -> aws_sdk_kms::types::Tag {
    aws_sdk_kms::types::Tag::builder()
        .tag_key(k)
        .tag_value(v)
        .build()
        .expect("build Tag")
}

pub async fn disable_key(client: &aws_sdk_kms::Client, key_id: &str) {
    client
        .disable_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DisableKey {key_id}: {e:?}"));
}

pub async fn enable_key(client: &aws_sdk_kms::Client, key_id: &str) {
    client
        .enable_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("EnableKey {key_id}: {e:?}"));
}

/// Schedules deletion in `days` (7..=30; moto silently ignores other values).
/// Returns the DeletionDate as Unix seconds.
pub async fn schedule_deletion(client: &aws_sdk_kms::Client, key_id: &str, days: i32) -> i64 {
    assert!(
        (7..=30).contains(&days),
        "PendingWindowInDays must be 7..=30 (moto ignores the call otherwise), got {days}"
    );
    let out = client
        .schedule_key_deletion()
        .key_id(key_id)
        .pending_window_in_days(days)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ScheduleKeyDeletion {key_id}: {e:?}"));
    out.deletion_date()
        .expect("ScheduleKeyDeletion returned no DeletionDate")
        .secs()
}

pub async fn cancel_deletion(client: &aws_sdk_kms::Client, key_id: &str) {
    client
        .cancel_key_deletion()
        .key_id(key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CancelKeyDeletion {key_id}: {e:?}"));
}

pub async fn tag_key(client: &aws_sdk_kms::Client, key_id: &str, tags: &[(&str, &str)]) {
    let mut req = client.tag_resource().key_id(key_id);
    for (k, v) in tags {
        req = req.tags(kms_tag(k, v));
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("TagResource {key_id}: {e:?}"));
}

pub async fn untag_key(client: &aws_sdk_kms::Client, key_id: &str, tag_keys: &[&str]) {
    let mut req = client.untag_resource().key_id(key_id);
    for k in tag_keys {
        req = req.tag_keys(*k);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("UntagResource {key_id}: {e:?}"));
}

/// Creates `alias_name` (must start with `alias/`, not `alias/aws/`) for the key.
pub async fn create_alias(client: &aws_sdk_kms::Client, alias_name: &str, key_id: &str) {
    client
        .create_alias()
        .alias_name(alias_name)
        .target_key_id(key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateAlias {alias_name} -> {key_id}: {e:?}"));
}

pub async fn enable_key_rotation(client: &aws_sdk_kms::Client, key_id: &str) {
    client
        .enable_key_rotation()
        .key_id(key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("EnableKeyRotation {key_id}: {e:?}"));
}

/// The policy document [`deny_describe_key`] installs. Its shape is what moto
/// 5.2.1 needs to enforce it: `Effect: Deny`, `Resource` exactly the string `"*"`,
/// `Action` containing `kms:DescribeKey` (or `kms:Describe*` / `kms:*`).
/// The Allow statement keeps the key usable for everything else (moto ignores it,
/// real AWS would need it).
pub fn deny_describe_key_policy(account: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": "app-tier-cmk-exporter-tests-deny-describe",
        "Statement": [
            {
                "Sid": "EnableRootPermissions",
                "Effect": "Allow",
                "Principal": { "AWS": format!("arn:aws:iam::{account}:root") },
                "Action": "kms:*",
                "Resource": "*"
            },
            {
                "Sid": "DenyDescribeKeyForEveryone",
                "Effect": "Deny",
                "Principal": { "AWS": "*" },
                "Action": ["kms:DescribeKey"],
                "Resource": "*"
            }
        ]
    })
    .to_string()
}

/// Puts a key policy that explicitly denies `kms:DescribeKey` to everyone; moto
/// then answers DescribeKey for this key with `AccessDeniedException` (and only
/// DescribeKey: ListResourceTags etc. keep working, see the module docs).
pub async fn deny_describe_key(client: &aws_sdk_kms::Client, key_id: &str) {
    let account = describe_key(client, key_id)
        .await
        .aws_account_id()
        .map(str::to_string);
    let account = account.unwrap_or_else(|| DEFAULT_ACCOUNT.to_string());
    client
        .put_key_policy()
        .key_id(key_id)
        .policy_name("default")
        .policy(deny_describe_key_policy(&account))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutKeyPolicy {key_id}: {e:?}"));
}

/// DescribeKey, panicking on error.
pub async fn describe_key(
    client: &aws_sdk_kms::Client,
    key_id: &str,
) -> aws_sdk_kms::types::KeyMetadata {
    client
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeKey {key_id}: {e:?}"))
        .key_metadata
        .expect("DescribeKey returned no KeyMetadata")
}

/// DescribeKey, returning the service error code (e.g. `"AccessDeniedException"`,
/// `"NotFoundException"`) and message on failure. Transport errors panic.
pub async fn try_describe_key(
    client: &aws_sdk_kms::Client,
    key_id: &str,
) -> Result<aws_sdk_kms::types::KeyMetadata, (String, String)> {
    use aws_sdk_kms::error::{ProvideErrorMetadata as _, SdkError};
    match client.describe_key().key_id(key_id).send().await {
        Ok(out) => Ok(out
            .key_metadata
            .expect("DescribeKey returned no KeyMetadata")),
        Err(SdkError::ServiceError(e)) => {
            let e = e.err();
            Err((
                e.code().unwrap_or("<no code>").to_string(),
                e.message().unwrap_or("").to_string(),
            ))
        }
        Err(e) => panic!("DescribeKey {key_id}: {e:?}"),
    }
}

/// All key ids in the client's account and region (moto never pages; we follow
/// markers anyway).
pub async fn list_key_ids(client: &aws_sdk_kms::Client) -> Vec<String> {
    let mut ids = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = client
            .list_keys()
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListKeys: {e:?}"));
        ids.extend(
            out.keys()
                .iter()
                .filter_map(|k| k.key_id().map(str::to_string)),
        );
        match out.next_marker() {
            Some(m) if out.truncated() => marker = Some(m.to_string()),
            _ => return ids,
        }
    }
}

// ---------------------------------------------------------------------------
// The exporter binary
// ---------------------------------------------------------------------------

/// Puts `listen_address = "<addr>"` as the first line of a TOML document,
/// removing any top-level `listen_address` line that it already had.
pub fn with_listen_address(config_toml: &str, addr: &str) -> String {
    let mut out = format!("listen_address = \"{addr}\"\n");
    let mut top_level = true;
    for line in config_toml.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            top_level = false;
        }
        let is_listen = trimmed
            .strip_prefix("listen_address")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if top_level && is_listen {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Writes `config_toml` to a temporary `config.toml`; the file lives as long as
/// the returned directory.
pub fn write_config(config_toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("app-tier-cmk-exporter-test-")
        .tempdir()
        .expect("create temp dir");
    let path = dir.path().join("config.toml");
    let mut f = File::create(&path).expect("create config file");
    f.write_all(config_toml.as_bytes()).expect("write config");
    (dir, path)
}

fn isolated_command(
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    stdout: Stdio,
    stderr: Stdio,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(base_env())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    cmd
}

/// Builder for an [`Exporter`] process. `{config}` in the argument list is
/// replaced by the path of the written config file.
#[derive(Clone, Debug)]
pub struct ExporterBuilder {
    program: PathBuf,
    config_toml: String,
    args: Vec<String>,
    env: Vec<(OsString, OsString)>,
    inject_listen_address: bool,
    start_timeout: Duration,
}

impl ExporterBuilder {
    /// Default arguments `--config {config}`, no environment beyond [`base_env`].
    pub fn new(config_toml: &str) -> Self {
        ExporterBuilder {
            program: PathBuf::from(EXPORTER_BIN),
            config_toml: config_toml.to_string(),
            args: vec!["--config".into(), "{config}".into()],
            env: Vec::new(),
            inject_listen_address: true,
            start_timeout: EXPORTER_START_TIMEOUT,
        }
    }

    /// Adds [`aws_env`]`(endpoint)`.
    pub fn moto(mut self, endpoint: &str) -> Self {
        self.env.extend(
            aws_env(endpoint)
                .into_iter()
                .map(|(k, v)| (k.into(), v.into())),
        );
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<K: AsRef<str>, V: AsRef<str>>(mut self, env: &[(K, V)]) -> Self {
        for (k, v) in env {
            self.env.push((k.as_ref().into(), v.as_ref().into()));
        }
        self
    }

    /// Replaces the argument list (default `["--config", "{config}"]`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Runs another program instead of the exporter binary (for testing the
    /// harness itself with a stand-in server).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Leaves the TOML as given (no `listen_address` line is injected); the
    /// exporter's port is then unknown to the harness, so use [`Self::spawn`].
    pub fn raw_config(mut self) -> Self {
        self.inject_listen_address = false;
        self
    }

    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Spawns the process without waiting for it to listen.
    pub fn spawn(&self) -> Exporter {
        self.spawn_on(free_port())
    }

    fn spawn_on(&self, port: u16) -> Exporter {
        let config_toml = if self.inject_listen_address {
            with_listen_address(&self.config_toml, &format!("127.0.0.1:{port}"))
        } else {
            self.config_toml.clone()
        };
        let (dir, config_path) = write_config(&config_toml);
        let log_path = dir.path().join("exporter.log");
        let log = File::create(&log_path).expect("create exporter log");
        let args: Vec<OsString> = self
            .args
            .iter()
            .map(|a| {
                if a == "{config}" {
                    config_path.clone().into_os_string()
                } else {
                    a.into()
                }
            })
            .collect();
        let child = isolated_command(
            &self.program,
            &args,
            &self.env,
            Stdio::from(log.try_clone().expect("clone log handle")),
            Stdio::from(log),
        )
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        Exporter {
            child,
            port,
            config_toml,
            config_path,
            log_path,
            _dir: dir,
            client: http_client(),
        }
    }

    /// Spawns the exporter and waits until `GET /healthz` answers 200. Retries
    /// with another port if the process exits complaining that the address is in
    /// use; panics with the logs on any other early exit or on timeout.
    pub async fn start(&self) -> Exporter {
        assert!(
            self.inject_listen_address,
            "start() needs the injected listen_address; use spawn() with raw_config()"
        );
        for attempt in 0..3 {
            let mut exporter = self.spawn_on(free_port());
            match exporter.wait_healthy(self.start_timeout).await {
                Ok(()) => return exporter,
                Err(status) => {
                    let logs = exporter.logs();
                    let in_use = logs.contains("in use") || logs.contains("AddrInUse");
                    if !(in_use && attempt < 2) {
                        panic!(
                            "exporter exited ({status}) before /healthz answered 200\n\
                             config:\n{}\nlogs:\n{logs}",
                            exporter.config_toml
                        );
                    }
                }
            }
        }
        unreachable!()
    }
}

/// A running exporter. Killed on drop (also when the test panics).
pub struct Exporter {
    child: Child,
    port: u16,
    config_toml: String,
    config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Exporter {
    pub fn builder(config_toml: &str) -> ExporterBuilder {
        ExporterBuilder::new(config_toml)
    }

    /// Starts the exporter with `--config <temp file>` and the given environment
    /// (on top of PATH/HOME/RUST_LOG; pass [`aws_env`] here, or use
    /// [`Exporter::start_with_moto`]) and waits for `/healthz`.
    pub async fn start<K: AsRef<str>, V: AsRef<str>>(
        config_toml: &str,
        extra_env: &[(K, V)],
    ) -> Exporter {
        ExporterBuilder::new(config_toml)
            .envs(extra_env)
            .start()
            .await
    }

    /// [`Exporter::start`] with [`aws_env`]`(endpoint)` followed by `extra_env`.
    pub async fn start_with_moto(
        config_toml: &str,
        endpoint: &str,
        extra_env: &[(&str, &str)],
    ) -> Exporter {
        ExporterBuilder::new(config_toml)
            .moto(endpoint)
            .envs(extra_env)
            .start()
            .await
    }

    /// `Err(exit status)` if the process exits first; panics on timeout.
    async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.try_get("/healthz").await {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(status);
            }
            if Instant::now() >= deadline {
                panic!(
                    "exporter /healthz did not answer 200 within {timeout:?}\nlogs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The TOML as written (with the injected `listen_address`).
    pub fn config_toml(&self) -> &str {
        &self.config_toml
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// GET `path` (e.g. `/metrics`); connection errors are returned.
    pub async fn try_get(&self, path: &str) -> Result<(u16, String), reqwest::Error> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base_url()))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// GET `path`, panicking (with the logs) if the request fails.
    pub async fn get(&self, path: &str) -> (u16, String) {
        match self.try_get(path).await {
            Ok(r) => r,
            Err(e) => panic!("GET {path} failed: {e}\nlogs:\n{}", self.logs()),
        }
    }

    /// GET /metrics, asserting 200; returns the body.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(
            status,
            200,
            "/metrics answered {status}: {body}\nlogs:\n{}",
            self.logs()
        );
        body
    }

    /// Polls `/metrics` until `pred(body)` holds; returns that body. Panics on
    /// timeout with the last body and the logs.
    pub async fn wait_until(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("<no successful /metrics response>");
        loop {
            if let Ok((200, body)) = self.try_get("/metrics").await {
                if pred(&body) {
                    return body;
                }
                last = body;
            }
            if Instant::now() >= deadline {
                panic!(
                    "condition on /metrics not met within {timeout:?}\nlast /metrics body:\n{last}\nlogs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.try_get("/readyz").await {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("{status}: {body}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                panic!(
                    "/readyz not 200 within {timeout:?}; last: {last}\nlogs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, `"HUP"`, ...) with `kill(1)`.
    pub async fn send_signal(&self, signal: &str) {
        let pid = self.pid().expect("exporter already reaped");
        kill_pid(pid, signal).await;
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait for exporter"))
    }

    /// Exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Kills the process and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs the exporter binary once (e.g. `["scan", "--config", path, "--output",
/// "json"]`) with a cleared environment (PATH, HOME, RUST_LOG kept) plus `env`,
/// and returns `(exit code, stdout, stderr)`; the exit code is -1 if the process
/// was killed by a signal. Panics if it runs longer than 60 s.
pub async fn run_scan<K: AsRef<str>, V: AsRef<str>>(
    args: &[&str],
    env: &[(K, V)],
) -> (i32, String, String) {
    run_program(Path::new(EXPORTER_BIN), args, env).await
}

/// [`run_scan`] for any program.
pub async fn run_program<K: AsRef<str>, V: AsRef<str>>(
    program: &Path,
    args: &[&str],
    env: &[(K, V)],
) -> (i32, String, String) {
    let os_args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let env: Vec<(OsString, OsString)> = env
        .iter()
        .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
        .collect();
    let child = isolated_command(program, &os_args, &env, Stdio::piped(), Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{} {args:?}` ran longer than 60 s", program.display()))
        .expect("wait for process");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------

/// One sample line of the Prometheus text exposition format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of a text exposition (comments and blank lines are
/// skipped; an optional timestamp is ignored). Panics on malformed lines.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample_line(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}")))
        .collect()
}

fn parse_sample_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    if name.is_empty() {
        return Err("empty metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            // skip whitespace and commas
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(i, c)) = chars.peek() else {
                return Err("unterminated label set".into());
            };
            if c == '}' {
                rest = &after_brace[i + 1..];
                break;
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.next().map(|(_, c)| c) != Some('=') {
                return Err(format!("expected '=' after label {key}"));
            }
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("expected '\"' for label {key}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated value of label {key}")),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, other)) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
    }
    let mut fields = rest.split_whitespace();
    let raw = fields.next().ok_or("missing value")?;
    let value = parse_prom_float(raw).ok_or_else(|| format!("bad value {raw:?}"))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

fn parse_prom_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// All samples named `name` whose labels include every `(label, value)` pair
/// given (other labels may be present).
pub fn matching_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// Value of the first sample named `name` whose labels include the given pairs.
pub fn sample_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    matching_samples(text, name, labels)
        .first()
        .map(|s| s.value)
}

/// Pipes `text` into `promtool check metrics`; returns (success, stdout+stderr).
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run promtool (apt-get install prometheus): {e}"));
    {
        let mut stdin = child.stdin.take().expect("promtool stdin");
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("wait for promtool");
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), output)
}

/// Sum of the samples named `name` whose labels include the given pairs (0 when none).
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching_samples(text, name, labels)
        .iter()
        .map(|s| s.value)
        .sum()
}

// ---------------------------------------------------------------------------
// A loopback endpoint that never answers
// ---------------------------------------------------------------------------

/// A TCP server on 127.0.0.1 that accepts connections and never answers them: an
/// AWS endpoint that hangs (to exercise timeouts). Stopped when dropped (the held
/// connections are closed then).
pub struct Blackhole {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop_flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    held.push(stream);
                }
            }
        });
        Blackhole {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
