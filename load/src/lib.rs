//! The scalable-shop load tool: drives purchases at the gateway on an open-loop schedule
//! (constant rate or ramp stages), measures latency without coordinated omission in an HDR
//! histogram, and watches the consumer lag that KEDA scales the workers on.

pub mod config;
pub mod lag;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod workload;
