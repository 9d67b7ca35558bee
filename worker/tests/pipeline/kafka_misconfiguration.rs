//! Kafka security settings the broker's listener does not speak stop start-up within a few
//! seconds, naming Kafka, the broker and the flags to change, instead of retrying until the
//! retry deadline and saying "early eof". Against nisshi brokers of their own: plaintext,
//! SASL (SCRAM) in plaintext, and SASL behind TLS.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use clap::Parser;
use test_support::{InfraServer, TestCertificates};

use crate::helpers::{worker_config, worker_start_up_error};

const USER: &str = "shop-workers";
const PASSWORD: &str = "kafka-Pa55-word";
/// rskafka's retry deadline, as deployed: start-up must fail well before it.
const RETRY_DEADLINE: &str = "10s";
const WITHIN: Duration = Duration::from_secs(5);

/// The certificates and the password file the flags name.
struct Files {
    certs: TestCertificates,
    dir: tempfile::TempDir,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("kafka-password"), PASSWORD).expect("password file");
        Files {
            certs: TestCertificates::new(),
            dir,
        }
    })
}

fn plaintext_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| InfraServer::start("kafka"))
}

fn sasl_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| InfraServer::start_with("kafka", &["--user", &user()]))
}

fn sasl_tls_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| {
        InfraServer::start_with("kafka", &["--user", &user(), "--tls", files().certs.dir()])
    })
}

fn user() -> String {
    format!("{USER}:{PASSWORD}")
}

fn sasl_flags(mechanism: &str) -> Vec<String> {
    vec![
        format!("--kafka-sasl-mechanism={mechanism}"),
        format!("--kafka-sasl-username={USER}"),
        format!(
            "--kafka-sasl-password-file={}",
            files().dir.path().join("kafka-password").display()
        ),
    ]
}

fn tls_flags() -> Vec<String> {
    vec![
        "--kafka-tls".into(),
        format!("--kafka-tls-ca-file={}", files().certs.file("ca.pem")),
    ]
}

/// The shared flags of worker and gateway: the broker, and a MongoDB nobody reaches (Kafka
/// is checked first).
fn common_flags(broker: &InfraServer) -> Vec<String> {
    vec![
        format!("--kafka-brokers={}", broker.address),
        "--kafka-topic=purchases-misconfigured".into(),
        format!("--kafka-retry-deadline={RETRY_DEADLINE}"),
        "--mongo-uri=mongodb://127.0.0.1:9".into(),
        "--mongo-timeout=2s".into(),
    ]
}

/// Builds a worker with `flags` against `broker` and returns its start-up error, after
/// checking it came within [`WITHIN`] and names Kafka and the broker.
async fn misconfigured_start_up_error(
    what: &str,
    broker: &InfraServer,
    flags: Vec<String>,
) -> String {
    let config = worker_config(common_flags(broker).into_iter().chain(flags));
    let (error, took) = worker_start_up_error(config).await;
    assert_failed_fast(what, took, &error, broker);
    error
}

fn assert_failed_fast(what: &str, took: Duration, error: &str, broker: &InfraServer) {
    eprintln!(
        "[kafka-misconfig] {what}: failed in {:.2} s: {error}",
        took.as_secs_f64()
    );
    assert!(took < WITHIN, "{what}: start-up took {took:?} to fail");
    assert!(
        error.contains("Kafka") && error.contains(&format!("the broker at {}", broker.address)),
        "{what}: {error}"
    );
}

#[tokio::test]
async fn plaintext_to_a_tls_port_stops_start_up_saying_the_broker_expects_tls() {
    let broker = sasl_tls_broker();
    let error =
        misconfigured_start_up_error("plaintext to TLS port", broker, sasl_flags("SCRAM-SHA-512"))
            .await;
    assert!(
        error.contains("expects TLS: add --kafka-tls (KAFKA_TLS=true), and --kafka-tls-ca-file"),
        "{error}"
    );
}

#[tokio::test]
async fn tls_without_sasl_to_a_sasl_listener_stops_start_up_saying_which_mechanisms_it_offers() {
    let broker = sasl_tls_broker();
    let error =
        misconfigured_start_up_error("TLS without SASL to SASL_SSL", broker, tls_flags()).await;
    assert!(
        error.contains("expects SASL authentication (it offers SCRAM-SHA-256, SCRAM-SHA-512): set --kafka-sasl-mechanism (KAFKA_SASL_MECHANISM), --kafka-sasl-username"),
        "{error}"
    );
}

#[tokio::test]
async fn no_security_at_a_sasl_listener_stops_start_up_saying_sasl_is_expected() {
    let broker = sasl_broker();
    let error = misconfigured_start_up_error("no security to SASL_PLAINTEXT", broker, vec![]).await;
    assert!(
        error.contains("expects SASL authentication (it offers SCRAM-SHA-256, SCRAM-SHA-512)"),
        "{error}"
    );
}

#[tokio::test]
async fn tls_to_a_plaintext_port_stops_start_up_saying_the_broker_does_not_speak_tls() {
    let broker = plaintext_broker();
    let error = misconfigured_start_up_error("TLS to plaintext port", broker, tls_flags()).await;
    assert!(
        error.contains("does not speak TLS on this port (it answered in plaintext): drop --kafka-tls (KAFKA_TLS=false) or use its TLS port"),
        "{error}"
    );
}

#[tokio::test]
async fn sasl_at_a_listener_without_sasl_stops_start_up_saying_to_drop_the_sasl_settings() {
    let broker = plaintext_broker();
    let error = misconfigured_start_up_error(
        "SASL to PLAINTEXT listener",
        broker,
        sasl_flags("SCRAM-SHA-256"),
    )
    .await;
    assert!(
        error
            .contains("does not use SASL authentication on this port: drop --kafka-sasl-mechanism"),
        "{error}"
    );
}

#[tokio::test]
async fn a_sasl_mechanism_the_broker_does_not_offer_stops_start_up_naming_those_it_offers() {
    // nisshi 0.7 offers SCRAM only and hangs up on PLAIN.
    let broker = sasl_tls_broker();
    let mut flags = sasl_flags("PLAIN");
    flags.extend(tls_flags());
    let error = misconfigured_start_up_error("SASL mechanism not offered", broker, flags).await;
    assert!(
        error.contains("does not offer SASL mechanism PLAIN (it offers: SCRAM-SHA-256, SCRAM-SHA-512): set --kafka-sasl-mechanism"),
        "{error}"
    );
}

#[tokio::test]
async fn the_gateway_stops_start_up_with_the_same_message_for_plaintext_to_a_tls_port() {
    let broker = sasl_tls_broker();
    let cli = gateway::config::Cli::try_parse_from(
        ["gateway".to_string(), "--auth-disabled".into()]
            .into_iter()
            .chain(common_flags(broker))
            .chain(sasl_flags("SCRAM-SHA-512")),
    )
    .expect("gateway flags");
    let started = Instant::now();
    let error = match gateway::startup::Application::build(cli.config).await {
        Ok(_) => panic!("the gateway started"),
        Err(e) => format!("{e:#}"),
    };
    assert_failed_fast(
        "gateway, plaintext to TLS port",
        started.elapsed(),
        &error,
        broker,
    );
    assert!(
        error.contains("expects TLS: add --kafka-tls (KAFKA_TLS=true)"),
        "{error}"
    );
}
