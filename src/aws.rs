//! AWS plumbing: one KMS client per region shared by every account, credentials per account
//! (default chain or AssumeRole, cached and refreshed before expiry), error classification and
//! the request counter.
//!
//! The SDK's paginators take no per-request configuration, so the account a call belongs to
//! travels in a task-local ([`AccountAccess::scope`]): the shared clients' credentials provider
//! and retry-partition interceptor read it. That keeps one client per region (a few MiB in
//! all) instead of one per (account, region), while each account keeps its own credentials and
//! its own retry token bucket (a throttled account does not starve the others).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_kms::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextRef,
};
use aws_sdk_kms::config::{ConfigBag, IdentityCache, Intercept, RuntimeComponents};
use aws_smithy_runtime::client::retries::RetryPartition;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use prometheus::IntCounterVec;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::{AccountId, Region, RoleArn};
use crate::error::{AwsError, ErrorKind};

/// Session name the scanner's AssumeRole calls carry (visible in CloudTrail).
const SESSION_NAME: &str = "app-tier-cmk-exporter";

/// Refresh assumed credentials this long before they expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

tokio::task_local! {
    static CURRENT_ACCOUNT: Arc<AccountAccess>;
}

/// Shared SDK configuration and clients.
pub struct AwsClients {
    base: SdkConfig,
    sts: aws_sdk_sts::Client,
    kms_by_region: Mutex<HashMap<String, aws_sdk_kms::Client>>,
    tagging_by_region: Mutex<HashMap<String, aws_sdk_resourcegroupstagging::Client>>,
    account_api: OnceLock<aws_sdk_account::Client>,
    organizations: OnceLock<aws_sdk_organizations::Client>,
    requests: RequestCounter,
    /// Region of the global APIs (Organizations, Account): the SDK's default, or a fallback.
    home_region: String,
}

impl AwsClients {
    /// Loads the standard AWS chain (env, profile, web identity, IMDS, `AWS_ENDPOINT_URL`).
    pub async fn load(
        requests_total: IntCounterVec,
        fallback_region: Option<&Region>,
    ) -> AwsClients {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(500))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(30))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .load()
            .await;
        let requests = RequestCounter(requests_total);
        let mut sts = aws_sdk_sts::config::Builder::from(&base).interceptor(requests.clone());
        let home_region = base.region().map(|r| r.to_string()).unwrap_or_else(|| {
            fallback_region
                .map_or("us-east-1", |r| r.as_str())
                .to_owned()
        });
        if base.region().is_none() {
            // STS needs a region to sign; any region's endpoint serves AssumeRole.
            sts = sts.region(aws_sdk_sts::config::Region::new(home_region.clone()));
        }
        AwsClients {
            sts: aws_sdk_sts::Client::from_conf(sts.build()),
            base,
            kms_by_region: Mutex::new(HashMap::new()),
            tagging_by_region: Mutex::new(HashMap::new()),
            account_api: OnceLock::new(),
            organizations: OnceLock::new(),
            requests,
            home_region,
        }
    }

    /// The SDK's default region (`AWS_REGION`, profile), if any.
    pub fn default_region(&self) -> Option<String> {
        self.base.region().map(|r| r.to_string())
    }

    /// The KMS client of `region`, created on first use and shared by every account.
    pub fn kms(&self, region: &Region) -> aws_sdk_kms::Client {
        per_region(&self.kms_by_region, region, || {
            let config = aws_sdk_kms::config::Builder::from(&self.base)
                .region(aws_sdk_kms::config::Region::new(region.0.clone()))
                .credentials_provider(ScopedCredentials)
                // Each account caches its own credentials; the SDK's cache would mix them.
                .identity_cache(IdentityCache::no_cache())
                .interceptor(AccountRetryPartition)
                .interceptor(self.requests.clone())
                .build();
            aws_sdk_kms::Client::from_conf(config)
        })
    }

    /// Region of the global APIs, and where an account whose regions are unknown is reported.
    pub fn home_region(&self) -> &str {
        &self.home_region
    }

    /// The Resource Groups Tagging API client of `region` (tag:GetTagKeys), shared like KMS's.
    pub fn tagging(&self, region: &Region) -> aws_sdk_resourcegroupstagging::Client {
        per_region(&self.tagging_by_region, region, || {
            let config = aws_sdk_resourcegroupstagging::config::Builder::from(&self.base)
                .region(aws_sdk_resourcegroupstagging::config::Region::new(
                    region.0.clone(),
                ))
                .credentials_provider(ScopedCredentials)
                .identity_cache(IdentityCache::no_cache())
                .interceptor(AccountRetryPartition)
                .interceptor(self.requests.clone())
                .build();
            aws_sdk_resourcegroupstagging::Client::from_conf(config)
        })
    }

    /// The Account API client (account:ListRegions), created once; it uses the credentials of
    /// the account in scope.
    pub fn account_api(&self) -> &aws_sdk_account::Client {
        self.account_api.get_or_init(|| {
            let config = aws_sdk_account::config::Builder::from(&self.base)
                .region(aws_sdk_account::config::Region::new(
                    self.home_region.clone(),
                ))
                .credentials_provider(ScopedCredentials)
                .identity_cache(IdentityCache::no_cache())
                .interceptor(AccountRetryPartition)
                .interceptor(self.requests.clone())
                .build();
            aws_sdk_account::Client::from_conf(config)
        })
    }

    /// The Organizations client with the default credentials (management or delegated admin),
    /// created once.
    pub fn organizations(&self) -> &aws_sdk_organizations::Client {
        self.organizations.get_or_init(|| {
            let config = aws_sdk_organizations::config::Builder::from(&self.base)
                .region(aws_sdk_organizations::config::Region::new(
                    self.home_region.clone(),
                ))
                .interceptor(self.requests.clone())
                .build();
            aws_sdk_organizations::Client::from_conf(config)
        })
    }

    /// Access to one account: AssumeRole when `role` is set, else the default credentials.
    /// `session_duration` is asked for AssumeRole sessions (None: AWS's default).
    pub fn account_access(
        &self,
        label: String,
        role: Option<(&RoleArn, Option<&str>)>,
        session_duration: Option<Duration>,
    ) -> Arc<AccountAccess> {
        let source = match role {
            Some((arn, external_id)) => CredentialSource::AssumeRole {
                sts: self.sts.clone(),
                role_arn: arn.as_str().to_owned(),
                external_id: external_id.map(str::to_owned),
                session_duration,
            },
            None => CredentialSource::Default(self.base.credentials_provider()),
        };
        Arc::new(AccountAccess {
            retry_partition: RetryPartition::new(format!("kms-{label}")),
            label,
            source,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// `sts:GetCallerIdentity` with the default credentials: the account they belong to.
    pub async fn default_account_id(&self) -> Result<AccountId, AwsError> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| classify("GetCallerIdentity", &e))?;
        let account = out.account().unwrap_or_default();
        AccountId::parse(account).ok_or_else(|| {
            AwsError::new(
                "GetCallerIdentity",
                ErrorKind::Other,
                format!("answer holds no 12-digit account ID: {account:?}"),
            )
        })
    }
}

/// The client of `region` from `clients`, made by `make` on first use.
fn per_region<C: Clone>(
    clients: &Mutex<HashMap<String, C>>,
    region: &Region,
    make: impl FnOnce() -> C,
) -> C {
    let mut clients = clients
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    clients.entry(region.0.clone()).or_insert_with(make).clone()
}

/// One of the `scan.concurrency` permits for an AWS call; fails only when the scanner is
/// shutting down.
pub async fn permit(permits: &Semaphore) -> Result<SemaphorePermit<'_>, AwsError> {
    permits
        .acquire()
        .await
        .map_err(|_| AwsError::new("Scan", ErrorKind::Other, "scanner is shutting down"))
}

enum CredentialSource {
    Default(Option<SharedCredentialsProvider>),
    AssumeRole {
        sts: aws_sdk_sts::Client,
        role_arn: String,
        external_id: Option<String>,
        session_duration: Option<Duration>,
    },
}

/// Credentials and retry partition of one account.
pub struct AccountAccess {
    label: String,
    source: CredentialSource,
    retry_partition: RetryPartition,
    cached: tokio::sync::Mutex<Option<(Credentials, SystemTime)>>,
}

impl AccountAccess {
    /// Runs `fut` with this account's credentials on every shared-client call it makes.
    pub async fn scope<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        CURRENT_ACCOUNT.scope(Arc::clone(self), fut).await
    }

    /// The account's credentials, from cache while they stay valid for [`REFRESH_MARGIN`].
    pub async fn credentials(&self) -> Result<Credentials, AwsError> {
        let mut cached = self.cached.lock().await;
        if let Some((credentials, issued)) = cached.as_ref()
            && still_fresh(credentials, *issued, SystemTime::now())
        {
            return Ok(credentials.clone());
        }
        let issued = SystemTime::now();
        let fresh = match &self.source {
            CredentialSource::Default(provider) => {
                let provider = provider.as_ref().ok_or_else(|| {
                    AwsError::new(
                        "ResolveCredentials",
                        ErrorKind::AssumeRole,
                        "no credentials provider is configured",
                    )
                })?;
                provider.provide_credentials().await.map_err(|e| {
                    AwsError::new(
                        "ResolveCredentials",
                        ErrorKind::AssumeRole,
                        format!("default credentials chain: {}", DisplayErrorContext(&e)),
                    )
                })?
            }
            CredentialSource::AssumeRole {
                sts,
                role_arn,
                external_id,
                session_duration,
            } => assume_role(sts, role_arn, external_id.as_deref(), *session_duration).await?,
        };
        *cached = Some((fresh.clone(), issued));
        Ok(fresh)
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// True while `credentials` (obtained at `issued`) need no refresh at `now`.
fn still_fresh(credentials: &Credentials, issued: SystemTime, now: SystemTime) -> bool {
    match credentials.expiry() {
        None => true,
        Some(expiry) => {
            // Short sessions (tests, tight policies) refresh at three quarters of their life.
            let lifetime = expiry.duration_since(issued).unwrap_or_default();
            let margin = REFRESH_MARGIN.min(lifetime / 4);
            expiry > now + margin
        }
    }
}

async fn assume_role(
    sts: &aws_sdk_sts::Client,
    role_arn: &str,
    external_id: Option<&str>,
    session_duration: Option<Duration>,
) -> Result<Credentials, AwsError> {
    let out = sts
        .assume_role()
        .role_arn(role_arn)
        .role_session_name(SESSION_NAME)
        .set_external_id(external_id.map(str::to_owned))
        .set_duration_seconds(session_duration.and_then(|d| i32::try_from(d.as_secs()).ok()))
        .send()
        .await
        .map_err(|e| {
            let mut error = classify("AssumeRole", &e);
            // Whatever the cause, the account cannot be scanned: that is an assume_role failure.
            if error.kind != ErrorKind::Network && error.kind != ErrorKind::Timeout {
                error.kind = ErrorKind::AssumeRole;
            }
            error
        })?;
    let creds = out.credentials().ok_or_else(|| {
        AwsError::new(
            "AssumeRole",
            ErrorKind::AssumeRole,
            "answer holds no credentials",
        )
    })?;
    let expiry = SystemTime::try_from(*creds.expiration()).ok();
    Ok(Credentials::new(
        creds.access_key_id(),
        creds.secret_access_key(),
        Some(creds.session_token().to_owned()),
        expiry,
        "AssumeRole",
    ))
}

/// Credentials provider of the shared KMS clients: the credentials of the account in scope.
#[derive(Debug)]
struct ScopedCredentials;

impl ProvideCredentials for ScopedCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let access = CURRENT_ACCOUNT.try_with(Arc::clone).map_err(|_| {
                CredentialsError::not_loaded("KMS call made outside an account scope")
            })?;
            access
                .credentials()
                .await
                .map_err(CredentialsError::provider_error)
        })
    }
}

/// Puts the scoped account's retry partition in the request's config, before the retry
/// strategy picks its token bucket.
#[derive(Debug)]
struct AccountRetryPartition;

impl Intercept for AccountRetryPartition {
    fn name(&self) -> &'static str {
        "AccountRetryPartition"
    }

    fn modify_before_serialization(
        &self,
        _context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(partition) = CURRENT_ACCOUNT.try_with(|a| a.retry_partition.clone()) {
            cfg.interceptor_state().store_put(partition);
        }
        Ok(())
    }
}

/// Counts every HTTP attempt (what AWS bills and throttles) by operation and outcome.
#[derive(Clone, Debug)]
struct RequestCounter(IntCounterVec);

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let outcome = match (context.response(), context.output_or_error()) {
            (_, Some(Ok(_))) => "success",
            (Some(response), _) => attempt_error_kind(response).as_str(),
            (None, Some(Err(e))) if e.is_timeout_error() => ErrorKind::Timeout.as_str(),
            (None, Some(Err(e))) => match e.as_connector_error() {
                Some(c) if c.is_timeout() => ErrorKind::Timeout.as_str(),
                Some(c) if c.is_io() => ErrorKind::Network.as_str(),
                _ => ErrorKind::Other.as_str(),
            },
            (None, None) => ErrorKind::Other.as_str(),
        };
        self.0.with_label_values(&[operation, outcome]).inc();
        Ok(())
    }
}

/// Classifies an HTTP answer that was not a success.
fn attempt_error_kind(response: &HttpResponse) -> ErrorKind {
    let status = response.status().as_u16();
    if status == 429 {
        return ErrorKind::Throttled;
    }
    let code = response
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.split(':').next().unwrap_or(v).to_owned())
        .or_else(|| response.body().bytes().and_then(error_code_in_body));
    match code.map(|c| ErrorKind::from_aws_code(&c)) {
        Some(kind) if kind != ErrorKind::Other => kind,
        _ if status == 403 => ErrorKind::AccessDenied,
        _ => ErrorKind::Other,
    }
}

/// `__type` of a JSON error, or `<Code>` of an XML one.
fn error_code_in_body(body: &[u8]) -> Option<String> {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        return json
            .get("__type")
            .or_else(|| json.get("code"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
    }
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].trim().to_owned())
}

/// Classifies a failed SDK call into an [`AwsError`].
pub fn classify<E>(operation: &'static str, error: &SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let message = DisplayErrorContext(error).to_string();
    let kind = match error {
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                ErrorKind::Timeout
            } else if caused_by_credentials(error) {
                ErrorKind::AssumeRole
            } else if failure.is_io() {
                ErrorKind::Network
            } else {
                ErrorKind::Other
            }
        }
        SdkError::ServiceError(service) => {
            let kind = service
                .err()
                .code()
                .map_or(ErrorKind::Other, ErrorKind::from_aws_code);
            match (kind, service.raw().status().as_u16()) {
                (ErrorKind::Other, 429) => ErrorKind::Throttled,
                (ErrorKind::Other, 403) => ErrorKind::AccessDenied,
                (kind, _) => kind,
            }
        }
        SdkError::ConstructionFailure(_) if caused_by_credentials(error) => ErrorKind::AssumeRole,
        _ => ErrorKind::Other,
    };
    AwsError::new(operation, kind, message)
}

/// The AWS error code of a service error (e.g. "NotFoundException"), if any.
pub fn service_code<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> Option<&str> {
    match error {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

fn caused_by_credentials(error: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_code_is_read() {
        assert_eq!(
            error_code_in_body(br#"{"__type":"ThrottlingException","message":"slow"}"#).as_deref(),
            Some("ThrottlingException")
        );
    }

    #[test]
    fn xml_error_code_is_read() {
        let body = b"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code></Error></ErrorResponse>";
        assert_eq!(error_code_in_body(body).as_deref(), Some("AccessDenied"));
    }

    #[test]
    fn garbage_body_has_no_code() {
        assert_eq!(error_code_in_body(b"{\"__ty"), None);
    }

    #[test]
    fn credentials_without_expiry_stay_fresh() {
        let c = Credentials::new("a", "b", None, None, "test");
        let now = SystemTime::now();
        assert!(still_fresh(&c, now, now + Duration::from_secs(86_400)));
    }

    #[test]
    fn hour_long_credentials_are_refreshed_five_minutes_before_expiry() {
        let t0 = SystemTime::now();
        let c = Credentials::new("a", "b", None, Some(t0 + Duration::from_secs(3600)), "t");
        assert!(still_fresh(&c, t0, t0 + Duration::from_secs(3200)));
        assert!(!still_fresh(&c, t0, t0 + Duration::from_secs(3310)));
    }

    #[test]
    fn short_sessions_are_refreshed_at_three_quarters_of_their_life() {
        let t0 = SystemTime::now();
        let c = Credentials::new("a", "b", None, Some(t0 + Duration::from_secs(240)), "t");
        assert!(still_fresh(&c, t0, t0 + Duration::from_secs(170)));
        assert!(!still_fresh(&c, t0, t0 + Duration::from_secs(190)));
        assert!(!still_fresh(&c, t0, t0 + Duration::from_secs(300)));
    }
}
