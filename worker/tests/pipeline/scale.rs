//! The fleet through scale events under steady load (300 purchases/s): 1 → 6 → 1 workers,
//! the five stopped at once (SIGTERM, or SIGKILL), `SCALE_ROUNDS` rounds in one group (1 in
//! `make test`, 10 in `make test-stress`). After every round: no stall, every 202'd purchase
//! stored exactly once, committed offsets at the end offsets. Timings are printed as
//! `[timing]` lines.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mongodb::bson::doc;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const RATE_PER_SECOND: u64 = 300;
const FLEET: usize = 6;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

fn rounds() -> usize {
    std::env::var("SCALE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[tokio::test]
async fn scaling_1_to_6_to_1_with_sigterm_never_stalls_and_stores_every_purchase_once() {
    scale_rounds(Stop::Term).await;
}

#[tokio::test]
async fn scaling_1_to_6_to_1_with_sigkill_never_stalls_and_stores_every_purchase_once() {
    scale_rounds(Stop::Kill).await;
}

async fn scale_rounds(stop: Stop) {
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let mut fleet = Fleet::start(&pipeline).await;
    for round in 0..rounds() {
        let figures = fleet.round(&pipeline, round, stop).await;
        figures.print(stop, round, &pipeline);
        // An eager rebalance would pause every partition for at least a JoinGroup hold
        // (3 s on nisshi). The 1 s target's figures come from `make test-stress`'s output;
        // a timed bound this tight would only measure how busy the machine is. Kafka takes
        // a commit from the current generation while the group gathers its members again,
        // and so does nisshi; librdkafka's mock cluster refuses every commit until the join
        // phase ends (`REBALANCE_IN_PROGRESS` for the whole hold), so there the figure
        // measures the mock and is printed, not bounded. The inserts, which do not wait for
        // commits, are bounded on both.
        if test_support::Broker::from_env() == test_support::Broker::Nisshi {
            assert!(
                figures.kept_commit_gap_up < Duration::from_secs(3)
                    && figures.kept_commit_gap_down < Duration::from_secs(3),
                "a partition that kept its owner paused its commits: {:?} / {:?}",
                figures.kept_commit_gap_up,
                figures.kept_commit_gap_down
            );
        }
    }
    pipeline.stop();
}

/// The classic and the consumer group protocol through the same scale events on the same
/// three-broker mock cluster, one after the other in one run: `make bench-scale` prints the
/// table of the issue-24 note. The figures are measured, not bounded, except the accounting:
/// every accepted purchase stored exactly once.
#[tokio::test]
#[ignore = "a benchmark: make bench-scale"]
async fn bench_scale_events_classic_beside_consumer_protocol() {
    assert_eq!(
        test_support::Broker::from_env(),
        test_support::Broker::MockCluster,
        "run with TEST_KAFKA=mock (make bench-scale)"
    );
    let _alone = one_heavy_test_at_a_time().await;
    let mut rows = Vec::new();
    for stop in [Stop::Term, Stop::Kill] {
        for protocol in ["classic", "consumer"] {
            let mut pipeline = Pipeline::start().await;
            pipeline.group_protocol = protocol;
            let mut fleet = Fleet::start(&pipeline).await;
            let figures = fleet.round(&pipeline, 0, stop).await;
            figures.print(stop, 0, &pipeline);
            rows.push((protocol, stop, figures));
            drop(fleet);
            pipeline.stop();
        }
    }
    println!(
        "\n| protocol | workers stopped by | scale 1→6: all own partitions | scale 6→1: survivor owns all | longest commit pause of a kept partition (up / down) | longest insert gap (up / down) | accepted | lost | extra |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (protocol, stop, f) in rows {
        println!(
            "| {protocol} | {stop:?} | {:.1?} | {:.1?} | {:.1?} / {:.1?} | {:.1?} / {:.1?} | {} | {} | {} |",
            f.scale_up,
            f.scale_down,
            f.kept_commit_gap_up,
            f.kept_commit_gap_down,
            f.insert_gap_up,
            f.insert_gap_down,
            f.accepted,
            f.lost,
            f.extra
        );
    }
}

/// What one scale round measured.
struct Figures {
    scale_up: Duration,
    scale_down: Duration,
    slowest_exit: Duration,
    /// The longest commit pause of the partition that paused least: one that kept its owner.
    kept_commit_gap_up: Duration,
    kept_commit_gap_down: Duration,
    insert_gap_up: Duration,
    insert_gap_down: Duration,
    accepted: usize,
    lost: usize,
    extra: usize,
}

impl Figures {
    fn print(&self, stop: Stop, round: usize, pipeline: &Pipeline) {
        eprintln!(
            "[timing] {stop:?} round {round}: a partition that kept its owner went at most {:.1?} \
             without a commit around scale-up, {:.1?} around scale-down",
            self.kept_commit_gap_up, self.kept_commit_gap_down
        );
        eprintln!(
            "[timing] {stop:?} round {round} on {:?} ({} protocol): scale-up, all {FLEET} own partitions after {:.1?}; \
             scale-down with the leader among the stopped, the survivor owns all after {:.1?} (slowest SIGTERM exit {:.1?}); \
             longest insert gap around scale-up {:.1?}, around scale-down {:.1?}; {} purchases so far",
            test_support::Broker::from_env(),
            pipeline.group_protocol,
            self.scale_up,
            self.scale_down,
            self.slowest_exit,
            self.insert_gap_up,
            self.insert_gap_down,
            self.accepted,
        );
    }
}

/// The workers of one pipeline, each logging to a file of its own.
struct Fleet {
    workers: Vec<WorkerProcess>,
    /// Kept after the test: the workers' logs (group state changes at debug) are the first
    /// thing to read when a round stalls.
    logs: std::path::PathBuf,
    started: usize,
    accepted: BTreeSet<String>,
}

impl Fleet {
    /// One worker, once it owns every partition.
    async fn start(pipeline: &Pipeline) -> Self {
        let logs = tempfile::Builder::new()
            .prefix("scale-logs-")
            .tempdir()
            .expect("log dir")
            .keep();
        eprintln!("[scale] worker logs in {}", logs.display());
        let mut fleet = Self {
            workers: Vec::new(),
            logs,
            started: 0,
            accepted: BTreeSet::new(),
        };
        fleet.spawn(pipeline);
        wait_for(
            &fleet.workers,
            Duration::from_secs(60),
            "the first worker owns every partition",
            |owned| owned == [PARTITIONS as f64],
        )
        .await;
        fleet
    }

    fn spawn(&mut self, pipeline: &Pipeline) {
        self.started += 1;
        let log = self.logs.join(format!("worker-{}.log", self.started));
        self.workers.push(pipeline.worker_logging_to(log));
    }

    /// Under steady load: 1 → `FLEET` workers, then back to 1 with the others stopped at once
    /// (`stop`); then every purchase accepted so far must be stored exactly once and every
    /// offset committed.
    async fn round(&mut self, pipeline: &Pipeline, round: usize, stop: Stop) -> Figures {
        let load = SteadyLoad::start(pipeline);
        let watch = InsertWatch::start(pipeline).await;
        let commits = CommitWatch::start(pipeline);

        // Scale up: everyone owns a partition.
        let up = Instant::now();
        while self.workers.len() < FLEET {
            self.spawn(pipeline);
        }
        wait_for(
            &self.workers,
            Duration::from_secs(60),
            "every worker owns a partition",
            |owned| owned.iter().all(|n| *n >= 1.0),
        )
        .await;
        let scale_up = up.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Scale down: five at once, the group's leader among them (a rolling update or a
        // scale-down stops it as often as any other): the survivor is a follower, another
        // one every round.
        let followers = followers(&self.workers).await;
        // The consumer protocol (KIP-848) has no leader: any worker may survive.
        let leaders = if pipeline.group_protocol == "consumer" {
            0
        } else {
            1
        };
        assert!(
            followers.len() == FLEET - leaders,
            "{leaders} worker(s) lead the group: followers {followers:?}"
        );
        let survivor = self.workers.remove(followers[round % followers.len()]);
        let down = Instant::now();
        let mut stopped: Vec<WorkerProcess> = std::mem::take(&mut self.workers);
        let mut exits = Vec::new();
        match stop {
            Stop::Term => {
                for worker in &stopped {
                    worker.send_term();
                }
                for worker in &mut stopped {
                    // Well within the 25 s grace, rebalance or not.
                    exits.push(worker.wait_clean_exit(down, Duration::from_secs(10)));
                }
            }
            Stop::Kill => {
                for worker in stopped.drain(..) {
                    worker.kill();
                }
            }
        }
        self.workers.push(survivor);
        wait_for(
            &self.workers,
            Duration::from_secs(45),
            "the survivor owns every partition",
            |owned| owned == [PARTITIONS as f64],
        )
        .await;
        let scale_down = down.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The window of the scale-down ends here, while the load still runs.
        let settled = Instant::now();

        self.accepted.extend(load.stop().await);
        wait_stored(pipeline, &self.workers, self.accepted.len()).await;
        let stored = pipeline
            .wait_stored(self.accepted.len(), Duration::from_secs(60))
            .await;
        let distinct: BTreeSet<String> = stored.iter().cloned().collect();
        let figures_accounting = (
            self.accepted.difference(&distinct).count(),
            stored.len() - self.accepted.intersection(&distinct).count(),
        );
        assert_exactly_once(&self.accepted, &stored);
        pipeline.wait_committed_to_end(Duration::from_secs(30));
        let gaps = watch.stop().await;
        let commit_gaps = commits.stop().await;
        drop(stopped);
        Figures {
            scale_up,
            scale_down,
            slowest_exit: exits.iter().max().copied().unwrap_or_default(),
            // Partitions that keep their owner keep committing through a scale step: at
            // scale-up the first worker keeps one, at scale-down the survivor keeps its own.
            kept_commit_gap_up: commit_gaps.shortest_longest_gap(up, down),
            kept_commit_gap_down: commit_gaps.shortest_longest_gap(down, settled),
            insert_gap_up: gaps.longest_between(up, down),
            insert_gap_down: gaps.longest_between(down, settled),
            accepted: self.accepted.len(),
            lost: figures_accounting.0,
            extra: figures_accounting.1,
        }
    }
}

/// The indexes of the workers that do not lead the group (`worker_group_leader` 0).
async fn followers(fleet: &[WorkerProcess]) -> Vec<usize> {
    let mut followers = Vec::new();
    for (index, worker) in fleet.iter().enumerate() {
        if worker.metric("worker_group_leader").await == Some(0.0) {
            followers.push(index);
        }
    }
    followers
}

/// Waits until `count` purchases are stored; on timeout, fails with the workers' logs.
async fn wait_stored(pipeline: &Pipeline, fleet: &[WorkerProcess], count: usize) {
    let collection = pipeline.collection().await;
    let started = Instant::now();
    loop {
        let stored = collection.count_documents(doc! {}).await.unwrap_or(0) as usize;
        if stored >= count {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            for (i, worker) in fleet.iter().enumerate() {
                eprintln!("----- worker {i} log -----\n{}", worker.log_tail(80));
            }
            panic!("stall: only {stored} of {count} stored after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls every worker's `worker_assigned_partitions` until `done` holds; on timeout, fails
/// with the end of every worker's log.
async fn wait_for(
    fleet: &[WorkerProcess],
    timeout: Duration,
    what: &str,
    done: impl Fn(&[f64]) -> bool,
) {
    let started = Instant::now();
    loop {
        let mut owned = Vec::new();
        for worker in fleet {
            owned.push(
                worker
                    .metric("worker_assigned_partitions")
                    .await
                    .unwrap_or(0.0),
            );
        }
        if done(&owned) {
            return;
        }
        if started.elapsed() > timeout {
            for (i, worker) in fleet.iter().enumerate() {
                eprintln!("----- worker {i} log -----\n{}", worker.log_tail(60));
            }
            panic!("stall: not {what} after {timeout:?}; owned per worker: {owned:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `RATE_PER_SECOND` purchases per second until stopped; every answer must be a 202.
struct SteadyLoad {
    stop: CancellationToken,
    task: JoinHandle<BTreeSet<String>>,
}

impl SteadyLoad {
    fn start(pipeline: &Pipeline) -> Self {
        let stop = CancellationToken::new();
        let url = format!("{}/api/purchases", pipeline.gateway);
        let client = pipeline.client.clone();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SECOND));
            let mut requests = Vec::new();
            let mut n = 0u64;
            while !until.is_cancelled() {
                ticker.tick().await;
                n += 1;
                let request = client.post(&url).json(&json!({
                    "username": "scaling buyer",
                    "userId": format!("scale-{}", n % 50),
                    "price": 2.5,
                }));
                requests.push(tokio::spawn(async move {
                    let response = request.send().await.expect("gateway answers");
                    assert_eq!(response.status().as_u16(), 202);
                    let body: Value = response.json().await.expect("JSON");
                    body["eventId"].as_str().expect("eventId").to_string()
                }));
            }
            let mut accepted = BTreeSet::new();
            for request in requests {
                accepted.insert(request.await.expect("every purchase is accepted"));
            }
            accepted
        });
        Self { stop, task }
    }

    async fn stop(self) -> BTreeSet<String> {
        self.stop.cancel();
        self.task.await.expect("load task")
    }
}

/// The stored count sampled every 100 ms, to find the longest time nothing was inserted.
struct InsertWatch {
    stop: CancellationToken,
    task: JoinHandle<()>,
    increases: Arc<Mutex<Vec<Instant>>>,
}

impl InsertWatch {
    async fn start(pipeline: &Pipeline) -> Self {
        let collection = pipeline.collection().await;
        let stop = CancellationToken::new();
        let increases = Arc::new(Mutex::new(vec![Instant::now()]));
        let task = tokio::spawn({
            let stop = stop.clone();
            let increases = Arc::clone(&increases);
            async move {
                let mut last = collection.count_documents(doc! {}).await.unwrap_or(0);
                while !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let count = collection.count_documents(doc! {}).await.unwrap_or(last);
                    if count > last {
                        increases.lock().expect("lock").push(Instant::now());
                        last = count;
                    }
                }
            }
        });
        Self {
            stop,
            task,
            increases,
        }
    }

    async fn stop(self) -> InsertGaps {
        self.stop.cancel();
        let _ = self.task.await;
        let increases = self.increases.lock().expect("lock").clone();
        InsertGaps(increases)
    }
}

/// Every partition's committed offset polled every 100 ms, to time each partition's pauses.
struct CommitWatch {
    stop: CancellationToken,
    task: JoinHandle<Vec<Vec<Instant>>>,
}

impl CommitWatch {
    fn start(pipeline: &Pipeline) -> Self {
        let admin = kafka_group::GroupAdmin::new(
            pipeline.bootstrap(),
            "scale-test",
            Duration::from_secs(5),
        );
        let (group, topic) = (pipeline.group.clone(), pipeline.topic.clone());
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let partitions: Vec<kafka_group::TopicPartition> = (0..PARTITIONS)
                .map(|p| kafka_group::TopicPartition::new(&topic, p))
                .collect();
            let mut advances = vec![vec![Instant::now()]; PARTITIONS as usize];
            let mut last = vec![None; PARTITIONS as usize];
            while !until.is_cancelled() {
                if let Ok(committed) = admin.committed(&group, &partitions).await {
                    for (i, tp) in partitions.iter().enumerate() {
                        let now = committed.get(tp).copied().flatten();
                        if now != last[i] {
                            advances[i].push(Instant::now());
                            last[i] = now;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            advances
        });
        Self { stop, task }
    }

    async fn stop(self) -> CommitGaps {
        self.stop.cancel();
        CommitGaps(self.task.await.expect("commit watch"))
    }
}

/// Per partition, when its committed offset advanced.
struct CommitGaps(Vec<Vec<Instant>>);

impl CommitGaps {
    /// Over `from..to`, the smallest (over partitions) longest pause between commits: the
    /// pause of the partition that paused least.
    fn shortest_longest_gap(&self, from: Instant, to: Instant) -> Duration {
        self.0
            .iter()
            .map(|advances| InsertGaps(advances.clone()).longest_between(from, to))
            .min()
            .unwrap_or_default()
    }
}

struct InsertGaps(Vec<Instant>);

impl InsertGaps {
    /// The longest time without an event that overlaps `from..to` (a pause still going on
    /// at `to` counts until `to`).
    fn longest_between(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self.0.iter().copied().filter(|t| *t <= to).collect();
        times.push(to);
        times
            .windows(2)
            .filter(|w| w[1] >= from)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}
