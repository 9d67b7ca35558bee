use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use gateway::{config::Cli, startup::Application};
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};
use test_support::{
    process::{self, Signal},
    run_python_with_env,
};
pub use test_support::{shared_servers, Broker, TestKafka};
use tokio_util::sync::CancellationToken;

pub const PARTITIONS: i32 = 6;

pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

fn insecure() -> Secured {
    Secured {
        gateway_flags: vec!["--auth-disabled".into()],
        ..Secured::default()
    }
}

/// A name no other test uses: `prefix` and a random suffix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A worker's configuration for a start-up test: any ops port, warnings only, then `flags`.
pub fn worker_config(flags: impl IntoIterator<Item = String>) -> worker::config::WorkerConfig {
    worker::config::WorkerConfig::try_parse_from(
        ["worker", "--listen=127.0.0.1:0", "--log-filter=warn"]
            .map(String::from)
            .into_iter()
            .chain(flags),
    )
    .expect("worker flags")
}

/// Builds a worker that must not start: its error with every cause, and how long it took
/// to come.
pub async fn worker_start_up_error(config: worker::config::WorkerConfig) -> (String, Duration) {
    let started = Instant::now();
    match worker::startup::Worker::build(config).await {
        Ok(_) => panic!("the worker started although it was set up to fail"),
        Err(e) => (format!("{e:#}"), started.elapsed()),
    }
}

/// A port for a worker's ops server, free when asked. Taken below Linux's ephemeral range
/// (32768-60999): a port the kernel hands out for port 0 is one it also gives outgoing
/// connections, and with many workers connecting at once one of them took a port between
/// this answer and the worker's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 1_000) as u16 * 12;
    for _ in 0..12_000 {
        let offset = (start - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let port = 20_000 + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999")
}

/// Tests that push a stream through a fleet run one at a time: several such scenarios on two
/// shared cores measure the machine, not the pipeline, and run into their time limits.
pub async fn one_heavy_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Gateway, topic, group and database of one test; workers are separate processes.
pub struct Pipeline {
    pub kafka: String,
    pub mongo: String,
    pub topic: String,
    pub group: String,
    pub database: String,
    pub gateway: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    secured: Secured,
    /// Off on nisshi, which strands a group whose leader leaves while it re-forms.
    leader_leaves_group: bool,
    /// `KAFKA_GROUP_PROTOCOL` of its workers: `TEST_GROUP_PROTOCOL` unless a test sets it.
    pub group_protocol: &'static str,
}

/// How a pipeline on secured servers is reached: flags both binaries take (Kafka SASL/TLS,
/// the MongoDB connection string is in `mongo`), the gateway's authentication flags, the
/// bearer token purchases are posted with, and the librdkafka settings of the cross-checks.
#[derive(Debug, Clone, Default)]
pub struct Secured {
    pub flags: Vec<String>,
    pub gateway_flags: Vec<String>,
    pub bearer_token: Option<String>,
    pub librdkafka: Value,
}

impl Pipeline {
    /// On the shared servers: the Kafka `TEST_KAFKA` names (nisshi or the mock cluster).
    pub async fn start() -> Self {
        let (kafka, mongo) = shared_servers();
        Self::start_on_test_kafka(kafka, &mongo.address).await
    }

    /// On `kafka`, whichever broker it is: the topics are prepared the way that broker needs.
    pub async fn start_on_test_kafka(kafka: &TestKafka, mongo: &str) -> Self {
        let topic = unique("purchases");
        kafka.prepare_topic(&topic, PARTITIONS);
        kafka.prepare_topic(&dead_letter_topic(&topic), 1);
        let mut pipeline = Self::start_with_topic(&kafka.address, mongo, topic, insecure()).await;
        pipeline.leader_leaves_group = kafka.broker() != Broker::Nisshi;
        pipeline
    }

    /// On a nisshi broker of the test's own (which takes CreateTopics); like every pipeline
    /// on nisshi, its workers' leader lets its session expire instead of leaving.
    pub async fn start_on(kafka: &str, mongo: &str) -> Self {
        Self::start_secured(kafka, mongo, insecure()).await
    }

    pub async fn start_secured(kafka: &str, mongo: &str, secured: Secured) -> Self {
        Self::start_with_topic(kafka, mongo, unique("purchases"), secured).await
    }

    async fn start_with_topic(kafka: &str, mongo: &str, topic: String, secured: Secured) -> Self {
        let database = unique("shop").replace('-', "_");
        let flags = secured.flags.iter().chain(&secured.gateway_flags).cloned();
        let cli = Cli::try_parse_from(
            [
                "gateway".to_string(),
                "--listen=127.0.0.1:0".into(),
                format!("--kafka-brokers={kafka}"),
                format!("--kafka-topic={topic}"),
                format!("--kafka-topic-partitions={PARTITIONS}"),
                format!("--mongo-uri={mongo}"),
                format!("--mongo-database={database}"),
                "--mongo-timeout=2s".into(),
                "--log-filter=warn".into(),
            ]
            .into_iter()
            .chain(flags),
        )
        .expect("gateway flags");
        let app = Application::build(cli.config)
            .await
            .expect("gateway starts");
        let gateway = format!("http://{}", app.local_addr());
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run(shutdown.clone()));
        Self {
            kafka: kafka.to_string(),
            mongo: mongo.to_string(),
            topic,
            group: unique("workers"),
            database,
            gateway,
            client: reqwest::Client::new(),
            shutdown,
            secured,
            leader_leaves_group: false,
            group_protocol: test_support::group_protocol(),
        }
    }

    /// The bootstrap brokers one per entry, for clients that take a list.
    pub fn bootstrap(&self) -> Vec<String> {
        self.kafka.split(',').map(str::to_string).collect()
    }

    /// Starts a worker process of this pipeline.
    pub fn worker(&self) -> WorkerProcess {
        self.worker_with_env(&[])
    }

    /// A worker with these environment variables added.
    pub fn worker_with_env(&self, env: &[(&str, &str)]) -> WorkerProcess {
        self.spawn_worker(env, None)
    }

    /// Starts a worker whose log (with the group's state changes at debug level) goes to
    /// `log`, for tests that print it when something stalls.
    pub fn worker_logging_to(&self, log: std::path::PathBuf) -> WorkerProcess {
        self.spawn_worker(&[], Some(log))
    }

    /// A worker with `env` added, logging to `log` when given.
    pub fn spawn_worker(
        &self,
        env: &[(&str, &str)],
        log: Option<std::path::PathBuf>,
    ) -> WorkerProcess {
        let port = free_port();
        let mut command = self.worker_command(port);
        if let Some(log) = &log {
            let file = std::fs::File::create(log).expect("worker log file");
            command
                .env("RUST_LOG", "info,kafka_group=debug,worker=debug")
                .stdout(Stdio::null())
                .stderr(file);
        }
        let child = command
            .envs(env.iter().copied())
            .spawn()
            .expect("start worker");
        WorkerProcess {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            log,
        }
    }

    /// The command of a worker process of this pipeline, its ops server on `port`.
    pub fn worker_command(&self, port: u16) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_worker"));
        command
            .env("WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("KAFKA_BROKERS", &self.kafka)
            .env("KAFKA_TOPIC", &self.topic)
            .env("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string())
            .env("KAFKA_GROUP_ID", &self.group)
            .env("KAFKA_SESSION_TIMEOUT", "6s")
            .env("KAFKA_REBALANCE_TIMEOUT", "10s")
            .env("KAFKA_HEARTBEAT_INTERVAL", "300ms")
            .env("KAFKA_GROUP_PROTOCOL", self.group_protocol)
            .env(
                "KAFKA_LEADER_LEAVES_GROUP",
                self.leader_leaves_group.to_string(),
            )
            .env("WORKER_DLQ_TOPIC", dead_letter_topic(&self.topic))
            .env("MONGO_URI", &self.mongo)
            .env("MONGO_DATABASE", &self.database)
            .env("MONGO_TIMEOUT", "2s")
            .env("RUST_LOG", "warn")
            .args(&self.secured.flags)
            .stdin(Stdio::null());
        command
    }

    /// POSTs `count` purchases with `concurrency` requests in flight; returns the accepted
    /// eventIds (every answer must be 202).
    pub async fn post_purchases(&self, count: usize, concurrency: usize) -> BTreeSet<String> {
        use futures::StreamExt;
        let url = format!("{}/api/purchases", self.gateway);
        let accepted: Vec<String> = futures::stream::iter(0..count)
            .map(|i| {
                let request = self.authorized(self.client.post(&url)).json(&json!({
                    "username": format!("user {}", i % 97),
                    "userId": format!("u{}", i % 97),
                    "price": 1.25 + (i % 100) as f64,
                }));
                async move {
                    let response = request.send().await.expect("gateway answers");
                    assert_eq!(response.status().as_u16(), 202);
                    let body: Value = response.json().await.expect("JSON");
                    body["eventId"].as_str().expect("eventId").to_string()
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        accepted.into_iter().collect()
    }

    /// GET `path` on the gateway and parse its JSON body (whatever the status).
    pub async fn gateway_json(&self, path: &str) -> Value {
        self.authorized(self.client.get(format!("{}{path}", self.gateway)))
            .send()
            .await
            .expect("gateway answers")
            .json()
            .await
            .expect("JSON")
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.secured.bearer_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn collection(&self) -> mongodb::Collection<Document> {
        mongodb::Client::with_uri_str(&self.mongo)
            .await
            .expect("mongo client")
            .database(&self.database)
            .collection("purchases")
    }

    /// Waits until `expected` purchases are stored and returns every stored eventId.
    pub async fn wait_stored(&self, expected: usize, timeout: Duration) -> Vec<String> {
        let collection = self.collection().await;
        let started = Instant::now();
        loop {
            let count = collection.count_documents(doc! {}).await.unwrap_or(0) as usize;
            if count >= expected {
                break;
            }
            assert!(
                started.elapsed() < timeout,
                "only {count} of {expected} stored after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Let anything extra (a duplicate would be a bug) arrive before counting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut ids = Vec::new();
        let mut cursor = collection
            .find(doc! {})
            .projection(doc! {"_id": 1})
            .await
            .expect("find");
        while cursor.advance().await.expect("cursor") {
            let document = cursor.deserialize_current().expect("document");
            ids.push(document.get_str("_id").expect("string _id").to_string());
        }
        ids
    }

    /// Waits until the group's committed offsets (as confluent-kafka reads them) equal the
    /// end offsets: lag 0, as KEDA would see it.
    pub fn wait_committed_to_end(&self, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let offsets = self.group_offsets();
            let at_end = (0..PARTITIONS).all(|p| {
                let end = offsets["end"][p.to_string()].as_i64();
                let committed = offsets["committed"][p.to_string()].as_i64();
                end == Some(0) || committed == end
            });
            if at_end {
                return offsets;
            }
            assert!(
                started.elapsed() < timeout,
                "committed offsets never reached the end: {offsets}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The group's committed and end offsets, as confluent-kafka reads them with this
    /// pipeline's Kafka credentials.
    pub fn group_offsets(&self) -> Value {
        let librdkafka = match &self.secured.librdkafka {
            Value::Null => "{}".to_string(),
            config => config.to_string(),
        };
        run_python_with_env(
            "group_offsets.py",
            &[&self.kafka, &self.group, &self.topic],
            &[("KAFKA_CLIENT_CONFIG", &librdkafka)],
        )
    }

    pub fn stop(self) {
        self.shutdown.cancel();
    }
}

pub struct WorkerProcess {
    child: Child,
    pub metrics: String,
    pub log: Option<std::path::PathBuf>,
}

impl WorkerProcess {
    /// Sends SIGTERM without waiting (to stop several at once).
    pub fn send_term(&self) {
        process::signal(self.child.id(), Signal::SIGTERM);
    }

    /// Waits for the exit that follows a SIGTERM; returns how long it took from `since`.
    pub fn wait_clean_exit(&mut self, since: Instant, within: Duration) -> Duration {
        let left = within.saturating_sub(since.elapsed());
        let status = process::wait_exit(&mut self.child, left)
            .unwrap_or_else(|| panic!("worker did not stop within {within:?} of SIGTERM"));
        assert!(status.success(), "worker exited with {status}");
        since.elapsed()
    }

    /// The last `lines` lines of its log (when it has one).
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        self.send_term();
        self.wait_clean_exit(Instant::now(), Duration::from_secs(30));
    }

    /// The status and body of its `/readyz` (`None` while it does not answer).
    pub async fn readiness(&self) -> Option<(u16, Value)> {
        let response = reqwest::get(self.metrics.replace("/metrics", "/readyz"))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// Its whole log (when it has one).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Until every partition of the pipeline is owned by one of `workers`.
pub async fn wait_assigned(workers: &[&WorkerProcess], timeout: Duration) {
    let started = Instant::now();
    loop {
        let mut owned = 0.0;
        for worker in workers {
            owned += worker
                .metric("worker_assigned_partitions")
                .await
                .unwrap_or(0.0);
        }
        if owned == f64::from(PARTITIONS) {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "the workers own {owned} of {PARTITIONS} partitions after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every accepted purchase is stored, and nothing else, each exactly once.
pub fn assert_exactly_once(accepted: &BTreeSet<String>, stored: &[String]) {
    let distinct: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "a purchase was stored twice");
    let stored: BTreeSet<String> = stored.iter().cloned().collect();
    let lost: Vec<&String> = accepted.difference(&stored).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} accepted purchases were lost, e.g. {lost:?}",
        accepted.difference(&stored).count()
    );
    assert_eq!(stored.len(), accepted.len(), "stored purchases nobody sent");
}
