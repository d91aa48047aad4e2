//! From configuration to the work list: accounts and their (account, region) targets.

use crate::config::{AccountId, Config, ConfigError, Region, RoleArn};

/// One account as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountSpec {
    pub name: Option<String>,
    /// Known without asking AWS: from `account_id` or from the role ARN.
    pub known_id: Option<AccountId>,
    pub role_arn: Option<RoleArn>,
    pub external_id: Option<String>,
    /// Asked for AssumeRole sessions; None: AWS's default (1 hour).
    pub session_duration: Option<std::time::Duration>,
    pub regions: Vec<Region>,
}

impl AccountSpec {
    /// Short text for logs and retry partitions: name, else account ID, else "default".
    pub fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.known_id.as_ref().map(|id| id.0.clone()))
            .unwrap_or_else(|| "default".to_owned())
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

/// Expands the configuration. `default_region` is the SDK's (AWS_REGION, profile), used when
/// neither the account nor the top level names regions.
pub fn plan(config: &Config, default_region: Option<&str>) -> Result<Plan, ConfigError> {
    let default_region = default_region.filter(|r| !r.is_empty());
    let default_regions: Vec<Region> = if !config.regions.is_empty() {
        config.regions.clone()
    } else {
        match default_region {
            Some(name) => vec![Region::parse(name).ok_or_else(|| {
                ConfigError(format!(
                    "the SDK's default region {name:?} (AWS_REGION or profile) is not a region name"
                ))
            })?],
            None => Vec::new(),
        }
    };
    let configured = if config.accounts.is_empty() {
        vec![Default::default()]
    } else {
        config.accounts.clone()
    };
    let mut accounts = Vec::with_capacity(configured.len());
    let mut targets = Vec::new();
    for (index, account) in configured.into_iter().enumerate() {
        let regions = account.regions.unwrap_or_else(|| default_regions.clone());
        if regions.is_empty() {
            return Err(ConfigError(
                "no region to scan: set `regions` in the config file (or APP_TIER_CMK_REGIONS), \
                 or a default region with AWS_REGION or the profile"
                    .to_owned(),
            ));
        }
        for region in &regions {
            targets.push(Target {
                account: index,
                region: region.clone(),
            });
        }
        let known_id = account
            .account_id
            .or_else(|| account.role_arn.as_ref().map(|arn| arn.account().clone()));
        accounts.push(AccountSpec {
            name: account.name,
            known_id,
            role_arn: account.role_arn,
            external_id: account.external_id,
            session_duration: account.session_duration.map(|d| d.0),
            regions,
        });
    }
    Ok(Plan { accounts, targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccountConfig;

    fn region(name: &str) -> Region {
        Region::parse(name).expect("region")
    }

    #[test]
    fn no_accounts_means_the_default_account_in_the_default_region() {
        let plan = plan(&Config::default(), Some("eu-west-1")).expect("plan");
        assert_eq!(plan.accounts.len(), 1);
        assert_eq!(plan.accounts[0].known_id, None);
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
            regions: vec![region("us-east-1"), region("us-west-2")],
            accounts: vec![
                AccountConfig {
                    role_arn: Some(
                        RoleArn::try_from("arn:aws:iam::111111111111:role/r".to_owned())
                            .expect("arn"),
                    ),
                    ..Default::default()
                },
                AccountConfig {
                    role_arn: Some(
                        RoleArn::try_from("arn:aws:iam::222222222222:role/r".to_owned())
                            .expect("arn"),
                    ),
                    regions: Some(vec![region("eu-west-1")]),
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
}
