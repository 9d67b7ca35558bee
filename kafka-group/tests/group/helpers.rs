use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use kafka_group::{GroupConfig, GroupEvent, GroupMember, TopicPartition};
use test_support::{python, workspace_root, TestKafka};
use tokio::sync::mpsc::Receiver;

pub const PARTITIONS: i32 = 12;
pub const SESSION: Duration = Duration::from_secs(6);
pub const REBALANCE: Duration = Duration::from_secs(10);
pub const HEARTBEAT: Duration = Duration::from_millis(300);

/// The Kafka `TEST_KAFKA` names (nisshi or the mock cluster), shared by the binary's tests.
pub fn broker() -> &'static TestKafka {
    static BROKER: OnceLock<TestKafka> = OnceLock::new();
    BROKER.get_or_init(TestKafka::start)
}

/// `host:port,host:port` as the list `GroupConfig` takes.
pub fn brokers(bootstrap: &str) -> Vec<String> {
    bootstrap.split(',').map(str::to_string).collect()
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a topic with `PARTITIONS` partitions and returns its name: through the mock
/// cluster's controls when `bootstrap` is the shared mock cluster (it has no CreateTopics),
/// else with CreateTopics.
pub async fn topic(bootstrap: &str) -> String {
    let name = unique("topic");
    let shared = broker();
    if shared.address == bootstrap && shared.mock().is_some() {
        shared.prepare_topic(&name, PARTITIONS);
    } else {
        kafka_group::TopicAdmin::new(
            brokers(bootstrap),
            "kafka-group-test",
            Duration::from_secs(5),
            kafka_group::Security::default(),
        )
        .ensure(&name, &[], PARTITIONS, 1, Duration::from_secs(5))
        .await
        .expect("topic created");
    }
    name
}

pub fn config(bootstrap: &str, group: &str, topic: &str) -> GroupConfig {
    let mut config = GroupConfig::new(brokers(bootstrap), group, vec![topic.to_string()]);
    // nisshi (every broker here but the shared mock cluster) strands a group whose leader
    // leaves while it re-forms: there the leader lets its session expire.
    let shared = broker();
    config.leader_sends_leave_group =
        shared.address == bootstrap && shared.broker() != test_support::Broker::Nisshi;
    config.session_timeout = SESSION;
    config.rebalance_timeout = REBALANCE;
    config.heartbeat_interval = HEARTBEAT;
    config.request_timeout = Duration::from_secs(5);
    config.client_id = "kafka-group-test".into();
    config.protocol = match test_support::group_protocol() {
        "consumer" => kafka_group::GroupProtocol::Consumer,
        "auto" => kafka_group::GroupProtocol::Auto,
        _ => kafka_group::GroupProtocol::Classic,
    };
    config
}

/// A member plus what it currently owns, tracked from its events. Revocations are
/// acknowledged at once (tests that care about revocation read events themselves).
pub struct Tracked {
    pub member: GroupMember,
    pub events: Receiver<GroupEvent>,
    pub owned: BTreeSet<TopicPartition>,
    /// Revocations received so far.
    pub revocations: usize,
}

impl Tracked {
    pub fn start(config: GroupConfig) -> Self {
        let (member, events) = GroupMember::start(config).expect("valid config");
        Self {
            member,
            events,
            owned: BTreeSet::new(),
            revocations: 0,
        }
    }

    /// Applies every event that is already there.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                GroupEvent::Assigned { partitions, .. } => {
                    self.owned = partitions.into_iter().collect()
                }
                GroupEvent::Revoked(revocation) => {
                    self.revocations += 1;
                    for tp in &revocation.partitions {
                        self.owned.remove(tp);
                    }
                    revocation.done();
                }
            }
        }
    }
}

/// Waits until the members' assignments are disjoint, cover all partitions and each member
/// owns something (when there are enough partitions); returns how long that took.
pub async fn settle(members: &mut [&mut Tracked], topic: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        for m in members.iter_mut() {
            m.drain();
        }
        let sets: Vec<&BTreeSet<TopicPartition>> = members.iter().map(|m| &m.owned).collect();
        if is_split(&sets, topic)
            && members
                .iter()
                .all(|m| m.member.assignment().len() == m.owned.len())
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "no complete split after {timeout:?}: {:?}",
            sets
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn is_split(sets: &[&BTreeSet<TopicPartition>], topic: &str) -> bool {
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let union: BTreeSet<&TopicPartition> = sets.iter().flat_map(|s| s.iter()).collect();
    let all: BTreeSet<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    let balanced = {
        let sizes: Vec<usize> = sets.iter().map(|s| s.len()).collect();
        sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1
    };
    total == all.len() && union.len() == all.len() && union.into_iter().eq(all.iter()) && balanced
}

pub fn offsets(topic: &str, pairs: &[(i32, i64)]) -> BTreeMap<TopicPartition, i64> {
    pairs
        .iter()
        .map(|(p, o)| (TopicPartition::new(topic, *p), *o))
        .collect()
}

/// A fresh topic and group with `count` members that have split the partitions.
pub async fn settled_group(bootstrap: &str, count: usize) -> (String, String, Vec<Tracked>) {
    let topic = topic(bootstrap).await;
    let group = unique("group");
    let mut members: Vec<Tracked> = (0..count)
        .map(|_| Tracked::start(config(bootstrap, &group, &topic)))
        .collect();
    let took = settle(
        &mut members.iter_mut().collect::<Vec<_>>(),
        &topic,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("[timing] {count} member(s) split {PARTITIONS} partitions in {took:?}");
    (topic, group, members)
}

/// Waits until our members and confluent-kafka's own disjoint, complete, balanced shares.
pub async fn wait_split(
    ours: &mut [&mut Tracked],
    theirs: &mut [&mut ConfluentMember],
    topic: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for member in ours.iter_mut() {
            member.drain();
        }
        for member in theirs.iter_mut() {
            member.drain();
        }
        let sets: Vec<&BTreeSet<TopicPartition>> = ours
            .iter()
            .map(|m| &m.owned)
            .chain(theirs.iter().map(|m| &m.owned))
            .collect();
        if sets.iter().all(|s| !s.is_empty()) && is_split(&sets, topic) {
            return;
        }
        assert!(Instant::now() < deadline, "no split: {sets:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A confluent-kafka (librdkafka) consumer in a child process, with what it owns.
pub struct ConfluentMember {
    child: std::process::Child,
    updates: std::sync::mpsc::Receiver<(String, BTreeSet<TopicPartition>)>,
    pub owned: BTreeSet<TopicPartition>,
    /// Every callback it reported: assigned, revoked, lost.
    pub events: Vec<String>,
}

impl ConfluentMember {
    pub fn start(strategy: &str, bootstrap: &str, group: &str, topic: &str) -> Self {
        let mut child = Command::new(python())
            .arg(workspace_root().join("test-support/py/group_member.py"))
            .args([strategy, bootstrap, group, topic])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the confluent-kafka member");
        let (tx, updates) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let topic = topic.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
                let partitions = value["assigned"]
                    .as_array()
                    .expect("assigned")
                    .iter()
                    .map(|p| TopicPartition::new(&topic, p.as_i64().expect("partition") as i32))
                    .collect();
                let event = value["event"].as_str().unwrap_or_default().to_string();
                if tx.send((event, partitions)).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            updates,
            owned: BTreeSet::new(),
            events: Vec::new(),
        }
    }

    pub fn drain(&mut self) {
        while let Ok((event, owned)) = self.updates.try_recv() {
            self.events.push(event);
            self.owned = owned;
        }
    }

    /// Closes its stdin: it leaves the group and exits.
    pub fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for ConfluentMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
