//! Connecting to Kafka (the worker's rskafka client, the gateway's producing client) and
//! making sure the purchases topic exists.

use rskafka::{
    client::{error::Error as KafkaError, Client, ClientBuilder},
    BackoffConfig,
};

pub use kafka_group::{authorization::Operation, Backoff, GroupAdmin, ProduceClient, TopicAdmin};
use kafka_group::{backoff::REQUEST_STEPS, Security};

/// What the gateway does with the purchases topic.
pub const PRODUCE: &[Operation] = &[Operation::Describe, Operation::Write];
/// What a worker does with the purchases topic (and, with the group, commits).
pub const CONSUME: &[Operation] = &[Operation::Describe, Operation::Read];

use crate::{config::KafkaArgs, kafka_security};

/// Why no Kafka client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The brokers refused our TLS or SASL settings, or their listener speaks other ones;
    /// retrying cannot help. Said with the flags to change.
    #[error("{}", kafka_security::explain(.0))]
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
/// [`kafka_security::resolve`] made of `args.events.security`. One connection is made first
/// ([`Security::check`]: TLS, ApiVersions, SASL and a Metadata request), so refused
/// credentials, an untrusted certificate, or TLS and SASL settings the brokers' listener
/// does not speak are reported at once and by name instead of after rskafka's retry
/// deadline as an "early eof".
pub async fn connect(args: &KafkaArgs, security: &Security) -> Result<Client, ConnectError> {
    let check = refused_security(args, security).await?;
    let builder = ClientBuilder::new(args.events.brokers.clone());
    kafka_security::secure(builder, security)
        .client_id(args.client_id.as_str())
        // rskafka retries in its own loop; it gets the request shape of the one policy.
        .backoff_config(BackoffConfig {
            init_backoff: REQUEST_STEPS.0,
            max_backoff: REQUEST_STEPS.1,
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

/// One connection ([`Security::check`]: TLS, ApiVersions, SASL and a Metadata request): a
/// refusal of `security` is an error at once and by name; any other failure is returned for
/// the caller to report beside its own retries' outcome.
async fn refused_security(
    args: &KafkaArgs,
    security: &Security,
) -> Result<Option<kafka_group::Error>, ConnectError> {
    match security
        .check(&args.events.brokers, &args.client_id, args.retry_deadline)
        .await
    {
        Ok(()) => Ok(None),
        Err(e) if e.is_security() => Err(ConnectError::Security(e)),
        Err(e) => Ok(Some(e)),
    }
}

/// The gateway's producing client (kafka-group's: one Produce request per broker), once one
/// connection showed the brokers take `security` (a refusal is reported at once and by name,
/// as for [`connect`]). Brokers that do not answer yet are not an error here: the topic check
/// that follows retries until `args.retry_deadline`, as rskafka's client did.
pub async fn produce_client(
    args: &KafkaArgs,
    security: &Security,
) -> Result<ProduceClient, ConnectError> {
    refused_security(args, security).await?;
    Ok(ProduceClient::new(
        args.events.brokers.clone(),
        args.client_id.clone(),
        args.retry_deadline,
    )
    .with_security(security.clone()))
}

/// What a failed [`connect`] or [`produce_client`] was trying to do, for the start-up error:
/// which brokers, with which security.
pub fn connecting_to(args: &KafkaArgs, security: &Security) -> String {
    format!(
        "cannot connect to Kafka at {} ({})",
        args.events.brokers.join(","),
        kafka_security::describe(security)
    )
}

/// The topic admin of `args`' brokers: lookups and creation on kafka-group's connections,
/// never on the producer's rskafka client, whose leader cache a full metadata lookup would
/// refill with an answer that goes stale at the next leader move.
pub fn topic_admin(args: &KafkaArgs, security: &Security) -> TopicAdmin {
    TopicAdmin::new(
        args.events.brokers.clone(),
        args.client_id.clone(),
        args.retry_deadline,
        security.clone(),
    )
}

/// The group admin of `args`' brokers (committed offsets, end offsets, lag) without joining.
pub fn group_admin(args: &KafkaArgs, security: &Security) -> GroupAdmin {
    GroupAdmin::new(
        args.events.brokers.clone(),
        args.client_id.clone(),
        args.retry_deadline,
    )
    .with_security(security.clone())
}

/// What a failed [`ensure_topic`] was doing, for the start-up error.
pub fn preparing_topic(args: &KafkaArgs) -> String {
    format!("cannot create or describe topic {}", args.events.topic)
}

/// Creates the topic when missing and returns its real partition count (which wins over
/// the configured one when the topic already existed), once the brokers confirm this
/// client may do `needed` on it (where they report it; see `kafka_group::authorization`).
pub async fn ensure_topic(
    admin: &TopicAdmin,
    args: &KafkaArgs,
    needed: &[Operation],
) -> Result<i32, kafka_group::Error> {
    let partitions = admin
        .ensure(
            &args.events.topic,
            needed,
            args.topic_partitions,
            args.replication_factor,
            args.retry_deadline,
        )
        .await?;
    Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
}
