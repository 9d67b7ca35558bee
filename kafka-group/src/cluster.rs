//! The brokers we talk to: bootstrap, cached connections, coordinator lookup and metadata.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use kafka_protocol::{
    messages::{
        metadata_request::MetadataRequestTopic, BrokerId, FindCoordinatorRequest, MetadataRequest,
        MetadataResponse, TopicName,
    },
    protocol::StrBytes,
};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    connection::Connection,
    error::{check, Error, Result},
    security::Security,
};

/// Broker connections shared by one client. A connection that failed is replaced on next use.
pub struct Cluster {
    bootstrap: Vec<String>,
    client_id: String,
    request_timeout: Duration,
    security: Security,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
}

/// Partition counts and leaders of the topics asked for.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// topic → (partition → leader address), for the partitions that have a leader now.
    pub topics: HashMap<String, HashMap<i32, String>>,
    /// topic → how many partitions it has, led or not. While a broker fails over, its
    /// partitions are briefly without a leader (-1); they still exist and are still assigned.
    pub partition_counts: HashMap<String, usize>,
    /// The controller's address, when the answer names a broker it lists. KRaft clusters
    /// name any live broker (each forwards admin requests to the controller, KIP-590), and
    /// some servers name none (-1 or an id that is not among the brokers).
    pub controller: Option<String>,
    /// topic → the operations the broker lets this client do on it, as the bit field of
    /// KIP-430 (see `authorization`); absent or `i32::MIN` when the broker does not say.
    pub topic_operations: HashMap<String, i32>,
    /// topic → why the broker refused to describe it to this client (an authorization
    /// error): it may exist, but this client's user may not see it.
    pub refused_topics: HashMap<String, kafka_protocol::ResponseError>,
}

impl Cluster {
    pub fn new(
        bootstrap: Vec<String>,
        client_id: String,
        request_timeout: Duration,
        security: Security,
    ) -> Self {
        Self {
            bootstrap,
            client_id,
            request_timeout,
            security,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// The same brokers and settings with other security, and no connections yet.
    pub fn with_security(&self, security: Security) -> Self {
        Self::new(
            self.bootstrap.clone(),
            self.client_id.clone(),
            self.request_timeout,
            security,
        )
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A cached connection to `address`, opened when missing or broken.
    pub async fn broker(&self, address: &str) -> Result<Arc<Connection>> {
        let mut connections = self.connections.lock().await;
        if let Some(existing) = connections.get(address) {
            if !existing.is_broken() {
                return Ok(Arc::clone(existing));
            }
        }
        let connection = Arc::new(self.connect(address).await?);
        connections.insert(address.to_string(), Arc::clone(&connection));
        Ok(connection)
    }

    /// Opens a connection nobody else shares (for requests that block, like JoinGroup).
    pub async fn dedicated(&self, address: &str) -> Result<Connection> {
        self.connect(address).await
    }

    async fn connect(&self, address: &str) -> Result<Connection> {
        Connection::connect(
            address,
            &self.client_id,
            self.request_timeout,
            &self.security,
        )
        .await
    }

    /// Drops a cached connection after an error, so the next use reconnects.
    pub async fn forget(&self, address: &str) {
        self.connections.lock().await.remove(address);
    }

    /// Any reachable bootstrap broker.
    pub async fn any(&self) -> Result<Arc<Connection>> {
        let mut last = Error::Config("no bootstrap brokers configured".into());
        for address in &self.bootstrap {
            match self.broker(address).await {
                Ok(connection) => return Ok(connection),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The address of the group's coordinator.
    pub async fn find_coordinator(&self, group_id: &str) -> Result<String> {
        let connection = self.any().await?;
        let version = connection.version::<FindCoordinatorRequest>(0..=3)?;
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group_id.to_string()))
            .with_key_type(0);
        let response = match connection
            .send_lenient(&request, version, connection.request_timeout())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.forget(connection.address()).await;
                return Err(e);
            }
        };
        check("FindCoordinator", response.error_code)?;
        Ok(format!("{}:{}", response.host.as_str(), response.port))
    }

    /// Partition leaders of `topics`. Never creates topics (some brokers auto-create on lookup).
    pub async fn metadata(&self, topics: &[String]) -> Result<Metadata> {
        let response = self.ask_metadata(topics, 1..=9).await?;
        let brokers: HashMap<BrokerId, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let mut metadata = Metadata {
            controller: brokers.get(&response.controller_id).cloned(),
            ..Metadata::default()
        };
        for topic in &response.topics {
            let Some(name) = &topic.name else { continue };
            match crate::error::protocol_error(topic.error_code) {
                Some(error) if crate::authorization::is_refusal(error) => {
                    metadata.refused_topics.insert(name.0.to_string(), error);
                    continue;
                }
                // Unknown topics are simply absent: they have no partitions to assign.
                Some(_) => continue,
                None => {}
            }
            metadata
                .topic_operations
                .insert(name.0.to_string(), topic.topic_authorized_operations);
            let partitions = topic
                .partitions
                .iter()
                .filter_map(|p| {
                    brokers
                        .get(&p.leader_id)
                        .map(|a| (p.partition_index, a.clone()))
                })
                .collect();
            metadata
                .partition_counts
                .insert(name.0.to_string(), topic.partitions.len());
            metadata.topics.insert(name.0.to_string(), partitions);
        }
        Ok(metadata)
    }

    /// The topic ids (Metadata v10 and later) of those of `topics` that exist: the consumer
    /// group protocol names partitions by topic id. Asked separately from [`Self::metadata`],
    /// which keeps to the versions every broker this crate is tested on answers alike.
    pub async fn topic_ids(&self, topics: &[String]) -> Result<BTreeMap<String, Uuid>> {
        let response = self.ask_metadata(topics, 10..=12).await?;
        Ok(response
            .topics
            .iter()
            .filter(|t| t.error_code == 0 && !t.topic_id.is_nil())
            .filter_map(|t| Some((t.name.as_ref()?.0.to_string(), t.topic_id)))
            .collect())
    }

    /// One Metadata request for `topics` (never creating them) at the highest of `versions`
    /// the broker speaks; a failed connection is dropped.
    async fn ask_metadata(
        &self,
        topics: &[String],
        versions: std::ops::RangeInclusive<i16>,
    ) -> Result<MetadataResponse> {
        let connection = self.any().await?;
        let version = connection.version::<MetadataRequest>(versions)?;
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(false)
            .with_include_topic_authorized_operations(version >= 8);
        match connection.send(&request, version).await {
            Ok(response) => Ok(response),
            Err(e) => {
                self.forget(connection.address()).await;
                Err(e)
            }
        }
    }
}
