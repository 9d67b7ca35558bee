//! The mock cluster harness (`test_support::MockCluster`, `test-support/py/mock_cluster.py`)
//! proven from the outside: every control is checked with an independent client, the
//! confluent-kafka (librdkafka) one or the hand-encoded requests of `mock_check.py`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use test_support::{python, run_python, workspace_root, MockCluster};

// API keys and error codes, as Kafka numbers them.
const PRODUCE: i16 = 0;
const METADATA: i16 = 3;
const FIND_COORDINATOR: i16 = 10;
const JOIN_GROUP: i16 = 11;
const HEARTBEAT: i16 = 12;
const LEAVE_GROUP: i16 = 13;
const SYNC_GROUP: i16 = 14;
const API_VERSIONS: i16 = 18;
const CREATE_TOPICS: i16 = 19;
const UNKNOWN_TOPIC_OR_PARTITION: i64 = 3;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;

fn metadata(cluster: &MockCluster) -> Value {
    run_python("mock_check.py", &["metadata", &cluster.address])
}

/// Partition -> leader, as confluent-kafka's metadata names them.
fn leaders(metadata: &Value, topic: &str) -> BTreeMap<i32, i64> {
    let topic = &metadata["topics"][topic];
    assert_eq!(topic["error"], Value::Null, "{topic}");
    topic["leaders"]
        .as_object()
        .expect("leaders by partition")
        .iter()
        .map(|(p, leader)| {
            (
                p.parse().expect("a partition number"),
                leader.as_i64().expect("a broker id"),
            )
        })
        .collect()
}

/// Broker id -> address, as confluent-kafka's metadata lists them.
fn listed_brokers(metadata: &Value) -> BTreeMap<i32, String> {
    metadata["brokers"]
        .as_object()
        .expect("brokers by id")
        .iter()
        .map(|(id, address)| {
            (
                id.parse().expect("a broker id"),
                address.as_str().expect("an address").to_string(),
            )
        })
        .collect()
}

/// Produces one record to each partition with a producer that does not retry: partition ->
/// the error name its delivery report gave, `None` when it was stored.
fn produce(
    cluster: &MockCluster,
    topic: &str,
    partitions: &[i32],
) -> BTreeMap<i32, Option<String>> {
    let partitions: Vec<String> = partitions.iter().map(i32::to_string).collect();
    let mut args = vec!["produce", &cluster.address, topic];
    args.extend(partitions.iter().map(String::as_str));
    run_python("mock_check.py", &args)["results"]
        .as_array()
        .expect("one result per record")
        .iter()
        .map(|r| {
            let partition = r["partition"].as_i64().expect("a partition") as i32;
            (partition, r["error"].as_str().map(str::to_string))
        })
        .collect()
}

fn connect(address: &str) -> Value {
    run_python("mock_check.py", &["connect", address])
}

fn wire(address: &str) -> Value {
    run_python("mock_check.py", &["wire", address])
}

#[test]
fn three_brokers_spread_partition_leaders() {
    let cluster = MockCluster::start(3);
    assert_eq!(cluster.broker_ids(), vec![1, 2, 3]);
    let addresses: Vec<String> = cluster
        .broker_ids()
        .into_iter()
        .map(|id| cluster.broker_address(id))
        .collect();
    assert_eq!(
        cluster.address,
        addresses.join(","),
        "the bootstrap list is the brokers in id order"
    );
    assert!(
        addresses.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{addresses:?}"
    );

    cluster.create_topic("spread", 12, 3);

    let metadata = metadata(&cluster);
    let listed = listed_brokers(&metadata);
    assert_eq!(
        listed,
        cluster
            .broker_ids()
            .into_iter()
            .map(|id| (id, cluster.broker_address(id)))
            .collect(),
        "the client sees the brokers the harness announced, under the same ids"
    );
    let leaders = leaders(&metadata, "spread");
    assert_eq!(leaders.len(), 12);
    for (partition, leader) in &leaders {
        assert_eq!(
            *leader,
            i64::from(partition % 3 + 1),
            "partition {partition}: {leaders:?}"
        );
    }
    let distinct: BTreeSet<i64> = leaders.values().copied().collect();
    assert_eq!(distinct, BTreeSet::from([1, 2, 3]));
}

#[test]
fn a_moved_leader_is_named_in_metadata() {
    let cluster = MockCluster::start(3);
    cluster.create_topic("moved", 3, 3);
    assert_eq!(
        leaders(&metadata(&cluster), "moved"),
        BTreeMap::from([(0, 1), (1, 2), (2, 3)])
    );

    cluster.set_leader("moved", 0, 3);
    cluster.set_leader("moved", 2, 1);

    assert_eq!(
        leaders(&metadata(&cluster), "moved"),
        BTreeMap::from([(0, 3), (1, 2), (2, 1)])
    );
    // And the new leader takes the writes.
    assert_eq!(
        produce(&cluster, "moved", &[0, 2]),
        BTreeMap::from([(0, None), (2, None)])
    );
}

#[test]
fn a_broker_down_refuses_connections_until_up() {
    let cluster = MockCluster::start(3);
    let address = cluster.broker_address(2);
    assert_eq!(connect(&address)["connected"], true);

    cluster.broker_down(2);

    let refused = connect(&address);
    assert_eq!(refused["connected"], false, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("ConnectionRefused"),
        "{refused}"
    );
    let listed = listed_brokers(&metadata(&cluster));
    assert_eq!(
        listed.keys().copied().collect::<Vec<_>>(),
        vec![1, 3],
        "a down broker is not in metadata"
    );

    cluster.broker_up(2);

    assert_eq!(connect(&address)["connected"], true);
    let listed = listed_brokers(&metadata(&cluster));
    assert_eq!(
        listed.get(&2),
        Some(&address),
        "the broker is back on its own port"
    );
}

#[test]
fn injected_errors_reach_the_client() {
    let cluster = MockCluster::start(3);
    cluster.create_topic("errors", 3, 3); // partition p led by broker p + 1

    // Cluster-wide: the next Produce, whichever broker gets it.
    cluster.push_errors(PRODUCE, &[TOPIC_AUTHORIZATION_FAILED]);
    assert_eq!(
        produce(&cluster, "errors", &[2]),
        BTreeMap::from([(2, Some("TOPIC_AUTHORIZATION_FAILED".to_string()))])
    );
    assert_eq!(
        produce(&cluster, "errors", &[2]),
        BTreeMap::from([(2, None)]),
        "one error, used once"
    );

    // One broker's: only the requests broker 2 receives.
    // One partition per call: librdkafka fails every queued record of a topic when one
    // request says the topic is not authorized, so a record for broker 1 still queued when
    // broker 2's answer came back failed with it (seen once in CI, on a loaded machine).
    cluster.push_broker_errors(2, PRODUCE, &[TOPIC_AUTHORIZATION_FAILED]);
    assert_eq!(
        produce(&cluster, "errors", &[0]),
        BTreeMap::from([(0, None)]),
        "broker 1 has no errors queued"
    );
    assert_eq!(
        produce(&cluster, "errors", &[1]),
        BTreeMap::from([(1, Some("TOPIC_AUTHORIZATION_FAILED".to_string()))])
    );

    // Cleared before use: nothing reaches the client.
    cluster.push_errors(
        PRODUCE,
        &[TOPIC_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED],
    );
    cluster.clear_errors(PRODUCE);
    assert_eq!(
        produce(&cluster, "errors", &[0]),
        BTreeMap::from([(0, None)])
    );
}

#[test]
fn request_tracking_counts_requests_per_broker_and_api() {
    let cluster = MockCluster::start(3);
    cluster.create_topic("tracked", 3, 3); // partition p led by broker p + 1
    cluster.start_tracking();

    assert_eq!(
        produce(&cluster, "tracked", &[0, 1, 2]),
        BTreeMap::from([(0, None), (1, None), (2, None)])
    );

    let requests = cluster.requests();
    let counts = cluster.request_counts();
    let mut recounted = BTreeMap::new();
    for request in &requests {
        *recounted
            .entry((request.broker, request.api_key))
            .or_insert(0) += 1;
    }
    assert_eq!(counts, recounted, "the summary counts the list");
    for broker in 1..=3 {
        assert_eq!(
            counts.get(&(broker, PRODUCE)),
            Some(&1),
            "one record for each leader: {counts:?}"
        );
        assert!(
            counts.contains_key(&(broker, API_VERSIONS)),
            "every connection starts with ApiVersions: {counts:?}"
        );
    }
    assert!(counts.keys().any(|(_, api)| *api == METADATA), "{counts:?}");
    assert!(
        requests.windows(2).all(|w| w[0].ts_us <= w[1].ts_us),
        "requests are listed in the order they arrived"
    );

    cluster.clear_requests();
    assert_eq!(cluster.requests(), vec![]);

    cluster.stop_tracking();
    assert_eq!(
        produce(&cluster, "tracked", &[0]),
        BTreeMap::from([(0, None)])
    );
    assert_eq!(
        cluster.requests(),
        vec![],
        "nothing is recorded once tracking stopped"
    );
}

#[test]
fn a_moved_group_coordinator_is_named_by_find_coordinator() {
    let cluster = MockCluster::start(3);
    for broker in [3, 1, 2] {
        cluster.set_group_coordinator("moving-group", broker);
        // Whichever broker is asked.
        for asked in cluster.broker_ids() {
            let answer = run_python(
                "mock_check.py",
                &[
                    "coordinator",
                    &cluster.broker_address(asked),
                    "moving-group",
                ],
            );
            assert_eq!(answer["error"], 0, "{answer}");
            assert_eq!(answer["node_id"], broker, "{answer}");
            assert_eq!(
                answer["address"],
                cluster.broker_address(broker),
                "{answer}"
            );
            assert_eq!(answer["trailing_bytes"], 0, "{answer}");
        }
    }
    cluster.start_tracking();
    run_python(
        "mock_check.py",
        &["coordinator", &cluster.broker_address(1), "moving-group"],
    );
    assert_eq!(
        cluster.request_counts().get(&(1, FIND_COORDINATOR)),
        Some(&1)
    );
}

#[test]
fn advertised_versions_stop_where_the_mock_parses() {
    let cluster = MockCluster::start(1);
    let answer = wire(&cluster.broker_address(1));
    let versions = &answer["api_versions"]["versions"];
    let range = |api: i16| versions[api.to_string()].clone();
    // The harness's caps (see mock_cluster.py's docstring for the misparsed versions).
    assert_eq!(range(JOIN_GROUP), serde_json::json!([0, 5]), "{answer}");
    assert_eq!(range(SYNC_GROUP), serde_json::json!([0, 3]), "{answer}");
    assert_eq!(range(LEAVE_GROUP), serde_json::json!([0, 2]), "{answer}");
    assert_eq!(range(HEARTBEAT), serde_json::json!([0, 4]), "{answer}");
    assert_eq!(
        range(CREATE_TOPICS),
        Value::Null,
        "the mock has no CreateTopics"
    );
    // Metadata's highest version decodes field by field; its answers carry one stray byte.
    assert_eq!(range(METADATA), serde_json::json!([0, 13]), "{answer}");
    assert_eq!(answer["metadata_v13"]["error"], 0, "{answer}");
    assert_eq!(
        answer["metadata_v13"]["brokers"],
        serde_json::json!([1]),
        "{answer}"
    );
    assert_eq!(answer["metadata_v13"]["trailing_bytes"], 1, "{answer}");

    cluster.set_api_version(METADATA, 0, 9);

    let answer = run_python("mock_check.py", &["versions", &cluster.broker_address(1)]);
    assert_eq!(
        answer["versions"][METADATA.to_string()],
        serde_json::json!([0, 9]),
        "{answer}"
    );
}

#[test]
fn topics_come_from_the_harness_or_from_metadata_that_allows_it() {
    let cluster = MockCluster::start(3);
    let answer = wire(&cluster.broker_address(1));
    assert_eq!(
        answer["create_topics_answered"], false,
        "CreateTopics closes the connection: {answer}"
    );
    // AllowAutoTopicCreation=false: unknown, and still unknown when asked again.
    for attempt in ["first", "again"] {
        let topics = answer["no_auto_create"][attempt]
            .as_object()
            .expect("one topic");
        let (_, topic) = topics.iter().next().expect("the topic asked for");
        assert_eq!(topic["error"], UNKNOWN_TOPIC_OR_PARTITION, "{answer}");
        assert_eq!(topic["partitions"], 0, "{answer}");
    }
    // AllowAutoTopicCreation=true: created with the mock's default of 4 partitions.
    let created = answer["auto_create"].as_object().expect("one topic");
    let (_, topic) = created.iter().next().expect("the topic asked for");
    assert_eq!(topic["error"], 0, "{answer}");
    assert_eq!(topic["partitions"], 4, "{answer}");
    // The controller Metadata names is no broker of the cluster.
    assert_eq!(answer["metadata_v12"]["controller_id"], 0, "{answer}");
}

#[test]
#[should_panic(expected = "TOPIC_ALREADY_EXISTS")]
fn a_refused_control_request_panics_with_the_harness_error() {
    let cluster = MockCluster::start(1);
    cluster.create_topic("twice", 1, 1);
    cluster.create_topic("twice", 1, 1);
}

#[test]
fn dropping_the_cluster_stops_its_brokers() {
    let cluster = MockCluster::start(2);
    let pid = cluster.pid();
    let addresses: Vec<String> = cluster
        .broker_ids()
        .into_iter()
        .map(|id| cluster.broker_address(id))
        .collect();
    drop(cluster);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the harness has exited and been reaped"
    );
    for address in &addresses {
        assert!(
            TcpStream::connect(address).is_err(),
            "{address} still accepts connections"
        );
    }
}

#[test]
fn the_harness_exits_when_its_owner_dies() {
    let mut owner = Command::new("sleep").arg("600").spawn().expect("run sleep");
    let mut harness = Command::new(python())
        .arg(workspace_root().join("test-support/py/mock_cluster.py"))
        .args(["--brokers", "1", "--owner-pid", &owner.id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mock_cluster.py");
    let mut ready = String::new();
    BufReader::new(harness.stdout.take().expect("piped stdout"))
        .read_line(&mut ready)
        .expect("read the ready line");
    let ready: Value = serde_json::from_str(&ready).expect("the ready line is JSON");
    let broker = ready["brokers"]["1"]
        .as_str()
        .expect("broker 1's address")
        .to_string();
    assert!(
        TcpStream::connect(&broker).is_ok(),
        "the broker listens while its owner lives"
    );

    owner.kill().expect("kill the owner");
    owner.wait().expect("reap the owner");

    let Some(status) = test_support::process::wait_exit(&mut harness, Duration::from_secs(5))
    else {
        let _ = harness.kill();
        let _ = harness.wait();
        panic!("the harness outlived its owner by 5 s");
    };
    assert!(status.success(), "it shut down cleanly: {status}");
    assert!(
        TcpStream::connect(&broker).is_err(),
        "{broker} still accepts connections"
    );
}
