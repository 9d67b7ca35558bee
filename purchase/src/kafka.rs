//! Connecting to Kafka with rskafka and making sure the purchases topic exists.

use std::time::Duration;

use rskafka::{
    client::{
        error::{Error as KafkaError, ProtocolError},
        Client, ClientBuilder,
    },
    BackoffConfig,
};

use kafka_group::Security;

use crate::{config::KafkaArgs, kafka_security};

/// Why no Kafka client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The brokers refused our TLS or SASL settings; retrying cannot help.
    #[error(transparent)]
    Security(kafka_group::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// rskafka could not connect either; what the first connection saw names the cause
    /// better than rskafka's retries do.
    #[error("{check} (rskafka then gave up too: {rskafka})")]
    AfterCheck {
        check: kafka_group::Error,
        rskafka: KafkaError,
    },
}

/// Builds a client whose retries give up after `retry_deadline`, so no caller can hang on a
/// dead broker (rskafka's default retries forever). `security` is what
/// [`kafka_security::resolve`] made of `args.events.security`; with TLS or SASL on, one
/// connection is tried first, so refused credentials or an untrusted certificate are
/// reported at once and by name instead of after rskafka's retry deadline.
pub async fn connect(args: &KafkaArgs, security: &Security) -> Result<Client, ConnectError> {
    let mut check = None;
    if security.tls.is_some() || security.sasl.is_some() {
        if let Err(e) = security
            .check(&args.events.brokers, &args.client_id, args.retry_deadline)
            .await
        {
            if e.is_security() {
                return Err(ConnectError::Security(e));
            }
            check = Some(e);
        }
    }
    let builder = ClientBuilder::new(args.events.brokers.clone());
    kafka_security::secure(builder, security)
        .client_id(args.client_id.as_str())
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(args.retry_deadline),
        })
        .build()
        .await
        .map_err(|rskafka| match check {
            Some(check) => ConnectError::AfterCheck { check, rskafka },
            None => ConnectError::Kafka(rskafka),
        })
}

/// Creates the topic when missing and returns its real partition count (which wins over
/// the configured one when the topic already existed).
pub async fn ensure_topic(client: &Client, args: &KafkaArgs) -> Result<i32, KafkaError> {
    if let Some(partitions) = partition_count(client, &args.events.topic).await? {
        return Ok(partitions);
    }
    let timeout_ms = i32::try_from(args.retry_deadline.as_millis()).unwrap_or(i32::MAX);
    match client
        .controller_client()?
        .create_topic(
            &args.events.topic,
            args.topic_partitions,
            args.replication_factor,
            timeout_ms,
        )
        .await
    {
        Ok(()) => {
            tracing::info!(topic = %args.events.topic, partitions = args.topic_partitions, "created topic")
        }
        // Another process created it between our look and our create.
        Err(KafkaError::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    partition_count(client, &args.events.topic)
        .await?
        .ok_or_else(|| {
            KafkaError::InvalidResponse(format!(
                "topic {} has no partitions after creation",
                args.events.topic
            ))
        })
}

async fn partition_count(client: &Client, topic: &str) -> Result<Option<i32>, KafkaError> {
    let topics = client.list_topics().await?;
    Ok(topics
        .iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.len() as i32)
        .filter(|n| *n > 0))
}
