//! From configuration to the work list: accounts and their (account, region) targets.

use crate::config::{AccountId, Config, ConfigError, Region, RegionSelection, RoleArn};

/// Key of the account scanned with the exporter's own (default) credentials.
pub const DEFAULT_ACCOUNT_KEY: &str = "default";

/// One account to scan, from the configuration or from the organization.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountSpec {
    /// Identity across re-plans: the role ARN, or [`DEFAULT_ACCOUNT_KEY`].
    pub key: String,
    pub name: Option<String>,
    /// Known without asking AWS: from `account_id`, the role ARN or the organization.
    pub known_id: Option<AccountId>,
    pub role_arn: Option<RoleArn>,
    pub external_id: Option<String>,
    /// Asked for AssumeRole sessions; None: AWS's default (1 hour).
    pub session_duration: Option<std::time::Duration>,
    /// Regions to scan: as listed, or (with `regions = "all"`) the enabled ones once known.
    pub regions: Vec<Region>,
    /// `regions = "all"`: scan the enabled regions except these.
    pub all_enabled_except: Option<Vec<Region>>,
    /// Listed by the organization (not in `[[accounts]]`).
    pub from_organization: bool,
}

impl AccountSpec {
    /// Short text for logs and retry partitions: name, else account ID, else "default".
    pub fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.known_id.as_ref().map(|id| id.0.clone()))
            .unwrap_or_else(|| DEFAULT_ACCOUNT_KEY.to_owned())
    }
}

/// One (account, region) to scan; `account` indexes the account list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub account: usize,
    pub region: Region,
}

/// Accounts and targets, in configuration order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub accounts: Vec<AccountSpec>,
    pub targets: Vec<Target>,
}

impl Plan {
    /// One target per region of each account, in account order.
    pub fn expand(accounts: Vec<AccountSpec>) -> Plan {
        let targets = accounts
            .iter()
            .enumerate()
            .flat_map(|(index, account)| {
                account.regions.iter().map(move |region| Target {
                    account: index,
                    region: region.clone(),
                })
            })
            .collect();
        Plan { accounts, targets }
    }
}

/// `selection` less `exclude`: the listed regions, or `None` for "all" (known later).
pub fn select_regions(
    selection: &RegionSelection,
    exclude: &[Region],
) -> (Vec<Region>, Option<Vec<Region>>) {
    match selection {
        RegionSelection::Listed(regions) => (
            regions
                .iter()
                .filter(|r| !exclude.contains(r))
                .cloned()
                .collect(),
            None,
        ),
        RegionSelection::AllEnabled => (Vec::new(), Some(exclude.to_vec())),
    }
}

/// The top-level region choice with the SDK's default region in place of an empty list.
pub fn default_regions(
    config: &Config,
    default_region: Option<&str>,
) -> Result<RegionSelection, ConfigError> {
    let default_region = default_region.filter(|r| !r.is_empty());
    match &config.regions {
        RegionSelection::Listed(regions) if regions.is_empty() => match default_region {
            Some(name) => Ok(RegionSelection::Listed(vec![Region::parse(name).ok_or_else(
                || {
                    ConfigError(format!(
                        "the SDK's default region {name:?} (AWS_REGION or profile) is not a region name"
                    ))
                },
            )?])),
            None => Ok(RegionSelection::Listed(Vec::new())),
        },
        other => Ok(other.clone()),
    }
}

/// Expands the static configuration (`[[accounts]]`; the default account when there are none
/// and no organization). `default_region` is the SDK's (AWS_REGION, profile), used when neither
/// the account nor the top level names regions. Accounts with `regions = "all"` get their
/// targets once their enabled regions are known.
pub fn plan(config: &Config, default_region: Option<&str>) -> Result<Plan, ConfigError> {
    let default_regions = default_regions(config, default_region)?;
    let organization = config.organization.as_ref().is_some_and(|o| o.enabled);
    let configured = if config.accounts.is_empty() && !organization {
        vec![Default::default()]
    } else {
        config.accounts.clone()
    };
    let mut accounts = Vec::with_capacity(configured.len());
    for account in configured {
        let selection = account.regions.unwrap_or_else(|| default_regions.clone());
        let exclude = account
            .exclude_regions
            .unwrap_or_else(|| config.exclude_regions.clone());
        let (regions, all_enabled_except) = select_regions(&selection, &exclude);
        if regions.is_empty() && all_enabled_except.is_none() {
            return Err(ConfigError(
                "no region to scan: set `regions` in the config file (or APP_TIER_CMK_REGIONS), \
                 or a default region with AWS_REGION or the profile (`exclude_regions` may have \
                 removed every listed region)"
                    .to_owned(),
            ));
        }
        let known_id = account
            .account_id
            .or_else(|| account.role_arn.as_ref().map(|arn| arn.account().clone()));
        accounts.push(AccountSpec {
            key: account.role_arn.as_ref().map_or_else(
                || DEFAULT_ACCOUNT_KEY.to_owned(),
                |arn| arn.as_str().to_owned(),
            ),
            name: account.name,
            known_id,
            role_arn: account.role_arn,
            external_id: account.external_id,
            session_duration: account.session_duration.map(|d| d.0),
            regions,
            all_enabled_except,
            from_organization: false,
        });
    }
    Ok(Plan::expand(accounts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccountConfig;

    fn region(name: &str) -> Region {
        Region::parse(name).expect("region")
    }

    fn role(account: &str) -> Option<RoleArn> {
        Some(RoleArn::try_from(format!("arn:aws:iam::{account}:role/r")).expect("arn"))
    }

    #[test]
    fn no_accounts_means_the_default_account_in_the_default_region() {
        let plan = plan(&Config::default(), Some("eu-west-1")).expect("plan");
        assert_eq!(plan.accounts.len(), 1);
        assert_eq!(plan.accounts[0].known_id, None);
        assert_eq!(plan.accounts[0].key, DEFAULT_ACCOUNT_KEY);
        assert_eq!(
            plan.targets,
            vec![Target {
                account: 0,
                region: region("eu-west-1")
            }]
        );
    }

    #[test]
    fn no_region_anywhere_is_an_error() {
        let e = plan(&Config::default(), None).expect_err("no region");
        assert!(e.0.contains("AWS_REGION"), "{}", e.0);
    }

    #[test]
    fn account_regions_override_top_level_regions() {
        let config = Config {
            regions: vec![region("us-east-1"), region("us-west-2")].into(),
            accounts: vec![
                AccountConfig {
                    role_arn: role("111111111111"),
                    ..Default::default()
                },
                AccountConfig {
                    role_arn: role("222222222222"),
                    regions: Some(vec![region("eu-west-1")].into()),
                    ..Default::default()
                },
            ],
            ..Config::default()
        };
        let plan = plan(&config, Some("ap-south-1")).expect("plan");
        assert_eq!(plan.targets.len(), 3);
        assert_eq!(
            plan.accounts[0].known_id.as_ref().map(|a| a.0.as_str()),
            Some("111111111111")
        );
        assert_eq!(
            plan.targets[2],
            Target {
                account: 1,
                region: region("eu-west-1")
            }
        );
    }

    #[test]
    fn excluded_regions_are_never_planned() {
        let config = Config {
            regions: vec![region("us-east-1"), region("us-west-2")].into(),
            exclude_regions: vec![region("us-west-2")],
            ..Config::default()
        };
        let plan = plan(&config, None).expect("plan");
        assert_eq!(plan.accounts[0].regions, vec![region("us-east-1")]);
    }

    #[test]
    fn all_regions_wait_for_discovery() {
        let config = Config {
            regions: RegionSelection::AllEnabled,
            exclude_regions: vec![region("ap-east-1")],
            ..Config::default()
        };
        let plan = plan(&config, Some("us-east-1")).expect("plan");
        assert!(plan.targets.is_empty());
        assert_eq!(
            plan.accounts[0].all_enabled_except,
            Some(vec![region("ap-east-1")])
        );
    }

    #[test]
    fn an_organization_replaces_the_implicit_default_account() {
        let config = Config {
            regions: vec![region("us-east-1")].into(),
            organization: Some(Default::default()),
            ..Config::default()
        };
        assert!(plan(&config, None).expect("plan").accounts.is_empty());
    }

    #[test]
    fn excluding_every_listed_region_is_an_error() {
        let config = Config {
            regions: vec![region("us-east-1")].into(),
            exclude_regions: vec![region("us-east-1")],
            ..Config::default()
        };
        let e = plan(&config, None).expect_err("nothing left");
        assert!(e.0.contains("exclude_regions"), "{}", e.0);
    }
}
