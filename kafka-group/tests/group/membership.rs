use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kafka_group::{Assignor, GroupEvent, TopicPartition};
use test_support::{python, workspace_root, InfraServer};

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
    let [mut a, b] = <[Tracked; 2]>::try_from(members).ok().expect("two members");

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
async fn the_owner_hears_of_revocation_before_anyone_else_gets_its_partitions() {
    let kafka = broker();
    let (topic, group, members) = settled_group(&kafka.address, 1).await;
    let mut a = members.into_iter().next().expect("one member");

    let mut b = Tracked::start(config(&kafka.address, &group, &topic));
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

    let mut theirs = Command::new(python())
        .arg(workspace_root().join("test-support/py/range_member.py"))
        .args([&kafka.address, &group, &topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the confluent-kafka member");
    let (tx, mut assignments) = tokio::sync::mpsc::unbounded_channel();
    let stdout = theirs.stdout.take().unwrap();
    let their_topic = topic.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            let partitions: BTreeSet<TopicPartition> = value["assigned"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| TopicPartition::new(&their_topic, p.as_i64().unwrap() as i32))
                .collect();
            if tx.send(partitions).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut theirs_owned = BTreeSet::new();
    loop {
        while let Ok(latest) = assignments.try_recv() {
            theirs_owned = latest;
        }
        ours.drain();
        if !theirs_owned.is_empty() && is_split(&[&ours.owned, &theirs_owned], &topic) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no split: ours {:?}, theirs {:?}",
            ours.owned,
            theirs_owned
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ours.owned.len(), 6);
    assert_eq!(theirs_owned.len(), 6);
    drop(theirs.stdin.take());
    let _ = theirs.wait();
}
