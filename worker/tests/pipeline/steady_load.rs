//! Steady load through the gateway while something crashes, and the audit afterwards: what
//! each purchase intent was answered, against what the topic (read with confluent-kafka) and
//! MongoDB hold. One intent = one purchase a client means to make, with its own userId so
//! that even an intent answered without an eventId can be looked for.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use mongodb::bson::doc;
use serde_json::{json, Value};
use test_support::run_python;

use crate::helpers::Pipeline;

/// How a client behaves when it gets no 202.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// No `Idempotency-Key`, never retries.
    Plain,
    /// Sends a key and gives up after the first answer.
    KeyedOnce,
    /// Sends a key and retries with it until it gets a 202.
    KeyedRetrying,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted(String),
    /// A 503 saying nothing was stored.
    NotStored(String),
    /// A 503 saying the outcome is unknown, with the eventId.
    Unknown(String),
    /// No HTTP answer at all (connection refused or reset, client timeout).
    Silence(String),
    Other(u16, String),
}

#[derive(Debug)]
pub struct Intent {
    pub user_id: String,
    /// When its first attempt was due, from the start of the load.
    pub due: Duration,
    pub client: Client,
    pub answers: Vec<Answer>,
    /// When each answer came, from the start of the load.
    pub answered_at: Vec<Duration>,
}

impl Intent {
    fn last(&self) -> Option<&Answer> {
        self.answers.last()
    }
}

/// Sends `rate` purchases per second for `duration`, each intent as `client_of(n)` behaves.
/// Retrying clients keep at it (every 500 ms) until `retry_for` after the load ended.
pub async fn run(
    pipeline: &Pipeline,
    rate: u32,
    duration: Duration,
    retry_for: Duration,
    client_of: impl Fn(usize) -> Client,
) -> Vec<Intent> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client");
    let url = Arc::new(format!("{}/api/purchases", pipeline.gateway));
    let started = Instant::now();
    let give_up = started + duration + retry_for;
    let count = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let at = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
        tokio::time::sleep_until(at.into()).await;
        let user_id = format!("i{n}-{}", &run_id[..8]);
        let intent = Intent {
            user_id,
            due: at - started,
            client: client_of(n),
            answers: Vec::new(),
            answered_at: Vec::new(),
        };
        tasks.push(tokio::spawn(send_intent(
            http.clone(),
            Arc::clone(&url),
            intent,
            n,
            (started, give_up),
        )));
    }
    let mut intents = Vec::with_capacity(count);
    for task in tasks {
        intents.push(task.await.expect("intent task"));
    }
    intents
}

async fn send_intent(
    http: reqwest::Client,
    url: Arc<String>,
    mut intent: Intent,
    n: usize,
    (started, give_up): (Instant, Instant),
) -> Intent {
    let body = json!({
        "username": "steady buyer",
        "userId": intent.user_id,
        "price": format!("{}.{:02}", 1 + n % 500, n % 100).parse::<f64>().expect("price"),
    });
    let key = uuid::Uuid::new_v4().to_string();
    loop {
        let mut request = http.post(url.as_str()).json(&body);
        if intent.client != Client::Plain {
            request = request.header("Idempotency-Key", &key);
        }
        let answer = match request.send().await {
            Err(e) => Answer::Silence(e.to_string()),
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let code = body["error"].as_str().unwrap_or_default().to_string();
                let event_id = body["eventId"].as_str().unwrap_or_default().to_string();
                match (status, code.as_str()) {
                    (202, _) => Answer::Accepted(event_id),
                    (503, "kafka_outcome_unknown") => Answer::Unknown(event_id),
                    (503, "kafka_unavailable" | "mongodb_unavailable") => Answer::NotStored(code),
                    _ => Answer::Other(status, body.to_string()),
                }
            }
        };
        let done = matches!(answer, Answer::Accepted(_))
            || intent.client != Client::KeyedRetrying
            || Instant::now() > give_up;
        intent.answers.push(answer);
        intent.answered_at.push(started.elapsed());
        if done {
            return intent;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the audit found; printed by every crash test, for the closing note.
#[derive(Debug, Default)]
pub struct Audit {
    pub intents: usize,
    pub answered_202: usize,
    pub answered_not_stored: usize,
    pub answered_unknown: usize,
    pub no_answer: usize,
    pub retried: usize,
    pub stored: usize,
    pub lost: usize,
    pub extra: usize,
    pub unknown_then_stored: usize,
}

/// Waits until every purchase answered 202 could be stored and the count stopped changing,
/// then checks every promise: a 202 is stored exactly once under its eventId; a "not
/// stored" answer (without a retry) is neither in the topic nor in MongoDB; an intent
/// retried with its key is stored exactly once; nothing is stored that no intent sent; no
/// eventId is stored twice.
pub async fn audit(pipeline: &Pipeline, intents: &[Intent], settle: Duration) -> Audit {
    let collection = pipeline.collection().await;
    let accepted = intents
        .iter()
        .filter(|i| matches!(i.last(), Some(Answer::Accepted(_))))
        .count() as u64;
    let stored = wait_until_settled(&collection, accepted, settle).await;
    let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, user_id) in &stored {
        by_user.entry(user_id.clone()).or_default().push(id.clone());
    }
    let in_topic = topic_users(pipeline, stored.len());

    let mut audit = Audit {
        intents: intents.len(),
        stored: stored.len(),
        ..Audit::default()
    };
    let mut problems = Vec::new();
    let known: BTreeSet<&str> = intents.iter().map(|i| i.user_id.as_str()).collect();
    audit.extra = by_user
        .keys()
        .filter(|user| !known.contains(user.as_str()))
        .count();
    for intent in intents {
        let ids = by_user.get(&intent.user_id).cloned().unwrap_or_default();
        if intent.answers.len() > 1 {
            audit.retried += 1;
        }
        match intent.last() {
            Some(Answer::Accepted(_)) => audit.answered_202 += 1,
            Some(Answer::NotStored(_)) => audit.answered_not_stored += 1,
            Some(Answer::Unknown(_)) => audit.answered_unknown += 1,
            Some(Answer::Silence(_)) => audit.no_answer += 1,
            _ => {}
        }
        if ids.len() > 1 {
            problems.push(format!(
                "{} stored {} times: {ids:?}",
                intent.user_id,
                ids.len()
            ));
        }
        match intent.last() {
            Some(Answer::Accepted(event_id)) => {
                if ids.is_empty() {
                    audit.lost += 1;
                    problems.push(format!(
                        "{} answered 202 {event_id} but not stored ({} the topic)",
                        intent.user_id,
                        if in_topic.contains(&intent.user_id) {
                            "in"
                        } else {
                            "not in"
                        }
                    ));
                } else if ids[0] != *event_id {
                    problems.push(format!(
                        "{} answered {event_id} but stored {ids:?}",
                        intent.user_id
                    ));
                }
            }
            Some(Answer::NotStored(code))
                if intent.answers.len() == 1
                    && (!ids.is_empty() || in_topic.contains(&intent.user_id)) =>
            {
                problems.push(format!(
                    "{} answered {code} (nothing stored) but is stored {ids:?} / in the topic",
                    intent.user_id
                ));
            }
            Some(Answer::Unknown(event_id)) if ids.len() == 1 => {
                audit.unknown_then_stored += 1;
                if ids[0] != *event_id {
                    problems.push(format!(
                        "{} unknown {event_id} but stored {ids:?}",
                        intent.user_id
                    ));
                }
            }
            Some(Answer::Other(status, body)) => {
                problems.push(format!("{} got {status} {body}", intent.user_id))
            }
            _ => {}
        }
        if intent.client == Client::KeyedRetrying
            && !matches!(intent.last(), Some(Answer::Accepted(_)))
        {
            problems.push(format!(
                "{} retried with its key and never got a 202: {:?}",
                intent.user_id, intent.answers
            ));
        }
    }
    eprintln!("{audit:?}");
    let unanswered: Vec<String> = intents
        .iter()
        .filter(|i| !matches!(i.last(), Some(Answer::Accepted(_))))
        .take(10)
        .map(|i| format!("{:.1}s {:?}", i.due.as_secs_f64(), i.answers))
        .collect();
    if !unanswered.is_empty() {
        eprintln!("first intents without a 202 (due at, answers): {unanswered:#?}");
    }
    let mut silences: BTreeMap<&str, usize> = BTreeMap::new();
    for answer in intents.iter().flat_map(|i| &i.answers) {
        if let Answer::Silence(error) = answer {
            *silences.entry(error.as_str()).or_default() += 1;
        }
    }
    if !silences.is_empty() {
        eprintln!("requests without an answer, by error: {silences:#?}");
    }
    assert!(
        audit.extra == 0,
        "{} stored purchases nobody sent",
        audit.extra
    );
    assert!(
        problems.is_empty(),
        "{} broken promises, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    audit
}

/// `(eventId, userId)` of every stored purchase, once at least `at_least` are stored and the
/// count held still for `settle` (or after 4 minutes, for the audit to say what is missing).
async fn wait_until_settled(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    at_least: u64,
    settle: Duration,
) -> Vec<(String, String)> {
    let started = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    loop {
        let count = collection.count_documents(doc! {}).await.unwrap_or(0);
        if count != last.0 {
            last = (count, Instant::now());
        } else if count >= at_least && last.1.elapsed() >= settle {
            break;
        }
        // Past this, the audit reports what is missing.
        if started.elapsed() > Duration::from_secs(240) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut stored = Vec::new();
    let mut cursor = collection
        .find(doc! {})
        .projection(doc! {"_id": 1, "userId": 1})
        .await
        .expect("find");
    while cursor.advance().await.expect("cursor") {
        let document = cursor.deserialize_current().expect("document");
        stored.push((
            document.get_str("_id").expect("string _id").to_string(),
            document.get_str("userId").expect("userId").to_string(),
        ));
    }
    stored
}

/// The userIds found in the topic by an independent client (confluent-kafka).
fn topic_users(pipeline: &Pipeline, at_least: usize) -> BTreeSet<String> {
    let dump = run_python(
        "read_topic.py",
        &[
            &pipeline.kafka,
            &pipeline.topic,
            &at_least.to_string(),
            "60",
        ],
    );
    dump["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["value"]["userId"].as_str().map(str::to_string))
        .collect()
}
