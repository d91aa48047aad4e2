//! Is the App-Tier tag key in use in a region? Reads the region's tag keys (tag:GetTagKeys,
//! paginated, stopping at the first match). Must run inside
//! [`crate::aws::AccountAccess::scope`].

use tokio::sync::Semaphore;

use crate::aws::{classify, permit};
use crate::error::AwsError;
use crate::evaluate::Matcher;

/// True when some resource of the region carries the tag key (exact, or case-folded when
/// `match.case_insensitive`).
pub async fn tag_key_in_use(
    client: &aws_sdk_resourcegroupstagging::Client,
    matcher: &Matcher,
    permits: &Semaphore,
) -> Result<bool, AwsError> {
    let mut pages = client.get_tag_keys().into_paginator().send();
    loop {
        let _permit = permit(permits).await?;
        let Some(page) = pages.next().await else {
            return Ok(false);
        };
        let page = page.map_err(|e| classify("GetTagKeys", &e))?;
        if page.tag_keys().iter().any(|key| matcher.is_tag_key(key)) {
            return Ok(true);
        }
    }
}
