//! Why a connection failed, when the cause is settings the broker's listener does not speak.
//!
//! A plaintext client at a TLS port, a client without SASL at a listener that requires it,
//! and most other mismatches of TLS and SASL settings show only as the broker closing the
//! connection, exactly as a broker that is restarting does; retried, they end at a retry
//! deadline with an "early eof". So after such a failure, and only then, the listener is
//! asked what it speaks on fresh connections (a TLS handshake that trusts no certificate,
//! ApiVersions in plaintext, SaslHandshake, an unauthenticated Metadata), and a mismatch
//! proven so becomes an [`Error::Mismatch`], which no client retries. A probe that proves
//! nothing leaves the original error as it was.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use kafka_protocol::{
    messages::{MetadataRequest, SaslHandshakeRequest},
    protocol::StrBytes,
};
use tokio::net::TcpStream;
use tokio_rustls::{
    rustls::{self, RootCertStore},
    TlsConnector,
};

use crate::{
    connection::Connection,
    error::{Error, Result},
    mismatch::Mismatch,
    security::SaslMechanism,
    transport::server_name,
};

/// The broker a connection failed to, and how to reach it again for a probe: the client's
/// TLS settings (the probes never authenticate) and its timeout for each step.
pub(crate) struct Probe<'a> {
    pub address: &'a str,
    pub client_id: &'a str,
    pub timeout: Duration,
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
}

impl Probe<'_> {
    pub fn mismatch(&self, mismatch: Mismatch) -> Error {
        Error::Mismatch {
            address: self.address.to_string(),
            mismatch,
        }
    }

    /// A connection with the client's TLS settings, without SASL and without diagnosis.
    async fn open(&self) -> Result<Connection> {
        Connection::open(self.address, self.client_id, self.timeout, self.tls).await
    }

    /// Whether the port answers ApiVersions in plaintext (every Kafka listener without TLS
    /// does, SASL or not: KIP-43 has it answered before authentication).
    pub async fn speaks_plaintext_kafka(&self) -> bool {
        Connection::open(self.address, self.client_id, self.timeout, None)
            .await
            .is_ok()
    }

    /// Whether the port speaks TLS (see [`speaks_tls`]).
    async fn speaks_tls(&self) -> bool {
        speaks_tls(self.address, self.timeout).await == Some(true)
    }

    /// Whether the listener answers a request other than ApiVersions without SASL (an
    /// empty Metadata: every client may send it). A SASL listener closes the connection
    /// instead (Kafka's SaslServerAuthenticator.handleKafkaRequest takes only ApiVersions
    /// and SaslHandshake before authentication; nisshi 0.7 the same).
    async fn answers_unauthenticated(&self) -> bool {
        let Ok(connection) = self.open().await else {
            return false;
        };
        request_metadata(&connection).await.is_ok()
    }

    /// What the listener says about SASL, asked with each mechanism this client speaks,
    /// each on its own connection: Kafka names all its mechanisms in any answer, nisshi 0.7
    /// only the one asked for when it offers it, and hangs up when it does not.
    async fn sasl_listener(&self) -> SaslListener {
        let answers = futures::future::join_all(
            SaslMechanism::ALL
                .iter()
                .map(|mechanism| self.sasl_handshake(mechanism.name())),
        )
        .await;
        SaslListener::from_answers(answers.into_iter().flatten())
    }

    /// One SaslHandshake on a fresh connection; `None` when it was not answered.
    async fn sasl_handshake(&self, mechanism: &str) -> Option<SaslAnswer> {
        let connection = self.open().await.ok()?;
        let version = connection.version::<SaslHandshakeRequest>(0..=1).ok()?;
        let request = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_string(mechanism.to_string()));
        let response = connection.send(&request, version).await.ok()?;
        let offered: Vec<String> = response
            .mechanisms
            .iter()
            .map(|m| m.as_str().to_string())
            .collect();
        Some(SaslAnswer::classify(
            mechanism,
            response.error_code,
            &offered,
        ))
    }
}

/// Whether `address` (`host:port`) speaks TLS: a handshake that trusts no certificate gets
/// as far as the server's certificate (or an alert) from a TLS listener only. A Kafka
/// listener without TLS closes the connection (the ClientHello reads as a request far above
/// socket.request.max.bytes); nisshi 0.7 and MongoDB wait for the rest of what they read as
/// a huge message, so silence until `timeout` is a "no" too. `None`: no TCP connection, so
/// nothing is known. Not Kafka-specific: the MongoDB checks ask it as well.
pub async fn speaks_tls(address: &str, timeout: Duration) -> Option<bool> {
    let name = server_name(address).ok()?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(RootCertStore::empty())
    .with_no_client_auth();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .ok()?
        .ok()?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(e)) => Some(proves_tls(&e)),
        Err(_) => Some(false),
    }
}

/// Metadata for no topic: the cheapest request that a SASL listener refuses before
/// authentication.
pub(crate) async fn request_metadata(connection: &Connection) -> Result<()> {
    let version = connection.version::<MetadataRequest>(1..=9)?;
    // From version 1 an empty list asks for no topic (null would ask for all of them).
    connection
        .send(
            &MetadataRequest::default().with_topics(Some(Vec::new())),
            version,
        )
        .await
        .map(drop)
}

/// Whether a failed TLS handshake still proves the peer speaks TLS: it sent a certificate
/// (then refused, here or by the client's trust store) or a TLS alert. A closed
/// connection, a timeout or bytes that are no TLS record prove nothing.
pub(crate) fn proves_tls(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::AlertReceived(_)
                    | rustls::Error::PeerIncompatible(_)
            )
        })
}

/// A plaintext connection failed at its first request (the broker closed it, or answered
/// bytes that are no Kafka response): a TLS port does that.
pub(crate) async fn after_plaintext_refused(probe: &Probe<'_>, error: Error) -> Error {
    if probe.speaks_tls().await {
        probe.mismatch(Mismatch::TlsExpected)
    } else {
        error
    }
}

/// A TLS handshake failed without a word of TLS from the broker: a port without TLS does
/// that.
pub(crate) async fn after_tls_refused(probe: &Probe<'_>, error: Error) -> Error {
    if probe.speaks_plaintext_kafka().await {
        probe.mismatch(Mismatch::TlsNotSpoken)
    } else {
        error
    }
}

/// A connection without SASL was closed at its first request past ApiVersions: a listener
/// that requires SASL does that.
pub(crate) async fn after_unauthenticated_refused(probe: &Probe<'_>, error: Error) -> Error {
    match probe.sasl_listener().await {
        SaslListener::Offers(offered) => probe.mismatch(Mismatch::SaslExpected { offered }),
        SaslListener::NotEnabled | SaslListener::Unknown => error,
    }
}

/// The broker hung up on our SaslHandshake instead of answering it: nisshi 0.7 does that
/// for a mechanism it does not offer, and a listener without SASL may (Kafka's answers it
/// with ILLEGAL_SASL_STATE, see [`SaslAnswer::classify`]).
pub(crate) async fn after_handshake_hang_up(
    probe: &Probe<'_>,
    mechanism: SaslMechanism,
    error: Error,
) -> Error {
    match probe.sasl_listener().await {
        SaslListener::Offers(offered) if !offered.iter().any(|m| m == mechanism.name()) => {
            probe.mismatch(Mismatch::MechanismNotOffered { mechanism, offered })
        }
        // It offers the mechanism after all: something else closed the connection.
        SaslListener::Offers(_) => error,
        SaslListener::NotEnabled => probe.mismatch(Mismatch::SaslNotEnabled),
        SaslListener::Unknown if probe.answers_unauthenticated().await => {
            probe.mismatch(Mismatch::SaslNotEnabled)
        }
        SaslListener::Unknown => error,
    }
}

/// What one SaslHandshake answer says about the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SaslAnswer {
    /// It does SASL and named these mechanisms.
    Offers(Vec<String>),
    /// It has no SASL.
    NotEnabled,
    /// An answer that says neither.
    Unclear,
}

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;

impl SaslAnswer {
    /// Reads the answer to a SaslHandshake for `asked`. On a SASL listener Kafka answers
    /// NONE or UNSUPPORTED_SASL_MECHANISM, either with all its enabled mechanisms
    /// (SaslServerAuthenticator.handleHandshakeRequest). On a listener without SASL the
    /// request reaches KafkaApis.handleSaslHandshakeRequest, which answers
    /// ILLEGAL_SASL_STATE; nisshi 0.7 answers there UNSUPPORTED_SASL_MECHANISM naming the
    /// mechanism asked for, which no SASL listener would, so that reads as no SASL too.
    pub fn classify(asked: &str, error_code: i16, mechanisms: &[String]) -> Self {
        match error_code {
            0 => SaslAnswer::Offers(mechanisms.to_vec()),
            ILLEGAL_SASL_STATE => SaslAnswer::NotEnabled,
            UNSUPPORTED_SASL_MECHANISM if mechanisms.iter().any(|m| m == asked) => {
                SaslAnswer::NotEnabled
            }
            UNSUPPORTED_SASL_MECHANISM => SaslAnswer::Offers(mechanisms.to_vec()),
            _ => SaslAnswer::Unclear,
        }
    }
}

/// What the SaslHandshake answers of a listener add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SaslListener {
    /// It does SASL with these mechanisms (every one any answer named, sorted).
    Offers(Vec<String>),
    NotEnabled,
    Unknown,
}

impl SaslListener {
    fn from_answers(answers: impl IntoIterator<Item = SaslAnswer>) -> Self {
        let mut offered = BTreeSet::new();
        let mut offers_sasl = false;
        let mut not_enabled = false;
        for answer in answers {
            match answer {
                SaslAnswer::Offers(mechanisms) => {
                    offers_sasl = true;
                    offered.extend(mechanisms);
                }
                SaslAnswer::NotEnabled => not_enabled = true,
                SaslAnswer::Unclear => {}
            }
        }
        if offers_sasl {
            SaslListener::Offers(offered.into_iter().collect())
        } else if not_enabled {
            SaslListener::NotEnabled
        } else {
            SaslListener::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn kafka_answers_name_every_enabled_mechanism() {
        let enabled = names(&["PLAIN", "SCRAM-SHA-512"]);
        assert_eq!(
            SaslAnswer::classify("SCRAM-SHA-256", 33, &enabled),
            SaslAnswer::Offers(enabled.clone())
        );
        assert_eq!(
            SaslAnswer::classify("PLAIN", 0, &enabled),
            SaslAnswer::Offers(enabled)
        );
    }

    #[test]
    fn a_listener_without_sasl_answers_illegal_state_or_names_the_mechanism_it_refuses() {
        // Kafka: KafkaApis answers ILLEGAL_SASL_STATE.
        assert_eq!(
            SaslAnswer::classify("SCRAM-SHA-512", 34, &[]),
            SaslAnswer::NotEnabled
        );
        // nisshi 0.7: UNSUPPORTED_SASL_MECHANISM, "offering" what was asked.
        assert_eq!(
            SaslAnswer::classify("SCRAM-SHA-512", 33, &names(&["SCRAM-SHA-512"])),
            SaslAnswer::NotEnabled
        );
        assert_eq!(SaslAnswer::classify("PLAIN", 35, &[]), SaslAnswer::Unclear);
    }

    #[test]
    fn a_listener_offers_what_any_answer_named() {
        // nisshi 0.7 names only the mechanism asked for, and hangs up on PLAIN (no answer).
        let answers = [
            SaslAnswer::Offers(names(&["SCRAM-SHA-512"])),
            SaslAnswer::Offers(names(&["SCRAM-SHA-256"])),
        ];
        assert_eq!(
            SaslListener::from_answers(answers),
            SaslListener::Offers(names(&["SCRAM-SHA-256", "SCRAM-SHA-512"]))
        );
        assert_eq!(
            SaslListener::from_answers([SaslAnswer::NotEnabled, SaslAnswer::Unclear]),
            SaslListener::NotEnabled
        );
        assert_eq!(SaslListener::from_answers([]), SaslListener::Unknown);
    }

    #[test]
    fn mismatches_name_the_broker_and_what_it_offers() {
        let error = Error::Mismatch {
            address: "kafka-0:9093".into(),
            mismatch: Mismatch::MechanismNotOffered {
                mechanism: SaslMechanism::ScramSha256,
                offered: names(&["PLAIN", "SCRAM-SHA-512"]),
            },
        };
        assert_eq!(
            error.to_string(),
            "the broker at kafka-0:9093 does not offer SASL mechanism SCRAM-SHA-256 \
             (it offers: PLAIN, SCRAM-SHA-512)"
        );
        assert!(error.is_security() && !error.is_connection());
    }

    #[test]
    fn only_a_certificate_or_an_alert_proves_tls() {
        let certificate = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(proves_tls(&certificate));
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert!(!proves_tls(&eof));
        let garbage = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(!proves_tls(&garbage));
    }
}
