//! `[organization]`: the active accounts of an AWS Organization (organizations:ListAccounts,
//! with the exporter's own credentials), turned into accounts to scan through `role_name`.

use crate::aws::classify;
use crate::config::{AccountId, OrganizationConfig, Region, RegionSelection, RoleArn};
use crate::error::{AwsError, ErrorKind};
use crate::targets::{AccountSpec, DEFAULT_ACCOUNT_KEY, select_regions};

/// One account as Organizations lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgAccount {
    pub id: AccountId,
    pub name: Option<String>,
    /// Partition of the account's ARN (`aws`, `aws-cn`, `aws-us-gov`, ...).
    pub partition: String,
    /// `ACTIVE`, `SUSPENDED`, `PENDING_CLOSURE`, `CLOSED`, ...
    pub state: String,
}

/// What to do with the listed accounts: the `[organization]` section with the region choice
/// resolved against the top level.
#[derive(Clone, Debug, PartialEq)]
pub struct OrgSettings {
    pub role_name: String,
    pub external_id: Option<String>,
    pub include: Vec<AccountId>,
    pub exclude: Vec<AccountId>,
    pub regions: RegionSelection,
    pub exclude_regions: Vec<Region>,
}

impl OrgSettings {
    /// `None` when the section is absent or disabled.
    pub fn from_config(
        org: Option<&OrganizationConfig>,
        default_regions: &RegionSelection,
        default_exclude: &[Region],
    ) -> Option<OrgSettings> {
        let org = org.filter(|o| o.enabled)?;
        Some(OrgSettings {
            role_name: org.role_name.as_ref()?.0.clone(),
            external_id: org.external_id.clone(),
            include: org.include.clone(),
            exclude: org.exclude.clone(),
            regions: org
                .regions
                .clone()
                .unwrap_or_else(|| default_regions.clone()),
            exclude_regions: org
                .exclude_regions
                .clone()
                .unwrap_or_else(|| default_exclude.to_vec()),
        })
    }
}

/// Pure: the accounts to scan from the organization's list.
///
/// Only `ACTIVE` accounts, filtered by `include`/`exclude`, in account ID order. An account
/// already in `[[accounts]]` is left to that entry (static wins). The exporter's own account
/// (`own_id`: the management or delegated-admin account) is scanned with the default
/// credentials instead of assuming a role into itself.
pub fn accounts_to_scan(
    listed: &[OrgAccount],
    settings: &OrgSettings,
    own_id: &AccountId,
    static_accounts: &[AccountSpec],
) -> Vec<AccountSpec> {
    let static_default = static_accounts.iter().any(|a| a.key == DEFAULT_ACCOUNT_KEY);
    let is_static = |id: &AccountId| {
        static_accounts
            .iter()
            .any(|a| a.known_id.as_ref() == Some(id))
            || (id == own_id && static_default)
    };
    let mut listed: Vec<&OrgAccount> = listed
        .iter()
        .filter(|a| a.state == "ACTIVE")
        .filter(|a| settings.include.is_empty() || settings.include.contains(&a.id))
        .filter(|a| !settings.exclude.contains(&a.id))
        .filter(|a| !is_static(&a.id))
        .collect();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    listed.dedup_by(|a, b| a.id == b.id);
    let (regions, all_enabled_except) =
        select_regions(&settings.regions, &settings.exclude_regions);
    listed
        .into_iter()
        .filter_map(|account| {
            let own = &account.id == own_id;
            let role_arn = if own {
                None
            } else {
                // Built from validated parts; a failure would mean a malformed listing.
                RoleArn::try_from(format!(
                    "arn:{}:iam::{}:role/{}",
                    account.partition, account.id, settings.role_name
                ))
                .ok()
            };
            if !own && role_arn.is_none() {
                return None;
            }
            Some(AccountSpec {
                key: role_arn.as_ref().map_or_else(
                    || DEFAULT_ACCOUNT_KEY.to_owned(),
                    |arn| arn.as_str().to_owned(),
                ),
                name: account.name.clone(),
                known_id: Some(account.id.clone()),
                external_id: role_arn.as_ref().and(settings.external_id.clone()),
                role_arn,
                // AWS's default session length for organization accounts.
                session_duration: None,
                regions: regions.clone(),
                all_enabled_except: all_enabled_except.clone(),
                from_organization: true,
            })
        })
        .collect()
}

/// Every account of the organization (organizations:ListAccounts, paginated).
pub async fn list_accounts(
    client: &aws_sdk_organizations::Client,
) -> Result<Vec<OrgAccount>, AwsError> {
    let mut pages = client.list_accounts().into_paginator().send();
    let mut accounts = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("ListAccounts", &e))?;
        for account in page.accounts() {
            let id = account.id().unwrap_or_default();
            let Some(id) = AccountId::parse(id) else {
                return Err(AwsError::new(
                    "ListAccounts",
                    ErrorKind::Other,
                    format!("answer holds an account without a 12-digit ID: {id:?}"),
                ));
            };
            let partition = account
                .arn()
                .and_then(|arn| arn.split(':').nth(1))
                .filter(|p| !p.is_empty())
                .unwrap_or("aws")
                .to_owned();
            #[allow(deprecated)] // `Status` is the older field; `State` replaces it.
            let state = account
                .state()
                .map(|s| s.as_str().to_owned())
                .or_else(|| account.status().map(|s| s.as_str().to_owned()))
                .unwrap_or_default();
            accounts.push(OrgAccount {
                id,
                name: account.name().map(str::to_owned),
                partition,
                state,
            });
        }
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AccountId {
        AccountId::parse(s).expect("id")
    }

    fn listed(account: &str, state: &str) -> OrgAccount {
        OrgAccount {
            id: id(account),
            name: Some(format!("acct-{account}")),
            partition: "aws".to_owned(),
            state: state.to_owned(),
        }
    }

    fn settings() -> OrgSettings {
        OrgSettings {
            role_name: "AppTierCmkScanner".to_owned(),
            external_id: Some("ext".to_owned()),
            include: vec![],
            exclude: vec![],
            regions: vec![Region::parse("us-east-1").expect("r")].into(),
            exclude_regions: vec![],
        }
    }

    const OWN: &str = "999999999999";

    #[test]
    fn only_active_accounts_are_scanned_through_the_role() {
        let got = accounts_to_scan(
            &[
                listed("222222222222", "ACTIVE"),
                listed("111111111111", "ACTIVE"),
                listed("333333333333", "SUSPENDED"),
                listed("444444444444", "PENDING_CLOSURE"),
            ],
            &settings(),
            &id(OWN),
            &[],
        );
        let ids: Vec<&str> = got.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "arn:aws:iam::111111111111:role/AppTierCmkScanner",
                "arn:aws:iam::222222222222:role/AppTierCmkScanner"
            ]
        );
        assert_eq!(got[0].name.as_deref(), Some("acct-111111111111"));
        assert_eq!(got[0].external_id.as_deref(), Some("ext"));
        assert!(got[0].from_organization);
    }

    #[test]
    fn own_account_uses_the_default_credentials() {
        let got = accounts_to_scan(&[listed(OWN, "ACTIVE")], &settings(), &id(OWN), &[]);
        assert_eq!(got[0].key, DEFAULT_ACCOUNT_KEY);
        assert_eq!(got[0].role_arn, None);
        assert_eq!(got[0].external_id, None);
        assert_eq!(got[0].known_id, Some(id(OWN)));
    }

    #[test]
    fn include_and_exclude_filter_the_list() {
        let all = [
            listed("111111111111", "ACTIVE"),
            listed("222222222222", "ACTIVE"),
            listed("333333333333", "ACTIVE"),
        ];
        let mut s = settings();
        s.include = vec![id("111111111111"), id("222222222222")];
        s.exclude = vec![id("222222222222")];
        let got = accounts_to_scan(&all, &s, &id(OWN), &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].known_id, Some(id("111111111111")));
    }

    #[test]
    fn static_accounts_win_over_the_organization() {
        let static_role = AccountSpec {
            key: "arn:aws:iam::111111111111:role/Other".to_owned(),
            name: Some("static".to_owned()),
            known_id: Some(id("111111111111")),
            role_arn: None,
            external_id: None,
            session_duration: None,
            regions: vec![],
            all_enabled_except: None,
            from_organization: false,
        };
        let static_default = AccountSpec {
            key: DEFAULT_ACCOUNT_KEY.to_owned(),
            known_id: None,
            ..static_role.clone()
        };
        let got = accounts_to_scan(
            &[
                listed("111111111111", "ACTIVE"),
                listed(OWN, "ACTIVE"),
                listed("222222222222", "ACTIVE"),
            ],
            &settings(),
            &id(OWN),
            &[static_role, static_default],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].known_id, Some(id("222222222222")));
    }

    #[test]
    fn partition_comes_from_the_account_arn() {
        let mut gov = listed("111111111111", "ACTIVE");
        gov.partition = "aws-us-gov".to_owned();
        let got = accounts_to_scan(&[gov], &settings(), &id(OWN), &[]);
        assert_eq!(
            got[0].role_arn.as_ref().map(|r| r.as_str()),
            Some("arn:aws-us-gov:iam::111111111111:role/AppTierCmkScanner")
        );
    }

    #[test]
    fn all_regions_are_left_to_discovery() {
        let mut s = settings();
        s.regions = RegionSelection::AllEnabled;
        s.exclude_regions = vec![Region::parse("ap-east-1").expect("r")];
        let got = accounts_to_scan(&[listed("111111111111", "ACTIVE")], &s, &id(OWN), &[]);
        assert!(got[0].regions.is_empty());
        assert_eq!(
            got[0].all_enabled_except,
            Some(vec![Region::parse("ap-east-1").expect("r")])
        );
    }
}
