//! `regions = "all"`: the regions enabled in an account (account:ListRegions), less the
//! excluded ones. Must run inside [`crate::aws::AccountAccess::scope`].

use aws_sdk_account::types::RegionOptStatus;
use tokio::sync::Semaphore;

use crate::aws::{classify, permit};
use crate::config::Region;
use crate::error::AwsError;

/// The statuses of a region that can be scanned; `ENABLING` and `DISABLING` regions answer
/// unreliably and `DISABLED` ones not at all.
const SCANNABLE: [RegionOptStatus; 2] =
    [RegionOptStatus::Enabled, RegionOptStatus::EnabledByDefault];

/// One region as the Account API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedRegion {
    pub name: String,
    /// `ENABLED`, `ENABLED_BY_DEFAULT`, `DISABLED`, `ENABLING`, `DISABLING`.
    pub status: String,
}

/// Pure: the scannable regions of `reported`, less `exclude`, sorted. Names that are not
/// region-shaped are skipped (they could not be scanned anyway).
pub fn scannable(reported: &[ReportedRegion], exclude: &[Region]) -> Vec<Region> {
    let mut regions: Vec<Region> = reported
        .iter()
        .filter(|r| SCANNABLE.iter().any(|s| s.as_str() == r.status))
        .filter_map(|r| Region::parse(&r.name))
        .filter(|r| !exclude.contains(r))
        .collect();
    regions.sort();
    regions.dedup();
    regions
}

/// The regions of the account in scope, with their opt-in status (paginated).
pub async fn list_regions(
    client: &aws_sdk_account::Client,
    permits: &Semaphore,
) -> Result<Vec<ReportedRegion>, AwsError> {
    let mut pages = client
        .list_regions()
        .set_region_opt_status_contains(Some(SCANNABLE.to_vec()))
        .into_paginator()
        .send();
    let mut regions = Vec::new();
    loop {
        let _permit = permit(permits).await?;
        let Some(page) = pages.next().await else {
            break;
        };
        let page = page.map_err(|e| classify("ListRegions", &e))?;
        regions.extend(page.regions().iter().filter_map(|r| {
            Some(ReportedRegion {
                name: r.region_name()?.to_owned(),
                status: r.region_opt_status()?.as_str().to_owned(),
            })
        }));
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(name: &str, status: &str) -> ReportedRegion {
        ReportedRegion {
            name: name.to_owned(),
            status: status.to_owned(),
        }
    }

    fn region(name: &str) -> Region {
        Region::parse(name).expect("region")
    }

    #[test]
    fn only_enabled_regions_are_scanned() {
        let got = scannable(
            &[
                reported("us-east-1", "ENABLED_BY_DEFAULT"),
                reported("af-south-1", "ENABLED"),
                reported("ap-east-1", "DISABLED"),
                reported("me-south-1", "ENABLING"),
                reported("eu-south-1", "DISABLING"),
            ],
            &[],
        );
        assert_eq!(got, vec![region("af-south-1"), region("us-east-1")]);
    }

    #[test]
    fn excluded_and_malformed_regions_are_dropped() {
        let got = scannable(
            &[
                reported("us-east-1", "ENABLED_BY_DEFAULT"),
                reported("eu-west-1", "ENABLED_BY_DEFAULT"),
                reported("not a region", "ENABLED"),
                reported("us-east-1", "ENABLED_BY_DEFAULT"),
            ],
            &[region("eu-west-1")],
        );
        assert_eq!(got, vec![region("us-east-1")]);
    }
}
