//! What a MongoDB error means for the caller, told without the driver's internals.
//!
//! Two questions matter to an operator and to the code: can this heal by waiting (the server
//! is down, stepping down, overloaded) or not (this user may not do it, the server refuses
//! the documents), and what to tell a human. The driver's own `Display` answers neither: an
//! `insert_many` error prints its `Debug` form, raw BSON in hex included, and a server's
//! `errmsg` may echo the whole command. [`Failure`] answers both from the error's codes.

use std::fmt;

use mongodb::error::{Error, ErrorKind, WriteFailure};

use super::DUPLICATE_KEY;

/// Server error codes that waiting does not cure: the request is refused as it is.
/// 13 Unauthorized, 18 AuthenticationFailed, 121 DocumentValidationFailure, 8000 AtlasError
/// (Atlas's code for refused operations, e.g. a user without the privilege).
const REFUSED_CODES: &[i32] = &[13, 18, 121, 8000];
/// MongoDB's code for a missing privilege or a missing login.
pub const UNAUTHORIZED: i32 = 13;

/// A MongoDB error, classified and described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server did not answer or cannot take the request now: retrying may succeed.
    Unavailable(String),
    /// The server answered and refuses the request itself (authorization, validation):
    /// retrying the same request cannot succeed until someone changes the set-up.
    Refused { code: i32, description: String },
}

impl Failure {
    pub fn of(error: &Error) -> Self {
        if let ErrorKind::Authentication { .. } = error.kind.as_ref() {
            return Self::Refused {
                code: 18,
                description: format!(
                    "authentication failed: {}",
                    one_line(&error.kind.to_string())
                ),
            };
        }
        match refusing_code(error) {
            Some(code) => Self::Refused {
                code,
                description: describe(error),
            },
            None => Self::Unavailable(describe(error)),
        }
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// The refusal is a missing login or privilege (not, say, a validation rule).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if *code == UNAUTHORIZED || *code == 8000)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(description) => write!(f, "unavailable: {description}"),
            Self::Refused { description, .. } => write!(f, "refused: {description}"),
        }
    }
}

/// The first code among the error's that refuses the request. Duplicate keys are not
/// refusals (a redelivered purchase), so they are skipped.
fn refusing_code(error: &Error) -> Option<i32> {
    let refusing = |code: i32| REFUSED_CODES.contains(&code).then_some(code);
    match error.kind.as_ref() {
        ErrorKind::Command(e) => refusing(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => refusing(e.code),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .find_map(|e| refusing(e.code)),
        _ => None,
    }
}

/// One line a human can act on, built from codes and short messages, never from the
/// driver's `Debug` forms or echoed commands.
pub fn describe(error: &Error) -> String {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => coded(e.code, Some(&e.code_name), &e.message),
        ErrorKind::Write(WriteFailure::WriteError(e)) => {
            coded(e.code, e.code_name.as_deref(), &e.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => format!(
            "write concern not satisfied: {}",
            coded(e.code, Some(&e.code_name), &e.message)
        ),
        ErrorKind::InsertMany(e) => {
            if let Some(concern) = &e.write_concern_error {
                return format!(
                    "write concern not satisfied: {}",
                    coded(concern.code, Some(&concern.code_name), &concern.message)
                );
            }
            let errors = e.write_errors.as_deref().unwrap_or_default();
            let failing: Vec<_> = errors.iter().filter(|e| e.code != DUPLICATE_KEY).collect();
            match failing.first() {
                Some(first) => format!(
                    "{} of the documents failed, the first with {}",
                    failing.len(),
                    coded(first.code, first.code_name.as_deref(), &first.message)
                ),
                None => format!("{} duplicate keys", errors.len()),
            }
        }
        ErrorKind::Io(e) => format!("connection error: {}", one_line(&e.to_string())),
        ErrorKind::ServerSelection { .. } => {
            "no MongoDB server answered within the server selection timeout".to_string()
        }
        ErrorKind::ConnectionPoolCleared { .. } => {
            "the connection to MongoDB was lost (connection pool cleared)".to_string()
        }
        kind => one_line(&kind.to_string()),
    }
}

/// `Unauthorized (code 13): ...`, the server's message cut before any echoed command.
fn coded(code: i32, name: Option<&str>, message: &str) -> String {
    let message = message.split(" { ").next().unwrap_or(message);
    let message = one_line(message);
    match name.filter(|n| !n.is_empty()) {
        Some(name) => format!("{name} (code {code}): {message}"),
        None => format!("code {code}: {message}"),
    }
}

/// The first line, at most 200 characters.
fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_lose_echoed_commands_and_extra_lines() {
        assert_eq!(
            coded(13, Some("Unauthorized"), "not authorized on shop to execute command { insert: \"purchases\", documents: [...] }"),
            "Unauthorized (code 13): not authorized on shop to execute command"
        );
        assert_eq!(
            coded(121, None, "Document failed validation\nmore"),
            "code 121: Document failed validation"
        );
        assert_eq!(one_line(&"x".repeat(300)).chars().count(), 201);
    }

    #[test]
    fn refusals_and_outages_are_told_apart_by_code() {
        let command = |code: i32| {
            Error::from(ErrorKind::Command(
                serde_json::from_value(serde_json::json!({
                    "code": code, "codeName": "X", "errmsg": "m"
                }))
                .expect("a command error"),
            ))
        };
        assert!(Failure::of(&command(13)).is_refused());
        assert!(Failure::of(&command(13)).is_unauthorized());
        assert!(Failure::of(&command(121)).is_refused());
        assert!(!Failure::of(&command(121)).is_unauthorized());
        // NotWritablePrimary, HostUnreachable: a failover heals them.
        assert!(!Failure::of(&command(10107)).is_refused());
        assert!(!Failure::of(&command(6)).is_refused());
        let io = Error::from(ErrorKind::Io(std::sync::Arc::new(std::io::Error::other(
            "reset",
        ))));
        assert_eq!(
            Failure::of(&io),
            Failure::Unavailable("connection error: reset".into())
        );
    }
}
