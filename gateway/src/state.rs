//! What request handlers share: the producer, the history reader, the authenticator and the
//! dependencies that readiness checks.

use std::{sync::Arc, time::Duration};

use infra::{kafka::TopicAdmin, mongo::AccessCheck};
use mongodb::Database;

use crate::{
    auth::Authenticator, history::History, idempotency::Reservations, metrics::Metrics,
    producer::PurchaseProducer,
};

pub struct AppState {
    pub producer: PurchaseProducer,
    pub history: History,
    pub reservations: Reservations,
    pub auth: Arc<Authenticator>,
    /// Readiness asks it whether the topic is there (not the producer's client: see
    /// `infra::kafka::topic_admin`).
    pub topics: TopicAdmin,
    pub topic: String,
    pub db: Database,
    /// Readiness runs it: the finds and inserts the gateway needs, not only a ping.
    pub mongo_access: AccessCheck,
    pub metrics: Arc<Metrics>,
    pub retry_after_seconds: u32,
    /// Bound on each readiness probe of a dependency.
    pub probe_timeout: Duration,
}
