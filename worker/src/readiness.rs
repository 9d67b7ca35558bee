//! Whether this worker can do its job right now, and why not: what `/readyz` answers.
//!
//! Ready means three things at once: the worker is a member of the group with an
//! assignment, MongoDB lets it insert purchases (proven by [`AccessCheck`], not by a ping),
//! and the last write was not refused. A refusal that waiting cannot cure (a missing
//! privilege, a validation rule) makes the worker give its partitions back (see
//! `startup`), so readiness must say so instead of "joining".

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use infra::mongo::AccessCheck;
use kafka_group::GroupMember;
use serde::Serialize;
use tokio::sync::watch;

/// What the sink last learned from a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writes {
    /// No write yet, or the last one was stored.
    Accepted,
    /// Failing since `since` in a way that may heal (no answer, failover); `why` the last.
    Failing { since: Instant, why: String },
    /// MongoDB refused the last write; the text says why.
    Refused(String),
}

/// The worker's readiness, shared by the ops server, the sink and the group sessions.
pub struct Readiness {
    access: AccessCheck,
    member: Mutex<Option<Arc<GroupMember>>>,
    writes: watch::Sender<Writes>,
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ready: bool,
    /// `joined`, `joining`, or `not a member` (gave its partitions back, or not started).
    pub group: &'static str,
    /// `ok`, or why the last attempt to join the group failed.
    pub kafka: String,
    pub partitions: usize,
    /// `ok`, `unreachable` (may heal by waiting) or `refused` (needs a change of set-up).
    #[serde(rename = "mongodbState")]
    pub mongodb_state: &'static str,
    /// `ok`, or what is wrong with MongoDB and what to change.
    pub mongodb: String,
}

impl Readiness {
    pub fn new(access: AccessCheck) -> Arc<Self> {
        let (writes, _) = watch::channel(Writes::Accepted);
        Arc::new(Self {
            access,
            member: Mutex::new(None),
            writes,
        })
    }

    pub fn access(&self) -> &AccessCheck {
        &self.access
    }

    /// The group member of the running session (`None` between sessions).
    pub fn set_member(&self, member: Option<Arc<GroupMember>>) {
        *self.member.lock().unwrap_or_else(|e| e.into_inner()) = member;
    }

    fn member(&self) -> Option<Arc<GroupMember>> {
        self.member
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The sink's report of a write.
    pub fn wrote(&self, writes: Writes) {
        self.writes.send_if_modified(|last| {
            let changed = *last != writes;
            *last = writes;
            changed
        });
    }

    /// A write failed in a way that may heal: failing since the first such failure.
    pub fn still_failing(&self, why: String) {
        self.writes.send_modify(|last| {
            let since = match last {
                Writes::Failing { since, .. } => *since,
                _ => Instant::now(),
            };
            *last = Writes::Failing { since, why };
        });
    }

    /// Changes of the write outcome, for the session that must give its partitions back.
    pub fn writes(&self) -> watch::Receiver<Writes> {
        self.writes.subscribe()
    }

    /// Runs the access check (bounded by `timeout`) and puts everything together.
    pub async fn report(&self, timeout: Duration) -> Report {
        let (mongodb_state, mongodb) = match tokio::time::timeout(timeout, self.access.run()).await
        {
            Err(_) => (
                "unreachable",
                format!("MongoDB did not answer within {timeout:?}"),
            ),
            Ok(Err(problem)) => (problem.state(), problem.to_string()),
            Ok(Ok(())) => match &*self.writes.borrow() {
                Writes::Refused(why) => {
                    ("refused", format!("MongoDB refused the last write: {why}"))
                }
                Writes::Failing { since, why } => (
                    "unreachable",
                    format!(
                        "MongoDB has taken no write for {:.0?}: {why}",
                        since.elapsed()
                    ),
                ),
                Writes::Accepted => ("ok", "ok".to_string()),
            },
        };
        let member = self.member();
        let group = match &member {
            Some(member) if member.is_stable() => "joined",
            Some(_) => "joining",
            None => "not a member",
        };
        let kafka = match member.as_ref().and_then(|m| m.join_problem()) {
            Some(problem) if group != "joined" => format!("cannot join the group: {problem}"),
            _ => "ok".to_string(),
        };
        Report {
            ready: group == "joined" && mongodb_state == "ok",
            group,
            kafka,
            partitions: member.map_or(0, |m| m.assignment().len()),
            mongodb_state,
            mongodb,
        }
    }
}
