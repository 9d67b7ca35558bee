//! Worker throughput beside its two limits, measured in one run on the same servers:
//!
//! 1. raw fetch: rskafka reading the pre-filled topic, every partition at once;
//! 2. raw write: unordered `insert_many` of the same documents in the worker's batch size;
//! 3. the worker: documents per second it stores from the same topic (fetch, decode, batch,
//!    write, commit).
//!
//! `cargo bench -p worker --bench throughput` (or `make bench-worker`); `BENCH_RECORDS`
//! sets the topic size (default 50000).

use std::time::{Duration, Instant};

use clap::Parser;
use mongodb::bson::{doc, Document};
use purchase::{validation::UserIdField, NewPurchase, PurchaseDocument, PurchaseEvent};
use rskafka::{
    client::{
        partition::{Compression, UnknownTopicHandling},
        ClientBuilder,
    },
    record::Record,
};
use test_support::InfraServer;
use tokio_util::sync::CancellationToken;
use worker::{config::WorkerConfig, startup::Worker};

const PARTITIONS: i32 = 12;
const BATCH: usize = 1000;
const FETCH_BYTES: i32 = 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let records: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let kafka = InfraServer::start("kafka");
    let mongo = InfraServer::start("mongo");
    let topic = "bench-purchases";
    let events: Vec<PurchaseEvent> = (0..records)
        .map(|i| {
            let body = serde_json::json!({"username": "bench user", "userId": format!("u{}", i % 1000), "price": 19.99});
            let body = serde_json::value::to_raw_value(&body).expect("JSON text");
            PurchaseEvent::new(NewPurchase::from_json(&body, UserIdField::Current).expect("valid"))
        })
        .collect();

    // Pre-fill the topic, keyed by user as the gateway does.
    let client = ClientBuilder::new(vec![kafka.address.clone()])
        .build()
        .await?;
    client
        .controller_client()?
        .create_topic(topic, PARTITIONS, 1, 5_000)
        .await?;
    let mut per_partition: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
    for event in &events {
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
            .partition_client(topic, p as i32, UnknownTopicHandling::Retry)
            .await?;
        for chunk in records.chunks(BATCH) {
            pc.produce(chunk.to_vec(), Compression::NoCompression)
                .await?;
        }
    }
    eprintln!(
        "pre-filled {records} records in {:.1}s",
        fill.elapsed().as_secs_f64()
    );

    // 1. Raw fetch rate: every partition read to its end, concurrently.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
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
    let fetch_rate = fetched as f64 / started.elapsed().as_secs_f64();
    assert_eq!(fetched, records, "raw fetch read every record");

    // 2. Raw insert_many rate: same documents, same batch size, unordered.
    let db = mongodb::Client::with_uri_str(&mongo.address)
        .await?
        .database("bench_raw");
    let collection = db.collection::<Document>("purchases");
    let documents: Vec<Document> = events.iter().map(PurchaseDocument::from_event).collect();
    let started = Instant::now();
    for chunk in documents.chunks(BATCH) {
        collection.insert_many(chunk).ordered(false).await?;
    }
    let insert_rate = records as f64 / started.elapsed().as_secs_f64();

    // 3. The worker with the durable default write concern (w: majority, j: true), then
    //    with the old server default (w: 1, no journal wait), each from a fresh group into a
    //    fresh database: the price of durability, side by side.
    let durable_rate = worker_rate(&kafka, &mongo, topic, "durable", records, &[]).await?;
    let fast_rate = worker_rate(
        &kafka,
        &mongo,
        topic,
        "w1",
        records,
        &["--mongo-write-concern=1", "--mongo-write-journal=false"],
    )
    .await?;
    let worker_rate = durable_rate;

    println!();
    println!("worker throughput: {records} records, {PARTITIONS} partitions, batches of {BATCH}, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("{:<44} {:>12}", "measure", "records/s");
    println!(
        "{:<44} {:>12.0}",
        "raw rskafka fetch (all partitions at once)", fetch_rate
    );
    println!("{:<44} {:>12.0}", "raw unordered insert_many", insert_rate);
    println!(
        "{:<44} {:>12.0}",
        "worker, w: majority + j: true (default)", durable_rate
    );
    println!(
        "{:<44} {:>12.0}",
        "worker, w: 1 without journal wait", fast_rate
    );
    println!(
        "ratio durable / w:1 worker: {:.2}",
        durable_rate / fast_rate
    );
    println!("ratio worker / raw fetch:  {:.2}", worker_rate / fetch_rate);
    println!(
        "ratio worker / raw insert: {:.2}",
        worker_rate / insert_rate
    );
    Ok(())
}

/// Documents per second a fresh worker stores from `topic`, counted from its first stored
/// document (group join time is a broker property, not worker throughput).
async fn worker_rate(
    kafka: &InfraServer,
    mongo: &InfraServer,
    topic: &str,
    name: &str,
    records: usize,
    extra: &[&str],
) -> anyhow::Result<f64> {
    let database = format!("bench_worker_{name}");
    let mut args = vec![
        "worker".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", kafka.address),
        format!("--kafka-topic={topic}"),
        format!("--kafka-group-id=bench-workers-{name}"),
        format!("--mongo-uri={}", mongo.address),
        format!("--mongo-database={database}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = WorkerConfig::try_parse_from(args)?;
    let target = mongodb::Client::with_uri_str(&mongo.address)
        .await?
        .database(&database)
        .collection::<Document>("purchases");
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
