//! The group layer over SASL and TLS against a real broker: nisshi with SCRAM users, and the
//! same broker reached only through a TLS terminator (OpenSSL) signed by a test CA. Settings
//! the broker's listener does not speak (TLS or not, SASL or not, the mechanism) are named
//! by `Security::check` within a few seconds.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use kafka_group::{
    rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer, RootCertStore},
    Error, FetchLimits, GroupAdmin, Mismatch, RecordFetcher, SaslCredentials, SaslMechanism,
    Security, TopicPartition,
};
use rskafka::{
    client::{partition::UnknownTopicHandling, ClientBuilder, Credentials, SaslConfig},
    record::Record,
};
use test_support::{InfraServer, TestCertificates};

use crate::helpers::{config, offsets, settle, unique, Tracked, PARTITIONS};

const USER: &str = "shop";
const PASSWORD: &str = "s3cret-Pa55";

fn certificates() -> &'static TestCertificates {
    static CERTS: OnceLock<TestCertificates> = OnceLock::new();
    CERTS.get_or_init(TestCertificates::new)
}

/// nisshi with authentication on, plaintext.
fn sasl_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| {
        InfraServer::start_with("kafka", &["--user", &format!("{USER}:{PASSWORD}")])
    })
}

/// nisshi with authentication on, reachable only over TLS.
fn tls_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| {
        InfraServer::start_with(
            "kafka",
            &[
                "--user",
                &format!("{USER}:{PASSWORD}"),
                "--tls",
                certificates().dir(),
            ],
        )
    })
}

/// nisshi without authentication, plaintext.
fn plain_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| InfraServer::start("kafka"))
}

/// nisshi without authentication, reachable only over TLS.
fn tls_only_broker() -> &'static InfraServer {
    static BROKER: OnceLock<InfraServer> = OnceLock::new();
    BROKER.get_or_init(|| InfraServer::start_with("kafka", &["--tls", certificates().dir()]))
}

fn sasl(mechanism: SaslMechanism, password: &str) -> Option<SaslCredentials> {
    Some(SaslCredentials {
        mechanism,
        username: USER.into(),
        password: password.into(),
    })
}

fn trusting(ca_file: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots
            .add(cert.expect("PEM certificate"))
            .expect("CA certificate");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn admin(broker: &InfraServer, security: Security) -> GroupAdmin {
    GroupAdmin::new(
        vec![broker.address.clone()],
        "security-test",
        Duration::from_secs(5),
    )
    .with_security(security)
}

/// A topic made through rskafka with the same security: rskafka's own SASL/TLS path.
async fn topic_with_records(broker: &InfraServer, security: &Security, records: usize) -> String {
    let mut builder = ClientBuilder::new(vec![broker.address.clone()]);
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(Arc::clone(tls));
    }
    if let Some(s) = &security.sasl {
        builder = builder.sasl_config(SaslConfig::ScramSha256(Credentials::new(
            s.username.clone(),
            secrecy::ExposeSecret::expose_secret(&s.password).to_string(),
        )));
    }
    let client = builder
        .build()
        .await
        .expect("rskafka connects with SASL/TLS");
    let name = unique("secure-topic");
    client
        .controller_client()
        .expect("controller")
        .create_topic(&name, PARTITIONS, 1, 5_000)
        .await
        .expect("topic created");
    let partition = client
        .partition_client(&name, 0, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let batch: Vec<Record> = (0..records)
        .map(|i| Record {
            key: None,
            value: Some(format!("record {i}").into_bytes()),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        })
        .collect();
    partition
        .produce(
            batch,
            rskafka::client::partition::Compression::NoCompression,
        )
        .await
        .expect("produce");
    name
}

#[tokio::test]
async fn each_scram_mechanism_joins_the_group_and_commits() {
    let broker = sasl_broker();
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let security = Security {
            tls: None,
            sasl: sasl(mechanism, PASSWORD),
        };
        let topic = topic_with_records(broker, &security, 3).await;
        let group = unique("secure-group");
        let mut member_config = config(&broker.address, &group, &topic);
        member_config.security = security.clone();
        let mut member = Tracked::start(member_config);
        settle(&mut [&mut member], &topic, Duration::from_secs(60)).await;
        let commit = offsets(&topic, &[(0, 3), (5, 0)]);
        member
            .member
            .commit(&commit)
            .await
            .expect("commit over SASL");

        let committed = admin(broker, security)
            .committed(
                &group,
                &[
                    TopicPartition::new(&topic, 0),
                    TopicPartition::new(&topic, 5),
                ],
            )
            .await
            .expect("offsets read back over SASL");
        assert_eq!(
            committed[&TopicPartition::new(&topic, 0)],
            Some(3),
            "{mechanism}"
        );
        assert_eq!(
            committed[&TopicPartition::new(&topic, 5)],
            Some(0),
            "{mechanism}"
        );
        member.member.leave().await.expect("leave");
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_authentication_error_naming_user_and_mechanism() {
    let broker = sasl_broker();
    let security = Security {
        tls: None,
        sasl: sasl(SaslMechanism::ScramSha512, "not-the-password"),
    };
    let error = admin(broker, security)
        .end_offsets("any-topic")
        .await
        .expect_err("a wrong password must not connect");
    assert!(matches!(error, Error::Authentication(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("SCRAM-SHA-512")
            && text.contains("\"shop\"")
            && text.contains(&broker.address),
        "{text}"
    );
    assert!(error.is_security() && !error.is_connection());
}

#[tokio::test]
async fn a_mechanism_the_broker_does_not_offer_is_refused_naming_those_it_offers() {
    // nisshi 0.7 offers SCRAM only (it is built without PLAIN) and hangs up on PLAIN; the
    // mechanisms it offers are found by asking for each.
    let broker = sasl_broker();
    let security = Security {
        tls: None,
        sasl: sasl(SaslMechanism::Plain, PASSWORD),
    };
    let error = admin(broker, security)
        .end_offsets("any-topic")
        .await
        .expect_err("PLAIN is not offered");
    assert_eq!(
        error.mismatch(),
        Some((
            broker.address.as_str(),
            &Mismatch::MechanismNotOffered {
                mechanism: SaslMechanism::Plain,
                offered: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-512".into()],
            }
        )),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(
            "does not offer SASL mechanism PLAIN (it offers: SCRAM-SHA-256, SCRAM-SHA-512)"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn without_credentials_an_authenticating_broker_gives_an_error_not_a_hang() {
    let broker = sasl_broker();
    let started = std::time::Instant::now();
    let error = admin(broker, Security::default())
        .end_offsets("any-topic")
        .await
        .expect_err("unauthenticated requests are refused");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    eprintln!("[security] no credentials: {error}");
}

#[tokio::test]
async fn over_tls_a_member_joins_and_the_fetcher_reads_what_rskafka_wrote() {
    let broker = tls_broker();
    let security = Security {
        tls: Some(trusting(&certificates().file("ca.pem"))),
        sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
    };
    let topic = topic_with_records(broker, &security, 5).await;

    let mut fetcher = RecordFetcher::new(
        vec![broker.address.clone()],
        "security-test",
        Duration::from_secs(5),
    )
    .with_security(security.clone());
    let tp = TopicPartition::new(&topic, 0);
    let fetched = fetcher
        .fetch(
            &[(tp.clone(), 0)].into_iter().collect(),
            &FetchLimits {
                min_bytes: 1,
                max_wait: Duration::from_millis(100),
                max_bytes: 1 << 20,
                partition_max_bytes: 1 << 20,
            },
        )
        .await;
    let records = fetched[&tp].as_ref().expect("fetch over TLS");
    assert_eq!(records.records.len(), 5);

    let group = unique("tls-group");
    let mut member_config = config(&broker.address, &group, &topic);
    member_config.security = security;
    let mut member = Tracked::start(member_config);
    settle(&mut [&mut member], &topic, Duration::from_secs(60)).await;
    member.member.leave().await.expect("leave");
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_fails_the_handshake() {
    let broker = tls_broker();
    let other = TestCertificates::new();
    let security = Security {
        tls: Some(trusting(&other.file("ca.pem"))),
        sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
    };
    let error = admin(broker, security)
        .end_offsets("any-topic")
        .await
        .expect_err("an untrusted certificate must not connect");
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("certificate") && text.contains(&broker.address),
        "{text}"
    );
}

#[tokio::test]
async fn a_plaintext_group_admin_at_a_tls_port_is_told_the_broker_expects_tls() {
    let broker = tls_broker();
    let error = admin(
        broker,
        Security {
            tls: None,
            sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
        },
    )
    .end_offsets("any-topic")
    .await
    .expect_err("plaintext to a TLS port fails");
    assert_eq!(
        error.mismatch(),
        Some((broker.address.as_str(), &Mismatch::TlsExpected)),
        "{error:?}"
    );
    assert!(error.is_security() && !error.is_connection());
}

/// Runs the start-up check with `security` against `broker`, which must fail within 5 s;
/// prints what it said and how long it took.
async fn check_failure(what: &str, broker: &InfraServer, security: Security) -> Error {
    let started = Instant::now();
    let error = security
        .check(
            std::slice::from_ref(&broker.address),
            "security-test",
            Duration::from_secs(10),
        )
        .await
        .expect_err("the check must fail");
    let took = started.elapsed();
    eprintln!(
        "[kafka-misconfig] check, {what}: failed in {:.2} s: {error}",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    assert!(error.is_security(), "{what}: {error:?}");
    error
}

fn tls_to(ca: &str) -> Option<Arc<rustls::ClientConfig>> {
    Some(trusting(ca))
}

#[tokio::test]
async fn a_plaintext_check_at_a_tls_port_says_the_broker_expects_tls() {
    let broker = tls_broker();
    let error = check_failure("plaintext to TLS port", broker, Security::default()).await;
    assert_eq!(
        error.mismatch(),
        Some((broker.address.as_str(), &Mismatch::TlsExpected))
    );
    assert_eq!(
        error.to_string(),
        format!(
            "the broker at {} expects TLS, and this client connected in plaintext: turn TLS on",
            broker.address
        )
    );
}

#[tokio::test]
async fn a_tls_check_at_a_plaintext_port_says_the_broker_does_not_speak_tls() {
    // nisshi reads the ClientHello as the size of a 369 MB request and waits for it: the
    // handshake never ends, so the port is asked in plaintext while it waits.
    let broker = plain_broker();
    let security = Security {
        tls: tls_to(&certificates().file("ca.pem")),
        sasl: None,
    };
    let error = check_failure("TLS to plaintext port", broker, security).await;
    assert_eq!(
        error.mismatch(),
        Some((broker.address.as_str(), &Mismatch::TlsNotSpoken))
    );
}

#[tokio::test]
async fn a_check_without_sasl_at_a_sasl_listener_says_which_mechanisms_it_offers() {
    let expected = Mismatch::SaslExpected {
        offered: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-512".into()],
    };
    let broker = sasl_broker();
    let error = check_failure("no SASL to SASL listener", broker, Security::default()).await;
    assert_eq!(error.mismatch(), Some((broker.address.as_str(), &expected)));

    // The same over TLS: the TLS handshake and ApiVersions succeed, Metadata is refused.
    let broker = tls_broker();
    let security = Security {
        tls: tls_to(&certificates().file("ca.pem")),
        sasl: None,
    };
    let error = check_failure("TLS without SASL to SASL_SSL listener", broker, security).await;
    assert_eq!(error.mismatch(), Some((broker.address.as_str(), &expected)));
    assert!(
        error
            .to_string()
            .contains("expects SASL authentication (it offers SCRAM-SHA-256, SCRAM-SHA-512)"),
        "{error}"
    );
}

#[tokio::test]
async fn sasl_at_a_listener_without_sasl_says_the_broker_does_not_use_it() {
    let broker = plain_broker();
    let security = Security {
        tls: None,
        sasl: sasl(SaslMechanism::ScramSha512, PASSWORD),
    };
    let error = check_failure("SASL to plaintext listener", broker, security).await;
    assert_eq!(
        error.mismatch(),
        Some((broker.address.as_str(), &Mismatch::SaslNotEnabled))
    );

    let broker = tls_only_broker();
    let security = Security {
        tls: tls_to(&certificates().file("ca.pem")),
        sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
    };
    let error = check_failure("SASL to SSL listener", broker, security).await;
    assert_eq!(
        error.mismatch(),
        Some((broker.address.as_str(), &Mismatch::SaslNotEnabled))
    );
}

#[tokio::test]
async fn the_check_passes_when_the_settings_match_the_listener() {
    let ca = certificates().file("ca.pem");
    let cases = [
        (plain_broker(), Security::default()),
        (
            tls_only_broker(),
            Security {
                tls: tls_to(&ca),
                sasl: None,
            },
        ),
        (
            sasl_broker(),
            Security {
                tls: None,
                sasl: sasl(SaslMechanism::ScramSha512, PASSWORD),
            },
        ),
        (
            tls_broker(),
            Security {
                tls: tls_to(&ca),
                sasl: sasl(SaslMechanism::ScramSha256, PASSWORD),
            },
        ),
    ];
    for (broker, security) in cases {
        let started = Instant::now();
        security
            .check(
                std::slice::from_ref(&broker.address),
                "security-test",
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("{security:?} at {}: {e}", broker.address));
        eprintln!(
            "[kafka-misconfig] check, {security:?}: passed in {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }
}
