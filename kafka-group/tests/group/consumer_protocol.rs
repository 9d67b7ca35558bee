//! The consumer group protocol (KIP-848) on librdkafka's three-broker mock cluster, each test
//! on a cluster of its own (faults are injected cluster-wide): joins and leaves that pause
//! nobody else, a crashed member's partitions moving after the coordinator's session timeout,
//! a static member's restart, fencing, a coordinator that moves mid-rebalance, a mixed fleet
//! with librdkafka's own consumer-protocol consumer, commits with the member epoch, and the
//! protocol choice. nisshi has no handler for these messages, so this file never uses it.
//!
//! The mock's server assignor is a plain range over the members (rdkafka_mock_cgrp.c,
//! `target_assignment_calculate_range`), not Kafka's sticky `uniform`: which partitions move
//! on a join is the assignor's business, and is not asserted here; that nobody owns a
//! partition twice, that what a member keeps never pauses, and that every partition ends with
//! one owner is.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use kafka_group::{
    GroupAdmin, GroupConfig, GroupEvent, GroupProtocol, OffsetReset, TopicPartition,
};
use test_support::MockCluster;

use crate::helpers::*;

/// The error FENCED_MEMBER_EPOCH, and the ConsumerGroupHeartbeat API key.
const FENCED_MEMBER_EPOCH: i16 = 110;
const CONSUMER_GROUP_HEARTBEAT: i16 = 68;

struct Cluster {
    mock: MockCluster,
    topic: String,
    group: String,
}

fn cluster() -> Cluster {
    let mock = MockCluster::start(test_support::kafka::MOCK_BROKERS);
    let topic = unique("topic");
    mock.create_topic(&topic, PARTITIONS, 3);
    Cluster {
        mock,
        topic,
        group: unique("group"),
    }
}

impl Cluster {
    fn config(&self) -> GroupConfig {
        let mut config = GroupConfig::new(
            brokers(&self.mock.address),
            self.group.clone(),
            vec![self.topic.clone()],
        );
        config.protocol = GroupProtocol::Consumer;
        config.session_timeout = SESSION;
        config.rebalance_timeout = REBALANCE;
        config.request_timeout = Duration::from_secs(5);
        config.client_id = "kafka-group-test".into();
        config
    }

    fn member(&self) -> Tracked {
        Tracked::start(self.config())
    }

    fn static_member(&self, instance: &str) -> Tracked {
        let mut config = self.config();
        config.group_instance_id = Some(instance.into());
        Tracked::start(config)
    }

    async fn settle(&self, members: &mut [&mut Tracked]) -> Duration {
        settle(members, &self.topic, Duration::from_secs(60)).await
    }
}

/// Applies `member`'s events until `done` holds for what it owns, and checks on the way that
/// it only ever gave partitions up (never took one it then had to hand back at once).
async fn wait_owned(
    member: &mut Tracked,
    what: &str,
    done: impl Fn(&BTreeSet<TopicPartition>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        member.drain();
        if done(&member.owned) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never {what}: owns {:?}",
            member.owned
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn members_join_one_by_one_and_every_partition_always_has_at_most_one_owner() {
    let cluster = cluster();
    let mut a = cluster.member();
    let took = wait_owned(&mut a, "owned every partition", |o| {
        o.len() == PARTITIONS as usize
    })
    .await;
    eprintln!("[timing] consumer protocol: the first member owned all {PARTITIONS} partitions after {took:?}");
    assert_eq!(a.member.protocol(), Some(GroupProtocol::Consumer));
    let mut b = cluster.member();
    let mut c = cluster.member();
    // While they join, no partition is owned by two members at any moment.
    let started = Instant::now();
    loop {
        for m in [&mut a, &mut b, &mut c] {
            m.drain();
        }
        let total = a.owned.len() + b.owned.len() + c.owned.len();
        let union: BTreeSet<&TopicPartition> =
            a.owned.iter().chain(&b.owned).chain(&c.owned).collect();
        assert_eq!(
            union.len(),
            total,
            "a partition with two owners: {:?} / {:?} / {:?}",
            a.owned,
            b.owned,
            c.owned
        );
        if is_split(&[&a.owned, &b.owned, &c.owned], &cluster.topic) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no split");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "[timing] consumer protocol: two joiners owned their shares after {:?}",
        started.elapsed()
    );
    assert!(
        a.member.generation() > 1,
        "the epoch moved on with the assignment"
    );
    for m in [&a, &b, &c] {
        assert_eq!(m.owned.len(), 4);
    }
    // A graceful leave (epoch -1): the others take its partitions at once.
    let left = Instant::now();
    c.member.leave().await.expect("leave");
    cluster.settle(&mut [&mut a, &mut b]).await;
    eprintln!(
        "[timing] consumer protocol: the leaver's partitions had new owners {:?} after its leave",
        left.elapsed()
    );
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "no session timeout waited for"
    );
}

#[tokio::test]
async fn a_member_that_vanishes_loses_its_partitions_after_the_coordinators_session_timeout() {
    let cluster = cluster();
    let mut a = cluster.member();
    let mut b = cluster.member();
    cluster.settle(&mut [&mut a, &mut b]).await;
    let kept = a.owned.clone();
    let revocations = a.revocations;
    drop(b); // a crash: no leave
    let vanished = Instant::now();
    let took = wait_owned(&mut a, "took the vanished member's partitions", |o| {
        o.len() == PARTITIONS as usize
    })
    .await;
    eprintln!("[timing] consumer protocol crash: the survivor owned all partitions {took:?} after the other vanished (coordinator session 6 s)");
    assert!(
        vanished.elapsed() >= SESSION - Duration::from_secs(1),
        "not before the session timeout"
    );
    assert_eq!(a.revocations, revocations, "the survivor gave nothing up");
    assert!(kept.is_subset(&a.owned));
}

#[tokio::test]
async fn a_static_member_restarted_after_a_temporary_leave_gets_its_partitions_back_and_no_other_member_pauses(
) {
    let cluster = cluster();
    let mut first = cluster.static_member("worker-0");
    let mut other = cluster.member();
    cluster.settle(&mut [&mut first, &mut other]).await;
    let owned = first.owned.clone();
    let others = other.owned.clone();
    // A static member's temporary leave (epoch -2): the coordinator keeps its assignment
    // for its return (a restart under the same name).
    first
        .member
        .leave_temporarily()
        .await
        .expect("temporary leave");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut restarted = cluster.static_member("worker-0");
    cluster.settle(&mut [&mut restarted, &mut other]).await;
    eprintln!("[timing] consumer protocol static restart: owned its partitions again {:?} after it started", started.elapsed());
    other.drain();
    assert_eq!(restarted.owned, owned, "the same partitions");
    assert_eq!(other.owned, others);
    assert_eq!(other.revocations, 0, "the other member saw no revocation");
}

#[tokio::test]
async fn a_fenced_member_reports_its_partitions_lost_and_rejoins() {
    let cluster = cluster();
    let config = cluster.config();
    let (member, mut events) = kafka_group::GroupMember::start(config).expect("valid config");
    let first = match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
        Ok(Some(GroupEvent::Assigned { partitions, .. })) => partitions,
        other => panic!("expected an assignment, got {other:?}"),
    };
    cluster
        .mock
        .push_errors(CONSUMER_GROUP_HEARTBEAT, &[FENCED_MEMBER_EPOCH]);
    let lost = match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
        Ok(Some(GroupEvent::Revoked(revocation))) => revocation,
        other => panic!("expected the partitions lost, got {other:?}"),
    };
    assert!(lost.lost, "fenced: lost, not handed over");
    assert_eq!(lost.partitions, first);
    lost.done();
    match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
        Ok(Some(GroupEvent::Assigned { partitions, .. })) => assert_eq!(partitions, first),
        other => panic!("expected the partitions again after rejoining, got {other:?}"),
    }
    member.leave().await.expect("leave");
}

#[tokio::test]
async fn a_coordinator_that_moves_mid_rebalance_is_followed_and_every_partition_ends_with_one_owner(
) {
    let cluster = cluster();
    cluster.mock.set_group_coordinator(&cluster.group, 1);
    let mut a = cluster.member();
    wait_owned(&mut a, "owned every partition", |o| {
        o.len() == PARTITIONS as usize
    })
    .await;
    let mut b = cluster.member();
    // b's join is under way: a is being told to revoke. The coordinator moves now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.mock.set_group_coordinator(&cluster.group, 2);
    let took = cluster.settle(&mut [&mut a, &mut b]).await;
    eprintln!(
        "[timing] consumer protocol: settled {took:?} after the coordinator moved mid-rebalance"
    );
    let mut c = cluster.member();
    cluster.settle(&mut [&mut a, &mut b, &mut c]).await;
}

#[tokio::test]
async fn our_members_and_a_librdkafka_consumer_protocol_consumer_share_the_topic() {
    let cluster = cluster();
    let mut a = cluster.member();
    let mut theirs = ConfluentMember::start(
        "consumer",
        &cluster.mock.address,
        &cluster.group,
        &cluster.topic,
    );
    wait_split(&mut [&mut a], &mut [&mut theirs], &cluster.topic).await;
    let mut b = cluster.member();
    wait_split(&mut [&mut a, &mut b], &mut [&mut theirs], &cluster.topic).await;
    assert!(
        theirs.events.iter().all(|e| e != "lost"),
        "librdkafka lost its partitions: {:?}",
        theirs.events
    );
    theirs.stop();
    cluster.settle(&mut [&mut a, &mut b]).await;
}

#[tokio::test]
async fn commits_carry_the_member_epoch_and_lag_reads_them_like_any_group() {
    let cluster = cluster();
    let mut a = cluster.member();
    wait_owned(&mut a, "owned every partition", |o| {
        o.len() == PARTITIONS as usize
    })
    .await;
    let commit = offsets(&cluster.topic, &[(0, 5), (1, 7)]);
    a.member
        .commit(&commit)
        .await
        .expect("commit as a consumer-protocol member");
    // A second member moves the epoch on; commits keep working with the new one.
    let mut b = cluster.member();
    cluster.settle(&mut [&mut a, &mut b]).await;
    let mine: Vec<TopicPartition> = a.owned.iter().take(1).cloned().collect();
    let later: std::collections::BTreeMap<TopicPartition, i64> =
        mine.iter().map(|tp| (tp.clone(), 9)).collect();
    a.member
        .commit(&later)
        .await
        .expect("commit after the epoch moved on");
    // The lag KEDA computes comes from committed offsets alone, whatever the protocol.
    let admin = GroupAdmin::new(
        brokers(&cluster.mock.address),
        "lag",
        Duration::from_secs(5),
    );
    let committed = admin
        .committed(
            &cluster.group,
            &[
                TopicPartition::new(&cluster.topic, 0),
                TopicPartition::new(&cluster.topic, 1),
                mine[0].clone(),
            ],
        )
        .await
        .expect("committed");
    assert_eq!(committed[&mine[0]], Some(9));
    if mine[0].partition != 1 {
        assert_eq!(committed[&TopicPartition::new(&cluster.topic, 1)], Some(7));
    }
    // And librdkafka (what KEDA's scaler does: OffsetFetch for the group) reads the same.
    let theirs = test_support::run_python(
        "group_offsets.py",
        &[&cluster.mock.address, &cluster.group, &cluster.topic],
    );
    assert_eq!(
        theirs["committed"][mine[0].partition.to_string()].as_i64(),
        Some(9)
    );
    let lag = admin
        .lag(&cluster.group, &cluster.topic, OffsetReset::Earliest)
        .await
        .expect("lag");
    assert_eq!(lag.len(), PARTITIONS as usize);
}

#[tokio::test]
async fn auto_speaks_the_consumer_protocol_where_the_coordinator_offers_it_and_classic_where_not() {
    let cluster = cluster();
    let mut config = cluster.config();
    config.protocol = GroupProtocol::Auto;
    let mut auto = Tracked::start(config.clone());
    wait_owned(&mut auto, "owned every partition", |o| {
        o.len() == PARTITIONS as usize
    })
    .await;
    assert_eq!(auto.member.protocol(), Some(GroupProtocol::Consumer));

    // The same cluster without ConsumerGroupHeartbeat (as Kafka before 4.0 answers).
    let old = self::cluster();
    old.mock.set_api_version(CONSUMER_GROUP_HEARTBEAT, 0, -1);
    let mut config = old.config();
    config.protocol = GroupProtocol::Auto;
    let mut classic = Tracked::start(config.clone());
    wait_owned(&mut classic, "owned every partition", |o| {
        o.len() == PARTITIONS as usize
    })
    .await;
    assert_eq!(classic.member.protocol(), Some(GroupProtocol::Classic));

    // Asking for the consumer protocol there: the member says why it cannot join.
    config.protocol = GroupProtocol::Consumer;
    config.group_id = unique("group");
    let (refused, _events) = kafka_group::GroupMember::start(config).expect("valid config");
    let started = Instant::now();
    let problem = loop {
        if let Some(problem) = refused.join_problem() {
            break problem;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no join problem reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        problem.to_string().contains("ConsumerGroupHeartbeat"),
        "the problem names the missing API: {problem}"
    );
}
