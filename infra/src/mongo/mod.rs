//! Connecting to MongoDB, proving the process may use it, and preparing the purchases
//! collection.

mod access;
pub mod document;
mod failure;

pub use access::{AccessCheck, Endpoint, Need, Operation, Problem};
pub use failure::{describe, Failure};

use mongodb::{
    bson::{doc, Document},
    options::{Acknowledgment, ClientOptions, IndexOptions, Tls, WriteConcern},
    Client, Collection, Database, IndexModel,
};

use crate::{
    config::{MongoArgs, WriteAcknowledgment, WriteConcernArgs},
    mongo::document::{fields, COLLECTION},
};

/// Why a connection string could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read --mongo-uri-file {path}: {cause}")]
    UriFile { path: String, cause: String },
    #[error("invalid MongoDB connection string: {0}")]
    Uri(mongodb::error::Error),
}

/// Connects lazily (the driver dials on first use) with bounded server selection, so an
/// unreachable database turns into an error after `timeout` instead of a hang. Credentials
/// and TLS come from the connection string; see [`open`] for refusing bad ones.
pub async fn connect(
    args: &MongoArgs,
    app_name: &str,
) -> Result<(Database, Endpoint), ConnectError> {
    let uri = match &args.uri_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ConnectError::UriFile {
                path: path.display().to_string(),
                cause: e.to_string(),
            })?
            .trim()
            .to_string(),
        None => args.uri.clone(),
    };
    let mut options = ClientOptions::parse(&uri)
        .await
        .map_err(ConnectError::Uri)?;
    if let Some(Tls::Enabled(tls)) = &options.tls {
        if tls.allow_invalid_certificates == Some(true) {
            tracing::warn!("the MongoDB connection string turns certificate checks off (tlsInsecure / tlsAllowInvalidCertificates): anyone in the network path can read and change purchases");
        }
    }
    options.app_name = Some(app_name.to_string());
    options.server_selection_timeout = Some(args.timeout);
    options.connect_timeout = Some(args.timeout);
    options.write_concern = Some(write_concern(&args.write_concern));
    let endpoint = Endpoint::of(&options);
    let client = Client::with_options(options).map_err(ConnectError::Uri)?;
    Ok((client.database(&args.database), endpoint))
}

/// Why the database cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Access(Problem),
}

/// [`connect`], then an [`AccessCheck`] of `needs`: refused credentials, missing privileges
/// and a TLS setting the wrong way round stop the start-up, named; a database that is only
/// unreachable is logged and left to readiness (a database restart must not stop the fleet).
/// The check is returned for readiness to run again.
pub async fn open(args: &MongoArgs, app_name: &str, needs: &[Need]) -> Result<Opened, OpenError> {
    let (db, endpoint) = connect(args, app_name).await?;
    let access = AccessCheck::new(db.clone(), endpoint, needs, args.timeout);
    let usable = match access.run().await {
        Ok(()) => true,
        Err(problem) if problem.heals() => {
            tracing::warn!(%problem, "starting anyway (readiness reports it until MongoDB answers)");
            false
        }
        Err(problem) => return Err(OpenError::Access(problem)),
    };
    Ok(Opened { db, access, usable })
}

/// A database handle whose access was checked at start-up.
pub struct Opened {
    pub db: Database,
    /// The check, to run again for readiness.
    pub access: AccessCheck,
    /// The start-up check passed: the process may use the database now, without asking
    /// again (it was unreachable otherwise; a refusal is an [`OpenError`]).
    pub usable: bool,
}

/// The client-wide write concern: every write of ours (purchases, idempotency keys) is
/// acknowledged only once it is as durable as configured.
fn write_concern(args: &WriteConcernArgs) -> WriteConcern {
    let w = match &args.w {
        WriteAcknowledgment::Majority => Acknowledgment::Majority,
        WriteAcknowledgment::Members(n) => Acknowledgment::Nodes(*n),
        WriteAcknowledgment::Tag(tag) => Acknowledgment::Custom(tag.clone()),
    };
    WriteConcern::builder()
        .w(w)
        .journal(args.journal)
        .w_timeout(args.timeout)
        .build()
}

/// Ends the client's server sessions and closes its connections while the runtime still
/// runs; call it last, once nothing uses the database any more. Without it the last handle's
/// drop does this in a background task that races the runtime's own shutdown at process exit,
/// and the driver panics (`SendError` in its connection requester) when its pool task is
/// dropped first. Bounded by `within`, so an unreachable server cannot hold the exit.
pub async fn disconnect(db: &Database, within: std::time::Duration) {
    if tokio::time::timeout(within, db.client().clone().shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?within, "MongoDB client did not shut down in time");
    }
}

pub fn purchases(db: &Database) -> Collection<Document> {
    db.collection(COLLECTION)
}

/// Indexes for the history reads: a user's purchases newest first (by userId, or by
/// username for the seed routes). `_id` is a UUID v7, so descending `_id` is newest first.
/// Creating an index that already exists with the same keys and name is a no-op.
pub async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    let index = |name: &str, key: &str| {
        IndexModel::builder()
            .keys(doc! { key: 1, fields::ID: -1 })
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build()
    };
    purchases(db)
        .create_indexes([
            index("userId_newest_first", fields::USER_ID),
            index("username_newest_first", fields::USERNAME),
        ])
        .await?;
    Ok(())
}

pub async fn ping(db: &Database) -> mongodb::error::Result<()> {
    db.run_command(doc! { "ping": 1 }).await.map(|_| ())
}

/// MongoDB's duplicate key error code.
pub const DUPLICATE_KEY: i32 = 11000;

/// True when a single write failed only because its `_id` (or another unique key) exists.
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    matches!(
        error.kind.as_ref(),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(e))
            if e.code == DUPLICATE_KEY
    )
}

/// Creates the indexes in the background, retrying with backoff until MongoDB answers, so an
/// unreachable database at start-up delays the indexes instead of stopping the process.
pub async fn ensure_indexes_until_done(db: Database) {
    retry_until_done("MongoDB indexes", || ensure_indexes(&db)).await
}

/// Runs `attempt` until it succeeds, backing off between failures (the recovery shape of the
/// one retry policy).
pub async fn retry_until_done<F, Fut>(what: &str, attempt: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = mongodb::error::Result<()>>,
{
    let mut backoff = kafka_group::Backoff::unbounded();
    loop {
        match attempt().await {
            Ok(()) => {
                tracing::info!("{what} are in place");
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %describe(&e), retry_in = ?delay, "cannot create {what} yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
