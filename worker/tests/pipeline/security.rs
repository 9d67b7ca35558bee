//! The pipeline secured end to end: nisshi with SCRAM users reached only over TLS, secantusd-rs
//! with `--auth` and TLS, and a gateway that verifies JWTs. Purchases posted with a token
//! are stored by workers that joined the group over SASL/TLS, and confluent-kafka, with the
//! same credentials, reads the offsets they committed. Bad credentials and untrusted
//! certificates stop start-up with the dependency and the cause named.

use std::{sync::OnceLock, time::Duration};

use clap::Parser;
use serde_json::json;
use test_support::{
    secured::{KAFKA_PASSWORD, KAFKA_USER, MONGO_PASSWORD},
    tokens::{self, TestKey},
    InfraServer, SecuredServers, TestCertificates,
};

use crate::helpers::{
    assert_exactly_once, one_heavy_test_at_a_time, wait_assigned, worker_config,
    worker_start_up_error, Pipeline, Secured,
};

fn servers() -> &'static SecuredServers {
    static SERVERS: OnceLock<SecuredServers> = OnceLock::new();
    SERVERS.get_or_init(SecuredServers::start)
}

#[tokio::test]
async fn purchases_with_tokens_are_stored_by_workers_over_sasl_tls_and_committed_as_librdkafka_reads_them(
) {
    let _heavy = one_heavy_test_at_a_time().await;
    let servers = servers();
    let ca = servers.certs.file("ca.pem");
    let key = TestKey::es256("pipeline-key");
    let jwks_file = servers.files().join("jwks.json");
    std::fs::write(&jwks_file, tokens::jwks(&[&key]).to_string()).expect("JWKS file");
    // A server-to-server caller buying for many users: the any-user scopes.
    let token = key.sign(&tokens::claims_with_scope(
        "load-generator",
        "purchases:write:any purchases:read:any",
    ));
    let secured = Secured {
        flags: servers.kafka_flags(&servers.password_file(), &ca),
        gateway_flags: vec![
            format!("--auth-jwks-file={}", jwks_file.display()),
            format!("--auth-issuer={}", tokens::ISSUER),
            format!("--auth-audience={}", tokens::AUDIENCE),
        ],
        bearer_token: Some(token),
        librdkafka: json!({
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": KAFKA_USER,
            "sasl.password": KAFKA_PASSWORD,
            "ssl.ca.location": ca,
        }),
    };
    let pipeline = Pipeline::start_secured(
        &servers.kafka.address,
        &servers.mongo_uri(MONGO_PASSWORD, &ca),
        secured,
    )
    .await;

    // Without a token nothing is taken.
    let refused = pipeline
        .client
        .post(format!("{}/api/purchases", pipeline.gateway))
        .json(&json!({"username": "eve", "userId": "u1", "price": 1.0}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(refused.status().as_u16(), 401);

    let workers = [pipeline.worker(), pipeline.worker()];
    wait_assigned(&workers.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    let accepted = pipeline.post_purchases(400, 16).await;
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&accepted, &stored);
    let offsets = pipeline.wait_committed_to_end(Duration::from_secs(30));
    eprintln!("[security] committed offsets read by confluent-kafka over SASL_SSL: {offsets}");

    let history = pipeline.gateway_json("/api/users/u5/purchases").await;
    assert!(
        history["purchases"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "history over the authenticated API: {history}"
    );
    for worker in workers {
        worker.terminate();
    }
    pipeline.stop();
}

/// Builds a worker with `flags` on the secured servers and returns its start-up error.
async fn secured_start_up_error(flags: Vec<String>, mongo_uri: String) -> String {
    start_up_error_on(&servers().kafka.address, flags, mongo_uri).await
}

/// A worker configuration for start-up tests against the broker at `kafka`.
fn start_up_config(
    kafka: &str,
    flags: Vec<String>,
    mongo_uri: String,
) -> worker::config::WorkerConfig {
    worker_config(
        [
            format!("--kafka-brokers={kafka}"),
            "--kafka-topic=purchases-security-start".into(),
            "--kafka-retry-deadline=3s".into(),
            format!("--mongo-uri={mongo_uri}"),
            "--mongo-timeout=3s".into(),
        ]
        .into_iter()
        .chain(flags),
    )
}

async fn start_up_error_on(kafka: &str, flags: Vec<String>, mongo_uri: String) -> String {
    let (error, took) = worker_start_up_error(start_up_config(kafka, flags, mongo_uri)).await;
    assert!(
        took < Duration::from_secs(20),
        "start-up took {took:?} to fail"
    );
    error
}

#[tokio::test]
async fn a_wrong_kafka_password_stops_start_up_naming_kafka_the_user_and_sasl() {
    let servers = servers();
    let ca = servers.certs.file("ca.pem");
    let wrong = servers.files().join("wrong-password");
    std::fs::write(&wrong, "not-it").expect("file");
    let error = secured_start_up_error(
        servers.kafka_flags(&wrong.display().to_string(), &ca),
        servers.mongo_uri(MONGO_PASSWORD, &ca),
    )
    .await;
    eprintln!("[security] wrong Kafka password: {error}");
    assert!(
        error.contains("Kafka") && error.contains(KAFKA_USER),
        "{error}"
    );
    assert!(error.contains("SASL"), "{error}");
}

#[tokio::test]
async fn an_untrusted_kafka_certificate_stops_start_up_naming_the_certificate() {
    let servers = servers();
    let other = TestCertificates::new();
    let error = secured_start_up_error(
        servers.kafka_flags(&servers.password_file(), &other.file("ca.pem")),
        servers.mongo_uri(MONGO_PASSWORD, &servers.certs.file("ca.pem")),
    )
    .await;
    eprintln!("[security] unknown Kafka CA: {error}");
    assert!(error.contains("Kafka"), "{error}");
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
}

#[tokio::test]
async fn a_wrong_mongodb_password_stops_start_up_naming_mongodb_and_the_credentials() {
    let servers = servers();
    let ca = servers.certs.file("ca.pem");
    let error = secured_start_up_error(
        servers.kafka_flags(&servers.password_file(), &ca),
        servers.mongo_uri("not-the-password", &ca),
    )
    .await;
    eprintln!("[security] wrong MongoDB password: {error}");
    assert!(error.contains("MongoDB refused the credentials"), "{error}");
}

#[tokio::test]
async fn an_untrusted_mongodb_certificate_stops_start_up_naming_tls() {
    let servers = servers();
    let other = TestCertificates::new();
    let error = secured_start_up_error(
        servers.kafka_flags(&servers.password_file(), &servers.certs.file("ca.pem")),
        servers.mongo_uri(MONGO_PASSWORD, &other.file("ca.pem")),
    )
    .await;
    eprintln!("[security] unknown MongoDB CA: {error}");
    assert!(error.contains("MongoDB's TLS certificate"), "{error}");
}

#[tokio::test]
async fn the_gateway_reads_the_mongodb_connection_string_from_a_file() {
    let servers = servers();
    let ca = servers.certs.file("ca.pem");
    let uri_file = servers.files().join("mongo-uri");
    std::fs::write(
        &uri_file,
        format!("{}\n", servers.mongo_uri(MONGO_PASSWORD, &ca)),
    )
    .expect("file");
    let cli = gateway::config::Cli::try_parse_from(
        [
            "gateway".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--kafka-brokers={}", servers.kafka.address),
            "--kafka-topic=purchases-security-uri-file".into(),
            format!("--mongo-uri-file={}", uri_file.display()),
            "--auth-disabled".into(),
            "--log-filter=warn".into(),
        ]
        .into_iter()
        .chain(servers.kafka_flags(&servers.password_file(), &ca)),
    )
    .expect("gateway flags");
    let app = gateway::startup::Application::build(cli.config)
        .await
        .expect("the gateway starts on secured Kafka and MongoDB");
    let address = format!("http://{}/readyz", app.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));
    let ready = reqwest::get(&address).await.expect("readyz answers");
    let status = ready.status().as_u16();
    let body = ready.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    shutdown.cancel();
    let _ = server.await;
}

/// A broker that takes only clients with a certificate signed by the test CA (TLS without
/// SASL: the client certificate is the identity).
fn mutual_tls_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| {
        InfraServer::start_with("kafka", &["--tls", servers().certs.dir(), "--mutual-tls"])
    })
}

#[tokio::test]
async fn a_worker_with_a_client_certificate_starts_on_a_broker_that_requires_one() {
    let servers = servers();
    let ca = servers.certs.file("ca.pem");
    let config = start_up_config(
        &mutual_tls_broker().address,
        vec![
            "--kafka-tls".into(),
            format!("--kafka-tls-ca-file={ca}"),
            format!("--kafka-tls-cert-file={}", servers.certs.file("client.pem")),
            format!("--kafka-tls-key-file={}", servers.certs.file("client.key")),
        ],
        servers.mongo_uri(MONGO_PASSWORD, &ca),
    );
    worker::startup::Worker::build(config)
        .await
        .expect("the worker starts with its client certificate");
}

#[tokio::test]
async fn without_a_client_certificate_a_broker_that_requires_one_stops_start_up() {
    let servers = servers();
    let ca = servers.certs.file("ca.pem");
    let error = start_up_error_on(
        &mutual_tls_broker().address,
        vec!["--kafka-tls".into(), format!("--kafka-tls-ca-file={ca}")],
        servers.mongo_uri(MONGO_PASSWORD, &ca),
    )
    .await;
    eprintln!("[security] no client certificate: {error}");
    assert!(error.contains("Kafka") && error.contains("TLS"), "{error}");
    assert!(error.contains("client certificate"), "{error}");
}
