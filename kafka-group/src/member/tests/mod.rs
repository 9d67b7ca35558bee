//! The member's state machines driven by a scripted coordinator: every answer the coordinator
//! gives is written in the test, and every request the member sends is recorded. The classic
//! protocol's tests are here, the consumer protocol's in `consumer`.

mod consumer;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use kafka_protocol::{
    messages::{
        join_group_response::JoinGroupResponseMember, ConsumerGroupHeartbeatRequest,
        ConsumerGroupHeartbeatResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
        JoinGroupResponse, LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
    },
    protocol::StrBytes,
    ResponseError,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    config::GroupConfig,
    coordinator::Coordinator,
    events::GroupEvent,
    state::{Command, Membership},
};
use crate::{
    consumer_protocol::{decode_assignment, encode_assignment, encode_subscription},
    error::{Error, Result},
    TopicPartition,
};

const TOPIC: &str = "purchases";

/// A request the member sent.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Join {
        member_id: String,
    },
    Sync {
        generation: i32,
        assignments: BTreeMap<String, Vec<i32>>,
    },
    Heartbeat {
        generation: i32,
    },
    Leave {
        member_id: String,
    },
    /// It dropped its coordinator to look it up again.
    Forget,
    /// A ConsumerGroupHeartbeat: the epoch, whether it carried the subscription (a full
    /// request), and the partitions it reported owning, if it reported them.
    ConsumerHeartbeat {
        epoch: i32,
        full: bool,
        owned: Option<Vec<i32>>,
    },
}

/// The coordinator's answers, in order, per request type. A heartbeat without a scripted
/// answer succeeds; a join or sync without one waits forever (the group never re-forms).
#[derive(Default)]
struct Script {
    joins: VecDeque<Result<JoinGroupResponse>>,
    syncs: VecDeque<Result<SyncGroupResponse>>,
    heartbeats: VecDeque<Result<HeartbeatResponse>>,
    /// Without a scripted answer a ConsumerGroupHeartbeat succeeds, echoing the epoch.
    consumer_heartbeats: VecDeque<Result<ConsumerGroupHeartbeatResponse>>,
    sent: Vec<Sent>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<StdMutex<Script>>);

impl Scripted {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap()
    }

    fn sent(&self) -> Vec<Sent> {
        self.script().sent.clone()
    }

    fn record(&self, sent: Sent) {
        self.script().sent.push(sent);
    }
}

impl Coordinator for Scripted {
    async fn join(
        &mut self,
        request: JoinGroupRequest,
        _static_member: bool,
        _timeout: Duration,
    ) -> Result<JoinGroupResponse> {
        self.record(Sent::Join {
            member_id: request.member_id.to_string(),
        });
        let answer = self.script().joins.pop_front();
        match answer {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    async fn sync(
        &mut self,
        request: SyncGroupRequest,
        _timeout: Duration,
    ) -> Result<SyncGroupResponse> {
        let assignments = request
            .assignments
            .iter()
            .map(|a| {
                let partitions = decode_assignment(&a.assignment).unwrap();
                (
                    a.member_id.to_string(),
                    partitions.iter().map(|tp| tp.partition).collect(),
                )
            })
            .collect();
        self.record(Sent::Sync {
            generation: request.generation_id,
            assignments,
        });
        let answer = self.script().syncs.pop_front();
        match answer {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    async fn heartbeat(&mut self, request: HeartbeatRequest) -> Result<HeartbeatResponse> {
        self.record(Sent::Heartbeat {
            generation: request.generation_id,
        });
        let answer = self.script().heartbeats.pop_front();
        answer.unwrap_or_else(|| Ok(HeartbeatResponse::default()))
    }

    async fn leave(
        &mut self,
        member_id: String,
        _instance_id: Option<StrBytes>,
    ) -> Result<LeaveGroupResponse> {
        self.record(Sent::Leave { member_id });
        Ok(LeaveGroupResponse::default())
    }

    async fn consumer_heartbeat(
        &mut self,
        request: ConsumerGroupHeartbeatRequest,
    ) -> Result<ConsumerGroupHeartbeatResponse> {
        self.record(Sent::ConsumerHeartbeat {
            epoch: request.member_epoch,
            full: request.subscribed_topic_names.is_some(),
            owned: request.topic_partitions.as_ref().map(|topics| {
                topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().copied())
                    .collect()
            }),
        });
        let answer = self.script().consumer_heartbeats.pop_front();
        answer.unwrap_or_else(|| {
            Ok(ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(request.member_id))
                .with_member_epoch(request.member_epoch)
                .with_heartbeat_interval_ms(10))
        })
    }

    async fn offers_consumer_protocol(&mut self) -> Result<bool> {
        Ok(true)
    }

    async fn topic_ids(&mut self, topics: &[String]) -> Result<BTreeMap<String, uuid::Uuid>> {
        Ok(topics.iter().map(|t| (t.clone(), topic_id(t))).collect())
    }

    async fn partition_counts(&mut self, topics: &[String]) -> Result<BTreeMap<String, usize>> {
        Ok(topics.iter().map(|t| (t.clone(), 4)).collect())
    }

    async fn forget(&mut self) {
        self.record(Sent::Forget);
    }
}

/// The scripted cluster's id of `topic`.
fn topic_id(topic: &str) -> uuid::Uuid {
    let hash = topic
        .bytes()
        .fold(1u128, |h, b| h.wrapping_mul(31).wrapping_add(u128::from(b)));
    uuid::Uuid::from_u128(hash)
}

fn partitions(numbers: &[i32]) -> Vec<TopicPartition> {
    numbers
        .iter()
        .map(|p| TopicPartition::new(TOPIC, *p))
        .collect()
}

/// A JoinGroup answer for generation `generation` naming `member` and `leader`; the leader
/// also gets every member's subscription (owning nothing yet).
fn joined(
    generation: i32,
    member: &str,
    leader: &str,
    members: &[&str],
) -> Result<JoinGroupResponse> {
    let subscription = encode_subscription(&[TOPIC.to_string()], &[], -1);
    Ok(JoinGroupResponse::default()
        .with_generation_id(generation)
        .with_member_id(StrBytes::from_string(member.into()))
        .with_leader(StrBytes::from_string(leader.into()))
        .with_protocol_name(Some(StrBytes::from_static_str("cooperative-sticky")))
        .with_members(if member == leader {
            members
                .iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(m.to_string()))
                        .with_metadata(subscription.clone())
                })
                .collect()
        } else {
            Vec::new()
        }))
}

fn synced(numbers: &[i32]) -> Result<SyncGroupResponse> {
    Ok(SyncGroupResponse::default().with_assignment(encode_assignment(&partitions(numbers))))
}

fn refused(error: ResponseError, api: &'static str) -> Error {
    Error::Protocol { api, error }
}

struct Member {
    coordinator: Scripted,
    state: Arc<StdMutex<Membership>>,
    events: mpsc::Receiver<GroupEvent>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

fn start(script: Script, configure: impl FnOnce(&mut GroupConfig)) -> Member {
    let mut config = GroupConfig::new(vec!["scripted:9092".into()], "workers", vec![TOPIC.into()]);
    config.heartbeat_interval = Duration::from_millis(10);
    config.session_timeout = Duration::from_secs(6);
    configure(&mut config);
    let coordinator = Scripted(Arc::new(StdMutex::new(script)));
    let (events, receiver) = mpsc::channel(super::EVENT_QUEUE);
    let (commands, command_receiver) = mpsc::channel(1);
    let state = Arc::new(StdMutex::new(Membership::default()));
    // The handle's own entry point: it chooses the protocol the config asks for.
    let task = super::run(
        coordinator.clone(),
        config,
        Arc::clone(&state),
        events,
        command_receiver,
    );
    Member {
        coordinator,
        state,
        events: receiver,
        commands,
        task: tokio::spawn(task),
    }
}

impl Member {
    async fn next_event(&mut self) -> GroupEvent {
        tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("an event within 5 s")
            .expect("the member is running")
    }

    async fn leave(self) {
        self.stop(false).await;
    }

    /// A static member's temporary leave (a restart), as `GroupMember::leave_temporarily`.
    async fn leave_temporarily(self) {
        self.stop(true).await;
    }

    async fn stop(self, temporary: bool) {
        let (reply, result) = oneshot::channel();
        let leaving = super::state::Leaving { reply, temporary };
        self.commands.send(Command::Leave(leaving)).await.unwrap();
        result.await.unwrap().unwrap();
        self.task.await.unwrap();
    }

    async fn wait_until_sent(&self, what: impl Fn(&Sent) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.coordinator.sent().iter().any(&what) {
            assert!(
                Instant::now() < deadline,
                "never sent; sent: {:?}",
                self.coordinator.sent()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn assigned(event: GroupEvent) -> (i32, Vec<i32>, Vec<i32>) {
    match event {
        GroupEvent::Assigned {
            generation,
            partitions,
            added,
        } => (
            generation,
            partitions.iter().map(|tp| tp.partition).collect(),
            added.iter().map(|tp| tp.partition).collect(),
        ),
        GroupEvent::Revoked(r) => panic!(
            "expected an assignment, got a revocation of {:?}",
            r.partitions
        ),
    }
}

#[tokio::test]
async fn a_follower_joins_and_is_assigned_what_the_sync_answer_carries() {
    let mut member = start(
        Script {
            joins: [joined(1, "m2", "m1", &[])].into(),
            syncs: [synced(&[2, 3])].into(),
            ..Script::default()
        },
        |_| {},
    );
    assert_eq!(
        assigned(member.next_event().await),
        (1, vec![2, 3], vec![2, 3])
    );
    let sent = member.coordinator.sent();
    assert_eq!(
        sent[0],
        Sent::Join {
            member_id: String::new()
        }
    );
    // A follower sends no assignment of its own.
    assert_eq!(
        sent[1],
        Sent::Sync {
            generation: 1,
            assignments: BTreeMap::new()
        }
    );
    member.leave().await;
}

#[tokio::test]
async fn the_leader_assigns_every_partition_once_across_the_members_in_its_sync() {
    let mut member = start(
        Script {
            joins: [joined(1, "m1", "m1", &["m1", "m2"])].into(),
            syncs: [synced(&[0, 1])].into(),
            ..Script::default()
        },
        |_| {},
    );
    assigned(member.next_event().await);
    let Sent::Sync {
        generation,
        assignments,
    } = member.coordinator.sent()[1].clone()
    else {
        panic!("no SyncGroup: {:?}", member.coordinator.sent());
    };
    assert_eq!(generation, 1);
    assert_eq!(assignments.len(), 2, "one assignment per member");
    let mut all: Vec<i32> = assignments.values().flatten().copied().collect();
    all.sort();
    assert_eq!(all, [0, 1, 2, 3], "every partition exactly once");
    assert!(
        assignments.values().all(|p| p.len() == 2),
        "balanced: {assignments:?}"
    );
    member.leave().await;
}

#[tokio::test]
async fn a_cooperative_rebalance_revokes_only_what_moves_and_waits_for_the_application() {
    let mut member = start(
        Script {
            joins: [
                joined(1, "m1", "m9", &[]),
                joined(2, "m1", "m9", &[]),
                joined(3, "m1", "m9", &[]),
            ]
            .into(),
            syncs: [synced(&[0, 1, 2, 3]), synced(&[0, 1]), synced(&[0, 1])].into(),
            heartbeats: [Err(refused(
                ResponseError::RebalanceInProgress,
                "Heartbeat",
            ))]
            .into(),
            ..Script::default()
        },
        |_| {},
    );
    assert_eq!(
        assigned(member.next_event().await),
        (1, vec![0, 1, 2, 3], vec![0, 1, 2, 3])
    );
    let GroupEvent::Revoked(revocation) = member.next_event().await else {
        panic!("the partitions that move are revoked first");
    };
    assert_eq!(revocation.partitions, partitions(&[2, 3]));
    assert!(!revocation.lost);
    // Nothing moves on until the application let go.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        member.events.try_recv().is_err(),
        "no assignment before the revocation is done"
    );
    revocation.done();
    assert_eq!(assigned(member.next_event().await), (2, vec![0, 1], vec![]));
    // What it gave up is free now: it rejoins so the leader can hand it on, and keeps 0 and 1.
    assert_eq!(assigned(member.next_event().await), (3, vec![0, 1], vec![]));
    let joins = member
        .coordinator
        .sent()
        .iter()
        .filter(|s| matches!(s, Sent::Join { .. }))
        .count();
    assert_eq!(joins, 3);
    member.leave().await;
}

#[tokio::test]
async fn a_member_the_coordinator_dropped_loses_its_partitions_and_rejoins_as_a_new_member() {
    let mut member = start(
        Script {
            joins: [joined(1, "m1", "m9", &[]), joined(2, "m7", "m9", &[])].into(),
            syncs: [synced(&[0, 1]), synced(&[1])].into(),
            heartbeats: [Err(refused(ResponseError::UnknownMemberId, "Heartbeat"))].into(),
            ..Script::default()
        },
        |_| {},
    );
    assigned(member.next_event().await);
    let GroupEvent::Revoked(revocation) = member.next_event().await else {
        panic!("a dropped member's partitions are revoked");
    };
    assert_eq!(revocation.partitions, partitions(&[0, 1]));
    assert!(revocation.lost, "lost: no commit can succeed any more");
    revocation.done();
    assert_eq!(assigned(member.next_event().await), (2, vec![1], vec![1]));
    let joins: Vec<Sent> = member
        .coordinator
        .sent()
        .into_iter()
        .filter(|s| matches!(s, Sent::Join { .. }))
        .collect();
    assert_eq!(
        joins,
        [
            Sent::Join {
                member_id: String::new()
            },
            Sent::Join {
                member_id: String::new()
            }
        ],
        "the second join is as a new member"
    );
    member.leave().await;
}

/// A leader of two members, assigned, then leaving: what it sent.
async fn leader_of_two_leaves(configure: impl FnOnce(&mut GroupConfig)) -> Vec<Sent> {
    let mut member = start(
        Script {
            joins: [joined(1, "m1", "m1", &["m1", "m2"])].into(),
            syncs: [synced(&[0, 1])].into(),
            ..Script::default()
        },
        configure,
    );
    assigned(member.next_event().await);
    let coordinator = member.coordinator.clone();
    member.leave().await;
    coordinator.sent()
}

#[tokio::test]
async fn a_leaving_leader_sends_leave_group_by_default() {
    let sent = leader_of_two_leaves(|_| {}).await;
    assert_eq!(
        sent.last(),
        Some(&Sent::Leave {
            member_id: "m1".into()
        })
    );
}

#[tokio::test]
async fn a_static_members_temporary_leave_sends_no_leave_group_so_its_partitions_wait_for_it() {
    let mut member = start(
        Script {
            joins: [joined(1, "worker-0-m1", "m9", &[])].into(),
            syncs: [synced(&[0, 1])].into(),
            ..Script::default()
        },
        |config| config.group_instance_id = Some("worker-0".into()),
    );
    assigned(member.next_event().await);
    let coordinator = member.coordinator.clone();
    member.leave_temporarily().await;
    let sent = coordinator.sent();
    assert!(
        !sent.iter().any(|s| matches!(s, Sent::Leave { .. })),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_leader_of_others_that_must_not_send_leave_group_lets_its_session_expire() {
    let sent = leader_of_two_leaves(|config| config.leader_sends_leave_group = false).await;
    assert!(
        !sent.iter().any(|s| matches!(s, Sent::Leave { .. })),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_coordinator_that_moves_is_found_again_and_the_member_keeps_its_partitions() {
    let mut member = start(
        Script {
            joins: [joined(1, "m1", "m9", &[])].into(),
            syncs: [synced(&[0, 1])].into(),
            heartbeats: [
                Err(refused(ResponseError::NotCoordinator, "Heartbeat")),
                Err(Error::Io("connection reset".into())),
            ]
            .into(),
            ..Script::default()
        },
        |_| {},
    );
    assigned(member.next_event().await);
    member
        .wait_until_sent(|s| matches!(s, Sent::Heartbeat { .. }))
        .await;
    let forgets_then_heartbeat = |sent: &[Sent]| {
        let forgets = sent.iter().filter(|s| **s == Sent::Forget).count();
        let heartbeats_after = sent
            .iter()
            .skip_while(|s| **s != Sent::Forget)
            .filter(|s| matches!(s, Sent::Heartbeat { generation: 1 }))
            .count();
        forgets == 2 && heartbeats_after >= 2
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !forgets_then_heartbeat(&member.coordinator.sent()) {
        assert!(Instant::now() < deadline, "{:?}", member.coordinator.sent());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Still in generation 1 with its partitions: no revocation, no rejoin.
    assert!(member.events.try_recv().is_err());
    let joins = member
        .coordinator
        .sent()
        .iter()
        .filter(|s| matches!(s, Sent::Join { .. }))
        .count();
    assert_eq!(joins, 1);
    member.leave().await;
}

#[tokio::test]
async fn a_coordinator_that_moves_during_a_join_is_found_again_and_the_join_retried() {
    let mut member = start(
        Script {
            joins: [
                Err(refused(ResponseError::NotCoordinator, "JoinGroup")),
                joined(1, "m1", "m9", &[]),
            ]
            .into(),
            syncs: [synced(&[3])].into(),
            ..Script::default()
        },
        |_| {},
    );
    assert_eq!(assigned(member.next_event().await), (1, vec![3], vec![3]));
    let sent = member.coordinator.sent();
    assert_eq!(
        &sent[..3],
        &[
            Sent::Join {
                member_id: String::new()
            },
            Sent::Forget,
            Sent::Join {
                member_id: String::new()
            },
        ]
    );
    member.leave().await;
}
