//! A worker's way out: after SIGTERM it exits 0, with no panic on the way.

use std::{process::Stdio, time::Duration};

use crate::helpers::*;

/// Starts a worker in a group of its own, waits until it is ready (joined, and MongoDB
/// answered its ping, so the client holds a session and a pooled connection to close on
/// the way out), sends SIGTERM and returns how it exited and what it wrote to stderr.
async fn run_until_ready_then_terminate(pipeline: &Pipeline) -> (std::process::ExitStatus, String) {
    let port = free_port();
    let mut command = tokio::process::Command::from(pipeline.worker_command(port));
    let worker = command
        .env("KAFKA_GROUP_ID", format!("{}-{port}", pipeline.group))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start worker");
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(response) = pipeline.client.get(&readyz).send().await {
            if response.status().is_success() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "worker not ready within 30 s");

    let pid = worker.id().expect("worker is running");
    test_support::process::signal(pid, test_support::process::Signal::SIGTERM);
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.wait_with_output())
        .await
        .expect("worker exits within 30 s of SIGTERM")
        .expect("worker output");
    (
        exit.status,
        String::from_utf8_lossy(&exit.stderr).into_owned(),
    )
}

#[tokio::test]
async fn workers_exit_0_on_sigterm_without_panicking() {
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    // The panic this guards against (the MongoDB client's last drop racing the runtime's
    // shutdown at exit) hit about one exit in twenty, so many workers are stopped.
    for _ in 0..3 {
        let exits = (0..8).map(|_| run_until_ready_then_terminate(&pipeline));
        for (status, stderr) in futures::future::join_all(exits).await {
            assert!(status.success(), "exited with {status}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    pipeline.stop();
}
