//! How a connection to a broker is secured: TLS around the TCP stream, then SASL
//! authentication (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) before any other request.
//!
//! The TLS settings are a `rustls::ClientConfig`, the type rskafka's `ClientBuilder::tls_config`
//! takes, so an application builds it once and hands the same value to both clients.

use secrecy::{ExposeSecret, SecretString};
use std::{fmt, io::Cursor, sync::Arc, time::Duration};

use kafka_protocol::{
    messages::{SaslAuthenticateRequest, SaslHandshakeRequest},
    protocol::StrBytes,
};
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
use tokio::net::TcpStream;
use tokio_rustls::{
    rustls::{self, pki_types::ServerName},
    TlsConnector,
};

use crate::{
    connection::{Connection, Transport},
    diagnosis::{self, Mismatch, Probe, SaslAnswer},
    error::{protocol_error, Error, Result},
};

/// How long a TLS handshake may go unanswered before the port is also asked, in plaintext,
/// whether it speaks Kafka without TLS (see [`tls_handshake`]). Far above a handshake's
/// round trips; asking a TLS port costs it one refused connection.
const SLOW_HANDSHAKE: Duration = Duration::from_millis(500);

/// TLS and SASL settings shared by every connection of a client. The default is plaintext
/// without authentication.
#[derive(Clone, Default)]
pub struct Security {
    /// Encrypts connections and checks the broker's certificate; `None` is plaintext.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Authenticates every connection; `None` sends no SASL handshake.
    pub sasl: Option<SaslCredentials>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

impl Security {
    /// Opens one connection to a bootstrap broker with these settings (TLS handshake,
    /// ApiVersions, SASL) and asks it for metadata: a start-up check that reports at once,
    /// instead of after a client's retry deadline, refused credentials or an untrusted
    /// certificate ([`Error::Tls`], [`Error::Authentication`]) and settings the broker's
    /// listener does not speak ([`Error::Mismatch`]: TLS or not, SASL or not, the SASL
    /// mechanism). Costs one connection; the listener is probed only after a failure.
    pub async fn check(
        &self,
        bootstrap: &[String],
        client_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = Error::Config("no bootstrap brokers configured".into());
        for address in bootstrap {
            match self.check_broker(address, client_id, timeout).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_security() => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn check_broker(&self, address: &str, client_id: &str, timeout: Duration) -> Result<()> {
        let connection = Connection::connect(address, client_id, timeout, self).await?;
        // A SASL listener answers ApiVersions before authentication (KIP-43) and closes the
        // connection at any other request: only a second request shows it wants SASL.
        match diagnosis::request_metadata(&connection).await {
            Err(e @ Error::Io(_)) if self.sasl.is_none() => {
                let probe = Probe {
                    address,
                    client_id,
                    timeout,
                    tls: self.tls.as_ref(),
                };
                Err(diagnosis::after_unauthenticated_refused(&probe, e).await)
            }
            result => result,
        }
    }
}

/// The SASL mechanisms this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// The password travels as it is: use it only inside TLS.
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub const ALL: [SaslMechanism; 3] = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ];

    /// The name Kafka uses in SaslHandshake.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `password` is a [`SecretString`]: it prints as redacted and is wiped from memory when
/// dropped, and reading it takes an `expose_secret()` a reviewer can find.
#[derive(Clone, Debug)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: SecretString,
}

/// The certificate check's name for `address` (`host:port` or `[v6]:port`): an IP address
/// is matched against the certificate's IP entries, anything else against its DNS names.
pub(crate) fn server_name(address: &str) -> Result<ServerName<'static>> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Config(format!("{address} is not a valid TLS server name: {e}")))
}

/// The TLS handshake of a probe: a failure (an untrusted or expired certificate, a name
/// mismatch, a plaintext listener) is an [`Error::Tls`], never retried as plaintext.
pub(crate) async fn wrap(
    tcp: TcpStream,
    address: &str,
    config: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Box<dyn Transport>> {
    let handshake = TlsConnector::from(Arc::clone(config)).connect(server_name(address)?, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(handshake_failed(address, &e)),
        Err(_) => Err(handshake_timed_out(address, timeout)),
    }
}

/// The TLS handshake of a client's connection, as [`wrap`], but a port that turns out to
/// answer Kafka in plaintext is reported as [`Mismatch::TlsNotSpoken`]. Asked after a
/// failure that is not the broker's certificate (which proves TLS), and meanwhile when the
/// handshake is slow: a listener without TLS reads the ClientHello (16 03 01 ..) as the size
/// of a request of over 369 MB, which Kafka refuses at once (above socket.request.max.bytes,
/// NetworkReceive's InvalidReceiveException) but nisshi 0.7 waits for until the timeout.
pub(crate) async fn tls_handshake(
    tcp: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    probe: &Probe<'_>,
) -> Result<Box<dyn Transport>> {
    let address = probe.address;
    let handshake = TlsConnector::from(Arc::clone(config)).connect(server_name(address)?, tcp);
    let handshake = tokio::time::timeout(probe.timeout, handshake);
    tokio::pin!(handshake);
    let answers_plaintext = async {
        tokio::time::sleep(SLOW_HANDSHAKE.min(probe.timeout)).await;
        probe.speaks_plaintext_kafka().await
    };
    let outcome = tokio::select! {
        outcome = &mut handshake => outcome,
        // A `false` disables this branch: the handshake goes on to its own end.
        true = answers_plaintext => return Err(probe.mismatch(Mismatch::TlsNotSpoken)),
    };
    match outcome {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) if diagnosis::proves_tls(&e) => Err(handshake_failed(address, &e)),
        Ok(Err(e)) => Err(diagnosis::after_tls_refused(probe, handshake_failed(address, &e)).await),
        Err(_) => Err(handshake_timed_out(address, probe.timeout)),
    }
}

fn handshake_failed(address: &str, error: &std::io::Error) -> Error {
    Error::Tls(format!("TLS handshake with {address} failed: {error}"))
}

fn handshake_timed_out(address: &str, timeout: Duration) -> Error {
    Error::Tls(format!(
        "TLS handshake with {address} timed out after {timeout:?} (is it a plaintext listener?)"
    ))
}

const HANDSHAKE_VERSIONS: std::ops::RangeInclusive<i16> = 1..=1;
const AUTHENTICATE_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

/// Runs the SASL exchange on a fresh connection: SaslHandshake names the mechanism, then
/// SaslAuthenticate carries the mechanism's messages (computed by `rsasl`) until it ends.
/// A listener without SASL, or without this mechanism, is an [`Error::Mismatch`].
pub(crate) async fn authenticate(
    connection: &Connection,
    sasl: &SaslCredentials,
    probe: &Probe<'_>,
) -> Result<()> {
    handshake(connection, sasl, probe).await?;
    exchange(connection, sasl).await
}

/// The refusal of `sasl` by the broker at the other end of `connection`, and why.
fn refused(connection: &Connection, sasl: &SaslCredentials, why: String) -> Error {
    Error::Authentication(format!(
        "{} refused SASL {} authentication as {:?}: {why}",
        connection.address(),
        sasl.mechanism.name(),
        sasl.username
    ))
}

/// SaslHandshake: the broker accepts the mechanism, or says which it offers instead.
async fn handshake(
    connection: &Connection,
    sasl: &SaslCredentials,
    probe: &Probe<'_>,
) -> Result<()> {
    let mechanism = sasl.mechanism.name();
    let version = connection.version::<SaslHandshakeRequest>(HANDSHAKE_VERSIONS)?;
    let handshake = match connection
        .send(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
            version,
        )
        .await
    {
        Ok(handshake) => handshake,
        // nisshi 0.7 hangs up on a mechanism it does not offer; a listener without SASL may.
        Err(e @ Error::Io(_)) => {
            let error = refused(connection, sasl, format!(
                "the broker closed the connection at the SaslHandshake ({e}); it may not offer {mechanism}"
            ));
            return Err(diagnosis::after_handshake_hang_up(probe, sasl.mechanism, error).await);
        }
        Err(e) => return Err(e),
    };
    let Some(error) = protocol_error(handshake.error_code) else {
        return Ok(());
    };
    let offered: Vec<String> = handshake
        .mechanisms
        .iter()
        .map(|m| m.as_str().to_string())
        .collect();
    Err(
        match SaslAnswer::classify(mechanism, handshake.error_code, &offered) {
            SaslAnswer::NotEnabled => probe.mismatch(Mismatch::SaslNotEnabled),
            SaslAnswer::Offers(offered) => probe.mismatch(Mismatch::MechanismNotOffered {
                mechanism: sasl.mechanism,
                offered,
            }),
            SaslAnswer::Unclear => refused(
                connection,
                sasl,
                format!(
                    "{error} (the broker offers {})",
                    diagnosis::listing(&offered)
                ),
            ),
        },
    )
}

/// SaslAuthenticate rounds, each carrying the mechanism's next message, until it ends.
async fn exchange(connection: &Connection, sasl: &SaslCredentials) -> Result<()> {
    let mechanism = sasl.mechanism.name();
    let config = SASLConfig::with_credentials(
        None,
        sasl.username.clone(),
        sasl.password.expose_secret().to_string(),
    )
    .map_err(|e| Error::Config(format!("SASL credentials: {e}")))?;
    let name = Mechname::parse(mechanism.as_bytes())
        .map_err(|e| Error::Config(format!("SASL mechanism {mechanism}: {e}")))?;
    let mut session = SASLClient::new(config)
        .start_suggested(&[name])
        .map_err(|e| Error::Config(format!("SASL mechanism {mechanism}: {e}")))?;
    let version = connection.version::<SaslAuthenticateRequest>(AUTHENTICATE_VERSIONS)?;
    let mut received: Option<Vec<u8>> = None;
    loop {
        let mut message = Cursor::new(Vec::new());
        let state = session
            .step(received.as_deref(), &mut message)
            .map_err(|e| {
                refused(
                    connection,
                    sasl,
                    format!("{e} (a wrong user name or password ends the exchange so)"),
                )
            })?;
        if state.has_sent_message() {
            let response = connection
                .send(
                    &SaslAuthenticateRequest::default()
                        .with_auth_bytes(message.into_inner().into()),
                    version,
                )
                .await?;
            if let Some(error) = protocol_error(response.error_code) {
                let detail = response
                    .error_message
                    .as_ref()
                    .map(|m| m.as_str())
                    .filter(|m| !m.is_empty())
                    .map(|m| format!("{error}: {m}"))
                    .unwrap_or_else(|| error.to_string());
                return Err(refused(connection, sasl, detail));
            }
            received = Some(response.auth_bytes.to_vec());
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_of_an_ip_address_is_an_ip() {
        assert!(matches!(
            server_name("127.0.0.1:9092"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:9092"),
            Ok(ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn server_name_of_a_host_is_a_dns_name() {
        assert!(matches!(
            server_name("kafka-0.kafka.svc:9093"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad host:9092").is_err());
    }

    #[test]
    fn credentials_never_print_the_password() {
        let credentials = SaslCredentials {
            mechanism: SaslMechanism::ScramSha512,
            username: "worker".into(),
            password: "hunter2".into(),
        };
        let printed = format!(
            "{:?}",
            Security {
                tls: None,
                sasl: Some(credentials)
            }
        );
        assert!(printed.contains("worker"));
        assert!(!printed.contains("hunter2"));
    }
}
