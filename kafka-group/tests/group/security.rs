//! The group layer over SASL and TLS against a real broker: nisshi with SCRAM users, and the
//! same broker reached only through a TLS terminator (OpenSSL) signed by a test CA.

use std::{sync::Arc, sync::OnceLock, time::Duration};

use kafka_group::{
    rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer, RootCertStore},
    Error, FetchLimits, GroupAdmin, RecordFetcher, SaslCredentials, SaslMechanism, Security,
    TopicPartition,
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
            s.password.clone(),
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
async fn a_mechanism_the_broker_does_not_offer_is_refused_by_name() {
    // nisshi 0.7 offers SCRAM only (it is built without PLAIN) and hangs up on PLAIN.
    let broker = sasl_broker();
    let security = Security {
        tls: None,
        sasl: sasl(SaslMechanism::Plain, PASSWORD),
    };
    let error = admin(broker, security)
        .end_offsets("any-topic")
        .await
        .expect_err("PLAIN is not offered");
    assert!(matches!(error, Error::Authentication(_)), "{error:?}");
    assert!(error.to_string().contains("PLAIN"), "{error}");
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
async fn a_plaintext_client_gets_no_answer_from_the_tls_listener_within_its_timeout() {
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
    assert!(error.is_connection(), "{error:?}");
}
