//! Property tests over bad input: configuration files made of arbitrary text or arbitrary
//! values for every key never panic (and what loads is valid), generated valid configurations
//! load, web configuration files never panic the loader, and the evaluation of arbitrary key
//! and tag data keeps its invariants.
//!
//! Bounded (a few hundred cases each) so the whole file runs in seconds.

use std::io::Write as _;

use app_tier_cmk_exporter::config::{Config, KEY_STATES};
use app_tier_cmk_exporter::evaluate::{
    ALWAYS_EXPORTED_STATES, KeyDescription, KeyFacts, KeyManager, Lookup, Matcher, Status, Tag,
    UNKNOWN_STATE, evaluate,
};
use figment::providers::Env;
use proptest::prelude::*;

fn load(toml: &str) -> Result<Config, String> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(toml.as_bytes()).expect("write");
    // A prefix nobody sets: the machine's environment stays out.
    Config::load_from(
        Some(file.path()),
        Env::prefixed("APP_TIER_CMK_PROPTEST_NONE_"),
    )
    .map_err(|e| e.0)
}

/// What any loaded configuration must satisfy, whatever the input.
fn assert_valid(config: &Config) {
    assert!((1..=1024).contains(&config.scan.concurrency.0));
    assert!(config.scan.interval.0.as_millis() >= 100);
    assert!(config.scan.timeout.0.as_millis() >= 100);
    assert!(!config.matching.tag_key.0.is_empty());
    assert!(!config.matching.key_states.is_empty());
    assert!(config.metrics_path.0.starts_with('/'));
    for account in &config.accounts {
        if let (Some(id), Some(arn)) = (&account.account_id, &account.role_arn) {
            assert_eq!(id, arn.account());
        }
    }
}

/// A TOML value of any type, rendered as TOML.
fn toml_value() -> impl Strategy<Value = String> {
    let string = any::<String>().prop_map(|s| serde_json::to_string(&s).expect("json string"));
    let leaf = prop_oneof![
        string.clone(),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        (-1e9f64..1e9).prop_map(|f| format!("{f:.3}")),
        prop::sample::select(vec![
            "\"us-east-1\"",
            "\"5m\"",
            "\"0s\"",
            "\"Enabled\"",
            "\"arn:aws:iam::111111111111:role/r\"",
            "\"123456789012\"",
            "\"/metrics\"",
            "\"0.0.0.0:1\"",
            "\"all\"",
            "\"when_tag_in_use\"",
            "\"AppTierCmkScanner\"",
            "\"\"",
        ])
        .prop_map(str::to_owned),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                let fields: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

/// Every key of the configuration, as (table, key).
const KEYS: [(&str, &str); 29] = [
    ("", "listen_address"),
    ("", "metrics_path"),
    ("", "regions"),
    ("", "exclude_regions"),
    ("scan", "interval"),
    ("scan", "timeout"),
    ("scan", "concurrency"),
    ("match", "tag_key"),
    ("match", "tag_values"),
    ("match", "case_insensitive"),
    ("match", "key_states"),
    ("match", "require"),
    ("match", "check_tag_in_use"),
    ("[accounts]", "name"),
    ("[accounts]", "account_id"),
    ("[accounts]", "role_arn"),
    ("[accounts]", "external_id"),
    ("[accounts]", "session_duration"),
    ("[accounts]", "regions"),
    ("[accounts]", "exclude_regions"),
    ("organization", "enabled"),
    ("organization", "role_name"),
    ("organization", "external_id"),
    ("organization", "include"),
    ("organization", "exclude"),
    ("organization", "refresh_interval"),
    ("organization", "regions"),
    ("organization", "exclude_regions"),
    ("", "unknown_key"),
];

fn render(entries: &[(usize, String)]) -> String {
    let mut top = String::new();
    let mut tables = String::new();
    for (index, value) in entries {
        let (table, key) = KEYS[*index % KEYS.len()];
        if table.is_empty() {
            top.push_str(&format!("{key} = {value}\n"));
        } else {
            tables.push_str(&format!("[{table}]\n{key} = {value}\n"));
        }
    }
    top + &tables
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_config_loader(text in "\\PC{0,300}") {
        if let Ok(config) = load(&text) {
            assert_valid(&config);
        }
    }

    #[test]
    fn toml_shaped_lines_never_panic_the_config_loader(
        lines in prop::collection::vec(
            prop_oneof![
                "[a-z_.\\[\\]]{0,20} = [^\\n]{0,30}",
                "\\[{1,2}[a-z]{0,10}\\]{1,2}",
                "[ -~]{0,40}",
            ],
            0..12,
        )
    ) {
        if let Ok(config) = load(&lines.join("\n")) {
            assert_valid(&config);
        }
    }

    #[test]
    fn arbitrary_values_for_every_key_never_panic_and_loaded_ones_are_valid(
        entries in prop::collection::vec((0..KEYS.len(), toml_value()), 1..6)
    ) {
        let text = render(&entries);
        if let Ok(config) = load(&text) {
            assert_valid(&config);
        }
    }

    #[test]
    fn arbitrary_web_config_files_never_panic(
        text in prop_oneof![
            "\\PC{0,200}",
            prop::collection::vec(
                prop::sample::select(vec![
                    "tls_server_config:", "  cert_file: x", "  client_auth_type: RequireAndVerifyClientCert",
                    "  min_version: TLS10", "basic_auth_users:", "  a: $2y$04$abc", "  : x",
                    "http_server_config:", "  headers:", "    X-Frame-Options: deny", "    Server: x",
                    "  http2: maybe", "- item", "{", "key: [1, 2", "\t", "&anchor x", "*anchor",
                ]),
                0..10,
            ).prop_map(|lines| lines.join("\n")),
        ]
    ) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        let _ = app_tier_cmk_exporter::web_config::WebSecurity::load(file.path());
    }

    #[test]
    fn generated_valid_configs_load(
        regions in prop::sample::subsequence(vec!["us-east-1", "eu-west-1", "ap-south-1", "us-gov-west-1", "eu-central-2"], 0..5),
        interval in 1u64..100_000,
        timeout in 100u64..600_000,
        concurrency in 1u32..=1024,
        tag_key in "[A-Za-z0-9_:/=+@.-]{1,128}",
        tag_values in prop::collection::vec("[a-z0-9]{0,12}", 0..3),
        case_insensitive in any::<bool>(),
        states in prop::sample::subsequence(KEY_STATES.to_vec(), 1..=KEY_STATES.len()),
        accounts in prop::collection::btree_set(100_000_000_000u64..999_999_999_999, 0..4),
        session_minutes in prop::option::of(15u64..=720),
    ) {
        let quote = |v: &[&str]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let mut text = format!(
            "regions = [{}]\n[scan]\ninterval = \"{interval}s\"\ntimeout = \"{timeout}ms\"\nconcurrency = {concurrency}\n[match]\ntag_key = {}\ntag_values = [{}]\ncase_insensitive = {case_insensitive}\nkey_states = [{}]\n",
            quote(&regions),
            serde_json::to_string(&tag_key).expect("json"),
            quote(&tag_values.iter().map(String::as_str).collect::<Vec<_>>()),
            quote(&states),
        );
        for (i, id) in accounts.iter().enumerate() {
            text.push_str(&format!("[[accounts]]\nname = \"a{i}\"\nrole_arn = \"arn:aws:iam::{id}:role/Scanner\"\n"));
            if let Some(minutes) = session_minutes {
                text.push_str(&format!("session_duration = \"{minutes}m\"\n"));
            }
        }
        let config = load(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        assert_valid(&config);
        prop_assert_eq!(config.regions.listed().len(), regions.len());
        prop_assert_eq!(config.scan.concurrency.0, concurrency as usize);
        prop_assert_eq!(config.scan.interval.0.as_secs(), interval);
        prop_assert_eq!(&config.matching.tag_key.0, &tag_key);
        prop_assert_eq!(config.matching.key_states.len(), states.len());
        prop_assert_eq!(config.accounts.len(), accounts.len());
    }
}

// ---------------------------------------------------------------------------
// evaluate()
// ---------------------------------------------------------------------------

fn state_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(KEY_STATES.to_vec()).prop_map(str::to_owned),
        "[A-Za-z]{0,10}",
    ]
}

fn tag() -> impl Strategy<Value = Tag> {
    (
        prop::sample::select(vec![
            "app_tier",
            "App_Tier",
            "APP_TIER",
            "team",
            "app_tier ",
            "",
        ]),
        prop::sample::select(vec!["prod", "PROD", "web", "", "x"]),
    )
        .prop_map(|(k, v)| Tag::new(k, v))
}

fn key_facts() -> impl Strategy<Value = KeyFacts> {
    let description = (
        any::<bool>(),
        state_name(),
        prop::option::of(any::<f64>()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(aws, state, deletion, symmetric, rotatable)| KeyDescription {
                key_manager: if aws {
                    KeyManager::Aws
                } else {
                    KeyManager::Customer
                },
                key_state: state,
                deletion_timestamp: deletion,
                symmetric,
                rotatable_origin: rotatable,
            },
        );
    (
        "[a-f0-9-]{0,12}",
        prop::collection::vec(
            prop::sample::select(vec![
                "alias/aws/ebs",
                "alias/app",
                "alias/aws",
                "alias/awsx/y",
            ])
            .prop_map(str::to_owned),
            0..3,
        ),
        prop_oneof![
            Just(Lookup::NotAsked),
            Just(Lookup::Refused),
            prop::collection::vec(tag(), 0..4).prop_map(Lookup::Found),
        ],
        prop_oneof![
            Just(Lookup::NotAsked),
            Just(Lookup::Refused),
            description.prop_map(Lookup::Found),
        ],
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(key_id, aliases, tags, description, rotation_enabled)| KeyFacts {
                key_id,
                aliases,
                tags,
                description,
                rotation_enabled,
            },
        )
}

fn matcher() -> impl Strategy<Value = Matcher> {
    (
        prop::sample::select(vec!["app_tier", "App_Tier", "team"]),
        prop::collection::vec(
            prop::sample::select(vec!["prod", "web", "PROD"]).prop_map(str::to_owned),
            0..3,
        ),
        any::<bool>(),
        prop::sample::subsequence(KEY_STATES.to_vec(), 1..=3),
    )
        .prop_map(|(key, values, fold, states)| {
            let states: Vec<String> = states.into_iter().map(str::to_owned).collect();
            Matcher::new(key, &values, fold, &states)
        })
}

/// The rule, written independently: a readable, customer-managed, tagged key in a counted state.
fn counts(facts: &KeyFacts, matcher: &Matcher) -> bool {
    let aws_alias = facts.aliases.iter().any(|a| a.starts_with("alias/aws/"));
    let tagged = matches!(&facts.tags, Lookup::Found(tags) if matcher.is_tagged(tags));
    match &facts.description {
        Lookup::Found(d) => {
            !aws_alias
                && tagged
                && d.key_manager == KeyManager::Customer
                && d.key_state != UNKNOWN_STATE
                && matcher.counts_state(&d.key_state)
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn evaluation_keeps_its_invariants(
        keys in prop::collection::vec(key_facts(), 0..8),
        matcher in matcher(),
    ) {
        let verdict = evaluate(&keys, &matcher);
        let expected_present = keys.iter().any(|k| counts(k, &matcher));
        prop_assert_eq!(verdict.present(), expected_present, "{:?}", verdict);
        prop_assert_eq!(verdict.status == Status::Pass, expected_present);

        let total: u64 = verdict.state_counts.values().sum();
        prop_assert_eq!(total, verdict.keys.len() as u64);
        for state in ALWAYS_EXPORTED_STATES {
            prop_assert!(verdict.state_counts.contains_key(state));
        }
        prop_assert!(verdict.keys.windows(2).all(|w| w[0].key_id <= w[1].key_id));
        prop_assert_eq!(
            verdict.matching_key_ids().len(),
            keys.iter().filter(|k| counts(k, &matcher)).count()
        );
        if verdict.status == Status::Unknown {
            prop_assert!(
                verdict.unreadable_keys > 0 || verdict.keys.iter().any(|k| k.state == UNKNOWN_STATE)
            );
        }
        // No AWS-managed key is ever reported as an App-Tier key.
        for key in &verdict.keys {
            let facts = keys.iter().filter(|k| k.key_id == key.key_id);
            prop_assert!(facts.clone().any(|k| !k.is_aws_managed()));
        }
    }
}
