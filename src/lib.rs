//! app-tier-cmk-exporter: watches AWS accounts and regions for the App-Tier KMS customer
//! master key and serves what it finds to Prometheus.
//!
//! Data flows one way: [`config`] -> [`targets`] (account x region, completed each round by
//! [`discovery`] from [`organization`] and [`regions`]) -> [`scanner`] (with [`aws`],
//! [`inventory`] and [`tag_usage`]) -> [`evaluate`] (pure) -> [`snapshot`] -> [`metrics`] ->
//! [`server`] (behind [`web_config`] and [`tls`]). [`report`] and [`cloudsploit`] render the
//! one-shot `scan` mode; [`app`] wires both modes and [`reload`]s the configuration.
//! [`shard`] picks this replica's accounts; [`schedule`] paces the targets within a round.

pub mod app;
pub mod aws;
pub mod body;
pub mod cloudsploit;
pub mod config;
pub mod discovery;
pub mod error;
pub mod evaluate;
pub mod inventory;
pub mod metrics;
pub mod organization;
pub mod regions;
pub mod reload;
pub mod report;
pub mod scanner;
pub mod schedule;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod tag_usage;
pub mod targets;
pub mod tls;
pub mod web_config;
