//! How a connection to a broker is secured: TLS around the TCP stream, then SASL
//! authentication (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) before any other request.
//!
//! The TLS settings are a `rustls::ClientConfig`, the type rskafka's `ClientBuilder::tls_config`
//! takes, so an application builds it once and hands the same value to both clients.

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
    error::{protocol_error, Error, Result},
};

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
    /// ApiVersions, SASL): a start-up check that reports refused credentials or an
    /// untrusted certificate at once, as [`Error::Tls`] or [`Error::Authentication`],
    /// instead of after a client's retry deadline.
    pub async fn check(
        &self,
        bootstrap: &[String],
        client_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = Error::Config("no bootstrap brokers configured".into());
        for address in bootstrap {
            match Connection::connect(address, client_id, timeout, self).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_security() => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
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

#[derive(Clone)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The certificate check's name for `address` (`host:port` or `[v6]:port`): an IP address
/// is matched against the certificate's IP entries, anything else against its DNS names.
fn server_name(address: &str) -> Result<ServerName<'static>> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Config(format!("{address} is not a valid TLS server name: {e}")))
}

/// Wraps `tcp` in TLS when configured; a handshake failure (an untrusted or expired
/// certificate, a name mismatch, a plaintext listener) is an [`Error::Tls`], never retried
/// as plaintext.
pub(crate) async fn wrap(
    tcp: TcpStream,
    address: &str,
    security: &Security,
    timeout: Duration,
) -> Result<Box<dyn Transport>> {
    let Some(config) = &security.tls else {
        return Ok(Box::new(tcp));
    };
    let connector = TlsConnector::from(Arc::clone(config));
    let handshake = connector.connect(server_name(address)?, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(Error::Tls(format!(
            "TLS handshake with {address} failed: {e}"
        ))),
        Err(_) => Err(Error::Tls(format!(
            "TLS handshake with {address} timed out after {timeout:?} (is it a plaintext listener?)"
        ))),
    }
}

const HANDSHAKE_VERSIONS: std::ops::RangeInclusive<i16> = 1..=1;
const AUTHENTICATE_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

/// Runs the SASL exchange on a fresh connection: SaslHandshake names the mechanism, then
/// SaslAuthenticate carries the mechanism's messages (computed by `rsasl`) until it ends.
pub(crate) async fn authenticate(connection: &Connection, sasl: &SaslCredentials) -> Result<()> {
    let address = connection.address();
    let mechanism = sasl.mechanism.name();
    let refused = |why: String| {
        Error::Authentication(format!(
            "{address} refused SASL {mechanism} authentication as {:?}: {why}",
            sasl.username
        ))
    };
    let version = connection.version::<SaslHandshakeRequest>(HANDSHAKE_VERSIONS)?;
    let handshake = connection
        .send(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
            version,
        )
        .await
        // Some brokers (nisshi 0.7) hang up on a mechanism they do not offer.
        .map_err(|e| match e {
            Error::Io(cause) => refused(format!(
                "the broker closed the connection at the SaslHandshake ({cause}); it may not offer {mechanism}"
            )),
            other => other,
        })?;
    if let Some(error) = protocol_error(handshake.error_code) {
        let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(refused(format!(
            "{error} (the broker offers {})",
            offered.join(", ")
        )));
    }

    let config = SASLConfig::with_credentials(None, sasl.username.clone(), sasl.password.clone())
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
                refused(format!(
                    "{e} (a wrong user name or password ends the exchange so)"
                ))
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
                return Err(refused(detail));
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
