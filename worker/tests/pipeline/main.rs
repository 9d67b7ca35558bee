//! The whole pipeline on real servers: gateway (in-process) → Kafka (nisshi, or the
//! three-broker mock cluster with `TEST_KAFKA=mock`) → worker processes → MongoDB
//! (secantusd-rs), with crashes, scale events, outages and (`cluster_events`, always on a
//! mock cluster of their own) leader moves, failovers and coordinator moves.

mod helpers;
mod steady_load;

mod autoscale;
mod cluster_events;
mod crashes;
mod dead_letters;
mod delivery;
mod exit;
mod fleet;
mod kafka_access;
mod kafka_misconfiguration;
mod mongo_access;
mod pacing;
mod scale;
mod security;
mod start;
