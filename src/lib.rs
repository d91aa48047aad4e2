//! app-tier-cmk-exporter: watches AWS accounts and regions for the App-Tier KMS customer
//! master key and serves what it finds to Prometheus.
//!
//! Data flows one way: [`config`] -> [`targets`] (account x region) -> [`scanner`] (with
//! [`aws`] and [`inventory`]) -> [`evaluate`] (pure) -> [`snapshot`] -> [`metrics`] ->
//! [`server`]. [`report`] renders the one-shot `scan` mode; [`app`] wires both modes.
//! [`shard`] picks this replica's accounts; [`schedule`] paces the targets within a round.

pub mod app;
pub mod aws;
pub mod body;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod inventory;
pub mod metrics;
pub mod report;
pub mod scanner;
pub mod schedule;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod targets;
