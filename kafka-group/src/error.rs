//! Errors of the group client.

use kafka_protocol::ResponseError;

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
