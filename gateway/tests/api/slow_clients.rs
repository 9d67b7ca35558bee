//! Slow and silent clients are cut off: request heads, bodies and idle keep-alive connections
//! each have a deadline. Raw sockets, since an HTTP client cannot send half a request.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{shared_servers, spawn_app_with, TestApp};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Scheduling and timer granularity on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

async fn spawn_app_with_short_timeouts() -> TestApp {
    let (kafka, mongo) = shared_servers();
    spawn_app_with(
        &kafka.address,
        &mongo.address,
        &[
            "--header-read-timeout=1s",
            "--body-read-timeout=2s",
            "--idle-timeout=3s",
        ],
    )
    .await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect to the gateway")
}

/// Reads until the server closes the connection (or resets it); returns what it sent. Fails
/// if the connection is still open after `limit`.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .unwrap_or_else(|_| panic!("the connection is still open after {limit:?}"));
    received
}

/// One response on a keep-alive connection: status and body (framed by Content-Length).
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a Content-Length");
            if received.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
                let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]);
                return (status.expect("a status line"), body.to_string());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed mid-response: {received:?}");
        received.extend_from_slice(&chunk[..n]);
    }
}

fn assert_closed_in_time(held: Duration, timeout: Duration) {
    assert!(
        held >= timeout.mul_f64(0.9),
        "closed after {held:?}, before the {timeout:?} timeout"
    );
    assert!(
        held < timeout + SLACK,
        "closed after {held:?}, the timeout is {timeout:?}"
    );
}

#[tokio::test]
async fn a_connection_that_stops_mid_header_is_closed_after_the_header_timeout() {
    let app = spawn_app_with_short_timeouts().await;
    let mut stream = connect(&app).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    read_until_closed(&mut stream, HEADER_TIMEOUT + SLACK * 2).await;
    let held = started.elapsed();
    println!("partial header: connection held {held:?}");
    assert_closed_in_time(held, HEADER_TIMEOUT);
}

#[tokio::test]
async fn a_connection_that_trickles_its_header_is_closed_after_the_header_timeout() {
    let app = spawn_app_with_short_timeouts().await;
    let (mut reader, mut writer) = connect(&app).await.into_split();
    let started = Instant::now();
    // A header that never ends, one byte every 100 ms: never idle, never complete.
    let trickle = tokio::spawn(async move {
        let mut next: &[u8] = b"GET /healthz HTTP/1.1\r\nX-Slow: ";
        while writer.write_all(next).await.is_ok() {
            next = b"X";
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    read_until_closed(&mut reader, HEADER_TIMEOUT + SLACK * 2).await;
    let held = started.elapsed();
    trickle.abort();
    println!("trickled header: connection held {held:?}");
    assert_closed_in_time(held, HEADER_TIMEOUT);
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_within_the_body_timeout_and_nothing_is_produced() {
    let app = spawn_app_with_short_timeouts().await;
    let body =
        json!({"username": "slow loris", "userId": "slow-loris", "price": 19.99}).to_string();
    let (mut reader, mut writer) = connect(&app).await.into_split();
    writer
        .write_all(
            format!(
                "POST /api/purchases HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    // A valid purchase at 10 bytes/s: whole only after ~7 s, well past the body timeout, so
    // a server that waited for it would produce it.
    let trickle = tokio::spawn(async move {
        for byte in body.into_bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let received = read_until_closed(&mut reader, BODY_TIMEOUT + SLACK * 2).await;
    let held = started.elapsed();
    trickle.abort();
    println!("trickled body: answered and closed after {held:?}");
    assert_closed_in_time(held, BODY_TIMEOUT);

    let response = String::from_utf8_lossy(&received);
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{response}"
    );
    let (_, json_body) = response.split_once("\r\n\r\n").expect("a response body");
    let error: serde_json::Value = serde_json::from_str(json_body).expect("JSON error body");
    assert_eq!(error["error"], "request_timeout", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));

    // A purchase sent normally afterwards is the only record on the topic.
    let accepted = app
        .post_purchase(&json!({"username": "quick", "userId": "quick", "price": 1}))
        .await;
    assert_eq!(accepted.status().as_u16(), 202);
    let records = app.read_topic(1).records;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value["userId"], "quick");
}

#[tokio::test]
async fn many_silent_or_half_sent_connections_are_all_closed_after_the_header_timeout() {
    let app = spawn_app_with_short_timeouts().await;
    let connections = (0..200).map(|i| {
        let app = &app;
        async move {
            let mut stream = connect(app).await;
            let started = Instant::now();
            if i % 2 == 1 {
                stream
                    .write_all(b"POST /api/purchases HTTP/1.1\r\nHost: localhost\r\n")
                    .await
                    .unwrap();
            }
            read_until_closed(&mut stream, HEADER_TIMEOUT + SLACK * 2).await;
            started.elapsed()
        }
    });
    let held = futures::future::join_all(connections).await;
    println!(
        "200 idle connections: closed after {:?} to {:?}",
        held.iter().min(),
        held.iter().max()
    );
    for held in held {
        assert_closed_in_time(held, HEADER_TIMEOUT);
    }
    let response = app.get("/healthz").await;
    assert_eq!(response.status().as_u16(), 200, "still serving");
}

#[tokio::test]
async fn a_keep_alive_connection_serves_requests_and_waits_the_idle_timeout_for_the_next() {
    let app = spawn_app_with_short_timeouts().await;
    let mut stream = connect(&app).await;
    let get = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut stream).await.0, 200);

    // Waiting longer than the header timeout between requests is fine on a keep-alive
    // connection: only a started request has to hurry.
    tokio::time::sleep(HEADER_TIMEOUT + Duration::from_millis(500)).await;
    let body = json!({"username": "keep alive", "userId": "keep-alive", "price": 3.5}).to_string();
    stream
        .write_all(
            format!(
                "POST /api/purchases HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (status, answer) = read_response(&mut stream).await;
    assert_eq!(status, 202, "{answer}");
    stream.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut stream).await.0, 200);

    let idle_since = Instant::now();
    read_until_closed(&mut stream, IDLE_TIMEOUT + SLACK * 2).await;
    let held = idle_since.elapsed();
    println!("idle keep-alive connection: closed after {held:?}");
    assert_closed_in_time(held, IDLE_TIMEOUT);
}
