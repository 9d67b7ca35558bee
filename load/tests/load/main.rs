//! The load tool against a real gateway, broker and database, and against a server that
//! stalls on purpose.

use std::{
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use clap::Parser;
use serde_json::Value;
use test_support::shared_servers;
use tokio_util::sync::CancellationToken;

struct Stack {
    gateway: String,
    topic: String,
    database: String,
}

async fn gateway() -> Stack {
    let (kafka, mongo) = shared_servers();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("purchases-{id}");
    let database = format!("shop_{id}");
    let cli = gateway::config::Cli::try_parse_from([
        "gateway".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", kafka.address),
        format!("--kafka-topic={topic}"),
        "--kafka-topic-partitions=4".into(),
        format!("--mongo-uri={}", mongo.address),
        format!("--mongo-database={database}"),
        "--log-filter=warn".into(),
        "--auth-disabled".into(),
    ])
    .unwrap();
    let app = gateway::startup::Application::build(cli.config)
        .await
        .unwrap();
    let address = format!("http://{}", app.local_addr());
    tokio::spawn(app.run(CancellationToken::new()));
    Stack {
        gateway: address,
        topic,
        database,
    }
}

/// Runs the load binary and parses its JSON output.
async fn load(args: &[&str]) -> Value {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_load"))
            .args(&args)
            .output()
            .expect("run load")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("load --json prints JSON")
}

async fn accepted_counter(gateway: &str) -> u64 {
    let text = reqwest::get(format!("{gateway}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("gateway_purchases_accepted_total "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn the_achieved_rate_is_within_5_percent_and_accepted_matches_the_gateway_counter() {
    let stack = gateway().await;
    let before = accepted_counter(&stack.gateway).await;
    let report = load(&[
        "--target",
        &stack.gateway,
        "--rate",
        "400",
        "--duration",
        "5s",
        "--json",
    ])
    .await;
    let after = accepted_counter(&stack.gateway).await;

    let achieved = report["achieved_rate"].as_f64().unwrap();
    assert!(
        (achieved - 400.0).abs() / 400.0 < 0.05,
        "achieved {achieved}/s for 400/s"
    );
    assert_eq!(report["sent"], 2000);
    assert_eq!(
        report["accepted"].as_u64().unwrap(),
        after - before,
        "{report}"
    );
    assert_eq!(report["accepted"], 2000);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

/// Serves a stand-in gateway on a free loopback port.
async fn serve(app: impl poem::Endpoint + 'static) -> std::net::SocketAddr {
    let acceptor =
        poem::listener::Listener::into_acceptor(poem::listener::TcpListener::bind("127.0.0.1:0"))
            .await
            .unwrap();
    let address = poem::listener::Acceptor::local_addr(&acceptor)[0]
        .as_socket_addr()
        .copied()
        .unwrap();
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    address
}

#[tokio::test]
async fn a_stalled_server_shows_in_p99() {
    // Answers at once, except the 50th request, which takes a second. With one request in
    // flight, everything due during that second waits behind it.
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let app = poem::Route::new().at(
        "/api/purchases",
        poem::post(poem::endpoint::make({
            let served = served.clone();
            move |_| {
                let served = served.clone();
                async move {
                    if served.fetch_add(1, Ordering::SeqCst) == 49 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    poem::http::StatusCode::ACCEPTED
                }
            }
        })),
    );
    let address = serve(app).await;

    let target = format!("http://{address}");
    let report = load(&[
        "--target",
        &target,
        "--rate",
        "100",
        "--duration",
        "3s",
        "--max-in-flight",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(report["accepted"], 300);
    let latency = &report["latency_ms"];
    // About 100 of 300 requests were due during the stall: the p99 must show it, although
    // only one request was slow at the server.
    assert!(latency["p99"].as_f64().unwrap() >= 800.0, "{latency}");
    assert!(latency["max"].as_f64().unwrap() >= 1000.0, "{latency}");
    assert!(
        latency["p50"].as_f64().unwrap() < 100.0,
        "most requests were fast: {latency}"
    );
}

/// A stand-in gateway that answers the first attempt of every key 503 (`Retry-After: 0`) and
/// the second 202, recording each key it saw.
async fn flaky_gateway() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = poem::Route::new().at(
        "/api/purchases",
        poem::post(poem::endpoint::make({
            let seen = seen.clone();
            move |request: poem::Request| {
                let seen = seen.clone();
                async move {
                    let key = request
                        .header("Idempotency-Key")
                        .unwrap_or_default()
                        .to_string();
                    let mut seen = seen.lock().unwrap();
                    let first = !seen.contains(&key);
                    seen.push(key);
                    if first {
                        poem::Response::builder()
                            .status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
                            .header("Retry-After", "0")
                            .finish()
                    } else {
                        poem::Response::builder()
                            .status(poem::http::StatusCode::ACCEPTED)
                            .finish()
                    }
                }
            }
        })),
    );
    let address = serve(app).await;
    (format!("http://{address}"), seen)
}

#[tokio::test]
async fn retries_reuse_the_purchase_idempotency_key_until_accepted() {
    let (target, seen) = flaky_gateway().await;
    let report = load(&[
        "--target",
        &target,
        "--rate",
        "50",
        "--duration",
        "2s",
        "--idempotency-keys",
        "--retries",
        "2",
        "--json",
    ])
    .await;
    assert_eq!(report["sent"], 100);
    assert_eq!(report["accepted"], 100, "{report}");
    assert_eq!(report["retried"], 100, "{report}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 200);
    let mut per_key = std::collections::BTreeMap::<&str, usize>::new();
    for key in &seen {
        assert!(uuid::Uuid::parse_str(key).is_ok(), "a UUID key: {key:?}");
        *per_key.entry(key).or_default() += 1;
    }
    assert_eq!(per_key.len(), 100, "one key per purchase");
    assert!(per_key.values().all(|n| *n == 2), "each key sent twice");
}

#[test]
fn retries_without_idempotency_keys_are_refused_with_a_hint() {
    let output = Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["--retries", "3"])
        .output()
        .expect("run load");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--idempotency-keys"), "{stderr}");
}

#[tokio::test]
async fn lag_equals_accepted_while_workers_are_stopped_and_drains_once_they_start() {
    let stack = gateway().await;
    let (kafka, mongo) = shared_servers();
    let group = format!("workers-{}", uuid::Uuid::new_v4().simple());
    let report = load(&[
        "--target",
        &stack.gateway,
        "--rate",
        "500",
        "--duration",
        "4s",
        "--json",
    ])
    .await;
    let accepted = report["accepted"].as_i64().unwrap();
    assert_eq!(accepted, 2000);

    let lag_args = [
        "lag",
        "--json",
        "--kafka-brokers",
        &kafka.address,
        "--kafka-topic",
        &stack.topic,
        "--kafka-group-id",
        &group,
        "--lag-threshold",
        "500",
    ];
    let lag = load(&lag_args).await;
    assert_eq!(
        lag["total"].as_i64().unwrap(),
        accepted,
        "no worker ran: every accepted purchase is lag"
    );
    assert_eq!(lag["keda_replicas"], 4, "ceil(2000 / 500)");

    let config = worker::config::WorkerConfig::try_parse_from([
        "worker".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", kafka.address),
        format!("--kafka-topic={}", stack.topic),
        format!("--kafka-group-id={group}"),
        "--kafka-session-timeout=6s".into(),
        "--kafka-heartbeat-interval=300ms".into(),
        format!("--mongo-uri={}", mongo.address),
        format!("--mongo-database={}", stack.database),
        "--log-filter=warn".into(),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let worker = worker::startup::Worker::build(config).await.unwrap();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let started = Instant::now();
    let mut seen = vec![lag["total"].as_i64().unwrap()];
    loop {
        let lag = load(&lag_args).await;
        let total = lag["total"].as_i64().unwrap();
        seen.push(total);
        if total == 0 {
            assert_eq!(
                lag["keda_replicas"], 0,
                "the suggestion follows the lag down"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "lag never drained: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        seen.windows(2).all(|w| w[1] <= w[0]),
        "lag only falls while nothing is produced: {seen:?}"
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
