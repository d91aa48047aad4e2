//! Configuration: figment loading (TOML file, then `APP_TIER_CMK_*` variables), defaults and
//! validation into a typed [`Config`].
//!
//! Values are validated while they are deserialized (newtypes with `try_from`), so that every
//! error carries the key and the source (file or variable) that figment knows about.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::shard::{Shard, ShardError};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "APP_TIER_CMK_";

/// Default port: outside the 9100-9999 range that Prometheus exporters crowd.
pub const DEFAULT_PORT: u16 = 10711;

/// The whole configuration, as loaded and validated.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen_address: ListenAddress,
    pub metrics_path: MetricsPath,
    /// Regions for accounts that name none: a list, or "all" (the enabled regions). Empty
    /// list: the SDK's default region.
    pub regions: RegionSelection,
    /// Regions never scanned, whatever `regions` says (inherited like `regions`).
    pub exclude_regions: Vec<Region>,
    pub scan: ScanConfig,
    #[serde(rename = "match")]
    pub matching: MatchConfig,
    /// Accounts to scan. Empty (and no organization): the account of the default credentials.
    pub accounts: Vec<AccountConfig>,
    /// The accounts of an AWS Organization, listed and refreshed at run time.
    pub organization: Option<OrganizationConfig>,
    /// This replica's shard, 0 to `total_shards - 1` (`--shard` overrides).
    pub shard: u32,
    /// Number of replicas that share the accounts (`--total-shards` overrides).
    pub total_shards: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_address: ListenAddress(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
            metrics_path: MetricsPath("/metrics".to_owned()),
            regions: RegionSelection::default(),
            exclude_regions: Vec::new(),
            scan: ScanConfig::default(),
            matching: MatchConfig::default(),
            accounts: Vec::new(),
            organization: None,
            shard: 0,
            total_shards: 1,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// Time between the starts of two scan rounds.
    pub interval: PositiveDuration,
    /// Bound on one target's scan.
    pub timeout: PositiveDuration,
    /// AWS calls in flight across all targets.
    pub concurrency: Concurrency,
    /// How candidate keys are found.
    pub discovery: KeyDiscovery,
}

/// How a scan finds the keys that may carry the App-Tier tag.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyDiscovery {
    /// Every key of the region: ListKeys, ListAliases, ListResourceTags per customer key.
    #[default]
    Kms,
    /// The Resource Groups Tagging API's GetResources: one call per 100 tagged keys, but
    /// eventually consistent (see README, Performance and scale).
    Tagging,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            interval: PositiveDuration(Duration::from_secs(300)),
            timeout: PositiveDuration(Duration::from_secs(120)),
            concurrency: Concurrency(16),
            discovery: KeyDiscovery::Kms,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    pub tag_key: TagKey,
    /// Empty: any value.
    pub tag_values: Vec<String>,
    pub case_insensitive: bool,
    pub key_states: Vec<KeyStateName>,
    /// Where the key is required: everywhere, or only where the tag key is in use.
    pub require: Requirement,
    /// Read the region's tag keys (tag:GetTagKeys) for `app_tier_cmk_tag_in_use`. Off by
    /// default (one more call and IAM action per target); implied by `when_tag_in_use`.
    pub check_tag_in_use: bool,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            tag_key: TagKey("app_tier".to_owned()),
            tag_values: Vec::new(),
            case_insensitive: false,
            key_states: vec![KeyStateName("Enabled".to_owned())],
            require: Requirement::Always,
            check_tag_in_use: false,
        }
    }
}

/// `match.require`: where an App-Tier key must exist.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// In every scanned account and region.
    #[default]
    Always,
    /// Only where some resource of the region carries the tag key (CloudSploit's rule).
    WhenTagInUse,
}

/// `[organization]`: scan the active accounts of an AWS Organization.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrganizationConfig {
    /// `false` keeps the section without using it.
    pub enabled: bool,
    /// Role assumed in every member account (same name everywhere).
    pub role_name: Option<RoleName>,
    pub external_id: Option<String>,
    /// Only these accounts (empty: all).
    pub include: Vec<AccountId>,
    /// Never these accounts.
    pub exclude: Vec<AccountId>,
    /// How often the account list (and the enabled regions) are read again.
    pub refresh_interval: PositiveDuration,
    /// Absent: the top-level `regions`.
    pub regions: Option<RegionSelection>,
    /// Absent: the top-level `exclude_regions`.
    pub exclude_regions: Option<Vec<Region>>,
}

/// Default of `organization.refresh_interval`, also the refresh of enabled-region lists.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

impl Default for OrganizationConfig {
    fn default() -> Self {
        OrganizationConfig {
            enabled: true,
            role_name: None,
            external_id: None,
            include: Vec::new(),
            exclude: Vec::new(),
            refresh_interval: PositiveDuration(DEFAULT_REFRESH_INTERVAL),
            regions: None,
            exclude_regions: None,
        }
    }
}

/// `regions`: a list of region names, or the string "all" (the account's enabled regions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionSelection {
    Listed(Vec<Region>),
    AllEnabled,
}

impl Default for RegionSelection {
    fn default() -> Self {
        RegionSelection::Listed(Vec::new())
    }
}

impl From<Vec<Region>> for RegionSelection {
    fn from(regions: Vec<Region>) -> Self {
        RegionSelection::Listed(regions)
    }
}

impl RegionSelection {
    /// The listed regions (none for "all").
    pub fn listed(&self) -> &[Region] {
        match self {
            RegionSelection::Listed(regions) => regions,
            RegionSelection::AllEnabled => &[],
        }
    }
}

impl Serialize for RegionSelection {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RegionSelection::Listed(regions) => regions.serialize(serializer),
            RegionSelection::AllEnabled => serializer.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for RegionSelection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RegionSelection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of regions, e.g. [\"us-east-1\"], or the string \"all\"")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                if value == "all" {
                    Ok(RegionSelection::AllEnabled)
                } else {
                    Err(E::custom(format!(
                        "{value:?} is neither a list of regions nor \"all\"; write e.g. [\"{value}\"] or \"all\""
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut regions = Vec::new();
                while let Some(region) = seq.next_element::<Region>()? {
                    regions.push(region);
                }
                Ok(RegionSelection::Listed(regions))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// An IAM role name, optionally with a path: `AppTierCmkScanner`, `security/AppTierCmkScanner`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct RoleName(pub String);

impl TryFrom<String> for RoleName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let name = value.rsplit('/').next().unwrap_or("");
        let ok = !name.is_empty()
            && name.len() <= 64
            && !value.starts_with('/')
            && !value.contains("//")
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c));
        if ok {
            Ok(RoleName(value))
        } else {
            Err(format!(
                "{value:?} is not an IAM role name; write e.g. \"AppTierCmkScanner\" (the same role in every member account)"
            ))
        }
    }
}

impl From<RoleName> for String {
    fn from(value: RoleName) -> String {
        value.0
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Human name, exported as `app_tier_cmk_account_info{account_name}`.
    pub name: Option<String>,
    /// Expected account ID; with `role_arn` it must match the ARN's account.
    pub account_id: Option<AccountId>,
    /// Role to assume; absent: the default credentials.
    pub role_arn: Option<RoleArn>,
    pub external_id: Option<String>,
    /// Lifetime asked for the assumed role's session (AWS: 15m to 12h); absent: AWS's 1h.
    pub session_duration: Option<SessionDuration>,
    /// Absent: the top-level `regions`.
    pub regions: Option<RegionSelection>,
    /// Absent: the top-level `exclude_regions`.
    pub exclude_regions: Option<Vec<Region>>,
}

/// `host:port` to listen on.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct ListenAddress(pub SocketAddr);

impl TryFrom<String> for ListenAddress {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        value.parse().map(ListenAddress).map_err(|_| {
            format!("{value:?} is not a listen address; write host:port, e.g. \"0.0.0.0:{DEFAULT_PORT}\"")
        })
    }
}

impl From<ListenAddress> for String {
    fn from(value: ListenAddress) -> String {
        value.0.to_string()
    }
}

/// HTTP path of the metrics endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct MetricsPath(pub String);

impl TryFrom<String> for MetricsPath {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let reserved = ["/", "/healthz", "/readyz", "/-/reload"];
        if !value.starts_with('/') || value.contains(['?', '#', ' ']) {
            Err(format!(
                "{value:?} is not an HTTP path; write e.g. \"/metrics\""
            ))
        } else if reserved.contains(&value.as_str()) {
            Err(format!(
                "{value:?} is taken by another endpoint; pick another path"
            ))
        } else {
            Ok(MetricsPath(value))
        }
    }
}

impl From<MetricsPath> for String {
    fn from(value: MetricsPath) -> String {
        value.0
    }
}

/// A humantime duration greater than zero ("30s", "5m", "1h 30m").
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct PositiveDuration(pub Duration);

impl TryFrom<String> for PositiveDuration {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match humantime::parse_duration(value.trim()) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(PositiveDuration(d)),
            Ok(_) => Err(format!("{value:?} is too short; use at least \"100ms\"")),
            Err(e) => Err(format!(
                "{value:?} is not a duration ({e}); write e.g. \"30s\", \"5m\" or \"1h\""
            )),
        }
    }
}

impl From<PositiveDuration> for String {
    fn from(value: PositiveDuration) -> String {
        humantime::format_duration(value.0).to_string()
    }
}

/// An AssumeRole session duration within AWS's bounds, 15 minutes to 12 hours.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct SessionDuration(pub Duration);

impl TryFrom<String> for SessionDuration {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match humantime::parse_duration(value.trim()) {
            Ok(d) if (Duration::from_secs(900)..=Duration::from_secs(43_200)).contains(&d) => {
                Ok(SessionDuration(d))
            }
            Ok(_) => Err(format!(
                "{value:?} is outside AWS's AssumeRole bounds; use \"15m\" to \"12h\" (the role's maximum session duration applies too)"
            )),
            Err(e) => Err(format!(
                "{value:?} is not a duration ({e}); write e.g. \"1h\""
            )),
        }
    }
}

impl From<SessionDuration> for String {
    fn from(value: SessionDuration) -> String {
        humantime::format_duration(value.0).to_string()
    }
}

/// Number of AWS calls in flight, 1 to 1024.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "i64", into = "i64")]
pub struct Concurrency(pub usize);

impl TryFrom<i64> for Concurrency {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        match usize::try_from(value) {
            Ok(n @ 1..=1024) => Ok(Concurrency(n)),
            _ => Err(format!("{value} is out of range; use 1 to 1024")),
        }
    }
}

impl From<Concurrency> for i64 {
    fn from(value: Concurrency) -> i64 {
        value.0 as i64
    }
}

/// A non-empty tag key of at most 128 characters (AWS's limit).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct TagKey(pub String);

impl TryFrom<String> for TagKey {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if value.is_empty() {
            Err(
                "\"\" is empty; name the tag key that marks App-Tier keys, e.g. \"app_tier\""
                    .to_owned(),
            )
        } else if value.chars().count() > 128 {
            Err(format!(
                "{value:?} is longer than AWS's 128-character tag key limit"
            ))
        } else {
            Ok(TagKey(value))
        }
    }
}

impl From<TagKey> for String {
    fn from(value: TagKey) -> String {
        value.0
    }
}

/// The KeyState values KMS reports.
pub const KEY_STATES: [&str; 8] = [
    "Creating",
    "Enabled",
    "Disabled",
    "PendingDeletion",
    "PendingImport",
    "PendingReplicaDeletion",
    "Unavailable",
    "Updating",
];

/// One of [`KEY_STATES`], spelled as KMS spells it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct KeyStateName(pub String);

impl TryFrom<String> for KeyStateName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if KEY_STATES.contains(&value.as_str()) {
            Ok(KeyStateName(value))
        } else {
            Err(format!(
                "{value:?} is not a KMS key state; use one of {}",
                KEY_STATES.join(", ")
            ))
        }
    }
}

impl From<KeyStateName> for String {
    fn from(value: KeyStateName) -> String {
        value.0
    }
}

/// A 12-digit AWS account ID.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(pub String);

impl AccountId {
    pub fn parse(value: &str) -> Option<AccountId> {
        (value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| AccountId(value.to_owned()))
    }
}

impl TryFrom<String> for AccountId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        AccountId::parse(&value)
            .ok_or_else(|| format!("{value:?} is not an AWS account ID (12 digits)"))
    }
}

impl From<AccountId> for String {
    fn from(value: AccountId) -> String {
        value.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IAM role ARN, `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct RoleArn {
    arn: String,
    account: AccountId,
}

impl RoleArn {
    pub fn as_str(&self) -> &str {
        &self.arn
    }
    pub fn account(&self) -> &AccountId {
        &self.account
    }
}

impl TryFrom<String> for RoleArn {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "{value:?} is not an IAM role ARN; write arn:aws:iam::123456789012:role/AppTierCmkScanner"
            )
        };
        let parts: Vec<&str> = value.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        let partition_ok = matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
            || partition.starts_with("aws-iso");
        let name = resource.strip_prefix("role/").unwrap_or("");
        let name_ok = !name.is_empty()
            && !name.ends_with('/')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c));
        match AccountId::parse(account) {
            Some(account)
                if arn == "arn"
                    && partition_ok
                    && service == "iam"
                    && region.is_empty()
                    && name_ok =>
            {
                Ok(RoleArn {
                    arn: value,
                    account,
                })
            }
            _ => Err(bad()),
        }
    }
}

impl From<RoleArn> for String {
    fn from(value: RoleArn) -> String {
        value.arn
    }
}

/// A region name shaped like AWS's: `us-east-1`, `eu-central-2`, `us-gov-west-1`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct Region(pub String);

impl Region {
    pub fn parse(value: &str) -> Option<Region> {
        let parts: Vec<&str> = value.split('-').collect();
        let shaped = parts.len() >= 3
            && parts[0].len() == 2
            && parts[..parts.len() - 1]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts[parts.len() - 1]
                .parse::<u8>()
                .is_ok_and(|n| n > 0 && !parts[parts.len() - 1].starts_with('0'));
        shaped.then(|| Region(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Region {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Region::parse(&value)
            .ok_or_else(|| format!("{value:?} is not an AWS region name; write e.g. \"us-east-1\""))
    }
}

impl From<Region> for String {
    fn from(value: Region) -> String {
        value.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A configuration that could not be loaded; the message names source, key and value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads defaults, then the TOML file (when given), then `APP_TIER_CMK_*` variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Like [`Config::load`] with an explicit environment provider (for tests).
    pub fn load_from(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {}: not found or not a regular file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(env);
        let config: Config = figment
            .extract()
            .map_err(|e| describe_figment_error(e, path))?;
        config.check_consistency(&figment)?;
        Ok(config)
    }

    /// This replica's shard.
    pub fn shard(&self) -> Result<Shard, ShardError> {
        Shard::new(self.shard, self.total_shards)
    }

    /// Checks that span several keys (serde checked each value alone).
    fn check_consistency(&self, figment: &Figment) -> Result<(), ConfigError> {
        // Names the file, or the variable that set `key`.
        let source = |key: &str| match figment.find_metadata(key) {
            Some(md) if md.name.contains("environment") => env_var_source(key),
            Some(md) => source_name_of(md),
            None => "configuration".to_owned(),
        };
        let mut seen_accounts = BTreeSet::new();
        let mut default_credentials = 0;
        for (i, account) in self.accounts.iter().enumerate() {
            if let (Some(id), Some(arn)) = (&account.account_id, &account.role_arn)
                && id != arn.account()
            {
                return Err(ConfigError(format!(
                    "{}: key `accounts.{i}.account_id`: {:?} does not match the account {} of role_arn {:?}",
                    source("accounts"),
                    id.0,
                    arn.account(),
                    arn.as_str()
                )));
            }
            if account.role_arn.is_none() {
                default_credentials += 1;
                if account.session_duration.is_some() {
                    return Err(ConfigError(format!(
                        "{}: key `accounts.{i}.session_duration`: set without role_arn; it applies to AssumeRole sessions only",
                        source("accounts")
                    )));
                }
                if account.external_id.is_some() {
                    return Err(ConfigError(format!(
                        "{}: key `accounts.{i}.external_id`: set without role_arn; the external ID is only sent with AssumeRole",
                        source("accounts")
                    )));
                }
            }
            let identity = account
                .role_arn
                .as_ref()
                .map(|arn| arn.as_str().to_owned())
                .unwrap_or_else(|| "default credentials".to_owned());
            if !seen_accounts.insert(identity.clone()) {
                return Err(ConfigError(format!(
                    "{}: key `accounts.{i}`: {identity:?} is listed twice",
                    source("accounts")
                )));
            }
            if let Some(regions) = &account.regions {
                check_unique_regions(
                    regions.listed(),
                    &format!("accounts.{i}.regions"),
                    &source("accounts"),
                )?;
            }
            if let Some(regions) = &account.exclude_regions {
                check_unique_regions(
                    regions,
                    &format!("accounts.{i}.exclude_regions"),
                    &source("accounts"),
                )?;
            }
        }
        if default_credentials > 1 {
            return Err(ConfigError(format!(
                "{}: key `accounts`: more than one account uses the default credentials (no role_arn)",
                source("accounts")
            )));
        }
        check_unique_regions(self.regions.listed(), "regions", &source("regions"))?;
        check_unique_regions(
            &self.exclude_regions,
            "exclude_regions",
            &source("exclude_regions"),
        )?;
        if let Some(org) = &self.organization {
            org.check(&source("organization"))?;
        }
        let mut states = BTreeSet::new();
        for state in &self.matching.key_states {
            if !states.insert(&state.0) {
                return Err(ConfigError(format!(
                    "{}: key `match.key_states`: {:?} is listed twice",
                    source("match.key_states"),
                    state.0
                )));
            }
        }
        if let Err(e) = self.shard() {
            let key = if figment.find_metadata("shard").is_some() {
                "shard"
            } else {
                "total_shards"
            };
            return Err(ConfigError(format!(
                "{}: keys `shard` = {}, `total_shards` = {}: {e}",
                source(key),
                self.shard,
                self.total_shards
            )));
        }
        if self.matching.key_states.is_empty() {
            return Err(ConfigError(format!(
                "{}: key `match.key_states`: empty; no key could ever count as present (default: [\"Enabled\"])",
                source("match.key_states")
            )));
        }
        Ok(())
    }
}

impl OrganizationConfig {
    fn check(&self, source: &str) -> Result<(), ConfigError> {
        if self.enabled && self.role_name.is_none() {
            return Err(ConfigError(format!(
                "{source}: key `organization.role_name`: missing; name the role to assume in every member account, e.g. \"AppTierCmkScanner\""
            )));
        }
        for (key, ids) in [("include", &self.include), ("exclude", &self.exclude)] {
            let mut seen = BTreeSet::new();
            for id in ids {
                if !seen.insert(id) {
                    return Err(ConfigError(format!(
                        "{source}: key `organization.{key}`: account {id} is listed twice"
                    )));
                }
            }
        }
        if let Some(id) = self.include.iter().find(|id| self.exclude.contains(id)) {
            return Err(ConfigError(format!(
                "{source}: keys `organization.include` and `organization.exclude`: account {id} is in both"
            )));
        }
        if let Some(regions) = &self.regions {
            check_unique_regions(regions.listed(), "organization.regions", source)?;
        }
        if let Some(regions) = &self.exclude_regions {
            check_unique_regions(regions, "organization.exclude_regions", source)?;
        }
        Ok(())
    }
}

fn check_unique_regions(regions: &[Region], key: &str, source: &str) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for region in regions {
        if !seen.insert(region) {
            return Err(ConfigError(format!(
                "{source}: key `{key}`: region {:?} is listed twice",
                region.0
            )));
        }
    }
    Ok(())
}

/// "environment variable APP_TIER_CMK_X__Y" for the key path "x.y" (list indexes dropped:
/// a list is set by one variable).
fn env_var_source(key: &str) -> String {
    let parts: Vec<String> = key
        .split('.')
        .take_while(|p| !p.bytes().all(|b| b.is_ascii_digit()))
        .map(|p| p.to_ascii_uppercase())
        .collect();
    format!("environment variable {ENV_PREFIX}{}", parts.join("__"))
}

/// "config file PATH" or "environment variable NAME" for a figment source.
fn source_name_of(metadata: &figment::Metadata) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("config file {}", path.display()),
        _ if metadata.name.contains("environment") => "environment".to_owned(),
        Some(other) => other.to_string(),
        None => metadata.name.to_string(),
    }
}

/// Turns figment's errors into lines that name the source, the key and the bad value.
fn describe_figment_error(error: figment::Error, path: Option<&Path>) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match &e.metadata {
                Some(md) if md.name.contains("environment") => env_var_source(&key),
                Some(md) => source_name_of(md),
                None => path
                    .map(|p| format!("config file {}", p.display()))
                    .unwrap_or_else(|| "configuration".to_owned()),
            };
            if key.is_empty() {
                format!("{source}: {}", e.kind)
            } else {
                format!("{source}: key `{key}`: {}", e.kind)
            }
        })
        .collect();
    ConfigError(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(toml.as_bytes()).expect("write");
        // An env provider under a prefix nobody sets keeps the test independent of the shell.
        Config::load_from(
            Some(file.path()),
            Env::prefixed("APP_TIER_CMK_UNIT_TEST_NONE_"),
        )
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = load_str("").expect("defaults");
        assert_eq!(config, Config::default());
        assert_eq!(config.listen_address.0.port(), DEFAULT_PORT);
        assert_eq!(config.scan.interval.0, Duration::from_secs(300));
        assert_eq!(config.matching.tag_key.0, "app_tier");
    }

    #[test]
    fn full_example_parses() {
        let config = load_str(
            r#"
listen_address = "127.0.0.1:8080"
metrics_path = "/m"
regions = ["us-east-1", "eu-west-1"]
[scan]
interval = "1m"
timeout = "30s"
concurrency = 4
[match]
tag_key = "App-Tier"
tag_values = ["yes"]
case_insensitive = true
key_states = ["Enabled", "Disabled"]
[[accounts]]
name = "prod"
role_arn = "arn:aws:iam::111111111111:role/path/AppTierCmkScanner"
external_id = "x"
regions = ["us-west-2"]
"#,
        )
        .expect("valid");
        assert_eq!(config.scan.concurrency.0, 4);
        assert_eq!(
            config.accounts[0]
                .role_arn
                .as_ref()
                .map(|a| a.account().0.as_str()),
            Some("111111111111")
        );
        assert_eq!(config.matching.key_states.len(), 2);
    }

    fn error_of(toml: &str) -> String {
        load_str(toml).expect_err("must be refused").0
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let e = error_of("[scan]\nintervall = \"1m\"\n");
        assert!(e.contains("intervall"), "{e}");
        assert!(e.contains("config file"), "{e}");
    }

    #[test]
    fn malformed_duration_names_key_and_value() {
        let e = error_of("[scan]\ninterval = \"5 parsecs\"\n");
        assert!(
            e.contains("scan.interval") && e.contains("5 parsecs"),
            "{e}"
        );
    }

    #[test]
    fn short_account_id_is_refused() {
        let e = error_of("[[accounts]]\naccount_id = \"12345\"\n");
        assert!(
            e.contains("account_id") && e.contains("12345") && e.contains("12 digits"),
            "{e}"
        );
    }

    #[test]
    fn role_arn_must_parse() {
        for bad in [
            "arn:aws:iam::1111:role/x",
            "arn:aws:iam::111111111111:user/x",
            "arn:aws:s3:::bucket",
            "role/x",
            "arn:aws:iam::111111111111:role/",
        ] {
            let e = error_of(&format!("[[accounts]]\nrole_arn = \"{bad}\"\n"));
            assert!(e.contains("role_arn") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn region_must_be_region_shaped() {
        for bad in ["useast1", "US-EAST-1", "us-east", "us-east-01", "eu_west_1"] {
            let e = error_of(&format!("regions = [\"{bad}\"]\n"));
            assert!(e.contains("regions") && e.contains(bad), "{bad}: {e}");
        }
        for good in [
            "us-east-1",
            "us-gov-west-1",
            "ap-southeast-2",
            "il-central-1",
        ] {
            assert!(Region::parse(good).is_some(), "{good}");
        }
    }

    #[test]
    fn empty_tag_key_is_refused() {
        let e = error_of("[match]\ntag_key = \"\"\n");
        assert!(e.contains("match.tag_key") && e.contains("empty"), "{e}");
    }

    #[test]
    fn unknown_key_state_is_refused() {
        let e = error_of("[match]\nkey_states = [\"enabled\"]\n");
        assert!(e.contains("enabled") && e.contains("Enabled"), "{e}");
    }

    #[test]
    fn account_id_must_match_role_arn() {
        let e = error_of(
            "[[accounts]]\naccount_id = \"222222222222\"\nrole_arn = \"arn:aws:iam::111111111111:role/r\"\n",
        );
        assert!(
            e.contains("222222222222") && e.contains("111111111111"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_accounts_are_refused() {
        let e = error_of(
            "[[accounts]]\nrole_arn = \"arn:aws:iam::111111111111:role/r\"\n[[accounts]]\nrole_arn = \"arn:aws:iam::111111111111:role/r\"\n",
        );
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn missing_file_is_refused() {
        let e = Config::load_from(
            Some(Path::new("/nonexistent/x.toml")),
            Env::prefixed("NONE_"),
        )
        .expect_err("missing")
        .0;
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn toml_syntax_error_names_the_file() {
        let e = error_of("regions = [\n");
        assert!(e.contains("config file"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn environment_overrides_file_and_names_the_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[scan]\ninterval = \"5m\"\n")?;
            jail.set_env("APP_TIER_CMK_SCAN__INTERVAL", "1m");
            jail.set_env("APP_TIER_CMK_MATCH__TAG_KEY", "AppTier");
            let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.0)?;
            assert_eq!(config.scan.interval.0, Duration::from_secs(60));
            assert_eq!(config.matching.tag_key.0, "AppTier");
            jail.set_env("APP_TIER_CMK_SCAN__TIMEOUT", "soon");
            let e = Config::load(None).expect_err("bad duration").0;
            assert!(
                e.contains("APP_TIER_CMK_SCAN__TIMEOUT") && e.contains("soon"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn session_duration_must_be_within_aws_bounds() {
        let arn = "role_arn = \"arn:aws:iam::111111111111:role/r\"";
        let config = load_str(&format!(
            "[[accounts]]\n{arn}\nsession_duration = \"15m\"\n"
        ))
        .expect("15m is AWS's minimum");
        assert_eq!(
            config.accounts[0].session_duration,
            Some(SessionDuration(Duration::from_secs(900)))
        );
        for bad in ["14m", "13h", "soon"] {
            let e = error_of(&format!(
                "[[accounts]]\n{arn}\nsession_duration = \"{bad}\"\n"
            ));
            assert!(e.contains("session_duration") && e.contains(bad), "{e}");
        }
        let e = error_of("[[accounts]]\nsession_duration = \"1h\"\n");
        assert!(e.contains("without role_arn"), "{e}");
    }

    #[test]
    fn regions_all_is_accepted_everywhere() {
        let config = load_str(
            r#"
regions = "all"
exclude_regions = ["ap-east-1"]
[[accounts]]
role_arn = "arn:aws:iam::111111111111:role/r"
regions = ["us-east-1"]
[[accounts]]
role_arn = "arn:aws:iam::222222222222:role/r"
regions = "all"
exclude_regions = []
[organization]
role_name = "AppTierCmkScanner"
regions = "all"
"#,
        )
        .expect("valid");
        assert_eq!(config.regions, RegionSelection::AllEnabled);
        assert_eq!(
            config.accounts[1].regions,
            Some(RegionSelection::AllEnabled)
        );
        assert_eq!(config.exclude_regions.len(), 1);
    }

    #[test]
    fn regions_as_a_bare_string_says_what_to_write() {
        let e = error_of("regions = \"us-east-1\"\n");
        assert!(
            e.contains("regions") && e.contains("\"all\"") && e.contains("[\"us-east-1\"]"),
            "{e}"
        );
        let e = error_of("regions = [\"us-east-01\"]\n");
        assert!(e.contains("us-east-01"), "{e}");
    }

    #[test]
    fn organization_section_parses_with_defaults() {
        let config =
            load_str("[organization]\nrole_name = \"OrgScanner\"\ninclude = [\"111111111111\"]\n")
                .expect("valid");
        let org = config.organization.expect("organization");
        assert!(org.enabled);
        assert_eq!(org.refresh_interval.0, DEFAULT_REFRESH_INTERVAL);
        assert_eq!(org.role_name, Some(RoleName("OrgScanner".to_owned())));
    }

    #[test]
    fn organization_needs_a_role_name_unless_disabled() {
        let e = error_of("[organization]\nrefresh_interval = \"10m\"\n");
        assert!(e.contains("organization.role_name"), "{e}");
        load_str("[organization]\nenabled = false\n").expect("disabled needs no role");
    }

    #[test]
    fn organization_account_lists_are_validated() {
        let e = error_of("[organization]\nrole_name = \"r\"\nexclude = [\"12\"]\n");
        assert!(e.contains("exclude") && e.contains("12 digits"), "{e}");
        let e = error_of(
            "[organization]\nrole_name = \"r\"\ninclude = [\"111111111111\"]\nexclude = [\"111111111111\"]\n",
        );
        assert!(e.contains("both"), "{e}");
        let e = error_of("[organization]\nrole_name = \"bad role\"\n");
        assert!(e.contains("role_name") && e.contains("bad role"), "{e}");
    }

    #[test]
    fn require_takes_two_values() {
        let config = load_str("[match]\nrequire = \"when_tag_in_use\"\n").expect("valid");
        assert_eq!(config.matching.require, Requirement::WhenTagInUse);
        let e = error_of("[match]\nrequire = \"sometimes\"\n");
        assert!(
            e.contains("match.require") && e.contains("when_tag_in_use"),
            "{e}"
        );
    }

    #[test]
    fn example_config_parses_with_and_without_its_organization_section() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
        let text = std::fs::read_to_string(&path).expect("read example");
        let config = load_str(&text).expect("example.toml is valid");
        assert_eq!(config.scan.discovery, KeyDiscovery::Kms);
        assert_eq!(config.shard(), Ok(Shard::ALL));
        // The commented [organization] block at the end, uncommented.
        let block = text.find("# [organization]").expect("organization block");
        let uncommented = format!(
            "{}{}",
            &text[..block],
            text[block..]
                .lines()
                .map(|l| l.strip_prefix("# ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let config = load_str(&uncommented).expect("example.toml with [organization] is valid");
        assert!(config.organization.is_some());
    }

    #[test]
    fn variable_names_drop_list_indexes() {
        assert_eq!(
            env_var_source("regions.1"),
            "environment variable APP_TIER_CMK_REGIONS"
        );
        assert_eq!(
            env_var_source("match.key_states"),
            "environment variable APP_TIER_CMK_MATCH__KEY_STATES"
        );
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let e = error_of("[scan]\nconcurrency = 0\n");
        assert!(e.contains("scan.concurrency") && e.contains('0'), "{e}");
    }

    #[test]
    fn discovery_defaults_to_kms_and_accepts_tagging() {
        assert_eq!(
            load_str("").expect("defaults").scan.discovery,
            KeyDiscovery::Kms
        );
        let config = load_str("[scan]\ndiscovery = \"tagging\"\n").expect("valid");
        assert_eq!(config.scan.discovery, KeyDiscovery::Tagging);
        let e = error_of("[scan]\ndiscovery = \"ec2\"\n");
        assert!(e.contains("scan.discovery") && e.contains("tagging"), "{e}");
    }

    #[test]
    fn shard_outside_total_shards_is_refused() {
        let config = load_str("shard = 2\ntotal_shards = 3\n").expect("valid");
        assert_eq!(config.shard().map(|s| s.ordinal()), Ok(2));
        let e = error_of("shard = 3\ntotal_shards = 3\n");
        assert!(e.contains("`shard` = 3") && e.contains("0 to 2"), "{e}");
        let e = error_of("total_shards = 0\n");
        assert!(e.contains("total_shards"), "{e}");
        let e = error_of("shard = -1\n");
        assert!(e.contains("shard"), "{e}");
    }
}
