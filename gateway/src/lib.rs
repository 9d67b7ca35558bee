//! The scalable-shop gateway: takes purchases over HTTP into Kafka (answering only once the
//! broker has them) and serves purchase history from MongoDB.

pub mod access_log;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod history;
pub mod idempotency;
pub mod metrics;
pub mod payload;
pub mod producer;
pub mod request_trace;
pub mod server;
pub mod startup;
pub mod state;
