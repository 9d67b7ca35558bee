//! The HTTP/1.1 server: the poem endpoint on hyper, with read deadlines so that a client that
//! sends nothing, trickles its headers or trickles its body cannot hold a connection.
//!
//! poem's `Server` builds hyper's connection without a timer, so hyper's header read timeout
//! never runs, and poem's `idle_timeout` is reset by every byte, so a client sending one byte
//! a second is never idle. Here the socket's reads have a deadline that depends on where the
//! connection is in its request cycle, as in Go's `net/http`:
//!
//! - a new connection, or a keep-alive one once the next request's first byte arrived: the
//!   whole head within `--header-read-timeout`;
//! - a keep-alive connection between requests: the next request's first byte within
//!   `--idle-timeout` (only a client that completed a request gets this longer wait);
//! - while a request is handled: no socket deadline (a purchase may wait for the broker);
//!   the body must be complete within `--body-read-timeout` of the head, else reading it
//!   fails with `TimedOut`, which the purchase parser answers with 408 before anything was
//!   produced.
//!
//! A read past its deadline fails, and hyper closes the connection. HTTP/1.1 only: the
//! deadlines follow one request at a time.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
    time::Duration,
};

use http_body_util::combinators::BoxBody;
use hyper::{
    body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use poem::{
    http::uri::Scheme,
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
    Body, Endpoint, Request, Response,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    task::{JoinError, JoinSet},
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;

use crate::config::ClientTimeoutArgs;

/// Serves `endpoint` on every connection `acceptor` takes until `shutdown`; then stops
/// accepting, lets in-flight requests finish within `grace` and drops what is left.
pub async fn serve<A, E>(
    mut acceptor: A,
    endpoint: E,
    timeouts: ClientTimeoutArgs,
    shutdown: CancellationToken,
    grace: Duration,
) where
    A: Acceptor,
    E: Endpoint + 'static,
{
    let endpoint = Arc::new(endpoint);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            // Reaps finished connections, so the set holds only live ones.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                log_panic(finished);
            }
            accepted = acceptor.accept() => match accepted {
                Ok((io, local, remote, scheme)) => {
                    let peer = Peer { local, remote, scheme };
                    connections.spawn(serve_connection(
                        io,
                        peer,
                        Arc::clone(&endpoint),
                        timeouts.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Usually out of file descriptors: pausing lets connections close
                    // instead of spinning on the error.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(acceptor);
    let drained = tokio::time::timeout(grace, async {
        while let Some(finished) = connections.join_next().await {
            log_panic(finished);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            connections = connections.len(),
            "connections still open after the grace period are dropped"
        );
    }
    connections.shutdown().await;
}

fn log_panic(finished: Result<(), JoinError>) {
    if let Err(e) = finished {
        if e.is_panic() {
            tracing::error!(error = %e, "a connection task panicked");
        }
    }
}

/// The addresses poem's handlers see in each request of a connection.
#[derive(Clone)]
struct Peer {
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
}

async fn serve_connection<Io, E>(
    io: Io,
    peer: Peer,
    endpoint: Arc<E>,
    timeouts: ClientTimeoutArgs,
    shutdown: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    E: Endpoint + 'static,
{
    let remote = peer.remote.clone();
    let cycle = RequestCycle::new(&timeouts);
    let service = service_fn({
        let cycle = cycle.clone();
        move |request: hyper::Request<Incoming>| {
            cycle.handling();
            let Peer {
                local,
                remote,
                scheme,
            } = peer.clone();
            let mut request = Request::from((request, local, remote, scheme));
            let body = DeadlineBody::new(request.take_body(), timeouts.body_read_timeout);
            request.set_body(Body::from(BoxBody::new(body)));
            let endpoint = Arc::clone(&endpoint);
            let cycle = cycle.clone();
            async move {
                let response: Response = endpoint.get_response(request).await;
                cycle.between_requests();
                Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, io::Error>>::from(response))
            }
        }
    });
    let connection =
        http1::Builder::new().serve_connection(TokioIo::new(DeadlineIo::new(io, cycle)), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = shutdown.cancelled() => {
            // Closes the connection now if it waits for a request, else after the response.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%remote, error = %e, "connection ended");
    }
}

/// Where a connection is in its request cycle, which decides how long a read may wait.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Receiving a request head, due by the deadline.
    Head(Instant),
    /// Between requests on a keep-alive connection: the next one must start by the deadline.
    Idle(Instant),
    /// A request is being handled; its body has a deadline of its own.
    Handling,
}

/// The phase of one connection, shared by its socket (which sees bytes arrive) and its
/// service (which sees requests start and end).
#[derive(Clone)]
struct RequestCycle {
    state: Arc<Mutex<CycleState>>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

struct CycleState {
    phase: Phase,
    /// A read that went pending while no deadline ran. hyper polls a blocked read again only
    /// once woken, so it is woken when the idle deadline starts, to arm it.
    undated_read: Option<Waker>,
}

impl RequestCycle {
    fn new(timeouts: &ClientTimeoutArgs) -> Self {
        Self {
            state: Arc::new(Mutex::new(CycleState {
                phase: Phase::Head(Instant::now() + timeouts.header_read_timeout),
                undated_read: None,
            })),
            header_read_timeout: timeouts.header_read_timeout,
            idle_timeout: timeouts.idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, CycleState> {
        // Nothing panics while holding the lock, so a poisoned one still holds a valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The deadline of a read that is about to block; without one, `waker` is kept to be
    /// woken when one starts.
    fn read_deadline(&self, waker: &Waker) -> Option<Instant> {
        let mut state = self.lock();
        match state.phase {
            Phase::Head(deadline) | Phase::Idle(deadline) => Some(deadline),
            Phase::Handling => {
                state.undated_read = Some(waker.clone());
                None
            }
        }
    }

    fn bytes_arrived(&self) {
        let mut state = self.lock();
        if let Phase::Idle(_) = state.phase {
            state.phase = Phase::Head(Instant::now() + self.header_read_timeout);
        }
    }

    fn handling(&self) {
        self.lock().phase = Phase::Handling;
    }

    fn between_requests(&self) {
        let undated_read = {
            let mut state = self.lock();
            state.phase = Phase::Idle(Instant::now() + self.idle_timeout);
            state.undated_read.take()
        };
        if let Some(read) = undated_read {
            read.wake();
        }
    }
}

/// The connection's socket: a read that would wait past the phase's deadline fails with
/// `TimedOut` instead.
struct DeadlineIo<Io> {
    io: Io,
    cycle: RequestCycle,
    timer: Pin<Box<Sleep>>,
}

impl<Io> DeadlineIo<Io> {
    fn new(io: Io, cycle: RequestCycle) -> Self {
        Self {
            io,
            cycle,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for DeadlineIo<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.cycle.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.cycle.read_deadline(cx.waker()) else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not send its request in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A request body that fails with `TimedOut` when it is not complete by its deadline, so a
/// handler reading it never waits longer than `--body-read-timeout`.
struct DeadlineBody {
    body: BoxBody<Bytes, io::Error>,
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(body: Body, timeout: Duration) -> Self {
        Self {
            body: body.into(),
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the request body did not arrive within {}",
                        humantime::format_duration(this.timeout)
                    ),
                )))),
                Poll::Pending => Poll::Pending,
            },
            frame => frame,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use poem::{
        endpoint::make_sync,
        listener::{Listener, TcpListener},
    };
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    fn timeouts(header: u64, body: u64, idle: u64) -> ClientTimeoutArgs {
        ClientTimeoutArgs {
            header_read_timeout: Duration::from_millis(header),
            body_read_timeout: Duration::from_millis(body),
            idle_timeout: Duration::from_millis(idle),
        }
    }

    /// Asserts `deadline` is `timeout` after some moment in `[before, now]`.
    fn assert_due(deadline: Option<Instant>, before: Instant, timeout: u64) {
        let timeout = Duration::from_millis(timeout);
        let deadline = deadline.expect("a read deadline");
        assert!(deadline >= before + timeout && deadline <= Instant::now() + timeout);
    }

    #[tokio::test]
    async fn a_connection_has_the_header_timeout_until_a_response_then_the_idle_timeout() {
        let waker = futures::task::noop_waker_ref();
        let before = Instant::now();
        let cycle = RequestCycle::new(&timeouts(100, 200, 300));
        assert_due(cycle.read_deadline(waker), before, 100);
        cycle.handling();
        assert_eq!(cycle.read_deadline(waker), None);

        let before = Instant::now();
        cycle.between_requests();
        assert_due(cycle.read_deadline(waker), before, 300);

        let before = Instant::now();
        cycle.bytes_arrived();
        let head = cycle.read_deadline(waker);
        assert_due(head, before, 100);
        // More bytes of the same head do not extend its deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
        cycle.bytes_arrived();
        assert_eq!(cycle.read_deadline(waker), head);
    }

    #[tokio::test]
    async fn a_body_not_complete_by_its_deadline_fails_with_timed_out() {
        let endless = Body::from_bytes_stream(futures::stream::pending::<io::Result<Bytes>>());
        let late = Body::from(BoxBody::new(DeadlineBody::new(
            endless,
            Duration::from_millis(100),
        )));
        match late.into_bytes_limit(1024).await {
            Err(poem::error::ReadBodyError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}")
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    async fn serve_ok(timeouts: ClientTimeoutArgs) -> (SocketAddr, CancellationToken) {
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let address = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            acceptor,
            make_sync(|_| "ok"),
            timeouts,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        (address, shutdown)
    }

    /// How long until the server closes `stream`, reading whatever it sends.
    async fn closed_after(stream: &mut TcpStream) -> Duration {
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        assert!(closed.await.is_ok(), "still open after 5 s");
        started.elapsed()
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_a_prompt_one_served() {
        let (address, shutdown) = serve_ok(timeouts(300, 300, 300)).await;
        let mut silent = TcpStream::connect(address).await.unwrap();
        assert!(closed_after(&mut silent).await >= Duration::from_millis(250));

        let mut prompt = TcpStream::connect(address).await.unwrap();
        prompt
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        prompt.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let (address, shutdown) = serve_ok(timeouts(300, 300, 600)).await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 1024];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        let idle = closed_after(&mut stream).await;
        assert!(
            idle >= Duration::from_millis(500) && idle < Duration::from_secs(2),
            "{idle:?}"
        );
        shutdown.cancel();
    }
}
