//! Cluster events under steady load, on a three-broker cluster (librdkafka's mock cluster,
//! started per test whatever `TEST_KAFKA` says: these events need its fault controls).
//! Each scenario sends 300 purchases/s for 20 s through the gateway to two workers while the
//! cluster changes under them, then audits every answer against the topic and MongoDB
//! (nothing lost, nothing stored twice, nothing stored that was answered "not stored") and
//! waits for the lag to drain. Each prints one `[cluster]` line with the figures the README
//! reports: 503s answered, the longest stretch without a 202, the longest stretch without an
//! insert, and how long after the load the last purchase was stored.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use mongodb::bson::doc;
use test_support::{mock_cluster::MockCluster, TestKafka};
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::*,
    steady_load::{self, Answer, Client, Intent},
};

const RATE_PER_SECOND: u32 = 300;
const LOAD: Duration = Duration::from_secs(20);
const BROKERS: i32 = 3;

// Kafka's error codes, as the events inject them.
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const REQUEST_TIMED_OUT: i16 = 7;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const NOT_ENOUGH_REPLICAS: i16 = 19;

// API keys.
const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
const LIST_OFFSETS: i16 = 2;
const OFFSET_COMMIT: i16 = 8;
const OFFSET_FETCH: i16 = 9;
const JOIN_GROUP: i16 = 11;
const HEARTBEAT: i16 = 12;
const SYNC_GROUP: i16 = 14;
const CONSUMER_GROUP_HEARTBEAT: i16 = 68;
const STALE_MEMBER_EPOCH: i16 = 113;

/// What one scenario measured.
#[derive(Debug)]
struct Figures {
    answered_503: usize,
    longest_without_202: Duration,
    /// The same on the partition that waited longest (a broker's trouble stops its own
    /// partitions; the others' 202s would hide it in the overall figure).
    longest_without_202_on_a_partition: Duration,
    longest_without_insert: Duration,
    /// From the end of the load until every 202'd purchase was stored.
    drained_after_load: Duration,
}

/// The partition leaders a scenario starts from: spread round-robin, broker `p % 3 + 1`.
fn spread_leaders(cluster: &MockCluster, topic: &str) -> Vec<i32> {
    let leaders: Vec<i32> = (0..PARTITIONS).map(|p| p % BROKERS + 1).collect();
    for (partition, leader) in leaders.iter().enumerate() {
        cluster.set_leader(topic, partition as i32, *leader);
    }
    leaders
}

/// Runs `events` (given the cluster, the group, the topic and the moment the load started)
/// while the load runs, audits, and returns the figures and every intent.
async fn under_steady_load<F>(
    scenario: &str,
    setup: impl FnOnce(&MockCluster, &Pipeline),
    events: F,
) -> (Figures, Vec<Intent>)
where
    F: FnOnce(Arc<TestKafka>, String, String, Instant) + Send + 'static,
{
    let _alone = one_heavy_test_at_a_time().await;
    let kafka = Arc::new(TestKafka::mock_cluster(BROKERS as usize));
    let (_, mongo) = shared_servers();
    let pipeline = Pipeline::start_on_test_kafka(&kafka, &mongo.address).await;
    let cluster = kafka.mock().expect("a mock cluster");
    spread_leaders(cluster, &pipeline.topic);
    setup(cluster, &pipeline);
    // Kept after the test: the first thing to read when a scenario fails.
    let logs = tempfile::Builder::new()
        .prefix("cluster-logs-")
        .tempdir()
        .expect("log dir")
        .keep();
    eprintln!(
        "[cluster] {scenario}: worker logs in {}, broker log in {}",
        logs.display(),
        cluster.log_path().display()
    );
    let workers = [
        pipeline.worker_logging_to(logs.join("worker-1.log")),
        pipeline.worker_logging_to(logs.join("worker-2.log")),
    ];
    wait_assigned(&workers.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;

    let started = Instant::now();
    let inserts = sample_inserts(&pipeline, started).await;
    let script = {
        let (kafka, group, topic) = (
            Arc::clone(&kafka),
            pipeline.group.clone(),
            pipeline.topic.clone(),
        );
        tokio::task::spawn_blocking(move || events(kafka, group, topic, started))
    };
    let intents = steady_load::run(
        &pipeline,
        RATE_PER_SECOND,
        LOAD,
        Duration::from_secs(20),
        |n| match n % 10 {
            0 => Client::KeyedRetrying,
            1 => Client::KeyedOnce,
            _ => Client::Plain,
        },
    )
    .await;
    script.await.expect("the event script ran");
    let audit = steady_load::audit(&pipeline, &intents, Duration::from_secs(3)).await;
    let accepted = audit.answered_202 as u64;
    let samples = inserts.finish().await;
    pipeline.wait_committed_to_end(Duration::from_secs(60));

    let figures = Figures {
        answered_503: intents
            .iter()
            .filter(|i| {
                matches!(
                    i.answers.first(),
                    Some(Answer::NotStored(_) | Answer::Unknown(_))
                )
            })
            .count(),
        longest_without_202: longest_gap(&accepted_times(&intents, |_| true), LOAD),
        longest_without_202_on_a_partition: (0..PARTITIONS)
            .map(|p| longest_gap(&accepted_times(&intents, |q| q == p), LOAD))
            .max()
            .unwrap_or_default(),
        longest_without_insert: longest_gap(&insert_times(&samples), LOAD),
        drained_after_load: samples
            .iter()
            .find(|(_, count)| *count >= accepted)
            .map(|(at, _)| at.saturating_sub(LOAD))
            .unwrap_or(Duration::MAX),
    };
    eprintln!(
        "[cluster] {scenario}: {} intents, {} answered 202, 503s {}, longest without a 202 {:.2?} (on one partition {:.2?}), longest without an insert {:.2?}, drained {:.2?} after the load; {audit:?}",
        intents.len(),
        audit.answered_202,
        figures.answered_503,
        figures.longest_without_202,
        figures.longest_without_202_on_a_partition,
        figures.longest_without_insert,
        figures.drained_after_load,
    );
    drop(workers);
    (figures, intents)
}

/// When each intent on a partition `on` takes got its 202.
fn accepted_times(intents: &[Intent], on: impl Fn(i32) -> bool) -> Vec<Duration> {
    let mut times: Vec<Duration> = intents
        .iter()
        .filter(|i| on(partition_of(i)))
        .filter_map(|i| {
            i.answers
                .iter()
                .zip(&i.answered_at)
                .find(|(a, _)| matches!(a, Answer::Accepted(_)))
                .map(|(_, at)| *at)
        })
        .collect();
    times.sort();
    times
}

/// The partition the gateway produces an intent to (Kafka's default partitioner on the
/// userId, as the gateway uses it).
fn partition_of(intent: &Intent) -> i32 {
    purchase::partitioner::partition_for_key(intent.user_id.as_bytes(), PARTITIONS)
}

/// When the stored count rose.
fn insert_times(samples: &[(Duration, u64)]) -> Vec<Duration> {
    samples
        .windows(2)
        .filter(|w| w[1].1 > w[0].1)
        .map(|w| w[1].0)
        .collect()
}

/// The longest stretch within `[0, window]` with none of `times` (sorted) in it.
fn longest_gap(times: &[Duration], window: Duration) -> Duration {
    let mut last = Duration::ZERO;
    let mut longest = Duration::ZERO;
    for at in times.iter().copied().filter(|at| *at <= window) {
        longest = longest.max(at - last);
        last = at;
    }
    longest.max(window.saturating_sub(last))
}

struct InsertSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(Duration, u64)>>,
}

/// Counts the stored purchases every 100 ms from `started` on.
async fn sample_inserts(pipeline: &Pipeline, started: Instant) -> InsertSampler {
    let collection = pipeline.collection().await;
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                if let Ok(count) = collection.count_documents(doc! {}).await {
                    samples.push((started.elapsed(), count));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        }
    });
    InsertSampler { stop, task }
}

impl InsertSampler {
    /// Stops sampling (after the audit waited for every 202'd purchase to be stored).
    async fn finish(self) -> Vec<(Duration, u64)> {
        self.stop.cancel();
        self.task.await.expect("the sampler ran")
    }
}

fn sleep_until(started: Instant, at: Duration) {
    if let Some(wait) = (started + at).checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leaders_moving_under_load_cost_retries_not_errors() {
    let (figures, _) = under_steady_load(
        "leaders move",
        |_, _| {},
        |kafka, _, topic, started| {
            let cluster = kafka.mock().expect("mock");
            let mut leaders: Vec<i32> = (0..PARTITIONS).map(|p| p % BROKERS + 1).collect();
            // Four leaders every 2 s for 12 s, as a rolling restart or a preferred-leader
            // election moves them.
            for step in 0..6 {
                sleep_until(started, Duration::from_secs(3 + 2 * step));
                for i in 0..4 {
                    let partition = ((step as i32) * 4 + i) % PARTITIONS;
                    let leader = &mut leaders[partition as usize];
                    *leader = *leader % BROKERS + 1;
                    cluster.set_leader(&topic, partition, *leader);
                }
            }
        },
    )
    .await;
    assert_eq!(
        figures.answered_503, 0,
        "a leader move the cluster already names must cost a retry, not an error"
    );
    assert!(
        figures.longest_without_202_on_a_partition < Duration::from_secs(3),
        "{figures:?}"
    );
    assert!(
        figures.drained_after_load < Duration::from_secs(15),
        "{figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_failing_over_and_coming_back_loses_nothing_and_flow_resumes() {
    const FAILING: i32 = 2;
    let (figures, _) = under_steady_load(
        "broker down, failover, back",
        // The failing broker coordinates the group too: the hardest case.
        |cluster, pipeline| cluster.set_group_coordinator(&pipeline.group, FAILING),
        |kafka, group, topic, started| {
            let cluster = kafka.mock().expect("mock");
            let led_by_failing: Vec<i32> = (0..PARTITIONS)
                .filter(|p| p % BROKERS + 1 == FAILING)
                .collect();
            sleep_until(started, Duration::from_secs(4));
            cluster.broker_down(FAILING);
            // The controller notices and moves its leaderships to in-sync replicas.
            sleep_until(started, Duration::from_millis(4_500));
            for partition in &led_by_failing {
                cluster.set_leader(&topic, *partition, FAILING % BROKERS + 1);
            }
            cluster.set_group_coordinator(&group, FAILING % BROKERS + 1);
            sleep_until(started, Duration::from_secs(10));
            cluster.broker_up(FAILING);
            // Preferred-leader election hands its partitions back.
            sleep_until(started, Duration::from_secs(11));
            for partition in &led_by_failing {
                cluster.set_leader(&topic, *partition, FAILING);
            }
            cluster.set_group_coordinator(&group, FAILING);
        },
    )
    .await;
    // A 503 is honest while a partition has no reachable leader (0.5 s here), so only the
    // flow is bounded: it resumes within 2 s of the leaders moving (+0.5 s for the noise of
    // two shared cores).
    assert!(
        figures.longest_without_202_on_a_partition < Duration::from_millis(3_000),
        "{figures:?}"
    );
    assert!(
        figures.longest_without_insert < Duration::from_millis(3_000),
        "{figures:?}"
    );
    assert!(
        figures.drained_after_load < Duration::from_secs(15),
        "{figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_coordinator_moving_twice_under_load_loses_nothing() {
    let (figures, _) = under_steady_load(
        "coordinator moves twice",
        |cluster, pipeline| cluster.set_group_coordinator(&pipeline.group, 1),
        |kafka, group, _, started| {
            let cluster = kafka.mock().expect("mock");
            sleep_until(started, Duration::from_secs(5));
            cluster.set_group_coordinator(&group, 2);
            sleep_until(started, Duration::from_secs(11));
            cluster.set_group_coordinator(&group, 3);
        },
    )
    .await;
    assert_eq!(
        figures.answered_503, 0,
        "the gateway does not use the coordinator"
    );
    assert!(
        figures.longest_without_insert < Duration::from_secs(5),
        "{figures:?}"
    );
    assert!(
        figures.drained_after_load < Duration::from_secs(15),
        "{figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_errors_in_every_api_the_pipeline_uses_lose_nothing() {
    // What the workers ask only while they join and take partitions (JoinGroup, SyncGroup,
    // OffsetFetch, ListOffsets for a group without commits) fails first, before they start;
    // what flows all the time fails during the load, one API a second.
    // The group's own APIs are the protocol's: JoinGroup, SyncGroup and Heartbeat (classic)
    // or ConsumerGroupHeartbeat (KIP-848), whose commits carry a member epoch that can be
    // stale.
    let consumer = test_support::group_protocol() == "consumer";
    let mut at_start: Vec<(i16, &[i16])> = if consumer {
        vec![(
            CONSUMER_GROUP_HEARTBEAT,
            &[COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR],
        )]
    } else {
        vec![
            (JOIN_GROUP, &[COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR]),
            (SYNC_GROUP, &[NOT_COORDINATOR]),
        ]
    };
    at_start.extend([
        (
            OFFSET_FETCH,
            &[COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR][..],
        ),
        (
            LIST_OFFSETS,
            &[NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE][..],
        ),
    ]);
    let under_load: Vec<(i16, &[i16])> = vec![
        (
            PRODUCE,
            &[
                NOT_LEADER_OR_FOLLOWER,
                LEADER_NOT_AVAILABLE,
                NOT_ENOUGH_REPLICAS,
                NOT_ENOUGH_REPLICAS,
            ],
        ),
        (
            FETCH,
            &[
                NOT_LEADER_OR_FOLLOWER,
                REQUEST_TIMED_OUT,
                NOT_LEADER_OR_FOLLOWER,
            ],
        ),
        if consumer {
            (
                OFFSET_COMMIT,
                &[NOT_COORDINATOR, STALE_MEMBER_EPOCH, REQUEST_TIMED_OUT],
            )
        } else {
            (
                OFFSET_COMMIT,
                &[
                    NOT_COORDINATOR,
                    COORDINATOR_LOAD_IN_PROGRESS,
                    REQUEST_TIMED_OUT,
                ],
            )
        },
        if consumer {
            (
                CONSUMER_GROUP_HEARTBEAT,
                &[NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE],
            )
        } else {
            (HEARTBEAT, &[NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE])
        },
    ];
    let tracked = Arc::new(std::sync::Mutex::new(None));
    let (figures, _) = under_steady_load(
        "retriable errors injected",
        |cluster, _| {
            cluster.start_tracking();
            for (api, errors) in &at_start {
                cluster.push_errors(*api, errors);
            }
        },
        {
            let tracked = Arc::clone(&tracked);
            let under_load = under_load.clone();
            move |kafka, _, _, started| {
                let cluster = kafka.mock().expect("mock");
                for (second, (api, errors)) in under_load.iter().enumerate() {
                    sleep_until(started, Duration::from_secs(3 + second as u64));
                    cluster.push_errors(*api, errors);
                }
                sleep_until(started, LOAD);
                *tracked.lock().expect("tracked") = Some(cluster.request_counts());
            }
        },
    )
    .await;
    // Every injected error was answered: the mock hands them to the next requests of the
    // API, so each API saw at least as many requests as errors were pushed.
    let counts = tracked
        .lock()
        .expect("tracked")
        .take()
        .expect("request counts");
    for (api, errors) in at_start.iter().chain(&under_load) {
        let requests: usize = counts
            .iter()
            .filter(|((_, key), _)| key == api)
            .map(|(_, n)| n)
            .sum();
        assert!(
            requests >= errors.len(),
            "API {api}: {requests} requests for {} injected errors",
            errors.len()
        );
    }
    // Errors that say "not written" are retried, so no purchase is refused; REQUEST_TIMED_OUT
    // on a produce would leave the outcome open, so it is not injected there.
    assert_eq!(figures.answered_503, 0, "{figures:?}");
    assert!(
        figures.drained_after_load < Duration::from_secs(20),
        "{figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_slows_only_its_own_partitions() {
    const SLOW: i32 = 2;
    let rtt = Duration::from_millis(50);
    let (figures, intents) = under_steady_load(
        "one broker with 50 ms RTT",
        |_, _| {},
        move |kafka, _, _, started| {
            let cluster = kafka.mock().expect("mock");
            cluster.set_rtt(SLOW, rtt);
            sleep_until(started, LOAD);
            cluster.set_rtt(SLOW, Duration::ZERO);
        },
    )
    .await;
    let (others, its_own) =
        latency_by_leader(&intents, |partition| partition % BROKERS + 1 == SLOW);
    eprintln!(
        "[cluster] one broker with 50 ms RTT: 202 latency p50/p99 {:.1?}/{:.1?} on the other brokers' partitions, {:.1?}/{:.1?} on its own",
        others.0, others.1, its_own.0, its_own.1
    );
    assert_eq!(figures.answered_503, 0, "{figures:?}");
    assert!(
        its_own.0 >= rtt,
        "the slow broker's partitions answer after its RTT"
    );
    assert!(
        others.0 < rtt,
        "the other partitions do not wait for the slow broker: p50 {:?}",
        others.0
    );
    assert!(
        figures.drained_after_load < Duration::from_secs(15),
        "{figures:?}"
    );
}

/// (p50, p99) of the latencies of the 202s on partitions `slow` says no to, then of those it
/// says yes to.
fn latency_by_leader(
    intents: &[Intent],
    slow: impl Fn(i32) -> bool,
) -> ((Duration, Duration), (Duration, Duration)) {
    let mut fast = Vec::new();
    let mut slowed = Vec::new();
    for intent in intents {
        let (Some(Answer::Accepted(_)), Some(at)) =
            (intent.answers.first(), intent.answered_at.first())
        else {
            continue;
        };
        let partition = partition_of(intent);
        let latency = at.saturating_sub(intent.due);
        if slow(partition) {
            slowed.push(latency);
        } else {
            fast.push(latency);
        }
    }
    (percentiles(&mut fast), percentiles(&mut slowed))
}

fn percentiles(values: &mut [Duration]) -> (Duration, Duration) {
    if values.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    values.sort();
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}
