//! Worker throughput beside its two limits, measured in one run, on plaintext servers and on
//! secured ones (Kafka over TLS with SASL SCRAM-SHA-512, MongoDB with `--auth` over TLS):
//!
//! 1. raw fetch: rskafka reading the pre-filled topic, every partition at once;
//! 2. raw write: unordered `insert_many` of the same documents in the worker's batch size;
//! 3. the worker: documents per second it stores from the same topic (fetch, decode, batch,
//!    write, commit), on plaintext servers also with `w: 1` for the price of durability.
//!
//! `cargo bench -p worker --bench throughput` (or `make bench-worker`); `BENCH_RECORDS`
//! sets the topic size (default 50000).

use std::time::{Duration, Instant};

use clap::Parser;
use infra::{kafka_security, mongo::document};
use mongodb::bson::{doc, Document};
use purchase::{validation::UserIdField, NewPurchase, PurchaseEvent};
use rskafka::{
    client::{
        partition::{Compression, UnknownTopicHandling},
        Client, ClientBuilder,
    },
    record::Record,
};
use test_support::{secured::MONGO_PASSWORD, InfraServer, SecuredServers};
use tokio_util::sync::CancellationToken;
use worker::{config::WorkerConfig, startup::Worker};

const PARTITIONS: i32 = 12;
const BATCH: usize = 1000;
const FETCH_BYTES: i32 = 1024 * 1024;
const TOPIC: &str = "bench-purchases";

/// A broker and a database, and how every client of the bench reaches them.
struct Servers {
    kafka_address: String,
    mongo_uri: String,
    /// The worker's Kafka security flags (none on plaintext servers).
    kafka_flags: Vec<String>,
    /// Kept running while the bench measures.
    _running: Running,
}

enum Running {
    Plaintext {
        _kafka: InfraServer,
        _mongo: InfraServer,
    },
    Secured {
        _servers: SecuredServers,
    },
}

impl Servers {
    fn plaintext() -> Self {
        let kafka = InfraServer::start("kafka");
        let mongo = InfraServer::start("mongo");
        Self {
            kafka_address: kafka.address.clone(),
            mongo_uri: mongo.address.clone(),
            kafka_flags: Vec::new(),
            _running: Running::Plaintext {
                _kafka: kafka,
                _mongo: mongo,
            },
        }
    }

    /// The production setup: nothing reachable without TLS and credentials.
    fn secured() -> Self {
        let servers = SecuredServers::start();
        let ca = servers.certs.file("ca.pem");
        Self {
            kafka_address: servers.kafka.address.clone(),
            mongo_uri: servers.mongo_uri(MONGO_PASSWORD, &ca),
            kafka_flags: servers.kafka_flags(&servers.password_file(), &ca),
            _running: Running::Secured { _servers: servers },
        }
    }

    /// A worker configuration for these servers, reading `database`.
    fn worker_config(
        &self,
        group: &str,
        database: &str,
        extra: &[&str],
    ) -> anyhow::Result<WorkerConfig> {
        let mut args = vec![
            "worker".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--kafka-brokers={}", self.kafka_address),
            format!("--kafka-topic={TOPIC}"),
            format!("--kafka-group-id={group}"),
            format!("--mongo-uri={}", self.mongo_uri),
            format!("--mongo-database={database}"),
        ];
        args.extend(self.kafka_flags.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(WorkerConfig::try_parse_from(args)?)
    }

    /// An rskafka client secured exactly as the worker's flags say.
    async fn kafka_client(&self) -> anyhow::Result<Client> {
        let config = self.worker_config("unused", "unused", &[])?;
        let security = kafka_security::resolve(&config.kafka.events.security)?;
        let builder = ClientBuilder::new(vec![self.kafka_address.clone()]);
        Ok(kafka_security::secure(builder, &security).build().await?)
    }

    async fn collection(&self, database: &str) -> anyhow::Result<mongodb::Collection<Document>> {
        Ok(mongodb::Client::with_uri_str(&self.mongo_uri)
            .await?
            .database(database)
            .collection::<Document>("purchases"))
    }
}

/// What one set of servers measured, in records per second.
struct Rates {
    fetch: f64,
    insert: f64,
    durable: f64,
    /// `w: 1` without a journal wait (plaintext servers only).
    fast: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The workers log as a user's do: the default filter and format, to stderr.
    let defaults = WorkerConfig::try_parse_from(["worker"])?;
    let _traces =
        infra::telemetry::init(&defaults.telemetry, "worker").map_err(anyhow::Error::msg)?;
    let records: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let events: Vec<PurchaseEvent> = (0..records)
        .map(|i| {
            let body = serde_json::json!({"username": "bench user", "userId": format!("u{}", i % 1000), "price": 19.99});
            let body = serde_json::value::to_raw_value(&body).expect("JSON text");
            PurchaseEvent::new(NewPurchase::from_json(&body, UserIdField::Current).expect("valid"))
        })
        .collect();

    let plaintext = Servers::plaintext();
    let secured = Servers::secured();
    let plain = measure(&plaintext, &events, true).await?;
    let safe = measure(&secured, &events, false).await?;

    println!();
    println!("worker throughput: {records} records, {PARTITIONS} partitions, batches of {BATCH}, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "records/s", "plaintext", "TLS + auth", "ratio"
    );
    let row = |name: &str, plain: f64, safe: Option<f64>| match safe {
        Some(safe) => println!(
            "{name:<44} {plain:>12.0} {safe:>12.0} {:>8.2}",
            safe / plain
        ),
        None => println!("{name:<44} {plain:>12.0} {:>12} {:>8}", "-", "-"),
    };
    row(
        "raw rskafka fetch (all partitions at once)",
        plain.fetch,
        Some(safe.fetch),
    );
    row("raw unordered insert_many", plain.insert, Some(safe.insert));
    row(
        "worker, w: majority + j: true (default)",
        plain.durable,
        Some(safe.durable),
    );
    if let Some(fast) = plain.fast {
        row("worker, w: 1 without journal wait", fast, None);
        println!(
            "ratio durable / w:1 worker (plaintext): {:.2}",
            plain.durable / fast
        );
    }
    for (name, rates) in [("plaintext", &plain), ("TLS + auth", &safe)] {
        println!(
            "ratio worker / raw fetch, raw insert ({name}): {:.2}, {:.2}",
            rates.durable / rates.fetch,
            rates.durable / rates.insert
        );
    }
    println!("TLS + auth: Kafka SASL SCRAM-SHA-512 over TLS (scripts/tls_terminator.py, Python's OpenSSL, in front of nisshi, which has no TLS of its own), MongoDB SCRAM-SHA-256 over TLS");
    Ok(())
}

/// Pre-fills the topic on `servers` with `events` and measures raw fetch, raw insert and the
/// worker there.
async fn measure(
    servers: &Servers,
    events: &[PurchaseEvent],
    with_fast: bool,
) -> anyhow::Result<Rates> {
    let records = events.len();
    let client = servers.kafka_client().await?;
    prefill(&client, events).await?;
    let fetch = raw_fetch_rate(&client, records).await?;
    let insert = raw_insert_rate(servers, events).await?;
    // The worker with the durable default write concern (w: majority, j: true), then with the
    // old server default (w: 1, no journal wait), each from a fresh group into a fresh
    // database: the price of durability, side by side.
    let durable = worker_rate(servers, "durable", records, &[]).await?;
    let fast = match with_fast {
        true => Some(
            worker_rate(
                servers,
                "w1",
                records,
                &["--mongo-write-concern=1", "--mongo-write-journal=false"],
            )
            .await?,
        ),
        false => None,
    };
    Ok(Rates {
        fetch,
        insert,
        durable,
        fast,
    })
}

/// Writes the events to a fresh topic, keyed by user as the gateway does.
async fn prefill(client: &Client, events: &[PurchaseEvent]) -> anyhow::Result<()> {
    client
        .controller_client()?
        .create_topic(TOPIC, PARTITIONS, 1, 5_000)
        .await?;
    let mut per_partition: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
    for event in events {
        let p =
            purchase::partitioner::partition_for_key(event.user_id.as_str().as_bytes(), PARTITIONS);
        per_partition[p as usize].push(Record {
            key: Some(event.user_id.as_str().as_bytes().to_vec()),
            value: Some(event.to_json()),
            headers: Default::default(),
            timestamp: event.timestamp,
        });
    }
    let fill = Instant::now();
    for (p, records) in per_partition.into_iter().enumerate() {
        let pc = client
            .partition_client(TOPIC, p as i32, UnknownTopicHandling::Retry)
            .await?;
        for chunk in records.chunks(BATCH) {
            pc.produce(chunk.to_vec(), Compression::NoCompression)
                .await?;
        }
    }
    eprintln!(
        "pre-filled {} records in {:.1}s",
        events.len(),
        fill.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every partition read to its end, concurrently.
async fn raw_fetch_rate(client: &Client, records: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let pc = client
            .partition_client(TOPIC, p, UnknownTopicHandling::Retry)
            .await?;
        tasks.push(tokio::spawn(async move {
            let mut offset = 0;
            let mut count = 0usize;
            loop {
                let (batch, high) = pc.fetch_records(offset, 1..FETCH_BYTES, 500).await?;
                let fresh: Vec<_> = batch.into_iter().filter(|r| r.offset >= offset).collect();
                count += fresh.len();
                if let Some(last) = fresh.last() {
                    offset = last.offset + 1;
                }
                if offset >= high {
                    return Ok::<usize, rskafka::client::error::Error>(count);
                }
            }
        }));
    }
    let mut fetched = 0;
    for task in tasks {
        fetched += task.await??;
    }
    anyhow::ensure!(
        fetched == records,
        "raw fetch read {fetched} of {records} records"
    );
    Ok(fetched as f64 / started.elapsed().as_secs_f64())
}

/// The same documents, same batch size, unordered.
async fn raw_insert_rate(servers: &Servers, events: &[PurchaseEvent]) -> anyhow::Result<f64> {
    let collection = servers.collection("bench_raw").await?;
    let documents: Vec<Document> = events.iter().map(document::from_event).collect();
    let started = Instant::now();
    for chunk in documents.chunks(BATCH) {
        collection.insert_many(chunk).ordered(false).await?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Documents per second a fresh worker stores from the topic, counted from its first stored
/// document (group join time is a broker property, not worker throughput).
async fn worker_rate(
    servers: &Servers,
    name: &str,
    records: usize,
    extra: &[&str],
) -> anyhow::Result<f64> {
    let database = format!("bench_worker_{name}");
    let config = servers.worker_config(&format!("bench-workers-{name}"), &database, extra)?;
    let target = servers.collection(&database).await?;
    let worker = Worker::build(config).await?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let count = target.count_documents(doc! {}).await? as usize;
        if count > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if count >= records {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "worker stored only {count} of {records}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = records as f64 / first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::MAX);
    shutdown.cancel();
    let _ = running.await;
    Ok(rate)
}
