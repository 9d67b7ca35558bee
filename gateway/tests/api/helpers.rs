//! Test harness: real servers started through the project's scripts, and `spawn_app()`
//! which runs the gateway in-process on a free port with its own topic and database.

use std::time::Duration;

use clap::Parser;
use gateway::{config::Cli, startup::Application};
use infra::mongo::document;
use purchase::PurchaseEvent;
use serde_json::Value;
use test_support::run_python;
pub use test_support::{python, shared_servers, InfraServer};
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub kafka: String,
    pub topic: String,
    pub mongo: String,
    pub database: String,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Holds the JWKS file of a gateway with authentication on.
    pub jwks_dir: Option<tempfile::TempDir>,
}

/// Builder for a gateway under test; `extra` flags override the defaults.
pub async fn spawn_app() -> TestApp {
    let (kafka, mongo) = shared_servers();
    spawn_app_with(&kafka.address, &mongo.address, &[]).await
}

/// A gateway on the shared broker whose database never answers (nothing listens on port 1).
pub async fn spawn_app_without_database() -> TestApp {
    let (kafka, _) = shared_servers();
    spawn_app_with(
        &kafka.address,
        "mongodb://127.0.0.1:1",
        &["--mongo-timeout=500ms"],
    )
    .await
}

/// A gateway with authentication off (`--auth-disabled`), as every test that is not about
/// authentication runs it; `extra` flags override the defaults.
pub async fn spawn_app_with(kafka: &str, mongo: &str, extra: &[&str]) -> TestApp {
    let mut flags = vec!["--auth-disabled"];
    flags.extend_from_slice(extra);
    spawn_gateway(kafka, mongo, &flags).await
}

/// A gateway with authentication on: tokens are verified against `jwks`, written to a file
/// in a temporary directory, with the test issuer and audience (`tokens::ISSUER`,
/// `tokens::AUDIENCE`).
pub async fn spawn_app_with_jwks(jwks: &Value, extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("write the JWKS file");
    let jwks_flag = format!("--auth-jwks-file={}", path.display());
    let mut flags = vec![jwks_flag.as_str()];
    flags.extend_from_slice(extra);
    let mut app = spawn_app_with_auth(&flags).await;
    app.jwks_dir = Some(dir);
    app
}

/// A gateway with authentication on, its JWKS source given in `flags`.
pub async fn spawn_app_with_auth(flags: &[&str]) -> TestApp {
    let (kafka, mongo) = shared_servers();
    let issuer = format!("--auth-issuer={}", crate::tokens::ISSUER);
    let audience = format!("--auth-audience={}", crate::tokens::AUDIENCE);
    let mut all = vec![issuer.as_str(), audience.as_str()];
    all.extend_from_slice(flags);
    spawn_gateway(&kafka.address, &mongo.address, &all).await
}

/// The flags every test gateway runs with: its own topic and database on the given servers.
pub fn gateway_args(kafka: &str, mongo: &str, topic: &str, database: &str) -> Vec<String> {
    vec![
        "gateway".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={kafka}"),
        format!("--kafka-topic={topic}"),
        "--kafka-topic-partitions=3".into(),
        "--kafka-retry-deadline=3s".into(),
        format!("--mongo-uri={mongo}"),
        format!("--mongo-database={database}"),
        "--mongo-timeout=2s".into(),
        "--produce-timeout=3s".into(),
        "--shutdown-grace=5s".into(),
    ]
}

async fn spawn_gateway(kafka: &str, mongo: &str, extra: &[&str]) -> TestApp {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("purchases-{id}");
    let database = format!("test_{id}");
    let (shared, _) = shared_servers();
    if shared.address == kafka {
        shared.prepare_topic(&topic, 3);
    }
    let mut args = gateway_args(kafka, mongo, &topic, &database);
    args.extend(extra.iter().map(|s| s.to_string()));
    let cli = Cli::try_parse_from(args).expect("valid test flags");
    let app = Application::build(cli.config)
        .await
        .expect("gateway starts");
    let address = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        kafka: kafka.to_string(),
        topic,
        mongo: mongo.to_string(),
        database,
        shutdown,
        server,
        jwks_dir: None,
    }
}

impl TestApp {
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Posts bytes exactly as given (for bodies a JSON serializer would never write).
    pub async fn post_raw(&self, path: &str, body: impl Into<Vec<u8>>) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_purchase(&self, body: &Value) -> reqwest::Response {
        self.post_json("/api/purchases", body).await
    }

    /// POSTs `body` to `path` with an `Idempotency-Key` header.
    pub async fn post_with_key(&self, path: &str, body: &Value, key: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// Every record of the test's topic, read by an independent client (confluent-kafka).
    pub fn read_topic(&self, expected: usize) -> TopicDump {
        let expected = expected.to_string();
        let dump = run_python(
            "read_topic.py",
            &[&self.kafka, &self.topic, &expected, "30"],
        );
        serde_json::from_value(dump).expect("read_topic.py prints a topic dump")
    }

    /// Stores events the way a worker does, so read paths can be tested on their own.
    pub async fn store(&self, events: &[PurchaseEvent]) {
        let client = mongodb::Client::with_uri_str(&self.mongo)
            .await
            .expect("mongo client");
        let documents: Vec<_> = events.iter().map(document::from_event).collect();
        client
            .database(&self.database)
            .collection::<mongodb::bson::Document>("purchases")
            .insert_many(documents)
            .await
            .expect("insert test purchases");
    }

    /// How many documents a collection of the test's database holds.
    pub async fn count_documents(&self, collection: &str) -> u64 {
        let client = mongodb::Client::with_uri_str(&self.mongo)
            .await
            .expect("mongo client");
        client
            .database(&self.database)
            .collection::<mongodb::bson::Document>(collection)
            .count_documents(mongodb::bson::doc! {})
            .await
            .expect("count documents")
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server.await.expect("server task")
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct TopicDump {
    pub partitions: i32,
    pub records: Vec<TopicRecord>,
}

#[derive(Debug, serde::Deserialize)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Value,
    pub headers: std::collections::BTreeMap<String, String>,
    /// The record as the CloudEvents SDK reads it: attributes and `data`, or `error`.
    pub cloudevent: Value,
}

/// A purchase event as the gateway would make it, for seeding the database.
pub fn event(user_id: &str, username: &str, price: f64) -> PurchaseEvent {
    let body = serde_json::json!({"username": username, "userId": user_id, "price": price});
    let body = serde_json::value::to_raw_value(&body).expect("JSON text");
    PurchaseEvent::new(
        purchase::NewPurchase::from_json(&body, purchase::validation::UserIdField::Current)
            .expect("valid test purchase"),
    )
}

/// Asserts an error response: status, JSON body with `error` and `message`, and the field.
pub async fn assert_json_error(
    response: reqwest::Response,
    status: u16,
    field: Option<&str>,
) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    assert_eq!(body["field"].as_str(), field, "{body}");
    body
}
