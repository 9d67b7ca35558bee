use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use kafka_group::{Assignor, GroupEvent, TopicPartition};
use test_support::InfraServer;

use crate::helpers::*;

#[tokio::test]
async fn two_members_split_then_a_third_joins_and_only_its_share_moves() {
    let kafka = broker();
    let topic = topic(&kafka.address).await;
    let group = unique("group");
    let mut a = Tracked::start(config(&kafka.address, &group, &topic));
    let mut b = Tracked::start(config(&kafka.address, &group, &topic));
    let took = settle(&mut [&mut a, &mut b], &topic, Duration::from_secs(60)).await;
    eprintln!("[timing] two members split 12 partitions in {took:?}");
    assert_eq!(a.owned.len(), 6);

    let before = [a.owned.clone(), b.owned.clone()];
    let mut c = Tracked::start(config(&kafka.address, &group, &topic));
    let took = settle(
        &mut [&mut a, &mut b, &mut c],
        &topic,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("[timing] join: a third member settled in {took:?}");
    let moved = c.owned.len()
        + a.owned.difference(&before[0]).count()
        + b.owned.difference(&before[1]).count();
    assert_eq!(c.owned.len(), 4);
    assert_eq!(moved, 4, "only the newcomer's 4 partitions changed owner");
}

#[tokio::test]
async fn a_member_that_vanishes_loses_its_partitions_after_the_session_timeout() {
    let kafka = broker();
    let (topic, _, members) = settled_group(&kafka.address, 2).await;
    let [mut a, b] = <[Tracked; 2]>::try_from(members).ok().expect("two members");

    let kept = a.owned.clone();
    drop(b); // no LeaveGroup, no more heartbeats: a crash as the coordinator sees it
    let took = settle(
        &mut [&mut a],
        &topic,
        SESSION + REBALANCE + Duration::from_secs(30),
    )
    .await;
    eprintln!("[timing] crash: survivor owned all partitions {took:?} after the other vanished (session timeout {SESSION:?})");
    assert!(
        took >= SESSION / 2,
        "the coordinator waited for the session timeout ({took:?})"
    );
    assert!(
        kept.is_subset(&a.owned),
        "the survivor kept its own partitions"
    );
}

#[tokio::test]
async fn a_graceful_leave_rebalances_at_once() {
    let kafka = broker();
    let (topic, _, members) = settled_group(&kafka.address, 2).await;
    let [a, b] = <[Tracked; 2]>::try_from(members).ok().expect("two members");
    // The follower leaves (a leader lets its session expire instead; see the next test).
    let (mut a, b) = if b.member.is_leader() { (b, a) } else { (a, b) };

    let started = Instant::now();
    b.member.leave().await.expect("leave accepted");
    let took = settle(&mut [&mut a], &topic, Duration::from_secs(60)).await;
    let took = took.max(started.elapsed());
    eprintln!("[timing] leave: survivor owned all partitions {took:?} after a graceful leave");
    assert!(
        took < SESSION,
        "a leave must not wait for the session timeout ({took:?})"
    );
}

#[tokio::test]
async fn five_of_six_members_leaving_at_once_with_the_leader_among_them_never_strand_the_survivor()
{
    let kafka = broker();
    let (topic, _, members) = settled_group(&kafka.address, 6).await;
    let (mut leaving, mut rest): (Vec<Tracked>, Vec<Tracked>) =
        members.into_iter().partition(|m| m.member.is_leader());
    assert_eq!(leaving.len(), 1, "one leader");
    let mut survivor = rest.pop().expect("a follower survives");
    leaving.extend(rest);

    let started = Instant::now();
    let leaves = leaving.iter().map(|m| m.member.leave());
    for result in futures::future::join_all(leaves).await {
        result.expect("leave");
    }
    let took = settle(&mut [&mut survivor], &topic, Duration::from_secs(60)).await;
    let took = took.max(started.elapsed());
    eprintln!("[timing] five left at once (the leader among them): the survivor owned everything {took:?} later");
    assert!(
        took < SESSION * 3,
        "the survivor waited {took:?}; bounded by the leader's session timeout ({SESSION:?})"
    );
}

#[tokio::test]
async fn under_an_eager_assignor_the_owner_hears_of_revocation_before_anyone_else_gets_its_partitions(
) {
    let kafka = broker();
    let topic = topic(&kafka.address).await;
    let group = unique("group");
    let eager = || {
        let mut config = config(&kafka.address, &group, &topic);
        config.assignors = vec![Assignor::Sticky];
        config
    };
    let mut a = Tracked::start(eager());
    settle(&mut [&mut a], &topic, Duration::from_secs(60)).await;

    let mut b = Tracked::start(eager());
    let revocation = match tokio::time::timeout(Duration::from_secs(60), a.events.recv()).await {
        Ok(Some(GroupEvent::Revoked(r))) => r,
        Ok(other) => panic!("expected a revocation first, got {other:?}"),
        Err(_) => panic!("no revocation within 60 s"),
    };
    assert_eq!(revocation.partitions.len(), 12);
    assert!(!revocation.lost);
    // While a still holds its partitions (it has not acknowledged), nobody else gets any.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.drain();
    assert!(b.owned.is_empty(), "b got {:?} before a let go", b.owned);
    // a can still commit what it processed before letting go.
    a.member
        .commit(&offsets(&topic, &[(0, 0)]))
        .await
        .expect("commit during revocation");
    revocation.done();
    a.owned.clear();
    settle(&mut [&mut a, &mut b], &topic, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn members_recover_after_the_broker_restarts() {
    let kafka = InfraServer::start("kafka");
    let (topic, _, members) = settled_group(&kafka.address, 2).await;
    let [mut a, mut b] = <[Tracked; 2]>::try_from(members).ok().expect("two members");

    kafka.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.restart();
    // After connection loss each member either keeps its membership or is told it lost it
    // and rejoins; either way the group ends up split again and commits work.
    settle(&mut [&mut a, &mut b], &topic, Duration::from_secs(90)).await;
    let owned: Vec<TopicPartition> = a.owned.iter().cloned().collect();
    let commit = owned.iter().map(|tp| (tp.clone(), 1)).collect();
    a.member
        .commit(&commit)
        .await
        .expect("commit after recovery");
}

#[tokio::test]
async fn our_member_and_a_confluent_kafka_consumer_split_partitions_on_range() {
    let kafka = broker();
    let topic = topic(&kafka.address).await;
    let group = unique("group");
    let mut ours_config = config(&kafka.address, &group, &topic);
    ours_config.assignors = vec![Assignor::Range];
    let mut ours = Tracked::start(ours_config);
    let mut theirs = ConfluentMember::start("range", &kafka.address, &group, &topic);
    wait_split(&mut [&mut ours], &mut [&mut theirs], &topic).await;
    assert_eq!(ours.owned.len(), 6);
    assert_eq!(theirs.owned.len(), 6);
}

#[tokio::test]
async fn our_members_and_a_librdkafka_cooperative_sticky_consumer_rebalance_incrementally() {
    let kafka = broker();
    let topic = topic(&kafka.address).await;
    let group = unique("group");
    let mut a = Tracked::start(config(&kafka.address, &group, &topic));
    let mut theirs = ConfluentMember::start("cooperative-sticky", &kafka.address, &group, &topic);
    wait_split(&mut [&mut a], &mut [&mut theirs], &topic).await;
    let split_in_two = (a.owned.clone(), theirs.owned.clone());

    // A second member of ours: both sides give up only what moves, nobody loses anything.
    let mut b = Tracked::start(config(&kafka.address, &group, &topic));
    wait_split(&mut [&mut a, &mut b], &mut [&mut theirs], &topic).await;
    assert!(
        a.owned.is_subset(&split_in_two.0),
        "a only gave partitions up"
    );
    assert!(
        theirs.owned.is_subset(&split_in_two.1),
        "librdkafka only gave partitions up"
    );
    assert!(
        theirs.events.iter().all(|e| e != "lost"),
        "librdkafka lost its partitions: {:?}",
        theirs.events
    );

    // librdkafka leaves: its partitions go to ours.
    theirs.stop();
    settle(&mut [&mut a, &mut b], &topic, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn under_cooperative_sticky_a_joiner_pauses_only_the_partitions_that_move() {
    let kafka = broker();
    let (topic, group, members) = settled_group(&kafka.address, 1).await;
    let Tracked {
        member: a,
        events: mut a_events,
        owned: before,
        ..
    } = members.into_iter().next().expect("one member");

    // While b joins, a commits every 100 ms for whatever it owns at that moment.
    let stop = tokio_util::sync::CancellationToken::new();
    let commits = async {
        let mut successes: BTreeMap<TopicPartition, Vec<Instant>> = BTreeMap::new();
        let mut offset = 0;
        while !stop.is_cancelled() {
            offset += 1;
            let owned = a.assignment();
            let batch = owned.iter().map(|tp| (tp.clone(), offset)).collect();
            if a.commit(&batch).await.is_ok() {
                for tp in owned {
                    successes.entry(tp).or_default().push(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        successes
    };
    let rebalance = async {
        let started = Instant::now();
        let mut b = Tracked::start(config(&kafka.address, &group, &topic));
        let revocation = match tokio::time::timeout(Duration::from_secs(60), a_events.recv()).await
        {
            Ok(Some(GroupEvent::Revoked(r))) => r,
            other => panic!("expected a revocation first, got {other:?}"),
        };
        assert_eq!(revocation.partitions.len(), 6, "only b's share is revoked");
        assert!(!revocation.lost);
        assert_eq!(a.assignment().len(), 6, "a keeps the rest meanwhile");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        b.drain();
        assert!(b.owned.is_empty(), "b got {:?} before a let go", b.owned);
        revocation.done();
        while b.owned.len() < 6 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "b never got its share"
            );
            b.drain();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "[timing] cooperative join: b owned its 6 partitions {:?} after it started",
            started.elapsed()
        );
        stop.cancel();
        b
    };
    let (successes, b) = tokio::join!(commits, rebalance);
    let kept: BTreeSet<TopicPartition> = a.assignment().into_iter().collect();
    assert_eq!(kept.len(), 6);
    assert!(kept.is_subset(&before) && kept.is_disjoint(&b.owned));
    for tp in &kept {
        let times = &successes[tp];
        let longest = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        eprintln!("[timing] kept partition {tp}: longest gap between commits {longest:?}");
        assert!(
            longest < Duration::from_secs(1),
            "{tp} kept its owner but paused its commits for {longest:?}"
        );
    }
}

#[tokio::test]
async fn a_static_member_restarted_within_the_session_timeout_gets_its_partitions_back_and_no_other_member_pauses(
) {
    let kafka = broker();
    let topic = topic(&kafka.address).await;
    let group = unique("group");
    let static_config = || {
        let mut config = config(&kafka.address, &group, &topic);
        config.group_instance_id = Some("worker-0".into());
        config
    };
    let mut first = Tracked::start(static_config());
    let mut other = Tracked::start(config(&kafka.address, &group, &topic));
    settle(
        &mut [&mut first, &mut other],
        &topic,
        Duration::from_secs(60),
    )
    .await;
    let (owned, generation) = (first.owned.clone(), first.member.generation());
    let others = other.owned.clone();
    let revocations_before = other.revocations;

    drop(first); // a crash: no LeaveGroup
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut restarted = Tracked::start(static_config());
    settle(
        &mut [&mut restarted, &mut other],
        &topic,
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "[timing] static restart: owned its partitions again {:?} after it started",
        started.elapsed()
    );
    other.drain();
    // Kafka (KIP-345) gives the returning instance its old place without a rebalance.
    // nisshi 0.7 does not recognize it (a new member id, a new generation); under
    // cooperative-sticky that rebalance still pauses nobody else.
    eprintln!(
        "[static] generation {generation} -> {}: {}",
        restarted.member.generation(),
        if restarted.member.generation() == generation {
            "no rebalance"
        } else {
            "the broker rebalanced (nisshi 0.7 does not recognize a returning instance)"
        }
    );
    assert!(
        restarted.member.member_id().starts_with("worker-0"),
        "the instance id was sent"
    );
    assert_eq!(restarted.owned, owned, "the same partitions");
    assert_eq!(other.owned, others);
    assert_eq!(
        other.revocations, revocations_before,
        "the other member saw no revocation"
    );
}
