//! `scan.discovery = "tagging"`: the target's tagged KMS keys from the Resource Groups
//! Tagging API (GetResources, up to 100 keys per call), then DescribeKey and
//! GetKeyRotationStatus per candidate as in the `kms` mode. No ListKeys, ListAliases or
//! ListResourceTags.
//!
//! The tagging API filters tags case-sensitively, so with `match.case_insensitive` it is asked
//! for every KMS key it knows (no tag filter) and the [`Matcher`] decides locally.

use aws_sdk_kms::Client as KmsClient;
use aws_sdk_resourcegroupstagging::Client as TaggingClient;
use aws_sdk_resourcegroupstagging::types::TagFilter;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::{Inventory, KeyOutcome, describe_tagged, fold};
use crate::aws::{classify, permit};
use crate::error::AwsError;
use crate::evaluate::{KeyFacts, Lookup, Matcher, Tag};

/// The largest page GetResources serves.
const RESOURCES_PER_PAGE: i32 = 100;

/// Scans one (account, region) through the tagging API. `permits` and `fanout` as in
/// [`super::scan_target`].
pub async fn scan_target(
    tagging: &TaggingClient,
    kms: &KmsClient,
    matcher: &Matcher,
    permits: &Semaphore,
    fanout: usize,
) -> Result<Inventory, AwsError> {
    let candidates = tagged_keys(tagging, matcher, permits).await?;
    let outcomes: Vec<KeyOutcome> = futures::stream::iter(candidates)
        .map(|(key_id, tags)| {
            let facts = KeyFacts {
                key_id,
                // AWS-managed keys cannot be tagged; DescribeKey's KeyManager still catches one.
                aliases: Vec::new(),
                tags: Lookup::Found(tags),
                description: Lookup::NotAsked,
                rotation_enabled: None,
            };
            describe_tagged(kms, permits, facts, Vec::new())
        })
        .buffer_unordered(fanout.max(1))
        .try_collect()
        .await?;
    Ok(fold(outcomes))
}

/// IDs and tags of the region's KMS keys that carry the App-Tier tag.
async fn tagged_keys(
    tagging: &TaggingClient,
    matcher: &Matcher,
    permits: &Semaphore,
) -> Result<Vec<(String, Vec<Tag>)>, AwsError> {
    let mut request = tagging
        .get_resources()
        .resource_type_filters("kms:key")
        .resources_per_page(RESOURCES_PER_PAGE);
    if let Some(filter) = server_side_filter(matcher) {
        request = request.tag_filters(filter);
    }
    let mut pages = request.into_paginator().send();
    let mut keys = Vec::new();
    loop {
        let _permit = permit(permits).await?;
        let Some(page) = pages.next().await else {
            break;
        };
        let page = page.map_err(|e| classify("GetResources", &e))?;
        for mapping in page.resource_tag_mapping_list() {
            let Some(key_id) = mapping.resource_arn().and_then(key_id_of_arn) else {
                continue;
            };
            let tags: Vec<Tag> = mapping
                .tags()
                .iter()
                .map(|t| Tag::new(t.key(), t.value()))
                .collect();
            // Also with a server-side filter: the local rules are the reference.
            if matcher.is_tagged(&tags) {
                keys.push((key_id.to_owned(), tags));
            }
        }
    }
    Ok(keys)
}

/// The tag filter GetResources can apply, or `None` when matching ignores case (AWS compares
/// tags case-sensitively, so it would miss `App_Tier`).
fn server_side_filter(matcher: &Matcher) -> Option<TagFilter> {
    if matcher.case_insensitive() {
        return None;
    }
    let values = matcher.tag_values();
    Some(
        TagFilter::builder()
            .key(matcher.tag_key())
            .set_values((!values.is_empty()).then(|| values.to_vec()))
            .build(),
    )
}

/// `arn:aws:kms:REGION:ACCOUNT:key/KEY_ID` -> `KEY_ID`.
fn key_id_of_arn(arn: &str) -> Option<&str> {
    let (_, key_id) = arn.rsplit_once(":key/")?;
    (!key_id.is_empty() && !key_id.contains('/')).then_some(key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_read_from_the_arn() {
        assert_eq!(
            key_id_of_arn(
                "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            ),
            Some("1234abcd-12ab-34cd-56ef-1234567890ab")
        );
        assert_eq!(
            key_id_of_arn("arn:aws-cn:kms:cn-north-1:123456789012:key/mrk-1234"),
            Some("mrk-1234")
        );
        assert_eq!(
            key_id_of_arn("arn:aws:kms:us-east-1:123456789012:alias/x"),
            None
        );
        assert_eq!(
            key_id_of_arn("arn:aws:kms:us-east-1:123456789012:key/"),
            None
        );
    }

    #[test]
    fn tag_filter_names_key_and_values() {
        let m = Matcher::new("app_tier", &["web".into(), "api".into()], false, &[]);
        let filter = server_side_filter(&m).expect("filter");
        assert_eq!(filter.key(), Some("app_tier"));
        assert_eq!(filter.values(), ["web", "api"]);
    }

    #[test]
    fn any_value_sends_no_values() {
        let m = Matcher::new("app_tier", &[], false, &[]);
        let filter = server_side_filter(&m).expect("filter");
        assert!(filter.values().is_empty());
    }

    #[test]
    fn case_insensitive_matching_sends_no_tag_filter() {
        let m = Matcher::new("App_Tier", &[], true, &[]);
        assert!(server_side_filter(&m).is_none());
    }
}
