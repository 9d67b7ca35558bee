//! Builds the running gateway: connects to Kafka and MongoDB, prepares topic and indexes,
//! binds the listener and serves until the shutdown signal.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use infra::{
    kafka, kafka_security,
    mongo::{self, Need},
};
use poem::{
    endpoint::make_sync,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
    EndpointExt, Route,
};
use tokio_util::sync::CancellationToken;

use crate::{
    access_log, api,
    auth::Authenticator,
    config::GatewayConfig,
    history::History,
    idempotency::{self, Reservations},
    metrics::{self, Metrics},
    payload::BodyLimit,
    producer::PurchaseProducer,
    server,
    state::AppState,
};

/// What the gateway does in MongoDB: read purchases (history), and find and insert
/// idempotency keys.
const MONGO_NEEDS: &[Need] = &[
    Need::find(infra::mongo::document::COLLECTION),
    Need::find(idempotency::COLLECTION),
    Need::insert(idempotency::COLLECTION),
];

pub struct Application {
    acceptor: TcpAcceptor,
    state: Arc<AppState>,
    config: GatewayConfig,
}

impl Application {
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        // First: a gateway that cannot check tokens must not start, and says so before it
        // waits for any dependency.
        let auth = Authenticator::start(&config.auth).await?;
        let (producer, topics, partitions) = start_kafka(&config, &metrics).await?;
        let (db, mongo_access, reservations) = start_mongo(&config).await?;

        let acceptor = TcpListener::bind(config.listen)
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(listen = %config.listen, topic = %config.kafka.events.topic, partitions, "gateway ready");

        let state = Arc::new(AppState {
            producer,
            history: History::new(&db),
            reservations,
            auth,
            topics,
            topic: config.kafka.events.topic.clone(),
            db,
            mongo_access,
            metrics,
            retry_after_seconds: config.produce.retry_after_seconds,
            probe_timeout: Duration::from_secs(2),
        });
        Ok(Self {
            acceptor,
            state,
            config,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .expect("a TCP acceptor has a socket address")
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish (up to the
    /// grace period) and waits for queued purchases to be sent or failed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = Arc::clone(&self.state);
        let app = routes(Arc::clone(&state), self.config.max_body_bytes);
        server::serve(
            self.acceptor,
            app,
            self.config.client_timeouts.clone(),
            shutdown,
            self.config.shutdown_grace,
        )
        .await;
        state.producer.close().await;
        mongo::disconnect(&state.db, self.config.mongo.timeout).await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// The producer on a topic that exists and that this gateway may write, with the topic admin
/// readiness asks and the topic's partition count.
async fn start_kafka(
    config: &GatewayConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(PurchaseProducer, kafka::TopicAdmin, i32)> {
    let kafka_security = kafka_security::resolve(&config.kafka.events.security)
        .context("invalid Kafka security settings")?;
    let kafka = kafka::produce_client(&config.kafka_for_producing(), &kafka_security)
        .await
        .with_context(|| kafka::connecting_to(&config.kafka_for_producing(), &kafka_security))?;
    let topics = kafka::topic_admin(&config.kafka, &kafka_security);
    let partitions = kafka::ensure_topic(&topics, &config.kafka, kafka::PRODUCE)
        .await
        .with_context(|| kafka::preparing_topic(&config.kafka))?;
    let producer = PurchaseProducer::start(
        kafka,
        &config.kafka.events.topic,
        partitions,
        config.produce.clone(),
        Arc::clone(metrics),
    )
    .await
    .with_context(|| {
        format!(
            "cannot reach the leaders of topic {}",
            config.kafka.events.topic
        )
    })?;
    Ok((producer, topics, partitions))
}

/// The database, its access check (for readiness) and the idempotency reservations; their
/// indexes are made in the background until the database takes them.
async fn start_mongo(
    config: &GatewayConfig,
) -> anyhow::Result<(mongodb::Database, mongo::AccessCheck, Reservations)> {
    let mongo::Opened {
        db,
        access: mongo_access,
        ..
    } = mongo::open(&config.mongo, "gateway", MONGO_NEEDS)
        .await
        .context("cannot use MongoDB")?;
    tokio::spawn(mongo::ensure_indexes_until_done(db.clone()));
    let reservations = Reservations::start(
        &db,
        config.produce.idempotency_key_retention,
        config.produce.timeout,
    );
    tokio::spawn({
        let reservations = reservations.clone();
        async move {
            mongo::retry_until_done("idempotency key indexes", || reservations.ensure_index()).await
        }
    });
    Ok((db, mongo_access, reservations))
}

fn routes(state: Arc<AppState>, max_body_bytes: usize) -> impl poem::Endpoint {
    let api = api::service();
    let metrics = Arc::clone(&state.metrics);
    Route::new()
        .nest("/docs", api.swagger_ui())
        .at("/openapi.json", api.spec_endpoint())
        .at(
            "/metrics",
            make_sync({
                let metrics = Arc::clone(&metrics);
                move |_| metrics.render()
            }),
        )
        .nest("/", api)
        .data(state)
        .data(BodyLimit(max_body_bytes))
        .around(allow_on_405)
        .around(crate::request_trace::trace_request)
        .around(|next, req| async move { Ok(api::render::render_errors(next, req).await) })
        .around(move |next, req| {
            let metrics = Arc::clone(&metrics);
            async move { Ok(metrics::observe(next, req, &metrics).await) }
        })
        .around(access_log::log_request)
}

/// RFC 9110: a 405 carries `Allow`, the methods the path takes (from the API's metadata, so
/// it agrees with the spec). Rendered here because the error alone cannot carry a header.
/// (Paths spelled out to leave the rest of this file as it was.)
async fn allow_on_405<E: poem::Endpoint>(
    next: Arc<E>,
    req: poem::Request,
) -> poem::Result<poem::Response> {
    use poem::{http, IntoResponse};
    let uri = req.uri().clone();
    match next.call(req).await {
        Err(err) if err.status() == http::StatusCode::METHOD_NOT_ALLOWED => {
            let mut response = api::render::render_error(err);
            if let Some(allow) = api::allowed_methods(uri.path()) {
                response
                    .headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            }
            Ok(response)
        }
        other => other.map(IntoResponse::into_response),
    }
}
