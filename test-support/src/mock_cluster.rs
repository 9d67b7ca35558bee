//! A multi-broker Kafka for integration tests: librdkafka's in-memory mock cluster, run by
//! `test-support/py/mock_cluster.py` (ctypes over the librdkafka in the `confluent-kafka`
//! wheel) with fault controls over a loopback JSON control connection: partition leaders,
//! brokers down and up, RTT, group coordinators, injected error codes, API versions, and
//! counts of the requests each broker received.
//!
//! The brokers are ids `1..=N` on 127.0.0.1, in this process's memory only: nothing survives
//! a restart. The harness caps the API versions the mock advertises but misparses, and its
//! module docstring lists those caps and the mock's other deviations from Kafka (no
//! CreateTopics, no failover when a broker goes down, ...). It exits when dropped, and by
//! itself when this process dies.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};

use crate::{python, workspace_root};

/// How long the harness may take to print its address line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a control request may take to be answered.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Drop` waits for the harness to exit after `stop` before killing it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One request a broker received while tracking was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockRequest {
    pub broker: i32,
    pub api_key: i16,
    /// When the broker read it: librdkafka's monotonic clock, in microseconds (only
    /// differences between requests mean something).
    pub ts_us: i64,
}

/// A running mock cluster. Dropping it stops the harness.
pub struct MockCluster {
    /// Bootstrap brokers, comma-separated (what `--kafka-brokers` takes).
    pub address: String,
    brokers: BTreeMap<i32, String>,
    control_address: String,
    librdkafka: String,
    control: Mutex<Option<BufReader<TcpStream>>>,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// `mock_cluster.py` options: KIP-848 groups' session timeout and heartbeat interval.
pub const CONSUMER_GROUP_TIMINGS: [&str; 4] = [
    "--consumer-session-timeout-ms",
    "6000",
    "--consumer-heartbeat-interval-ms",
    "1000",
];

impl MockCluster {
    /// Starts `brokers` brokers (ids `1..=brokers`). `TEST_MOCK_DEBUG` (e.g. `mock,protocol`)
    /// turns on librdkafka's debug logs in [`MockCluster::log_path`].
    ///
    /// Consumer protocol (KIP-848) groups get the timings of the suites' classic groups: a
    /// 6 s session, and the 1 s heartbeat the worker uses by default (the mock's own defaults
    /// are 30 s and 3 s, Kafka's 45 s and 5 s).
    pub fn start(brokers: usize) -> Self {
        Self::start_with_args(brokers, &CONSUMER_GROUP_TIMINGS)
    }

    /// [`MockCluster::start`] with more `mock_cluster.py` options, e.g.
    /// `["--topic", "orders:12", "--initial-rebalance-delay-ms", "0"]`.
    pub fn start_with_args(brokers: usize, args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("scalable-shop-mock-cluster-")
            .tempdir()
            .expect("temp dir for the mock cluster's log");
        let log = dir.path().join("mock_cluster.log");
        let log_file = std::fs::File::create(&log).expect("create the mock cluster's log file");
        let mut command = Command::new(python());
        command
            .arg(workspace_root().join("test-support/py/mock_cluster.py"))
            .args(["--brokers", &brokers.to_string()])
            .args(["--owner-pid", &std::process::id().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        if let Some(debug) = std::env::var_os("TEST_MOCK_DEBUG").filter(|d| !d.is_empty()) {
            command.arg("--debug").arg(debug);
        }
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("start mock_cluster.py (make test-deps installs its virtualenv): {e}")
        });
        let ready = match read_ready_line(&mut child) {
            Ok(ready) => ready,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mock cluster did not start: {why}\n{}", log_tail(&log));
            }
        };
        let brokers: BTreeMap<i32, String> = ready["brokers"]
            .as_object()
            .expect("the ready line has a brokers object")
            .iter()
            .map(|(id, address)| {
                let id = id.parse().expect("broker ids are integers");
                let address = address.as_str().expect("broker addresses are strings");
                (id, address.to_string())
            })
            .collect();
        Self {
            address: ready["bootstrap"]
                .as_str()
                .expect("the ready line has a bootstrap list")
                .to_string(),
            brokers,
            control_address: ready["control"]
                .as_str()
                .expect("the ready line has a control address")
                .to_string(),
            librdkafka: ready["librdkafka"].as_str().unwrap_or_default().to_string(),
            control: Mutex::new(None),
            child,
            log,
            _dir: dir,
        }
    }

    /// `host:port` of broker `id`.
    pub fn broker_address(&self, id: i32) -> String {
        self.brokers
            .get(&id)
            .unwrap_or_else(|| panic!("no broker {id}: brokers are {:?}", self.broker_ids()))
            .clone()
    }

    /// The broker ids, ascending: `1..=N`.
    pub fn broker_ids(&self) -> Vec<i32> {
        self.brokers.keys().copied().collect()
    }

    /// The harness's log: its own lines and librdkafka's (stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The version of the librdkafka that runs the cluster, e.g. `2.16.0`.
    pub fn librdkafka_version(&self) -> &str {
        &self.librdkafka
    }

    /// The harness's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates `topic`; partition `p` is led by the `p % replication`-th of its replicas
    /// (with `replication` = brokers: broker `p % N + 1`). Panics if it exists.
    pub fn create_topic(&self, topic: &str, partitions: i32, replication: i32) {
        self.control(json!({
            "op": "create_topic",
            "topic": topic,
            "partitions": partitions,
            "replication": replication,
        }));
    }

    /// Makes `broker` the leader of `topic`'s `partition` (bumping its leader epoch).
    pub fn set_leader(&self, topic: &str, partition: i32, broker: i32) {
        self.control(json!({
            "op": "set_leader", "topic": topic, "partition": partition, "broker": broker,
        }));
    }

    /// Makes `broker` the follower a leader tells consumers to fetch from (KIP-392); `-1`
    /// for none.
    pub fn set_follower(&self, topic: &str, partition: i32, broker: i32) {
        self.control(json!({
            "op": "set_follower", "topic": topic, "partition": partition, "broker": broker,
        }));
    }

    /// Closes the broker's connections and refuses new ones. Its partitions keep it as their
    /// leader and its groups as their coordinator until moved: the mock has no failover.
    pub fn broker_down(&self, id: i32) {
        self.control(json!({"op": "broker_down", "broker": id}));
    }

    /// Accepts connections on the broker's port again.
    pub fn broker_up(&self, id: i32) {
        self.control(json!({"op": "broker_up", "broker": id}));
    }

    /// Delays every answer of the broker by `rtt` (millisecond resolution).
    pub fn set_rtt(&self, id: i32, rtt: Duration) {
        let ms = i64::try_from(rtt.as_millis()).expect("an RTT in milliseconds fits an i64");
        self.control(json!({"op": "set_rtt", "broker": id, "ms": ms}));
    }

    /// Makes `broker` the coordinator of `group`.
    pub fn set_group_coordinator(&self, group: &str, broker: i32) {
        self.control(json!({
            "op": "set_coordinator", "key_type": "group", "key": group, "broker": broker,
        }));
    }

    /// Makes `broker` the coordinator of the transactional id `transactional_id`.
    pub fn set_transaction_coordinator(&self, transactional_id: &str, broker: i32) {
        self.control(json!({
            "op": "set_coordinator",
            "key_type": "transaction",
            "key": transactional_id,
            "broker": broker,
        }));
    }

    /// The next `errors.len()` requests of `api_key`, to any broker, are answered with these
    /// error codes in turn (Metadata answers ignore them: see the harness's docstring).
    pub fn push_errors(&self, api_key: i16, errors: &[i16]) {
        self.control(json!({"op": "push_errors", "api_key": api_key, "errors": errors}));
    }

    /// Like [`MockCluster::push_errors`], for the requests `broker` receives only.
    pub fn push_broker_errors(&self, broker: i32, api_key: i16, errors: &[i16]) {
        self.control(json!({
            "op": "push_errors", "api_key": api_key, "errors": errors, "broker": broker,
        }));
    }

    /// Drops the errors [`MockCluster::push_errors`] queued for `api_key` and not yet used
    /// (per-broker ones stay).
    pub fn clear_errors(&self, api_key: i16) {
        self.control(json!({"op": "clear_errors", "api_key": api_key}));
    }

    /// Metadata answers `topic` with error `code` from now on (0 clears it), as a broker
    /// does for a topic the client's user may not describe (29, TOPIC_AUTHORIZATION_FAILED).
    pub fn set_topic_error(&self, topic: &str, code: i16) {
        self.control(json!({"op": "set_topic_error", "topic": topic, "error": code}));
    }

    /// Starts recording the requests the brokers receive, forgetting earlier ones.
    pub fn start_tracking(&self) {
        self.control(json!({"op": "start_tracking"}));
    }

    /// Stops recording and forgets what was recorded.
    pub fn stop_tracking(&self) {
        self.control(json!({"op": "stop_tracking"}));
    }

    /// The requests received since tracking started (or was cleared), in order.
    pub fn requests(&self) -> Vec<MockRequest> {
        let answer = self.control(json!({"op": "requests"}));
        answer["requests"]
            .as_array()
            .expect("the requests answer has a requests array")
            .iter()
            .map(|r| MockRequest {
                broker: int(&r["broker"]),
                api_key: int(&r["api_key"]),
                ts_us: int(&r["ts_us"]),
            })
            .collect()
    }

    /// How many requests of each (broker, API key) were received while tracking.
    pub fn request_counts(&self) -> BTreeMap<(i32, i16), usize> {
        let answer = self.control(json!({"op": "requests"}));
        let mut counts = BTreeMap::new();
        let per_broker = answer["counts"]
            .as_object()
            .expect("the requests answer has a counts object");
        for (broker, per_api) in per_broker {
            let broker: i32 = broker.parse().expect("broker ids are integers");
            let per_api = per_api.as_object().expect("counts per API key");
            for (api_key, count) in per_api {
                let api_key: i16 = api_key.parse().expect("API keys are integers");
                counts.insert((broker, api_key), int(count));
            }
        }
        counts
    }

    /// Forgets the requests recorded so far; tracking goes on.
    pub fn clear_requests(&self) {
        self.control(json!({"op": "clear_requests"}));
    }

    /// Advertises versions `min..=max` of `api_key` (`max` -1 withdraws the API). Beyond the
    /// harness's caps the mock may misparse.
    pub fn set_api_version(&self, api_key: i16, min: i16, max: i16) {
        self.control(json!({"op": "set_apiversion", "api_key": api_key, "min": min, "max": max}));
    }

    /// How long a new group waits for more members before its first rebalance (the mock's
    /// and Kafka's default: 3 s).
    pub fn set_group_initial_rebalance_delay(&self, delay: Duration) {
        let ms = i64::try_from(delay.as_millis()).expect("a delay in milliseconds fits an i64");
        self.control(json!({"op": "set_group_initial_rebalance_delay", "ms": ms}));
    }

    /// KIP-848 groups' session timeout (`group.consumer.session.timeout.ms`).
    pub fn set_group_consumer_session_timeout(&self, timeout: Duration) {
        let ms = i64::try_from(timeout.as_millis()).expect("a timeout in milliseconds fits an i64");
        self.control(json!({"op": "set_group_consumer_session_timeout", "ms": ms}));
    }

    /// KIP-848 groups' heartbeat interval (`group.consumer.heartbeat.interval.ms`).
    pub fn set_group_consumer_heartbeat_interval(&self, interval: Duration) {
        let ms =
            i64::try_from(interval.as_millis()).expect("an interval in milliseconds fits an i64");
        self.control(json!({"op": "set_group_consumer_heartbeat_interval", "ms": ms}));
    }

    /// Sends one control request; panics with the harness's error text if it refuses.
    fn control(&self, request: Value) -> Value {
        let answer = self.exchange(&request);
        if answer["ok"] != Value::Bool(true) {
            panic!(
                "mock cluster refused {request}: {}",
                answer["error"].as_str().unwrap_or("(no error text)")
            );
        }
        answer
    }

    /// One line out, one line back, over the kept connection; a broken connection is
    /// replaced once. The harness answers every request it reads, so a request is only
    /// sent again when its connection broke before an answer came.
    fn exchange(&self, request: &Value) -> Value {
        let mut connection = self
            .control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let line = format!("{request}\n");
        let mut failure = String::new();
        for _ in 0..2 {
            if connection.is_none() {
                match self.connect() {
                    Ok(fresh) => *connection = Some(fresh),
                    Err(e) => {
                        failure = format!("connect to {}: {e}", self.control_address);
                        break;
                    }
                }
            }
            let stream = connection.as_mut().expect("connected just above");
            match send_and_receive(stream, &line) {
                Ok(answer) => return answer,
                Err(e) => {
                    failure = e;
                    *connection = None;
                }
            }
        }
        panic!(
            "mock cluster control request {request} failed: {failure}\n{}",
            log_tail(&self.log)
        );
    }

    fn connect(&self) -> std::io::Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect(&self.control_address)?;
        stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(BufReader::new(stream))
    }
}

impl Drop for MockCluster {
    fn drop(&mut self) {
        // Asks the harness to stop (it answers first, then destroys the cluster and exits);
        // kills it if it is still there after the grace period. Errors are expected when it
        // has already gone.
        let connection = self
            .control
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .map(Ok)
            .unwrap_or_else(|| self.connect());
        if let Ok(mut stream) = connection {
            let _ = stream.get_ref().set_read_timeout(Some(STOP_GRACE));
            let _ = send_and_receive(&mut stream, "{\"op\":\"stop\"}\n");
        }
        if crate::process::wait_exit(&mut self.child, STOP_GRACE).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_and_receive(stream: &mut BufReader<TcpStream>, line: &str) -> Result<Value, String> {
    stream
        .get_mut()
        .write_all(line.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    match stream.read_line(&mut answer) {
        Ok(0) => Err("the harness closed the connection".to_string()),
        Ok(_) => serde_json::from_str(&answer).map_err(|e| format!("bad answer {answer:?}: {e}")),
        Err(e) => Err(format!("receive: {e}")),
    }
}

/// The harness's first stdout line, parsed, within [`START_TIMEOUT`].
fn read_ready_line(child: &mut Child) -> Result<Value, String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    // The reader thread ends when the line comes or the harness exits (its stdout closes).
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(START_TIMEOUT) {
        Ok(Ok(line)) if line.trim().is_empty() => Err(match child.try_wait() {
            Ok(Some(status)) => format!("it exited ({status}) without printing its addresses"),
            _ => "it closed its stdout without printing its addresses".to_string(),
        }),
        Ok(Ok(line)) => {
            serde_json::from_str(&line).map_err(|e| format!("bad ready line {line:?}: {e}"))
        }
        Ok(Err(e)) => Err(format!("read its stdout: {e}")),
        Err(_) => Err(format!("no ready line within {START_TIMEOUT:?}")),
    }
}

/// The last lines of the harness's log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("--- {} (last 30 lines) ---\n{tail}", log.display())
}

fn int<T: TryFrom<i64>>(value: &Value) -> T {
    value
        .as_i64()
        .and_then(|n| T::try_from(n).ok())
        .unwrap_or_else(|| panic!("{value} is not an integer of the expected width"))
}
