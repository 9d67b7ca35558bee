//! Topics: how many partitions a topic has, and creating one that is missing.

use std::{sync::Arc, time::Duration};

use kafka_protocol::{
    messages::{create_topics_request::CreatableTopic, CreateTopicsRequest, TopicName},
    protocol::StrBytes,
    ResponseError,
};

use crate::{
    authorization::{self, Operation},
    backoff::Backoff,
    cluster::{Cluster, Metadata},
    error::{protocol_error, Error, Result},
    security::Security,
};

/// Looks topics up and creates missing ones, on any Kafka cluster shape.
#[derive(Clone)]
pub struct TopicAdmin {
    cluster: Arc<Cluster>,
}

impl TopicAdmin {
    /// `bootstrap` as `host:port` strings.
    pub fn new(
        bootstrap: Vec<String>,
        client_id: impl Into<String>,
        request_timeout: Duration,
        security: Security,
    ) -> Self {
        Self {
            cluster: Arc::new(Cluster::new(
                bootstrap,
                client_id.into(),
                request_timeout,
                security,
            )),
        }
    }

    /// The topic's partition count, `None` when it does not exist. Never creates it.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<usize>> {
        self.usable(topic, &[]).await
    }

    /// Like [`partition_count`](Self::partition_count), and
    /// [`Error::NotAuthorized`] when the brokers refuse to describe the topic to this
    /// client, or report that it may not do one of `needed` on it (brokers that do not
    /// report operations are taken at their word until a real request is refused).
    pub async fn usable(&self, topic: &str, needed: &[Operation]) -> Result<Option<usize>> {
        let metadata = self.cluster.metadata(&[topic.to_string()]).await?;
        check_allowed(&metadata, topic, needed)?;
        Ok(existing_partitions(&metadata, topic))
    }

    /// Creates the topic unless it exists, and returns its partition count (the existing
    /// topic's, which wins over `partitions`), once the brokers confirm this client may do
    /// `needed` on it (see [`usable`](Self::usable)). CreateTopics goes to the controller the
    /// metadata names, else to any broker: a KRaft broker forwards it to the controller.
    pub async fn ensure(
        &self,
        topic: &str,
        needed: &[Operation],
        partitions: i32,
        replication: i16,
        timeout: Duration,
    ) -> Result<usize> {
        // One lookup tells whether the topic exists, what this client may do with it and
        // which broker is the controller.
        let metadata = self.cluster.metadata(&[topic.to_string()]).await?;
        check_allowed(&metadata, topic, needed)?;
        if let Some(existing) = existing_partitions(&metadata, topic) {
            return Ok(existing);
        }
        let connection = match &metadata.controller {
            Some(controller) => self.cluster.broker(controller).await?,
            None => self.cluster.any().await?,
        };
        let version = connection
            .version::<CreateTopicsRequest>(2..=7)
            .map_err(|e| {
                Error::Unsupported(format!(
                    "cannot create topic {topic}: {e}; create it beforehand with {partitions} partitions"
                ))
            })?;
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(replication)])
            .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX));
        let response = match connection
            .send_with_version(&request, version, timeout)
            .await
        {
            Ok(response) => response,
            Err(e) => {
                self.cluster.forget(connection.address()).await;
                return Err(e);
            }
        };
        for result in &response.topics {
            match protocol_error(result.error_code) {
                // Another process created it between our look and our create.
                None | Some(ResponseError::TopicAlreadyExists) => {}
                Some(error) => {
                    let detail = result.error_message.as_deref().unwrap_or_default();
                    tracing::warn!(topic, %error, detail, "CreateTopics refused");
                    return Err(Error::Protocol {
                        api: "CreateTopics",
                        error,
                    });
                }
            }
        }
        tracing::info!(topic, partitions, replication, "created topic");
        // A new topic's partitions appear in every broker's metadata shortly after.
        let mut backoff = Backoff::new(timeout);
        loop {
            if let Some(count) = self.partition_count(topic).await? {
                return Ok(count);
            }
            if !backoff.wait().await {
                return Err(Error::Timeout(format!(
                    "topic {topic} has no partitions {timeout:?} after its creation"
                )));
            }
        }
    }
}

/// [`Error::NotAuthorized`] naming the topic, what is missing and what to grant.
fn check_allowed(metadata: &Metadata, topic: &str, needed: &[Operation]) -> Result<()> {
    if let Some(error) = metadata.refused_topics.get(topic) {
        let mut grant = vec![Operation::Describe];
        grant.extend(needed.iter().filter(|op| **op != Operation::Describe));
        return Err(Error::NotAuthorized(format!(
            "the brokers refuse to describe topic {topic} to this client ({error:?}): grant its user {} on the topic",
            authorization::list(&grant)
        )));
    }
    let reported = metadata
        .topic_operations
        .get(topic)
        .copied()
        .unwrap_or(authorization::NOT_REPORTED);
    let missing = authorization::missing(reported, needed);
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::NotAuthorized(format!(
        "the brokers do not let this client's user {} topic {topic}: grant it {} on the topic",
        authorization::list(&missing).to_lowercase(),
        authorization::list(&missing)
    )))
}

/// The partition count of `topic` in `metadata`, `None` when it does not exist.
fn existing_partitions(metadata: &Metadata, topic: &str) -> Option<usize> {
    metadata
        .partition_counts
        .get(topic)
        .copied()
        .filter(|n| *n > 0)
}
