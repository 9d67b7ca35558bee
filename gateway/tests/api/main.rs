//! Black-box tests of the gateway through its HTTP API, against a real Kafka-protocol broker
//! (nisshi) and a real MongoDB-wire server (secantusd-rs) started by `scripts/infra.sh`.

mod helpers;
pub use test_support::tokens;

mod auth;
mod broker_down;
mod create_purchase;
mod history;
mod idempotency;
#[cfg(target_os = "linux")] // /proc and prctl
mod infra;
mod legacy;
mod operations;
mod schemathesis;
mod slow_clients;
mod validation;
