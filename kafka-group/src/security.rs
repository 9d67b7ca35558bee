//! How connections to the brokers are secured, as settings: TLS (a `rustls::ClientConfig`,
//! the type rskafka's `ClientBuilder::tls_config` takes, so an application builds it once
//! and hands the same value to both clients) and SASL credentials (PLAIN, SCRAM-SHA-256,
//! SCRAM-SHA-512). The handshakes that use them are `transport` (TLS), `sasl` and
//! `establish` (a connection's set-up, and the start-up check).

use std::{fmt, sync::Arc};

use secrecy::SecretString;
use tokio_rustls::rustls;

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

#[cfg(test)]
mod tests {
    use super::*;

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
