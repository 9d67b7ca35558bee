//! What request handlers share: the producer, the history reader, the authenticator and the
//! dependencies that readiness checks.

use std::{sync::Arc, time::Duration};

use mongodb::Database;
use rskafka::client::Client;

use crate::{
    auth::Authenticator, history::History, idempotency::Reservations, metrics::Metrics,
    producer::PurchaseProducer,
};

pub struct AppState {
    pub producer: PurchaseProducer,
    pub history: History,
    pub reservations: Reservations,
    pub auth: Arc<Authenticator>,
    pub kafka: Client,
    pub db: Database,
    pub metrics: Arc<Metrics>,
    pub retry_after_seconds: u32,
    /// Bound on each readiness probe of a dependency.
    pub probe_timeout: Duration,
}
