//! Crashes under steady load: the database or the broker SIGKILLed mid-stream and restarted.
//! The moments are random within a window (printed, to replay a failure), so every run tries
//! a different point of the write/commit cycle.

use std::time::Duration;

use test_support::InfraServer;

use crate::{
    helpers::*,
    steady_load::{self, Client},
};

/// A random moment between `from` and `to` after the start.
fn moment_between(from: Duration, to: Duration) -> Duration {
    let span = (to - from).as_millis();
    from + Duration::from_millis((uuid::Uuid::new_v4().as_u128() % span) as u64)
}

/// Kills `server` at `at` after `started`, keeps it down for `down_for`, then restarts it
/// (same data, same port). On a blocking thread: the gateway under test shares our runtime.
async fn crash(
    server: &InfraServer,
    started: tokio::time::Instant,
    at: Duration,
    down_for: Duration,
) {
    tokio::time::sleep_until(started + at).await;
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(down_for).await;
    tokio::task::block_in_place(|| server.restart());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_killed_twice_under_steady_load_loses_no_acknowledged_purchase() {
    let _alone = one_heavy_test_at_a_time().await;
    let (kafka, _) = shared_servers();
    let mongo = InfraServer::start("mongo");
    let pipeline = Pipeline::start_on_test_kafka(kafka, &mongo.address).await;
    let _workers = [pipeline.worker(), pipeline.worker()];
    let kills = [
        (
            moment_between(Duration::from_secs(2), Duration::from_secs(7)),
            Duration::from_secs(4),
        ),
        (
            moment_between(Duration::from_secs(12), Duration::from_secs(16)),
            Duration::from_secs(2),
        ),
    ];
    eprintln!("database kills (at, down for): {kills:?}");
    let crashes = async {
        let started = tokio::time::Instant::now();
        for (at, down_for) in kills {
            crash(&mongo, started, at, down_for).await;
        }
    };
    // Plain clients: the write path does not touch the database, so every purchase is 202.
    let (intents, ()) = tokio::join!(
        steady_load::run(
            &pipeline,
            300,
            Duration::from_secs(20),
            Duration::ZERO,
            |_| { Client::Plain }
        ),
        crashes
    );
    let audit = steady_load::audit(&pipeline, &intents, Duration::from_secs(5)).await;
    // The write path does not touch the database: the load goes on through its crashes.
    // (An overloaded machine may still leave a few purchases unconfirmed; the audit holds
    // those to their own promise.)
    assert!(
        audit.answered_202 as f64 >= 0.95 * audit.intents as f64,
        "{audit:?}"
    );
    assert!(audit.stored >= audit.answered_202, "{audit:?}");
    pipeline.wait_committed_to_end(Duration::from_secs(60));
    pipeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_under_steady_load_stores_nothing_refused_and_keyed_retries_exactly_once() {
    let _alone = one_heavy_test_at_a_time().await;
    let (_, mongo) = shared_servers();
    let kafka = InfraServer::start("kafka");
    let pipeline = Pipeline::start_on(&kafka.address, &mongo.address).await;
    let _workers = [pipeline.worker(), pipeline.worker()];
    let kill_at = moment_between(Duration::from_secs(4), Duration::from_secs(8));
    let down_for = Duration::from_secs(5);
    eprintln!("broker kill at {kill_at:?}, down for {down_for:?}");
    let crash = crash(&kafka, tokio::time::Instant::now(), kill_at, down_for);
    // A third of the clients retry with their key, a third send a key once, a third none.
    let (intents, ()) = tokio::join!(
        steady_load::run(
            &pipeline,
            300,
            Duration::from_secs(16),
            Duration::from_secs(60),
            |n| match n % 3 {
                0 => Client::KeyedRetrying,
                1 => Client::KeyedOnce,
                _ => Client::Plain,
            }
        ),
        crash
    );
    let audit = steady_load::audit(&pipeline, &intents, Duration::from_secs(8)).await;
    assert!(
        audit.answered_not_stored + audit.answered_unknown + audit.no_answer > 0,
        "the kill was felt: {audit:?}"
    );
    pipeline.wait_committed_to_end(Duration::from_secs(90));
    pipeline.stop();
}
