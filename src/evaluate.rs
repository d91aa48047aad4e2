//! Pure evaluation: facts about the keys of one (account, region) and a [`Matcher`] in,
//! a [`Verdict`] out. No I/O, so every rule is unit-tested here.

use std::collections::BTreeMap;

use crate::config::{MatchConfig, Requirement};

/// States that are always exported by `app_tier_cmk_keys`, 0 when no key is in them.
pub const ALWAYS_EXPORTED_STATES: [&str; 3] = ["Enabled", "Disabled", "PendingDeletion"];

/// State reported for a tagged key whose DescribeKey was refused.
pub const UNKNOWN_STATE: &str = "Unknown";

/// Alias prefix of AWS-managed keys.
const AWS_MANAGED_ALIAS_PREFIX: &str = "alias/aws/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Tag {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The outcome of one per-key lookup that may be refused by a key policy.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup<T> {
    /// Not asked (e.g. DescribeKey is only asked for tagged keys).
    NotAsked,
    Found(T),
    /// AccessDenied: the key policy or IAM refused the call.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyManager {
    Customer,
    Aws,
}

/// What DescribeKey told about a key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyDescription {
    pub key_manager: KeyManager,
    /// KMS's KeyState, as spelled by KMS ("Enabled", "PendingDeletion", ...).
    pub key_state: String,
    /// Unix seconds of the scheduled deletion, for keys pending deletion.
    pub deletion_timestamp: Option<f64>,
    /// KeySpec SYMMETRIC_DEFAULT: the only keys that support automatic rotation.
    pub symmetric: bool,
    /// Key material from KMS itself (not imported, not a custom key store): rotation applies.
    pub rotatable_origin: bool,
}

/// Everything the scan learned about one key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyFacts {
    pub key_id: String,
    pub aliases: Vec<String>,
    pub tags: Lookup<Vec<Tag>>,
    pub description: Lookup<KeyDescription>,
    pub rotation_enabled: Option<bool>,
}

impl KeyFacts {
    /// AWS-managed keys are never App-Tier CMKs. The alias catches them before DescribeKey
    /// (and where an API, like moto's, reports them as CUSTOMER).
    pub fn is_aws_managed(&self) -> bool {
        self.aliases
            .iter()
            .any(|a| a.starts_with(AWS_MANAGED_ALIAS_PREFIX))
            || matches!(
                &self.description,
                Lookup::Found(d) if d.key_manager == KeyManager::Aws
            )
    }
}

/// Decides which tags mark an App-Tier key and which states count as present.
#[derive(Clone, Debug)]
pub struct Matcher {
    tag_key: String,
    tag_values: Vec<String>,
    case_insensitive: bool,
    key_states: Vec<String>,
    require: Requirement,
    check_tag_in_use: bool,
}

impl Matcher {
    pub fn new(
        tag_key: &str,
        tag_values: &[String],
        case_insensitive: bool,
        key_states: &[String],
    ) -> Matcher {
        let fold = |s: &str| {
            if case_insensitive {
                s.to_lowercase()
            } else {
                s.to_owned()
            }
        };
        Matcher {
            tag_key: fold(tag_key),
            tag_values: tag_values.iter().map(|v| fold(v)).collect(),
            case_insensitive,
            key_states: key_states.to_vec(),
            require: Requirement::Always,
            check_tag_in_use: false,
        }
    }

    /// Sets where the key is required and whether the region's tag keys are read.
    pub fn with_requirement(mut self, require: Requirement, check_tag_in_use: bool) -> Matcher {
        self.require = require;
        self.check_tag_in_use = check_tag_in_use || require == Requirement::WhenTagInUse;
        self
    }

    pub fn require(&self) -> Requirement {
        self.require
    }

    /// The scan reads the region's tag keys (tag:GetTagKeys).
    pub fn checks_tag_in_use(&self) -> bool {
        self.check_tag_in_use
    }

    /// True when `key` is the App-Tier tag key.
    pub fn is_tag_key(&self, key: &str) -> bool {
        self.same(key, &self.tag_key)
    }

    pub fn from_config(config: &MatchConfig) -> Matcher {
        let states: Vec<String> = config.key_states.iter().map(|s| s.0.clone()).collect();
        Matcher::new(
            &config.tag_key.0,
            &config.tag_values,
            config.case_insensitive,
            &states,
        )
        .with_requirement(config.require, config.check_tag_in_use)
    }

    pub fn tag_key(&self) -> &str {
        &self.tag_key
    }

    /// Accepted values (folded to lower case when matching ignores case); empty: any.
    pub fn tag_values(&self) -> &[String] {
        &self.tag_values
    }

    pub fn case_insensitive(&self) -> bool {
        self.case_insensitive
    }

    fn same(&self, actual: &str, wanted: &str) -> bool {
        if self.case_insensitive {
            actual.to_lowercase() == wanted
        } else {
            actual == wanted
        }
    }

    /// True when one tag has the App-Tier key (and an accepted value, when values are set).
    pub fn is_tagged(&self, tags: &[Tag]) -> bool {
        tags.iter().any(|tag| {
            self.same(&tag.key, &self.tag_key)
                && (self.tag_values.is_empty()
                    || self.tag_values.iter().any(|v| self.same(&tag.value, v)))
        })
    }

    pub fn counts_state(&self, state: &str) -> bool {
        self.key_states.iter().any(|s| s == state)
    }

    pub fn key_states(&self) -> &[String] {
        &self.key_states
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Fail,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// A customer-managed key that carries the App-Tier tag.
#[derive(Clone, Debug, PartialEq)]
pub struct TaggedKey {
    pub key_id: String,
    /// KMS's KeyState, or [`UNKNOWN_STATE`] when DescribeKey was refused.
    pub state: String,
    pub deletion_timestamp: Option<f64>,
    pub rotation_enabled: Option<bool>,
    /// Its state is one of `match.key_states`.
    pub counts: bool,
}

/// The answer for one (account, region).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub message: String,
    /// Tagged customer-managed keys, in key ID order.
    pub keys: Vec<TaggedKey>,
    /// Tagged keys per state; [`ALWAYS_EXPORTED_STATES`] always present.
    pub state_counts: BTreeMap<String, u64>,
    /// Customer keys whose tags could not be read.
    pub unreadable_keys: usize,
    /// Some resource of the region carries the tag key; `None`: not checked or not readable.
    pub tag_in_use: Option<bool>,
    /// The key is required here (`match.require`); `None`: cannot tell.
    pub required: Option<bool>,
}

impl Verdict {
    /// An App-Tier CMK is present (whether or not one is required).
    pub fn present(&self) -> bool {
        self.keys.iter().any(|k| k.counts)
    }

    /// IDs of the keys that make the target pass.
    pub fn matching_key_ids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|k| k.counts)
            .map(|k| k.key_id.as_str())
            .collect()
    }
}

/// Decides whether the target holds an App-Tier CMK.
///
/// PASS: a customer-managed key with the tag and a counted state. Otherwise UNKNOWN when a key
/// could have been one but could not be read (tags or DescribeKey refused), else FAIL.
pub fn evaluate(keys: &[KeyFacts], matcher: &Matcher) -> Verdict {
    let mut tagged = Vec::new();
    let mut unreadable_keys = 0;
    for facts in keys {
        if facts.is_aws_managed() {
            continue;
        }
        match &facts.tags {
            Lookup::Found(tags) if matcher.is_tagged(tags) => {}
            Lookup::Refused => {
                unreadable_keys += 1;
                continue;
            }
            _ => continue,
        }
        let (state, deletion_timestamp) = match &facts.description {
            Lookup::Found(d) => (d.key_state.clone(), d.deletion_timestamp),
            Lookup::NotAsked | Lookup::Refused => (UNKNOWN_STATE.to_owned(), None),
        };
        let counts = state != UNKNOWN_STATE && matcher.counts_state(&state);
        tagged.push(TaggedKey {
            key_id: facts.key_id.clone(),
            state,
            deletion_timestamp,
            rotation_enabled: facts.rotation_enabled,
            counts,
        });
    }
    tagged.sort_by(|a, b| a.key_id.cmp(&b.key_id));

    let mut state_counts: BTreeMap<String, u64> = ALWAYS_EXPORTED_STATES
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for key in &tagged {
        *state_counts.entry(key.state.clone()).or_insert(0) += 1;
    }

    let counted = tagged.iter().filter(|k| k.counts).count();
    let unknown_tagged = tagged.iter().filter(|k| k.state == UNKNOWN_STATE).count();
    let tag = matcher.tag_key();
    let states = matcher.key_states().join("|");
    let (status, message) = if counted > 0 {
        (
            Status::Pass,
            format!("{counted} customer-managed key(s) tagged {tag} in state {states}"),
        )
    } else if unknown_tagged > 0 || unreadable_keys > 0 {
        let mut why = Vec::new();
        if unknown_tagged > 0 {
            why.push(format!(
                "DescribeKey refused for {unknown_tagged} tagged key(s)"
            ));
        }
        if unreadable_keys > 0 {
            why.push(format!(
                "ListResourceTags refused for {unreadable_keys} key(s)"
            ));
        }
        (
            Status::Unknown,
            format!(
                "no readable key tagged {tag} in state {states}; {}",
                why.join(", ")
            ),
        )
    } else if tagged.is_empty() {
        (
            Status::Fail,
            format!("no customer-managed KMS key tagged {tag}; create one in this region"),
        )
    } else {
        let found: Vec<String> = state_counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        (
            Status::Fail,
            format!(
                "no key tagged {tag} in state {states}; tagged keys: {}",
                found.join(", ")
            ),
        )
    };

    Verdict {
        status,
        message,
        keys: tagged,
        state_counts,
        unreadable_keys,
        tag_in_use: None,
        required: Some(true),
    }
}

/// Applies `match.require` to a verdict, given whether the tag key is in use in the region
/// (`None`: not checked, or GetTagKeys failed).
///
/// With `when_tag_in_use`, a region where no resource carries the tag key does not need the
/// key: its verdict is PASS. When tag usage is unknown and no key is present, the verdict is
/// UNKNOWN: the key may or may not be required.
pub fn apply_requirement(
    mut verdict: Verdict,
    matcher: &Matcher,
    tag_in_use: Option<bool>,
) -> Verdict {
    verdict.tag_in_use = tag_in_use;
    if matcher.require() == Requirement::Always {
        verdict.required = Some(true);
        return verdict;
    }
    verdict.required = tag_in_use;
    let tag = matcher.tag_key().to_owned();
    match (tag_in_use, verdict.status) {
        (_, Status::Pass) | (Some(true), _) => {}
        (Some(false), _) => {
            verdict.status = Status::Pass;
            verdict.message = format!(
                "not required: no resource in this region carries the tag key {tag} (match.require = when_tag_in_use)"
            );
        }
        (None, _) => {
            verdict.status = Status::Unknown;
            verdict.message = format!(
                "{}; whether a key is required is unknown: the region's tag keys (tag:GetTagKeys) could not be read",
                verdict.message
            );
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> Matcher {
        Matcher::new("app_tier", &[], false, &["Enabled".to_owned()])
    }

    fn described(state: &str) -> Lookup<KeyDescription> {
        Lookup::Found(KeyDescription {
            key_manager: KeyManager::Customer,
            key_state: state.to_owned(),
            deletion_timestamp: (state == "PendingDeletion").then_some(1_900_000_000.0),
            symmetric: true,
            rotatable_origin: true,
        })
    }

    fn key(id: &str, tags: &[(&str, &str)], state: &str) -> KeyFacts {
        KeyFacts {
            key_id: id.to_owned(),
            aliases: Vec::new(),
            tags: Lookup::Found(tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect()),
            description: described(state),
            rotation_enabled: Some(true),
        }
    }

    #[test]
    fn enabled_tagged_key_passes() {
        let v = evaluate(&[key("k1", &[("app_tier", "web")], "Enabled")], &matcher());
        assert_eq!(v.status, Status::Pass);
        assert_eq!(v.matching_key_ids(), vec!["k1"]);
        assert_eq!(v.state_counts["Enabled"], 1);
    }

    #[test]
    fn no_keys_fails() {
        let v = evaluate(&[], &matcher());
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.message
                .contains("no customer-managed KMS key tagged app_tier")
        );
        assert_eq!(v.state_counts.len(), 3);
        assert!(v.state_counts.values().all(|n| *n == 0));
    }

    #[test]
    fn untagged_key_does_not_count() {
        let v = evaluate(&[key("k1", &[("team", "x")], "Enabled")], &matcher());
        assert_eq!(v.status, Status::Fail);
        assert!(v.keys.is_empty());
    }

    #[test]
    fn disabled_key_does_not_count_as_present() {
        let v = evaluate(&[key("k1", &[("app_tier", "")], "Disabled")], &matcher());
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.state_counts["Disabled"], 1);
        assert!(v.message.contains("1 Disabled"), "{}", v.message);
    }

    #[test]
    fn pending_deletion_key_does_not_count_and_keeps_its_date() {
        let v = evaluate(
            &[key("k1", &[("app_tier", "")], "PendingDeletion")],
            &matcher(),
        );
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.keys[0].deletion_timestamp, Some(1_900_000_000.0));
    }

    #[test]
    fn key_states_option_widens_what_counts() {
        let m = Matcher::new(
            "app_tier",
            &[],
            false,
            &["Enabled".into(), "Disabled".into()],
        );
        let v = evaluate(&[key("k1", &[("app_tier", "")], "Disabled")], &m);
        assert_eq!(v.status, Status::Pass);
    }

    #[test]
    fn tag_key_match_is_case_sensitive_by_default() {
        let v = evaluate(&[key("k1", &[("App_Tier", "")], "Enabled")], &matcher());
        assert_eq!(v.status, Status::Fail);
    }

    #[test]
    fn case_insensitive_folds_key_and_values() {
        let m = Matcher::new("app_tier", &["Web".into()], true, &["Enabled".into()]);
        let v = evaluate(&[key("k1", &[("APP_TIER", "WEB")], "Enabled")], &m);
        assert_eq!(v.status, Status::Pass);
    }

    #[test]
    fn tag_values_restrict_the_match() {
        let m = Matcher::new(
            "app_tier",
            &["web".into(), "api".into()],
            false,
            &["Enabled".into()],
        );
        let wrong = evaluate(&[key("k1", &[("app_tier", "db")], "Enabled")], &m);
        assert_eq!(wrong.status, Status::Fail);
        let right = evaluate(&[key("k1", &[("app_tier", "api")], "Enabled")], &m);
        assert_eq!(right.status, Status::Pass);
        let case = evaluate(&[key("k1", &[("app_tier", "API")], "Enabled")], &m);
        assert_eq!(case.status, Status::Fail);
    }

    #[test]
    fn aws_managed_keys_never_count() {
        let mut by_alias = key("k1", &[("app_tier", "")], "Enabled");
        by_alias.aliases = vec!["alias/aws/ebs".to_owned()];
        let mut by_manager = key("k2", &[("app_tier", "")], "Enabled");
        if let Lookup::Found(d) = &mut by_manager.description {
            d.key_manager = KeyManager::Aws;
        }
        let v = evaluate(&[by_alias, by_manager], &matcher());
        assert_eq!(v.status, Status::Fail);
        assert!(v.keys.is_empty());
    }

    #[test]
    fn refused_describe_makes_the_verdict_unknown() {
        let mut k = key("k1", &[("app_tier", "")], "Enabled");
        k.description = Lookup::Refused;
        let v = evaluate(&[k], &matcher());
        assert_eq!(v.status, Status::Unknown);
        assert_eq!(v.state_counts[UNKNOWN_STATE], 1);
        assert!(v.message.contains("DescribeKey refused"));
    }

    #[test]
    fn another_readable_key_passes_despite_a_refused_one() {
        let mut refused = key("k1", &[("app_tier", "")], "Enabled");
        refused.description = Lookup::Refused;
        let v = evaluate(
            &[refused, key("k2", &[("app_tier", "")], "Enabled")],
            &matcher(),
        );
        assert_eq!(v.status, Status::Pass);
        assert_eq!(v.matching_key_ids(), vec!["k2"]);
        assert_eq!(v.state_counts[UNKNOWN_STATE], 1);
    }

    #[test]
    fn refused_tags_make_the_verdict_unknown() {
        let mut k = key("k1", &[], "Enabled");
        k.tags = Lookup::Refused;
        let v = evaluate(&[k], &matcher());
        assert_eq!(v.status, Status::Unknown);
        assert_eq!(v.unreadable_keys, 1);
    }

    #[test]
    fn other_states_are_counted_when_present() {
        let v = evaluate(
            &[key("k1", &[("app_tier", "")], "PendingImport")],
            &matcher(),
        );
        assert_eq!(v.state_counts["PendingImport"], 1);
        assert_eq!(v.state_counts.len(), 4);
    }

    fn when_in_use() -> Matcher {
        matcher().with_requirement(Requirement::WhenTagInUse, true)
    }

    #[test]
    fn region_without_the_tag_key_in_use_does_not_need_the_key() {
        let v = apply_requirement(evaluate(&[], &when_in_use()), &when_in_use(), Some(false));
        assert_eq!(v.status, Status::Pass);
        assert!(v.message.starts_with("not required"), "{}", v.message);
        assert_eq!(v.required, Some(false));
        assert!(!v.present());
    }

    #[test]
    fn region_with_the_tag_key_in_use_needs_the_key() {
        let v = apply_requirement(evaluate(&[], &when_in_use()), &when_in_use(), Some(true));
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.required, Some(true));
        assert_eq!(v.tag_in_use, Some(true));
    }

    #[test]
    fn unknown_tag_usage_without_a_key_is_unknown() {
        let v = apply_requirement(evaluate(&[], &when_in_use()), &when_in_use(), None);
        assert_eq!(v.status, Status::Unknown);
        assert_eq!(v.required, None);
        let present = evaluate(&[key("k1", &[("app_tier", "")], "Enabled")], &when_in_use());
        let v = apply_requirement(present, &when_in_use(), None);
        assert_eq!(v.status, Status::Pass);
        assert!(v.present());
    }

    #[test]
    fn require_always_ignores_tag_usage() {
        let v = apply_requirement(evaluate(&[], &matcher()), &matcher(), Some(false));
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.required, Some(true));
        assert_eq!(v.tag_in_use, Some(false));
    }

    #[test]
    fn tag_key_comparison_follows_case_insensitive() {
        assert!(matcher().is_tag_key("app_tier"));
        assert!(!matcher().is_tag_key("App_Tier"));
        let folded = Matcher::new("App_Tier", &[], true, &["Enabled".into()]);
        assert!(folded.is_tag_key("app_tier"));
    }

    #[test]
    fn keys_are_sorted_by_id() {
        let v = evaluate(
            &[
                key("b", &[("app_tier", "")], "Enabled"),
                key("a", &[("app_tier", "")], "Enabled"),
            ],
            &matcher(),
        );
        assert_eq!(v.matching_key_ids(), vec!["a", "b"]);
    }
}
