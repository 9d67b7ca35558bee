//! The consumer group's lag, read from the broker the way KEDA's Kafka scaler reads it, and
//! the replica count KEDA would ask for.

use std::time::Duration;

use infra::kafka_security::{self, KafkaSecurityError};
use kafka_group::{keda_desired_replicas, GroupAdmin, Security};
use serde::Serialize;

use crate::config::LagArgs;

#[derive(Debug, Clone, Serialize)]
pub struct LagSnapshot {
    pub group: String,
    pub topic: String,
    /// Sum over partitions of end offset minus committed offset.
    pub total: i64,
    pub partitions: Vec<PartitionLag>,
    pub lag_threshold: i64,
    /// ceil(total / lagThreshold), capped at the partition count.
    pub keda_replicas: usize,
    /// Who owns what, when the group is on the consumer group protocol (KIP-848) and the
    /// brokers describe it (ConsumerGroupDescribe). Lag itself comes from committed offsets
    /// alone, whichever protocol the group speaks, as KEDA reads it.
    pub members: Option<GroupMembers>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupMembers {
    /// `stable`, `reconciling`, `assigning`, `empty`.
    pub state: String,
    pub assignor: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: Option<i64>,
    pub end: i64,
    pub lag: i64,
    /// The owning member's instance id (else its client host), when the group is described.
    pub owner: Option<String>,
}

pub struct LagReader {
    admin: GroupAdmin,
    security: Security,
    args: LagArgs,
}

const CLIENT_ID: &str = "scalable-shop-load";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl LagReader {
    /// Fails when the Kafka security flags are inconsistent or name unreadable files.
    pub fn new(args: LagArgs) -> Result<Self, KafkaSecurityError> {
        let security = kafka_security::resolve(&args.events.security)?;
        Ok(Self {
            admin: GroupAdmin::new(args.events.brokers.clone(), CLIENT_ID, REQUEST_TIMEOUT)
                .with_security(security.clone()),
            security,
            args,
        })
    }

    pub async fn read(&self) -> kafka_group::Result<LagSnapshot> {
        let (group, topic) = (&self.args.group, &self.args.events.topic);
        let lags = match self
            .admin
            .lag(&group.group_id, topic, group.offset_reset)
            .await
        {
            Ok(lags) => lags,
            // A closed connection may be TLS or SASL settings the brokers' listener does not
            // speak: the security check probes for that and names it.
            Err(e) if e.is_connection() => {
                self.security
                    .check(&self.args.events.brokers, CLIENT_ID, REQUEST_TIMEOUT)
                    .await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let total = lags.iter().map(|l| l.lag).sum();
        // Best effort: brokers without the consumer protocol, and classic groups, are not
        // described; the lag stands on its own.
        let described = self
            .admin
            .describe_consumer_group(&group.group_id)
            .await
            .ok();
        let owner = |partition: i32| {
            described.as_ref().and_then(|d| {
                d.members
                    .iter()
                    .find(|m| {
                        m.assigned
                            .iter()
                            .any(|tp| tp.topic == *topic && tp.partition == partition)
                    })
                    .map(|m| {
                        m.instance_id
                            .clone()
                            .unwrap_or_else(|| m.client_host.clone())
                    })
            })
        };
        Ok(LagSnapshot {
            group: group.group_id.clone(),
            topic: topic.clone(),
            total,
            keda_replicas: keda_desired_replicas(total, self.args.lag_threshold, lags.len()),
            lag_threshold: self.args.lag_threshold,
            partitions: lags
                .into_iter()
                .map(|l| PartitionLag {
                    partition: l.partition,
                    committed: l.committed,
                    end: l.end,
                    lag: l.lag,
                    owner: owner(l.partition),
                })
                .collect(),
            members: described.as_ref().map(|d| GroupMembers {
                state: d.state.clone(),
                assignor: d.assignor.clone(),
                count: d.members.len(),
            }),
        })
    }
}

impl LagSnapshot {
    pub fn summary(&self) -> String {
        format!(
            "lag {} → KEDA wants {} worker{} (lagThreshold {})",
            self.total,
            self.keda_replicas,
            if self.keda_replicas == 1 { "" } else { "s" },
            self.lag_threshold
        )
    }

    pub fn table(&self) -> String {
        let mut out = format!("group {} on topic {}\n", self.group, self.topic);
        if let Some(members) = &self.members {
            out.push_str(&format!(
                "consumer group protocol: {} member{}, {}, assignor {}\n",
                members.count,
                if members.count == 1 { "" } else { "s" },
                members.state,
                members.assignor
            ));
        }
        out.push_str("partition  committed        end        lag  owner\n");
        for p in &self.partitions {
            let committed = p
                .committed
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:>9} {:>10} {:>10} {:>10}  {}\n",
                p.partition,
                committed,
                p.end,
                p.lag,
                p.owner.as_deref().unwrap_or("-")
            ));
        }
        out.push_str(&self.summary());
        out
    }
}
