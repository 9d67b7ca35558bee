//! Topics: how many partitions a topic has, and creating one that is missing.

use std::{sync::Arc, time::Duration};

use kafka_protocol::{
    messages::{create_topics_request::CreatableTopic, CreateTopicsRequest, TopicName},
    protocol::StrBytes,
    ResponseError,
};

use crate::{
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
        let metadata = self.cluster.metadata(&[topic.to_string()]).await?;
        Ok(existing_partitions(&metadata, topic))
    }

    /// Creates the topic unless it exists, and returns its partition count (the existing
    /// topic's, which wins over `partitions`). CreateTopics goes to the controller the
    /// metadata names, else to any broker: a KRaft broker forwards it to the controller.
    pub async fn ensure(
        &self,
        topic: &str,
        partitions: i32,
        replication: i16,
        timeout: Duration,
    ) -> Result<usize> {
        // One lookup tells whether the topic exists and which broker is the controller.
        let metadata = self.cluster.metadata(&[topic.to_string()]).await?;
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

/// The partition count of `topic` in `metadata`, `None` when it does not exist.
fn existing_partitions(metadata: &Metadata, topic: &str) -> Option<usize> {
    metadata
        .partition_counts
        .get(topic)
        .copied()
        .filter(|n| *n > 0)
}
