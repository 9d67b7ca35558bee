//! The group protocols against real brokers (nisshi or the mock cluster as `TEST_KAFKA` says;
//! the consumer protocol always on mock clusters of its own), cross-checked with
//! confluent-kafka.

mod helpers;

mod consumer_protocol;
mod membership;
mod offsets;
mod produce;
mod security;
