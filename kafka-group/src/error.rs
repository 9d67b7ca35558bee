//! Errors of the group client.

use kafka_protocol::ResponseError;

use crate::mismatch::Mismatch;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("cannot encode {0}")]
    Encode(String),
    #[error("cannot decode {0}")]
    Decode(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{api} failed: {error}")]
    Protocol {
        api: &'static str,
        error: ResponseError,
    },
    #[error("{0}")]
    Config(String),
    /// The TLS handshake failed: the broker's certificate is not trusted, has another
    /// name, or the listener does not speak TLS. Retrying the same settings cannot help.
    #[error("{0}")]
    Tls(String),
    /// The broker refused our SASL credentials or mechanism.
    #[error("{0}")]
    Authentication(String),
    /// This client's TLS or SASL settings are not what the broker's listener speaks, as
    /// probing it after a failed connection showed: TLS or plaintext, SASL or none, or the
    /// SASL mechanism. Retrying the same settings cannot help.
    #[error("the broker at {address} {mismatch}")]
    Mismatch { address: String, mismatch: Mismatch },
    /// The broker's ACLs do not let this client's user do what it needs (see
    /// `authorization`). Retrying cannot help until someone grants it.
    #[error("{0}")]
    NotAuthorized(String),
    #[error("the group member has stopped")]
    Stopped,
}

impl Error {
    /// The broker's error code, when this is a protocol error.
    pub fn protocol(&self) -> Option<ResponseError> {
        match self {
            Error::Protocol { error, .. } => Some(*error),
            _ => None,
        }
    }

    /// Connection-level trouble: worth reconnecting (possibly to another broker).
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Io(_) | Error::Timeout(_))
    }

    /// A refusal of our TLS or SASL settings: reported as it is, not retried as if the
    /// broker were only unreachable.
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            Error::Tls(_)
                | Error::Authentication(_)
                | Error::Mismatch { .. }
                | Error::NotAuthorized(_)
        )
    }

    /// The broker's address and how its listener disagrees with this client's settings,
    /// when that is what this is.
    pub fn mismatch(&self) -> Option<(&str, &Mismatch)> {
        match self {
            Error::Mismatch { address, mismatch } => Some((address, mismatch)),
            _ => None,
        }
    }
}

pub(crate) fn protocol_error(code: i16) -> Option<ResponseError> {
    ResponseError::try_from_code(code)
}

pub(crate) fn check(api: &'static str, code: i16) -> Result<()> {
    match protocol_error(code) {
        None => Ok(()),
        Some(error) => Err(Error::Protocol { api, error }),
    }
}
