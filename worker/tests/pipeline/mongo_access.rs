//! What worker and gateway need from MongoDB is proven, not assumed from a ping: against a
//! secantusd-rs with `--auth` and TLS, a connection string without credentials, a user
//! without the privilege, and a TLS setting the wrong way round each stop start-up with the
//! cause and the fix named. A worker whose writes are refused while it runs gives its
//! partitions back, says why on /readyz, and rejoins once it may write again; the gateway's
//! answers in that state carry a stable code and no driver internals.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use clap::Parser;
use mongodb::bson::doc;
use serde_json::{json, Value};
use test_support::{
    proxy::{Link, TcpProxy},
    secured::{MONGO_PASSWORD, MONGO_USER},
    shared_servers, InfraServer, TestCertificates,
};

use crate::helpers::{
    assert_exactly_once, one_heavy_test_at_a_time, unique, wait_assigned, worker_config,
    worker_start_up_error, Pipeline,
};

/// A MongoDB that takes only TLS and authenticated users, with an administrator that can
/// make users with fewer privileges.
struct SecuredMongo {
    certs: TestCertificates,
    server: InfraServer,
}

fn mongo() -> &'static SecuredMongo {
    static MONGO: OnceLock<SecuredMongo> = OnceLock::new();
    MONGO.get_or_init(|| {
        let certs = TestCertificates::new();
        let user = format!("{MONGO_USER}:{MONGO_PASSWORD}");
        let server = InfraServer::start_with("mongo", &["--user", &user, "--tls", certs.dir()]);
        SecuredMongo { certs, server }
    })
}

impl SecuredMongo {
    fn port(&self) -> &str {
        self.server
            .address
            .rsplit(':')
            .next()
            .expect("mongodb://host:port")
    }

    /// The connection string as `user:password` of `auth_source` (`None`: no credentials).
    fn uri(&self, user: Option<(&str, &str)>, auth_source: &str) -> String {
        let ca = self.certs.file("ca.pem");
        let port = self.port();
        match user {
            Some((name, password)) => format!(
                "mongodb://{name}:{password}@127.0.0.1:{port}/?tls=true&tlsCAFile={ca}&authSource={auth_source}"
            ),
            None => format!("mongodb://127.0.0.1:{port}/?tls=true&tlsCAFile={ca}"),
        }
    }

    fn admin_uri(&self) -> String {
        self.uri(Some((MONGO_USER, MONGO_PASSWORD)), "admin")
    }

    async fn admin(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(self.admin_uri())
            .await
            .expect("admin client")
    }

    /// A user of `database` with `role` on it; its connection string.
    async fn user(&self, database: &str, name: &str, role: &str) -> String {
        self.admin()
            .await
            .database(database)
            .run_command(doc! {
                "createUser": name,
                "pwd": "user-Pa55-word",
                "roles": [{ "role": role, "db": database }],
            })
            .await
            .expect("createUser");
        self.uri(Some((name, "user-Pa55-word")), database)
    }

    async fn set_role(&self, database: &str, name: &str, role: &str, granted: bool) {
        let command = if granted {
            doc! { "grantRolesToUser": name, "roles": [{ "role": role, "db": database }] }
        } else {
            doc! { "revokeRolesFromUser": name, "roles": [{ "role": role, "db": database }] }
        };
        self.admin()
            .await
            .database(database)
            .run_command(command)
            .await
            .expect("change the user's roles");
    }
}

/// The topic start-up tests use, created on whichever test broker runs.
fn start_up_topic() -> (String, String) {
    static TOPIC: OnceLock<String> = OnceLock::new();
    let (kafka, _) = shared_servers();
    let topic = TOPIC.get_or_init(|| {
        let topic = unique("purchases-mongo-access");
        kafka.prepare_topic(&topic, 1);
        kafka.prepare_topic(&format!("{topic}.dlq"), 1);
        topic
    });
    (kafka.address.clone(), topic.clone())
}

/// The worker's start-up error with this MongoDB connection string, and how long it took.
async fn worker_mongo_error(mongo_uri: &str, database: &str) -> (String, Duration) {
    let (kafka, topic) = start_up_topic();
    worker_start_up_error(worker_config([
        format!("--kafka-brokers={kafka}"),
        format!("--kafka-topic={topic}"),
        format!("--dlq-topic={topic}.dlq"),
        format!("--mongo-uri={mongo_uri}"),
        format!("--mongo-database={database}"),
        "--mongo-timeout=3s".into(),
    ]))
    .await
}

fn gateway_cli(mongo_uri: &str, database: &str) -> gateway::config::Cli {
    let (kafka, topic) = start_up_topic();
    gateway::config::Cli::try_parse_from([
        "gateway".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={kafka}"),
        format!("--kafka-topic={topic}"),
        format!("--mongo-uri={mongo_uri}"),
        format!("--mongo-database={database}"),
        "--mongo-timeout=3s".into(),
        "--auth-disabled".into(),
        "--log-filter=warn".into(),
    ])
    .expect("gateway flags")
}

async fn gateway_start_up_error(mongo_uri: &str, database: &str) -> (String, Duration) {
    let started = Instant::now();
    match gateway::startup::Application::build(gateway_cli(mongo_uri, database).config).await {
        Ok(_) => panic!("the gateway started although MongoDB does not let it work"),
        Err(e) => (format!("{e:#}"), started.elapsed()),
    }
}

#[tokio::test]
async fn a_connection_string_without_credentials_stops_start_up_saying_authentication_is_required()
{
    let mongo = mongo();
    let database = unique("shop").replace('-', "_");
    let (worker, took) = worker_mongo_error(&mongo.uri(None, "admin"), &database).await;
    eprintln!("[mongo-access] worker, no credentials ({took:.1?}): {worker}");
    assert!(
        worker.contains("MongoDB requires authentication")
            && worker.contains(&format!("insert into {database}.purchases"))
            && worker.contains("user:password@"),
        "{worker}"
    );
    let (gateway, took) = gateway_start_up_error(&mongo.uri(None, "admin"), &database).await;
    eprintln!("[mongo-access] gateway, no credentials ({took:.1?}): {gateway}");
    assert!(
        gateway.contains("MongoDB requires authentication")
            && gateway.contains(&format!("find in {database}.purchases")),
        "{gateway}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn a_user_without_the_privilege_stops_start_up_naming_the_user_and_the_operation() {
    let mongo = mongo();
    let database = unique("shop").replace('-', "_");
    let reader = mongo.user(&database, "reader", "read").await;
    let (worker, _) = worker_mongo_error(&reader, &database).await;
    eprintln!("[mongo-access] worker, read-only user: {worker}");
    assert!(
        worker.contains("MongoDB user \"reader\" may not insert into")
            && worker.contains(&format!("{database}.purchases"))
            && worker.contains("readWrite"),
        "{worker}"
    );
    // The gateway reads purchases, and must record idempotency keys.
    let (gateway, _) = gateway_start_up_error(&reader, &database).await;
    eprintln!("[mongo-access] gateway, read-only user: {gateway}");
    assert!(
        gateway.contains(&format!("may not insert into {database}.idempotency_keys")),
        "{gateway}"
    );
}

#[tokio::test]
async fn a_tls_setting_the_wrong_way_round_stops_start_up_naming_tls_not_an_outage() {
    let mongo = mongo();
    let database = unique("shop").replace('-', "_");
    let plaintext = format!(
        "mongodb://{MONGO_USER}:{MONGO_PASSWORD}@127.0.0.1:{}/?authSource=admin",
        mongo.port()
    );
    let (error, took) = worker_mongo_error(&plaintext, &database).await;
    eprintln!("[mongo-access] plaintext to a TLS server ({took:.1?}): {error}");
    assert!(
        error.contains("expects TLS") && error.contains("tls=true"),
        "{error}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    // And TLS to a server without it (the shared test server is plaintext).
    let (_, plain_server) = shared_servers();
    let port = plain_server
        .address
        .rsplit(':')
        .next()
        .expect("mongodb://host:port");
    let tls = format!(
        "mongodb://127.0.0.1:{port}/?tls=true&tlsCAFile={}",
        mongo.certs.file("ca.pem")
    );
    let (error, took) = gateway_start_up_error(&tls, &database).await;
    eprintln!("[mongo-access] TLS to a plaintext server ({took:.1?}): {error}");
    assert!(error.contains("does not speak TLS"), "{error}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// Polls `worker`'s /readyz until `until` holds; the last body.
async fn wait_readiness(
    worker: &crate::helpers::WorkerProcess,
    within: Duration,
    until: impl Fn(u16, &Value) -> bool,
) -> (u16, Value, Duration) {
    let started = Instant::now();
    let mut last = (0, Value::Null);
    while started.elapsed() < within {
        if let Some((status, body)) = worker.readiness().await {
            if until(status, &body) {
                return (status, body, started.elapsed());
            }
            last = (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("readiness never got there within {within:?}; last: {last:?}");
}

#[tokio::test]
async fn a_worker_whose_writes_are_refused_gives_its_partitions_back_and_rejoins_once_allowed() {
    let _heavy = one_heavy_test_at_a_time().await;
    let mongo = mongo();
    let (kafka, _) = shared_servers();
    let pipeline = Pipeline::start_on_test_kafka(kafka, &mongo.admin_uri()).await;
    let writer = mongo.user(&pipeline.database, "writer", "readWrite").await;
    let logs = tempfile::tempdir().expect("log dir");
    let refused = pipeline.spawn_worker(
        &[("MONGO_URI", writer.as_str())],
        Some(logs.path().join("refused-worker.log")),
    );
    let healthy = pipeline.worker();
    wait_assigned(&[&refused, &healthy], Duration::from_secs(60)).await;
    let mut accepted = pipeline.post_purchases(200, 8).await;
    pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    let owned_before = refused
        .metric("worker_assigned_partitions")
        .await
        .unwrap_or(0.0);
    assert!(
        owned_before > 0.0,
        "the worker to be refused owns partitions"
    );

    mongo
        .set_role(&pipeline.database, "writer", "readWrite", false)
        .await;
    let revoked = Instant::now();
    // Purchases keep coming; the ones on the refused worker's partitions must not wait for it.
    let during = pipeline.post_purchases(600, 8).await;
    accepted.extend(during);
    let (status, body, _) = wait_readiness(&refused, Duration::from_secs(30), |_, body| {
        body["group"] == "not a member"
    })
    .await;
    let gave_back = revoked.elapsed();
    eprintln!("[mongo-access] refused worker's /readyz ({status}) after {gave_back:.1?}: {body}");
    assert_eq!(status, 503);
    assert_eq!(body["mongodbState"], "refused", "{body}");
    assert_eq!(body["partitions"], 0, "{body}");
    let reason = body["mongodb"].as_str().unwrap_or_default();
    assert!(
        reason.contains("\"writer\"") && reason.contains("insert into"),
        "readiness names the user and the operation: {reason}"
    );
    wait_assigned(&[&healthy], Duration::from_secs(60)).await;
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    let all_stored = revoked.elapsed();
    assert_exactly_once(&accepted, &stored);
    eprintln!(
        "[mongo-access] writes refused: partitions given back {gave_back:.1?} after the revoke, \
         all {} purchases stored {all_stored:.1?} after it, by the other worker",
        accepted.len()
    );

    // Allowed again: it rejoins and takes a share.
    mongo
        .set_role(&pipeline.database, "writer", "readWrite", true)
        .await;
    let granted = Instant::now();
    // Ready, and (under cooperative-sticky, after the second rebalance) owning a share.
    let (_, body, _) = wait_readiness(&refused, Duration::from_secs(90), |status, body| {
        status == 200 && body["partitions"].as_u64().unwrap_or(0) > 0
    })
    .await;
    eprintln!(
        "[mongo-access] ready again and owning partitions {:.1?} after the grant: {body}",
        granted.elapsed()
    );
    let more = pipeline.post_purchases(200, 8).await;
    accepted.extend(more);
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&accepted, &stored);
    pipeline.wait_committed_to_end(Duration::from_secs(30));

    // The refusal is logged once per cause, without the driver's binary dumps.
    let log = refused.log_text();
    let failures = log.matches("batch write failed").count();
    assert!(
        (1..=3).contains(&failures),
        "{failures} lines for one cause:\n{log}"
    );
    assert!(!log.contains("RawDocumentBuf"), "{log}");
    refused.terminate();
    healthy.terminate();
    pipeline.stop();
}

#[tokio::test]
async fn refused_database_writes_are_503s_with_a_stable_code_and_no_driver_internals() {
    let mongo = mongo();
    let database = unique("shop").replace('-', "_");
    let user = mongo.user(&database, "gateway", "readWrite").await;
    let app = gateway::startup::Application::build(gateway_cli(&user, &database).config)
        .await
        .expect("the gateway starts with a readWrite user");
    let base = format!("http://{}", app.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);

    mongo
        .set_role(&database, "gateway", "readWrite", false)
        .await;
    let keyed = client
        .post(format!("{base}/api/purchases"))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"username": "ann", "userId": "u1", "price": 3.5}))
        .send()
        .await
        .expect("gateway answers");
    let history = client
        .get(format!("{base}/api/users/u1/purchases"))
        .send()
        .await
        .expect("gateway answers");
    for (what, response) in [("keyed purchase", keyed), ("history read", history)] {
        assert_eq!(response.status().as_u16(), 503, "{what}");
        let body: Value = response.json().await.expect("a JSON body");
        eprintln!("[mongo-access] {what} while refused: {body}");
        assert_eq!(body["error"], "mongodb_unavailable", "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        for internal in [
            "RawDocumentBuf",
            "Kind:",
            "Error code",
            "{",
            "requires authentication",
        ] {
            assert!(
                !message.contains(internal),
                "{what} leaks {internal:?}: {message}"
            );
        }
    }
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.expect("JSON");
    eprintln!("[mongo-access] gateway /readyz while refused: {body}");
    assert_eq!(body["mongodbState"], "refused", "{body}");
    assert!(
        body["mongodb"]
            .as_str()
            .is_some_and(|m| m.contains("\"gateway\"") && m.contains("readWrite")),
        "{body}"
    );

    mongo
        .set_role(&database, "gateway", "readWrite", true)
        .await;
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200, "ready again once allowed");
    shutdown.cancel();
    let _ = server.await;
}

#[tokio::test]
async fn a_worker_cut_off_from_mongodb_or_black_holed_holds_no_partitions_until_it_reaches_it_again(
) {
    let _heavy = one_heavy_test_at_a_time().await;
    let (kafka, mongo) = shared_servers();
    let upstream = mongo
        .address
        .trim_start_matches("mongodb://")
        .trim_end_matches('/')
        .to_string();
    let pipeline = Pipeline::start_on_test_kafka(kafka, &mongo.address).await;
    let healthy = pipeline.worker();
    wait_assigned(&[&healthy], Duration::from_secs(60)).await;

    // Cut off from the start: it starts (a database may be restarting), but joins only
    // once it reaches MongoDB, so it takes no partitions from the worker that can store.
    let proxy = TcpProxy::start(upstream, Link::Cut).await;
    // `directConnection`: the server is a replica set member that advertises its own
    // address, which the driver would otherwise switch to, around the proxy.
    let uri = format!("mongodb://{}/?directConnection=true", proxy.address());
    let logs = tempfile::tempdir().expect("log dir");
    let cut_off = pipeline.spawn_worker(
        &[
            ("MONGO_URI", uri.as_str()),
            ("WORKER_GIVE_BACK_AFTER", "3s"),
            // A write with no answer fails after 2 + 1 + 10 s (the worker's slack).
            ("MONGO_WRITE_TIMEOUT", "1s"),
        ],
        Some(logs.path().join("cut-off-worker.log")),
    );
    let (status, body, _) = wait_readiness(&cut_off, Duration::from_secs(30), |_, body| {
        body["mongodbState"] == "unreachable"
    })
    .await;
    eprintln!("[mongo-access] worker started without MongoDB: /readyz {status} {body}");
    assert_eq!(status, 503);
    assert_eq!(body["group"], "not a member", "{body}");
    let mut accepted = pipeline.post_purchases(200, 8).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cut_off.metric("worker_assigned_partitions").await,
        Some(0.0),
        "a worker without MongoDB took partitions"
    );

    proxy.set(Link::Open);
    let restored = Instant::now();
    wait_readiness(&cut_off, Duration::from_secs(60), |status, _| status == 200).await;
    eprintln!(
        "[mongo-access] reached MongoDB: joined and ready {:.1?} later",
        restored.elapsed()
    );
    wait_assigned(&[&healthy, &cut_off], Duration::from_secs(60)).await;
    accepted.extend(pipeline.post_purchases(200, 8).await);

    // A partition in the middle of the stream: it keeps its partitions through a short
    // outage, and gives them back after WORKER_GIVE_BACK_AFTER (3 s) without a write.
    proxy.set(Link::Cut);
    let cut_at = Instant::now();
    accepted.extend(pipeline.post_purchases(600, 8).await);
    let (_, body, _) = wait_readiness(&cut_off, Duration::from_secs(60), |_, body| {
        body["group"] == "not a member"
    })
    .await;
    let gave_back = cut_at.elapsed();
    eprintln!(
        "[mongo-access] cut off mid-stream: partitions given back after {gave_back:.1?}: {body}"
    );
    assert_eq!(body["mongodbState"], "unreachable", "{body}");
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(90))
        .await;
    eprintln!(
        "[mongo-access] all {} purchases stored {:.1?} after the cut",
        accepted.len(),
        cut_at.elapsed()
    );
    assert_exactly_once(&accepted, &stored);

    proxy.set(Link::Open);
    wait_readiness(&cut_off, Duration::from_secs(60), |status, _| status == 200).await;
    wait_assigned(&[&healthy, &cut_off], Duration::from_secs(60)).await;
    accepted.extend(pipeline.post_purchases(200, 8).await);

    // A black hole: connections stay open and nothing comes back, so only the worker's own
    // bound on a write (the driver has no socket timeout) ends the wait.
    proxy.set(Link::BlackHole);
    let silenced = Instant::now();
    accepted.extend(pipeline.post_purchases(600, 8).await);
    let (_, body, _) = wait_readiness(&cut_off, Duration::from_secs(90), |_, body| {
        body["group"] == "not a member"
    })
    .await;
    eprintln!(
        "[mongo-access] black hole mid-stream: partitions given back after {:.1?}: {body}",
        silenced.elapsed()
    );
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(90))
        .await;
    assert_exactly_once(&accepted, &stored);

    proxy.set(Link::Open);
    wait_readiness(&cut_off, Duration::from_secs(60), |status, _| status == 200).await;
    accepted.extend(pipeline.post_purchases(200, 8).await);
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&accepted, &stored);
    pipeline.wait_committed_to_end(Duration::from_secs(30));
    assert!(!cut_off.log_text().contains("RawDocumentBuf"));
    cut_off.terminate();
    healthy.terminate();
    pipeline.stop();
}
