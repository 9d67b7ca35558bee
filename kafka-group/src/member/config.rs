//! The settings of one group member, checked before it starts.

use std::time::Duration;

use crate::{
    assignor::Assignor,
    error::{Error, Result},
    security::Security,
};

/// Which consumer group protocol a member speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum GroupProtocol {
    /// The consumer protocol when the group's coordinator offers it (ConsumerGroupHeartbeat
    /// v1, Kafka 4.0 and later), else the classic one. Chosen once, when the member starts.
    #[default]
    Auto,
    /// JoinGroup, SyncGroup and Heartbeat; the assignment is computed by the group's leader.
    Classic,
    /// KIP-848: the coordinator computes the assignment and hands each member its share over
    /// ConsumerGroupHeartbeat; a member joining or leaving pauses no other member.
    Consumer,
}

impl GroupProtocol {
    /// The name Kafka's clients give it (`group.protocol`).
    pub fn name(self) -> &'static str {
        match self {
            GroupProtocol::Auto => "auto",
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

impl std::fmt::Display for GroupProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of one group member.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Bootstrap brokers as `host:port`.
    pub bootstrap: Vec<String>,
    pub group_id: String,
    pub topics: Vec<String>,
    pub client_id: String,
    /// The group protocol: [`GroupProtocol::Classic`] by default, as in Kafka's own clients.
    pub protocol: GroupProtocol,
    /// Consumer protocol only: the coordinator's assignor, by name (`uniform`, `range`);
    /// `None` lets the coordinator use its default. The classic protocol uses `assignors`.
    pub server_assignor: Option<String>,
    /// Static membership (KIP-345): a member that comes back under the same instance id
    /// within the session timeout takes its old place (and partitions) without a rebalance.
    /// Must be unique in the group; `None` for a dynamic member.
    pub group_instance_id: Option<String>,
    /// Without a heartbeat for this long, the coordinator drops the member and rebalances.
    /// Under the consumer protocol the coordinator's own `group.consumer.session.timeout.ms`
    /// rules; this member then uses it only to decide, when it cannot reach the coordinator,
    /// after how long its partitions must be treated as lost.
    pub session_timeout: Duration,
    /// How long the coordinator waits for members to rejoin during a rebalance; also how
    /// long this member waits for the application to finish a revocation.
    pub rebalance_timeout: Duration,
    /// How often to heartbeat; a rebalance is noticed within one interval. Under the consumer
    /// protocol the coordinator dictates the interval and this one is not used.
    pub heartbeat_interval: Duration,
    /// Bound on every request except JoinGroup (which waits for the rebalance).
    pub request_timeout: Duration,
    /// How often the subscribed topics' partition counts are checked; partitions added to a
    /// topic are assigned at the rebalance this check starts.
    pub metadata_refresh: Duration,
    /// Assignors offered, in order of preference. The group uses the first one every member
    /// offers.
    pub assignors: Vec<Assignor>,
    /// TLS and SASL for every connection of the member.
    pub security: Security,
    /// Whether the group's leader sends LeaveGroup when it stops, like every other member
    /// (the default, right on Kafka: the coordinator elects a new leader among the members
    /// that rejoin, at once). `false` only for a broker that strands a group whose leader
    /// leaves while it re-forms (nisshi 0.7 keeps the departed member as leader, and every
    /// later member waits for its assignment forever): a stopping leader with other members
    /// then lets its session expire, so the group waits one session timeout, not forever.
    pub leader_sends_leave_group: bool,
}

impl GroupConfig {
    /// Kafka's consumer defaults: 45 s session, 5 min rebalance, 3 s heartbeat; the
    /// cooperative sticky assignor first, then the eager ones for groups with older members
    /// or other clients.
    pub fn new(bootstrap: Vec<String>, group_id: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            bootstrap,
            group_id: group_id.into(),
            topics,
            client_id: "kafka-group".into(),
            protocol: GroupProtocol::Classic,
            server_assignor: None,
            group_instance_id: None,
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            metadata_refresh: Duration::from_secs(30),
            assignors: vec![
                Assignor::CooperativeSticky,
                Assignor::Sticky,
                Assignor::Range,
            ],
            security: Security::default(),
            leader_sends_leave_group: true,
        }
    }

    /// The settings' mistakes, as [`Error::Config`]; [`GroupMember::start`] checks them too.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.bootstrap.is_empty() {
            Some("at least one bootstrap broker is needed")
        } else if self.group_id.is_empty() {
            Some("the group id must not be empty")
        } else if self.topics.is_empty() {
            Some("subscribe to at least one topic")
        } else if self.assignors.is_empty() {
            Some("offer at least one assignor")
        } else if self.heartbeat_interval >= self.session_timeout {
            Some("the heartbeat interval must be shorter than the session timeout")
        } else if self.server_assignor.as_deref() == Some("") {
            Some("the server assignor must not be empty (leave it unset for the coordinator's default)")
        } else if self.group_instance_id.as_deref() == Some("") {
            Some("the group instance id must not be empty (leave it unset for a dynamic member)")
        } else {
            None
        };
        match problem {
            Some(p) => Err(Error::Config(p.into())),
            None => Ok(()),
        }
    }
}
