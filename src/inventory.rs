//! KMS calls for one target: list keys and aliases, read the tags of every customer key, and
//! describe (and read the rotation of) the tagged ones. Produces [`KeyFacts`]; decides nothing.
//!
//! Must run inside [`crate::aws::AccountAccess::scope`], which supplies the credentials.
//! [`tagging`] finds the tagged keys through the tagging API instead of listing every key.

pub mod tagging;

use std::collections::HashMap;

use aws_sdk_kms::Client;
use aws_sdk_kms::types::{KeyManagerType, KeySpec, KeyState, OriginType};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use crate::aws::{classify, permit, service_code};
use crate::error::{AwsError, ErrorKind};
use crate::evaluate::{KeyDescription, KeyFacts, KeyManager, Lookup, Matcher, Tag};

/// What one target's scan found.
#[derive(Debug, Default)]
pub struct Inventory {
    pub keys: Vec<KeyFacts>,
    /// Per-key calls that were refused without failing the scan (e.g. a key policy that
    /// denies DescribeKey).
    pub soft_errors: Vec<AwsError>,
}

/// Per-key outcome before it is folded into the inventory.
enum KeyOutcome {
    Facts(KeyFacts, Vec<AwsError>),
    /// The key vanished between ListKeys and the per-key call.
    Gone,
}

/// Scans one (account, region). `permits` bounds AWS calls in flight across all targets;
/// `fanout` bounds the per-key calls of this target that wait for a permit at once.
pub async fn scan_target(
    kms: &Client,
    matcher: &Matcher,
    permits: &Semaphore,
    fanout: usize,
) -> Result<Inventory, AwsError> {
    let key_ids = list_keys(kms, permits).await?;
    if key_ids.is_empty() {
        return Ok(Inventory::default());
    }
    let mut aliases = list_aliases(kms, permits).await?;
    let outcomes: Vec<KeyOutcome> = futures::stream::iter(key_ids)
        .map(|key_id| {
            let key_aliases = aliases.remove(&key_id).unwrap_or_default();
            inspect_key(kms, matcher, permits, key_id, key_aliases)
        })
        .buffer_unordered(fanout.max(1))
        .try_collect()
        .await?;
    Ok(fold(outcomes))
}

fn fold(outcomes: Vec<KeyOutcome>) -> Inventory {
    let mut inventory = Inventory::default();
    for outcome in outcomes {
        if let KeyOutcome::Facts(facts, errors) = outcome {
            inventory.keys.push(facts);
            inventory.soft_errors.extend(errors);
        }
    }
    inventory
}

async fn list_keys(kms: &Client, permits: &Semaphore) -> Result<Vec<String>, AwsError> {
    let mut pages = kms.list_keys().into_paginator().send();
    let mut ids = Vec::new();
    loop {
        let _permit = permit(permits).await?;
        let Some(page) = pages.next().await else {
            break;
        };
        let page = page.map_err(|e| classify("ListKeys", &e))?;
        ids.extend(
            page.keys()
                .iter()
                .filter_map(|k| k.key_id().map(str::to_owned)),
        );
    }
    Ok(ids)
}

/// Alias names by target key ID.
async fn list_aliases(
    kms: &Client,
    permits: &Semaphore,
) -> Result<HashMap<String, Vec<String>>, AwsError> {
    let mut pages = kms.list_aliases().into_paginator().send();
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    loop {
        let _permit = permit(permits).await?;
        let Some(page) = pages.next().await else {
            break;
        };
        let page = page.map_err(|e| classify("ListAliases", &e))?;
        for alias in page.aliases() {
            if let (Some(key), Some(name)) = (alias.target_key_id(), alias.alias_name()) {
                by_key
                    .entry(key.to_owned())
                    .or_default()
                    .push(name.to_owned());
            }
        }
    }
    Ok(by_key)
}

async fn inspect_key(
    kms: &Client,
    matcher: &Matcher,
    permits: &Semaphore,
    key_id: String,
    aliases: Vec<String>,
) -> Result<KeyOutcome, AwsError> {
    let mut facts = KeyFacts {
        key_id,
        aliases,
        tags: Lookup::NotAsked,
        description: Lookup::NotAsked,
        rotation_enabled: None,
    };
    let mut soft_errors = Vec::new();
    if facts.is_aws_managed() {
        // AWS-managed keys cannot carry tags: no call needed.
        return Ok(KeyOutcome::Facts(facts, soft_errors));
    }

    facts.tags = match list_tags(kms, permits, &facts.key_id).await {
        Ok(tags) => Lookup::Found(tags),
        Err(Soft::Gone) => return Ok(KeyOutcome::Gone),
        Err(Soft::Refused(e)) => {
            soft_errors.push(e);
            Lookup::Refused
        }
        Err(Soft::Hard(e)) => return Err(e),
    };
    let tagged = matches!(&facts.tags, Lookup::Found(tags) if matcher.is_tagged(tags));
    if !tagged {
        return Ok(KeyOutcome::Facts(facts, soft_errors));
    }
    describe_tagged(kms, permits, facts, soft_errors).await
}

/// DescribeKey of a key that carries the App-Tier tag and, where AWS supports it,
/// GetKeyRotationStatus.
async fn describe_tagged(
    kms: &Client,
    permits: &Semaphore,
    mut facts: KeyFacts,
    mut soft_errors: Vec<AwsError>,
) -> Result<KeyOutcome, AwsError> {
    facts.description = match describe(kms, permits, &facts.key_id).await {
        Ok(d) => Lookup::Found(d),
        Err(Soft::Gone) => return Ok(KeyOutcome::Gone),
        Err(Soft::Refused(e)) => {
            soft_errors.push(e);
            Lookup::Refused
        }
        Err(Soft::Hard(e)) => return Err(e),
    };
    if let Lookup::Found(d) = &facts.description {
        let rotation_applies = d.key_manager == KeyManager::Customer
            && d.symmetric
            && d.rotatable_origin
            && matches!(d.key_state.as_str(), "Enabled" | "Disabled");
        if rotation_applies {
            match rotation(kms, permits, &facts.key_id).await {
                Ok(enabled) => facts.rotation_enabled = Some(enabled),
                // Rotation is secondary: any failure is counted and logged, never fatal.
                Err(Soft::Refused(e) | Soft::Hard(e)) => soft_errors.push(e),
                Err(Soft::Gone) => return Ok(KeyOutcome::Gone),
            }
        }
    }
    Ok(KeyOutcome::Facts(facts, soft_errors))
}

/// How a per-key call can fail.
enum Soft {
    /// NotFoundException: the key was deleted meanwhile.
    Gone,
    /// AccessDenied: recorded, the scan goes on.
    Refused(AwsError),
    /// Anything else fails the target's scan.
    Hard(AwsError),
}

fn soften<E>(
    operation: &'static str,
    error: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> Soft
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    if service_code(error) == Some("NotFoundException") {
        return Soft::Gone;
    }
    let classified = classify(operation, error);
    if classified.kind == ErrorKind::AccessDenied {
        Soft::Refused(classified)
    } else {
        Soft::Hard(classified)
    }
}

async fn list_tags(kms: &Client, permits: &Semaphore, key_id: &str) -> Result<Vec<Tag>, Soft> {
    let mut pages = kms
        .list_resource_tags()
        .key_id(key_id)
        .into_paginator()
        .send();
    let mut tags = Vec::new();
    loop {
        let _permit = permit(permits).await.map_err(Soft::Hard)?;
        let Some(page) = pages.next().await else {
            break;
        };
        let page = page.map_err(|e| soften("ListResourceTags", &e))?;
        tags.extend(
            page.tags()
                .iter()
                .map(|t| Tag::new(t.tag_key(), t.tag_value())),
        );
    }
    Ok(tags)
}

async fn describe(kms: &Client, permits: &Semaphore, key_id: &str) -> Result<KeyDescription, Soft> {
    let _permit = permit(permits).await.map_err(Soft::Hard)?;
    let out = kms
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| soften("DescribeKey", &e))?;
    let meta = out.key_metadata().ok_or_else(|| {
        Soft::Hard(AwsError::new(
            "DescribeKey",
            ErrorKind::Other,
            format!("answer for key {key_id} holds no KeyMetadata"),
        ))
    })?;
    Ok(KeyDescription {
        key_manager: match meta.key_manager() {
            Some(KeyManagerType::Aws) => KeyManager::Aws,
            _ => KeyManager::Customer,
        },
        key_state: meta.key_state().map_or_else(
            || "Unknown".to_owned(),
            |s: &KeyState| s.as_str().to_owned(),
        ),
        deletion_timestamp: meta.deletion_date().map(|d| d.as_secs_f64()),
        symmetric: matches!(meta.key_spec(), Some(KeySpec::SymmetricDefault) | None),
        rotatable_origin: matches!(meta.origin(), Some(OriginType::AwsKms) | None),
    })
}

async fn rotation(kms: &Client, permits: &Semaphore, key_id: &str) -> Result<bool, Soft> {
    let _permit = permit(permits).await.map_err(Soft::Hard)?;
    let out = kms
        .get_key_rotation_status()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| soften("GetKeyRotationStatus", &e))?;
    Ok(out.key_rotation_enabled())
}
