//! The group protocol against a real broker (nisshi), cross-checked with confluent-kafka.

mod helpers;

mod membership;
mod offsets;
mod security;
