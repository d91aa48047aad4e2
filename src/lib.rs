//! app-tier-cmk-exporter: watches AWS accounts and regions for the App-Tier KMS customer
//! master key and serves what it finds to Prometheus.
//!
//! Data flows one way: [`config`] -> [`targets`] (account x region) -> [`scanner`] (with
//! [`aws`] and [`inventory`]) -> [`evaluate`] (pure) -> [`snapshot`] -> [`metrics`] ->
//! [`server`] (behind [`web_config`] and [`tls`]). [`report`] renders the one-shot `scan`
//! mode; [`app`] wires both modes and [`reload`]s the configuration.

pub mod app;
pub mod aws;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod inventory;
pub mod metrics;
pub mod reload;
pub mod report;
pub mod scanner;
pub mod server;
pub mod snapshot;
pub mod targets;
pub mod tls;
pub mod web_config;
