//! The whole pipeline on real servers: gateway (in-process) → Kafka (nisshi) → worker
//! processes → MongoDB (secantusd-rs), with crashes, scale events and outages.

mod helpers;
mod steady_load;

mod crashes;
mod dead_letters;
mod delivery;
mod exit;
mod fleet;
mod pacing;
mod scale;
mod security;
mod start;
