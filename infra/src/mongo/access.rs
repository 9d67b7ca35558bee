//! Proving that a process may do its job in MongoDB, not only that a socket answers.
//!
//! A `ping` succeeds without logging in, so a connection string without credentials against
//! a server that requires them used to pass start-up and readiness and then fail every write.
//! [`AccessCheck`] runs the operations the process needs, on the collections it uses, in a
//! form that changes nothing: a `find` of an `_id` that is never used, and an `insert` of a
//! document whose array `_id` every MongoDB refuses per document, after it has checked the
//! privilege (so a refused privilege is the command's error, code 13, and a granted one is
//! the document's, code 53). When the server does not answer, a TLS handshake tells whether
//! it is down or expects TLS.

use std::{fmt, sync::Arc, time::Duration};

use kafka_group::speaks_tls;
use mongodb::{
    bson::{doc, Document},
    options::{ClientOptions, Tls},
    Database,
};

use super::failure::{describe, Failure};

/// The `_id` the probes use: never one of ours (those are UUIDs).
const PROBE_ID: &str = "scalable-shop-access-probe";

/// An operation the process performs on a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Find,
    Insert,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Find => "find in",
            Operation::Insert => "insert into",
        })
    }
}

/// What a process must be allowed: `operation` on `collection` of its database.
#[derive(Debug, Clone)]
pub struct Need {
    pub operation: Operation,
    pub collection: &'static str,
}

impl Need {
    pub const fn find(collection: &'static str) -> Self {
        Self {
            operation: Operation::Find,
            collection,
        }
    }

    pub const fn insert(collection: &'static str) -> Self {
        Self {
            operation: Operation::Insert,
            collection,
        }
    }
}

/// Where the connection string points, as far as a diagnosis needs it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub hosts: Vec<String>,
    pub tls: bool,
    /// The user of the connection string; `None` connects without logging in.
    pub user: Option<String>,
}

impl Endpoint {
    pub fn of(options: &ClientOptions) -> Self {
        Self {
            hosts: options.hosts.iter().map(ToString::to_string).collect(),
            tls: matches!(options.tls, Some(Tls::Enabled(_))),
            user: options.credential.as_ref().and_then(|c| c.username.clone()),
        }
    }
}

/// Why the process cannot do its job in MongoDB. Only [`Problem::Unreachable`] may heal by
/// waiting; every other one needs a change of set-up, and is a start-up error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Problem {
    #[error("MongoDB does not answer: {0}")]
    Unreachable(String),
    #[error("MongoDB refused the credentials: {0} (check the user, password and authSource of the connection string)")]
    Credentials(String),
    #[error("MongoDB's TLS certificate is not trusted or TLS failed: {0} (check tlsCAFile, the server's certificate and its name)")]
    Tls(String),
    #[error("MongoDB at {host} expects TLS and the connection string does not use it: add tls=true (and tlsCAFile=<CA file>) to the connection string")]
    TlsExpected { host: String },
    #[error("MongoDB at {host} does not speak TLS on this port and the connection string asks for it: remove tls=true, or use the server's TLS port")]
    TlsNotSpoken { host: String },
    #[error("MongoDB requires authentication and the connection string has no user, so it may not {operation} {namespace}: add user:password@ (and authSource) to the connection string")]
    AuthenticationRequired {
        operation: Operation,
        namespace: String,
    },
    #[error("MongoDB user {user:?} may not {operation} {namespace} ({detail}): grant it that privilege, e.g. the readWrite role on database {database}")]
    NotAuthorized {
        user: String,
        operation: Operation,
        namespace: String,
        database: String,
        detail: String,
    },
    #[error("MongoDB refuses to {operation} {namespace}: {detail}")]
    Refused {
        operation: Operation,
        namespace: String,
        detail: String,
    },
}

impl Problem {
    /// True when waiting may cure it (the server is down or starting).
    pub fn heals(&self) -> bool {
        matches!(self, Problem::Unreachable(_))
    }

    /// A stable word for readiness bodies and metrics.
    pub fn state(&self) -> &'static str {
        if self.heals() {
            "unreachable"
        } else {
            "refused"
        }
    }
}

/// The operations a process needs, run against its database.
#[derive(Clone)]
pub struct AccessCheck {
    db: Database,
    endpoint: Arc<Endpoint>,
    needs: Arc<[Need]>,
    timeout: Duration,
}

impl AccessCheck {
    pub fn new(db: Database, endpoint: Endpoint, needs: &[Need], timeout: Duration) -> Self {
        Self {
            db,
            endpoint: Arc::new(endpoint),
            needs: needs.into(),
            timeout,
        }
    }

    /// Ping, then each need in turn; the first problem found.
    pub async fn run(&self) -> Result<(), Problem> {
        if let Err(error) = super::ping(&self.db).await {
            return Err(self.connection_problem(&error).await);
        }
        for need in self.needs.iter() {
            if let Err(error) = self.try_need(need).await {
                return Err(self.need_problem(need, &error).await);
            }
        }
        Ok(())
    }

    async fn try_need(&self, need: &Need) -> mongodb::error::Result<()> {
        let collection = self.db.collection::<Document>(need.collection);
        match need.operation {
            Operation::Find => collection
                .find_one(doc! { "_id": PROBE_ID })
                .await
                .map(|_| ()),
            Operation::Insert => {
                let reply = self
                    .db
                    .run_command(doc! {
                        "insert": need.collection,
                        "documents": [{ "_id": [PROBE_ID] }],
                    })
                    .await?;
                if reply.get_i32("n").unwrap_or(0) > 0 {
                    // A server that took an array `_id` (no MongoDB does): leave no trace.
                    tracing::warn!(
                        collection = need.collection,
                        "MongoDB stored the access probe; deleting it"
                    );
                    collection.delete_one(doc! { "_id": [PROBE_ID] }).await?;
                }
                Ok(())
            }
        }
    }

    async fn need_problem(&self, need: &Need, error: &mongodb::error::Error) -> Problem {
        let failure = Failure::of(error);
        let namespace = format!("{}.{}", self.db.name(), need.collection);
        match (&failure, &self.endpoint.user) {
            (f, None) if f.is_unauthorized() => Problem::AuthenticationRequired {
                operation: need.operation,
                namespace,
            },
            (f, Some(user)) if f.is_unauthorized() => Problem::NotAuthorized {
                user: user.clone(),
                operation: need.operation,
                namespace,
                database: self.db.name().to_string(),
                detail: failure_detail(&failure),
            },
            (Failure::Refused { .. }, _) => Problem::Refused {
                operation: need.operation,
                namespace,
                detail: failure_detail(&failure),
            },
            (Failure::Unavailable(_), _) => self.connection_problem(error).await,
        }
    }

    /// Names a refused login or TLS set-up; otherwise the server is unreachable, unless a
    /// TLS handshake shows the TLS setting is the wrong way round.
    async fn connection_problem(&self, error: &mongodb::error::Error) -> Problem {
        let text = error.kind.to_string().to_ascii_lowercase();
        let detail = describe(error);
        if matches!(
            error.kind.as_ref(),
            mongodb::error::ErrorKind::Authentication { .. }
        ) || text.contains("authentication failed")
            || matches!(error.kind.as_ref(), mongodb::error::ErrorKind::Command(e) if e.code == 18)
        {
            return Problem::Credentials(detail);
        }
        let Some(host) = self.endpoint.hosts.first() else {
            return Problem::Unreachable(detail);
        };
        let tls_failed = text.contains("certificate")
            || text.contains("tls handshake")
            || text.contains("invalid peer");
        match (self.endpoint.tls, speaks_tls(host, self.timeout).await) {
            (false, Some(true)) => Problem::TlsExpected { host: host.clone() },
            (true, Some(false)) => Problem::TlsNotSpoken { host: host.clone() },
            _ if tls_failed => Problem::Tls(detail),
            _ => Problem::Unreachable(detail),
        }
    }
}

fn failure_detail(failure: &Failure) -> String {
    match failure {
        Failure::Unavailable(d) | Failure::Refused { description: d, .. } => d.clone(),
    }
}
