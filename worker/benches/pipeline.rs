//! The live pipeline, measured side by side in one run on its own broker and database, with
//! the release binaries at the log level a user gets (no `RUST_LOG`):
//!
//! 1. the write path alone: `wrk` POSTs to a gateway, no worker running;
//! 2. the same load with N workers consuming: accepted/s and its ratio to (1), stored docs/s,
//!    and how long the lag takes to drain after the load stops;
//! 3. CPU-seconds of the broker, the workers and the gateway per 10,000 purchases in (1) and
//!    (2), read from `/proc`;
//! 4. a single purchase on the quiet stack: time from its 202 to its document in MongoDB;
//! 5. a 20,000-purchase backlog drained by fresh workers in a group with history: time to the
//!    first stored record and docs/s once flowing, beside a raw rskafka fetch of the topic.
//!
//! `make bench-pipeline` (`WORKERS=N`, `DURATION=S`, `CONNECTIONS=C`).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use test_support::process::Signal;

use mongodb::bson::doc;
use rskafka::client::{partition::UnknownTopicHandling, ClientBuilder};
use test_support::{workspace_root, InfraServer};

const PARTITIONS: i32 = 12;
const BACKLOG: u64 = 20_000;
const IDLE_PURCHASES: usize = 10;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn release_binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let path = target.join("release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release -p gateway -p worker` first (make bench-pipeline does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

struct Servers {
    kafka: InfraServer,
    mongo: InfraServer,
}

/// A running release binary of ours.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        for _ in 0..600 {
            if let Ok(response) = reqwest::get(&url).await {
                if response.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{url} not ready within 60 s");
    }

    /// One value from its `/metrics` (0 when it cannot be read).
    async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let Ok(response) = reqwest::get(&url).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Purchases this worker newly stored (MongoDB acknowledged them), from its metrics:
    /// cheap to poll, where counting the collection every few milliseconds would load the
    /// database being measured.
    async fn inserted(&self) -> u64 {
        self.metric("worker_documents_inserted_total").await as u64
    }

    /// (records, produce calls) the gateway has sent to Kafka so far.
    async fn produce_batches(&self) -> (f64, f64) {
        (
            self.metric("gateway_kafka_produce_batch_records_sum").await,
            self.metric("gateway_kafka_produce_batch_records_count")
                .await,
        )
    }

    /// (records fetched, fetch requests) of a worker so far.
    async fn fetches(&self) -> (f64, f64) {
        (
            self.metric("worker_records_consumed_total").await,
            self.metric("worker_fetch_requests_total").await,
        )
    }

    fn terminate(mut self) {
        test_support::process::signal(self.child.id(), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Servers {
    fn gateway(&self, topic: &str) -> Process {
        let port = free_port();
        let child = Command::new(release_binary("gateway"))
            .env_remove("RUST_LOG")
            .args([
                format!("--listen=127.0.0.1:{port}"),
                format!("--kafka-brokers={}", self.kafka.address),
                format!("--kafka-topic={topic}"),
                format!("--kafka-topic-partitions={PARTITIONS}"),
                format!("--mongo-uri={}", self.mongo.address),
                "--mongo-database=bench".into(),
                "--auth-disabled".into(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gateway");
        Process { child, port }
    }

    fn worker(&self, topic: &str, group: &str) -> Process {
        let port = free_port();
        let child = Command::new(release_binary("worker"))
            .env_remove("RUST_LOG")
            .env("WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("KAFKA_BROKERS", &self.kafka.address)
            .env("KAFKA_TOPIC", topic)
            .env("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string())
            .env("KAFKA_GROUP_ID", group)
            .env("WORKER_DLQ_TOPIC", format!("{topic}.dlq"))
            .env("MONGO_URI", &self.mongo.address)
            .env("MONGO_DATABASE", "bench")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start worker");
        Process { child, port }
    }

    /// `count` workers of `group` on `topic`, once every one is ready.
    async fn ready_fleet(&self, count: usize, topic: &str, group: &str) -> Vec<Process> {
        let fleet: Vec<Process> = (0..count).map(|_| self.worker(topic, group)).collect();
        for worker in &fleet {
            worker.wait_ready().await;
        }
        fleet
    }

    async fn stored(&self, collection: &str) -> u64 {
        let client = mongodb::Client::with_uri_str(&self.mongo.address)
            .await
            .expect("mongo client");
        client
            .database("bench")
            .collection::<mongodb::bson::Document>(collection)
            .count_documents(doc! {})
            .await
            .unwrap_or(0)
    }
}

/// What one `wrk` run got: requests/s and how many were 2xx.
struct Load {
    accepted: u64,
    seconds: f64,
    p99_ms: f64,
}

fn wrk(gateway: &Process, seconds: u64, connections: u64) -> Load {
    let script = workspace_root().join("bench/post-purchase.lua");
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}/api/purchases", gateway.port))
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let number = |pattern: &str| -> Option<f64> {
        let at = text.find(pattern)?;
        text[..at]
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
    };
    let total = number(" requests in").unwrap_or(0.0) as u64;
    let seconds = text
        .split(" requests in ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(seconds as f64);
    let rejected = text
        .split("Non-2xx or 3xx responses: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let p99_ms = text
        .split("99%")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|v| {
            let (digits, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let value: f64 = digits.parse().unwrap_or(0.0);
            match unit {
                "us" => value / 1000.0,
                "s" => value * 1000.0,
                _ => value,
            }
        })
        .unwrap_or(0.0);
    Load {
        accepted: total.saturating_sub(rejected),
        seconds,
        p99_ms,
    }
}

fn per_10k(cpu: f64, purchases: u64) -> f64 {
    cpu * 10_000.0 / purchases.max(1) as f64
}

#[tokio::main]
async fn main() {
    let workers = setting("WORKERS", 2) as usize;
    let duration = setting("DURATION", 20);
    let connections = setting("CONNECTIONS", 32);
    let servers = Servers {
        kafka: InfraServer::start("kafka"),
        mongo: InfraServer::start("mongo"),
    };
    let broker_cpu = || cpu_seconds(servers.kafka.pid());
    let database_cpu = || cpu_seconds(servers.mongo.pid());
    println!(
        "pipeline benchmark: {workers} worker(s), wrk -t2 -c{connections} -d{duration}s, {PARTITIONS} partitions, default log levels"
    );

    // 1. The write path alone.
    let gateway = servers.gateway("bench-write");
    gateway.wait_ready().await;
    let _ = wrk(&gateway, 2, connections); // warm-up: connections, topic metadata
    let (broker_before, gateway_before) = (broker_cpu(), gateway.cpu());
    let produced_before = gateway.produce_batches().await;
    let alone = wrk(&gateway, duration, connections);
    let alone_broker = broker_cpu() - broker_before;
    let alone_gateway = gateway.cpu() - gateway_before;
    let alone_batch = mean_batch(produced_before, gateway.produce_batches().await);
    drop(gateway);

    // 2. The same load with the workers running, then until everything is stored.
    let gateway = servers.gateway("bench-live");
    gateway.wait_ready().await;
    let fleet = servers
        .ready_fleet(workers, "bench-live", "bench-live-workers")
        .await;
    let warm_up = wrk(&gateway, 2, connections);
    let warmed = wait_inserted(&fleet, warm_up.accepted, Duration::from_secs(60)).await;
    let fleet_cpu = |fleet: &[Process]| fleet.iter().map(Process::cpu).sum::<f64>();
    let (broker_before, gateway_before, workers_before, database_before) = (
        broker_cpu(),
        gateway.cpu(),
        fleet_cpu(&fleet),
        database_cpu(),
    );
    let produced_before = gateway.produce_batches().await;
    let fetched_before = fleet_fetches(&fleet).await;
    let started = Instant::now();
    let live = wrk(&gateway, duration, connections);
    let load_ended = Instant::now();
    let live_batch = mean_batch(produced_before, gateway.produce_batches().await);
    let live_fetch = mean_batch(fetched_before, fleet_fetches(&fleet).await);
    let stored_at_end = inserted_by(&fleet).await - warmed;
    let all = wait_inserted(&fleet, warmed + live.accepted, Duration::from_secs(300)).await;
    let drain = load_ended.elapsed();
    let stored = all - warmed;
    let live_broker = broker_cpu() - broker_before;
    let live_gateway = gateway.cpu() - gateway_before;
    let live_workers = fleet_cpu(&fleet) - workers_before;
    let live_database = database_cpu() - database_before;
    let in_database = servers.stored("purchases").await;
    let end_to_end = stored as f64 / started.elapsed().as_secs_f64();

    // 4. Single purchases on the now quiet stack.
    let mut quiet = Vec::new();
    for _ in 0..IDLE_PURCHASES {
        tokio::time::sleep(Duration::from_secs(1)).await;
        quiet.push(one_purchase_until_stored(&servers, &gateway).await);
    }
    quiet.sort();
    drop(fleet);
    drop(gateway);

    // 5. A backlog drained by fresh workers in a group with history.
    let gateway = servers.gateway("bench-backlog");
    gateway.wait_ready().await;
    let previous = servers
        .ready_fleet(workers, "bench-backlog", "bench-backlog-workers")
        .await;
    for worker in previous {
        worker.terminate();
    }
    let before_backlog = servers.stored("purchases").await;
    let mut queued = 0;
    while queued < BACKLOG {
        queued += wrk(&gateway, 2, connections).accepted;
    }
    drop(gateway);
    let raw = raw_fetch_rate(&servers.kafka.address, "bench-backlog").await;
    let started = Instant::now();
    let fresh: Vec<Process> = (0..workers)
        .map(|_| servers.worker("bench-backlog", "bench-backlog-workers"))
        .collect();
    let first = wait_inserted(&fresh, 1, Duration::from_secs(120)).await;
    let first_at = started.elapsed();
    let flowing = Instant::now();
    let cpu_before = (broker_cpu(), database_cpu(), fleet_cpu(&fresh));
    let done = wait_inserted(&fresh, queued, Duration::from_secs(300)).await;
    let drain_seconds = flowing.elapsed().as_secs_f64();
    let drain_rate = (done - first) as f64 / drain_seconds;
    let drain_cpu = (
        broker_cpu() - cpu_before.0,
        database_cpu() - cpu_before.1,
        fleet_cpu(&fresh) - cpu_before.2,
    );
    drop(fresh);
    let backlog_in_database = servers.stored("purchases").await - before_backlog;

    let accepted_alone = alone.accepted as f64 / alone.seconds;
    let accepted_live = live.accepted as f64 / live.seconds;
    println!();
    println!("| | write path alone | with {workers} worker(s) | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| accepted/s | {accepted_alone:.0} (p99 {:.1} ms) | {accepted_live:.0} (p99 {:.1} ms) | {:.2} |",
        alone.p99_ms,
        live.p99_ms,
        accepted_live / accepted_alone
    );
    println!(
        "| broker CPU-s per 10k purchases | {:.2} | {:.2} | {:.2} |",
        per_10k(alone_broker, alone.accepted),
        per_10k(live_broker, live.accepted),
        per_10k(live_broker, live.accepted) / per_10k(alone_broker, alone.accepted)
    );
    println!(
        "| gateway CPU-s per 10k purchases | {:.2} | {:.2} | |",
        per_10k(alone_gateway, alone.accepted),
        per_10k(live_gateway, live.accepted)
    );
    println!(
        "| worker CPU-s per 10k purchases (all workers) | – | {:.2} | |",
        per_10k(live_workers, live.accepted)
    );
    println!(
        "| database CPU-s per 10k purchases | – | {:.2} | |",
        per_10k(live_database, live.accepted)
    );
    println!("| records per produce call (gateway) | {alone_batch:.1} | {live_batch:.1} | |");
    println!("| records per fetch request (workers) | – | {live_fetch:.1} | |");
    println!();
    println!(
        "live: {} accepted, {stored_at_end} stored when the load stopped, all {stored} stored {:.1} s after it stopped; end to end {end_to_end:.0} docs/s; {in_database} documents in MongoDB",
        live.accepted,
        drain.as_secs_f64()
    );
    println!(
        "quiet stack, {IDLE_PURCHASES} single purchases 1 s apart: 202 to stored p50 {:.0} ms, max {:.0} ms",
        quiet[quiet.len() / 2].as_secs_f64() * 1000.0,
        quiet[quiet.len() - 1].as_secs_f64() * 1000.0
    );
    println!(
        "backlog of {queued} in a group with history: first record stored {:.1} s after the workers started; {drain_rate:.0} docs/s once flowing; raw rskafka fetch of the same topic {raw:.0} records/s; ratio {:.2}; {backlog_in_database} documents in MongoDB",
        first_at.as_secs_f64(),
        drain_rate / raw
    );
    println!(
        "backlog drain CPU over {drain_seconds:.1} s: broker {:.1} s, database {:.1} s, workers {:.1} s",
        drain_cpu.0, drain_cpu.1, drain_cpu.2
    );
}

/// POSTs one purchase and returns how long after its 202 its document was in MongoDB.
async fn one_purchase_until_stored(servers: &Servers, gateway: &Process) -> Duration {
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/purchases", gateway.port))
        .json(&serde_json::json!({"username": "quiet", "userId": "quiet-1", "price": 1.5}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(response.status().as_u16(), 202, "purchase accepted");
    let accepted = Instant::now();
    let body: serde_json::Value = response.json().await.expect("JSON");
    let id = body["eventId"].as_str().expect("eventId").to_string();
    let purchases = mongodb::Client::with_uri_str(&servers.mongo.address)
        .await
        .expect("mongo client")
        .database("bench")
        .collection::<mongodb::bson::Document>("purchases");
    loop {
        if purchases
            .find_one(doc! {"_id": &id})
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return accepted.elapsed();
        }
        assert!(
            accepted.elapsed() < Duration::from_secs(30),
            "{id} not stored 30 s after its 202"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Records per call between two (records, calls) readings.
fn mean_batch(before: (f64, f64), after: (f64, f64)) -> f64 {
    (after.0 - before.0) / (after.1 - before.1).max(1.0)
}

/// (records fetched, fetch requests) of the whole fleet so far.
async fn fleet_fetches(fleet: &[Process]) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    for worker in fleet {
        let (records, requests) = worker.fetches().await;
        total = (total.0 + records, total.1 + requests);
    }
    total
}

/// Purchases `fleet` has newly stored so far.
async fn inserted_by(fleet: &[Process]) -> u64 {
    let mut stored = 0;
    for worker in fleet {
        stored += worker.inserted().await;
    }
    stored
}

/// Waits until `fleet` has stored at least `count` purchases; returns how many it has.
async fn wait_inserted(fleet: &[Process], count: u64, timeout: Duration) -> u64 {
    let started = Instant::now();
    loop {
        let stored = inserted_by(fleet).await;
        if stored >= count {
            return stored;
        }
        assert!(
            started.elapsed() < timeout,
            "only {stored} of {count} stored after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records/s rskafka reads the whole topic at, every partition at once, 1 MiB per fetch.
async fn raw_fetch_rate(kafka: &str, topic: &str) -> f64 {
    let client = ClientBuilder::new(vec![kafka.to_string()])
        .build()
        .await
        .expect("rskafka connects");
    let started = Instant::now();
    let mut reads = Vec::new();
    for partition in 0..PARTITIONS {
        let client = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        reads.push(tokio::spawn(async move {
            let end = client
                .get_offset(rskafka::client::partition::OffsetAt::Latest)
                .await
                .expect("end offset");
            let (mut offset, mut count) = (0, 0u64);
            while offset < end {
                let (records, _) = client
                    .fetch_records(offset, 1..1_048_576, 500)
                    .await
                    .expect("fetch");
                if let Some(last) = records.last() {
                    offset = last.offset + 1;
                }
                count += records.len() as u64;
            }
            count
        }));
    }
    let mut total = 0;
    for read in reads {
        total += read.await.expect("fetch task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}
