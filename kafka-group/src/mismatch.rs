//! How this client's TLS or SASL settings disagree with what a broker's listener speaks: the
//! findings a diagnosis reports, worded for any application (flags are the application's).

use std::fmt;

use crate::security::SaslMechanism;

/// How this client's TLS or SASL settings disagree with what the broker's listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The client spoke plaintext to a listener that speaks TLS.
    TlsExpected,
    /// The client started TLS on a listener that answers Kafka requests in plaintext.
    TlsNotSpoken,
    /// The listener requires SASL authentication and the client sent none; `offered` are
    /// the mechanisms its SaslHandshake answers named.
    SaslExpected { offered: Vec<String> },
    /// The client authenticates with SASL on a listener that has no SASL.
    SaslNotEnabled,
    /// The listener requires SASL but not with the client's mechanism.
    MechanismNotOffered {
        mechanism: SaslMechanism,
        offered: Vec<String>,
    },
}

impl fmt::Display for Mismatch {
    /// Follows "the broker at ADDRESS".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::TlsExpected => {
                f.write_str("expects TLS, and this client connected in plaintext: turn TLS on")
            }
            Mismatch::TlsNotSpoken => f.write_str(
                "does not speak TLS on this port (it answered in plaintext): \
                 turn TLS off or use its TLS port",
            ),
            Mismatch::SaslExpected { offered } => write!(
                f,
                "expects SASL authentication (it offers {}), and this client sent none: \
                 configure a SASL mechanism and credentials",
                listing(offered)
            ),
            Mismatch::SaslNotEnabled => f.write_str(
                "does not use SASL authentication on this port: \
                 drop the SASL settings or use its SASL port",
            ),
            Mismatch::MechanismNotOffered { mechanism, offered } => write!(
                f,
                "does not offer SASL mechanism {mechanism} (it offers: {})",
                listing(offered)
            ),
        }
    }
}

/// Mechanism names for a message: `PLAIN, SCRAM-SHA-512`, or `none it named`.
pub fn listing(mechanisms: &[String]) -> String {
    if mechanisms.is_empty() {
        "none it named".into()
    } else {
        mechanisms.join(", ")
    }
}
