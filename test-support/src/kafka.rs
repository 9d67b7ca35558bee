//! The Kafka a test runs on, chosen with `TEST_KAFKA`: `nisshi` (the default; one broker
//! that leads every partition and coordinates every group, persisting to sqlite, so it can be
//! killed and restarted with its data) or `mock` (librdkafka's mock cluster: three brokers
//! in memory, leaders spread over them, with fault controls). `make test` runs the pipeline
//! suites on both: a behaviour proven on one broker alone is not proven for a cluster.

use crate::{mock_cluster::MockCluster, InfraServer};

/// Which Kafka implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Nisshi,
    MockCluster,
}

impl Broker {
    /// `TEST_KAFKA`: `nisshi` (default) or `mock`.
    pub fn from_env() -> Self {
        match std::env::var("TEST_KAFKA").as_deref() {
            Err(_) | Ok("") | Ok("nisshi") => Self::Nisshi,
            Ok("mock") => Self::MockCluster,
            Ok(other) => panic!("TEST_KAFKA={other}: use nisshi or mock"),
        }
    }
}

/// The consumer group protocol the suites' members and workers speak, from
/// `TEST_GROUP_PROTOCOL`: `classic` (the default: every broker here has it), `consumer`
/// (KIP-848; the mock cluster has it, nisshi does not) or `auto`. Set explicitly on every
/// member and worker, so a suite proves the protocol it names and not what `auto` picked.
pub fn group_protocol() -> &'static str {
    match std::env::var("TEST_GROUP_PROTOCOL").as_deref() {
        Err(_) | Ok("") | Ok("classic") => "classic",
        Ok("consumer") => "consumer",
        Ok("auto") => "auto",
        Ok(other) => panic!("TEST_GROUP_PROTOCOL={other}: use classic, consumer or auto"),
    }
}

/// Brokers in a mock cluster: the smallest shape where the coordinator, the leaders of
/// different partitions and a failed broker's successor can all be different brokers.
pub const MOCK_BROKERS: usize = 3;

pub struct TestKafka {
    /// Bootstrap brokers, comma-separated (what `--kafka-brokers` takes).
    pub address: String,
    server: Server,
}

enum Server {
    Nisshi(InfraServer),
    Mock(MockCluster),
}

impl TestKafka {
    /// The broker `TEST_KAFKA` names.
    pub fn start() -> Self {
        match Broker::from_env() {
            Broker::Nisshi => Self::nisshi(),
            Broker::MockCluster => Self::mock_cluster(MOCK_BROKERS),
        }
    }

    pub fn nisshi() -> Self {
        let server = InfraServer::start("kafka");
        Self {
            address: server.address.clone(),
            server: Server::Nisshi(server),
        }
    }

    pub fn mock_cluster(brokers: usize) -> Self {
        let cluster = MockCluster::start(brokers);
        Self {
            address: cluster.address.clone(),
            server: Server::Mock(cluster),
        }
    }

    pub fn broker(&self) -> Broker {
        match self.server {
            Server::Nisshi(_) => Broker::Nisshi,
            Server::Mock(_) => Broker::MockCluster,
        }
    }

    /// The bootstrap list split, for clients that take one address per entry.
    pub fn bootstrap(&self) -> Vec<String> {
        self.address.split(',').map(str::to_string).collect()
    }

    /// The mock cluster's fault controls; `None` on nisshi.
    pub fn mock(&self) -> Option<&MockCluster> {
        match &self.server {
            Server::Mock(cluster) => Some(cluster),
            Server::Nisshi(_) => None,
        }
    }

    /// The nisshi process (to kill or restart it); `None` on the mock cluster.
    pub fn nisshi_server(&self) -> Option<&InfraServer> {
        match &self.server {
            Server::Nisshi(server) => Some(server),
            Server::Mock(_) => None,
        }
    }

    /// Makes sure `topic` exists with `partitions` before a client needs it. nisshi takes
    /// CreateTopics from our clients, so nothing is done there; the mock cluster has no
    /// CreateTopics handler, so its operator creates the topic, as on a managed Kafka
    /// where topics are provisioned beforehand. Replication is the cluster's size.
    pub fn prepare_topic(&self, topic: &str, partitions: i32) {
        if let Server::Mock(cluster) = &self.server {
            cluster.create_topic(topic, partitions, cluster.broker_ids().len() as i32);
        }
    }
}
