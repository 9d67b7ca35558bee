//! The consumer protocol's (KIP-848) state machine against a scripted coordinator.

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};

use super::*;
use crate::member::{config::GroupProtocol, events::Revocation};

/// A heartbeat answer at `epoch`, with this member's assignment when `assignment` is given.
fn answer(epoch: i32, assignment: Option<&[i32]>) -> Result<ConsumerGroupHeartbeatResponse> {
    Ok(ConsumerGroupHeartbeatResponse::default()
        .with_member_epoch(epoch)
        .with_heartbeat_interval_ms(10)
        .with_assignment(assignment.map(|partitions| {
            Assignment::default().with_topic_partitions(vec![TopicPartitions::default()
                .with_topic_id(topic_id(TOPIC))
                .with_partitions(partitions.to_vec())])
        })))
}

fn consumer(script: Script, configure: impl FnOnce(&mut GroupConfig)) -> Member {
    start(script, |config| {
        config.protocol = GroupProtocol::Consumer;
        configure(config);
    })
}

fn revoked(event: GroupEvent) -> Revocation {
    match event {
        GroupEvent::Revoked(revocation) => revocation,
        GroupEvent::Assigned { partitions, .. } => {
            panic!("expected a revocation, got an assignment of {partitions:?}")
        }
    }
}

fn numbers(partitions: &[TopicPartition]) -> Vec<i32> {
    partitions.iter().map(|tp| tp.partition).collect()
}

#[tokio::test]
async fn joins_at_epoch_zero_with_its_subscription_then_takes_and_reports_the_assignment() {
    let mut member = consumer(
        Script {
            consumer_heartbeats: [answer(1, Some(&[0, 1]))].into(),
            ..Script::default()
        },
        |_| {},
    );
    assert_eq!(
        assigned(member.next_event().await),
        (1, vec![0, 1], vec![0, 1])
    );
    // The next heartbeat reports what it owns: the acknowledgement the coordinator waits for.
    member
        .wait_until_sent(|s| {
            matches!(s, Sent::ConsumerHeartbeat { epoch: 1, owned: Some(owned), .. } if owned == &[0, 1])
        })
        .await;
    let first = member.coordinator.sent()[0].clone();
    assert_eq!(
        first,
        Sent::ConsumerHeartbeat {
            epoch: 0,
            full: true,
            owned: Some(Vec::new())
        }
    );
    assert_eq!(member.state.lock().unwrap().generation, 1);
    member.leave().await;
}

#[tokio::test]
async fn revokes_what_moves_first_and_takes_new_partitions_only_after_the_application_let_go() {
    let mut member = consumer(
        Script {
            consumer_heartbeats: [answer(1, Some(&[0, 1, 2])), answer(2, Some(&[2, 3]))].into(),
            ..Script::default()
        },
        |_| {},
    );
    assert_eq!(assigned(member.next_event().await).1, vec![0, 1, 2]);
    let revocation = revoked(member.next_event().await);
    assert_eq!(numbers(&revocation.partitions), vec![0, 1]);
    assert!(!revocation.lost);
    // While the application commits, the member keeps heartbeating but reports nothing new.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!member.coordinator.sent().iter().any(
        |s| matches!(s, Sent::ConsumerHeartbeat { owned: Some(owned), .. } if owned == &[2] || owned == &[2, 3])
    ));
    revocation.done();
    assert_eq!(assigned(member.next_event().await), (2, vec![2], vec![]));
    assert_eq!(
        assigned(member.next_event().await),
        (2, vec![2, 3], vec![3])
    );
    member
        .wait_until_sent(
            |s| matches!(s, Sent::ConsumerHeartbeat { owned: Some(owned), .. } if owned == &[2, 3]),
        )
        .await;
    member.leave().await;
}

#[tokio::test]
async fn a_fenced_member_epoch_loses_everything_and_rejoins_at_epoch_zero() {
    let mut member = consumer(
        Script {
            consumer_heartbeats: [
                answer(3, Some(&[0, 1])),
                Err(refused(
                    ResponseError::FencedMemberEpoch,
                    "ConsumerGroupHeartbeat",
                )),
                answer(5, Some(&[1])),
            ]
            .into(),
            ..Script::default()
        },
        |_| {},
    );
    assert_eq!(assigned(member.next_event().await).1, vec![0, 1]);
    let lost = revoked(member.next_event().await);
    assert!(
        lost.lost,
        "fenced: the partitions are lost, not handed over"
    );
    assert_eq!(numbers(&lost.partitions), vec![0, 1]);
    lost.done();
    assert_eq!(assigned(member.next_event().await), (5, vec![1], vec![1]));
    let rejoin = member
        .coordinator
        .sent()
        .into_iter()
        .filter(|s| matches!(s, Sent::ConsumerHeartbeat { .. }))
        .nth(2)
        .expect("a third heartbeat");
    assert_eq!(
        rejoin,
        Sent::ConsumerHeartbeat {
            epoch: 0,
            full: true,
            owned: Some(Vec::new())
        }
    );
    member.leave().await;
}

#[tokio::test]
async fn a_leave_is_epoch_minus_one_and_a_static_members_temporary_leave_minus_two() {
    for (instance, temporary, leave_epoch) in [
        (None, false, -1),
        (Some("worker-0".to_string()), false, -1),
        (None, true, -1),
        (Some("worker-0".to_string()), true, -2),
    ] {
        let mut member = consumer(
            Script {
                consumer_heartbeats: [answer(1, Some(&[0]))].into(),
                ..Script::default()
            },
            |config| config.group_instance_id = instance.clone(),
        );
        assigned(member.next_event().await);
        let coordinator = member.coordinator.clone();
        if temporary {
            member.leave_temporarily().await;
        } else {
            member.leave().await;
        }
        let last = coordinator.sent().last().cloned();
        assert!(
            matches!(last, Some(Sent::ConsumerHeartbeat { epoch, .. }) if epoch == leave_epoch),
            "{instance:?}, temporary {temporary}: {last:?}"
        );
    }
}

#[tokio::test]
async fn a_moved_coordinator_is_looked_up_again_and_told_everything_again() {
    let mut member = consumer(
        Script {
            consumer_heartbeats: [
                answer(1, Some(&[0, 1])),
                Err(refused(
                    ResponseError::NotCoordinator,
                    "ConsumerGroupHeartbeat",
                )),
            ]
            .into(),
            ..Script::default()
        },
        |_| {},
    );
    assigned(member.next_event().await);
    member.wait_until_sent(|s| matches!(s, Sent::Forget)).await;
    // After the move: a full heartbeat at the same epoch, with the partitions still owned.
    member
        .wait_until_sent(|s| {
            matches!(s, Sent::ConsumerHeartbeat { epoch: 1, full: true, owned: Some(owned) } if owned == &[0, 1])
        })
        .await;
    assert!(
        member.state.lock().unwrap().assigned.len() == 2,
        "nothing was revoked"
    );
    member.leave().await;
}

#[tokio::test]
async fn auto_chooses_the_consumer_protocol_when_the_coordinator_offers_it() {
    let mut member = start(
        Script {
            consumer_heartbeats: [answer(1, Some(&[2]))].into(),
            ..Script::default()
        },
        |config| config.protocol = GroupProtocol::Auto,
    );
    assert_eq!(assigned(member.next_event().await).1, vec![2]);
    assert_eq!(
        member.state.lock().unwrap().group_protocol,
        Some(GroupProtocol::Consumer)
    );
    member.leave().await;
}

#[tokio::test]
async fn heartbeats_come_at_the_interval_the_coordinator_dictates() {
    let every_400_ms = || answer(1, None).map(|response| response.with_heartbeat_interval_ms(400));
    let member = consumer(
        Script {
            consumer_heartbeats: (0..20).map(|_| every_400_ms()).collect(),
            ..Script::default()
        },
        |_| {},
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let heartbeats = member
        .coordinator
        .sent()
        .iter()
        .filter(|s| matches!(s, Sent::ConsumerHeartbeat { .. }))
        .count();
    // The join at once, then one every 400 ms: 3 in the first second (not the 10 ms the
    // other scripts answer, nor the config's own interval).
    assert!(
        (2..=4).contains(&heartbeats),
        "{heartbeats} heartbeats in 1 s"
    );
    member.leave().await;
}
