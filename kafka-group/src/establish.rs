//! Setting a connection up the way a client's settings say (TCP, TLS, ApiVersions, SASL),
//! and when the broker turns it down where a listener with other settings would, asking the
//! listener what it speaks instead (see `diagnosis`). Also the start-up check of a client's
//! settings.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;
use tokio_rustls::{rustls, TlsConnector};

use crate::{
    connection::Connection,
    diagnosis::{self, Probe},
    error::{Error, Result},
    mismatch::Mismatch,
    sasl,
    security::Security,
    transport::{handshake_failed, handshake_timed_out, server_name, tcp_connect, Transport},
};

/// How long a TLS handshake may go unanswered before the port is also asked, in plaintext,
/// whether it speaks Kafka without TLS (see [`tls_handshake`]). Far above a handshake's
/// round trips; asking a TLS port costs it one refused connection.
const SLOW_HANDSHAKE: Duration = Duration::from_millis(500);

impl Connection {
    /// Connects (through TLS when configured), asks the broker which API versions it
    /// supports, and authenticates when SASL is configured: a connection this returns is
    /// ready for any request. When the broker closes the connection where a listener with
    /// other TLS or SASL settings would, the listener is probed and a mismatch is reported
    /// as [`Error::Mismatch`] (see `diagnosis`).
    pub async fn connect(
        address: &str,
        client_id: &str,
        request_timeout: Duration,
        security: &Security,
    ) -> Result<Self> {
        let probe = Probe {
            address,
            client_id,
            timeout: request_timeout,
            tls: security.tls.as_ref(),
        };
        let tcp = tcp_connect(address, request_timeout).await?;
        let stream: Box<dyn Transport> = match &security.tls {
            Some(config) => tls_handshake(tcp, config, &probe).await?,
            None => Box::new(tcp),
        };
        let mut connection = Self::new(address, client_id, stream, request_timeout);
        if let Err(e) = connection.negotiate_versions().await {
            return Err(match &security.tls {
                // A TLS listener closes at once (or answers an alert, which reads as no
                // Kafka response); a timeout is no sign of one.
                None if matches!(e, Error::Io(_) | Error::Decode(_)) => {
                    diagnosis::after_plaintext_refused(&probe, e).await
                }
                None => e,
                Some(_) => refused_after_handshake(e, address),
            });
        }
        if let Some(sasl) = &security.sasl {
            sasl::authenticate(&connection, sasl, &probe).await?;
        }
        Ok(connection)
    }
}

impl Security {
    /// Opens one connection to a bootstrap broker with these settings (TLS handshake,
    /// ApiVersions, SASL) and asks it for metadata: a start-up check that reports at once,
    /// instead of after a client's retry deadline, refused credentials or an untrusted
    /// certificate ([`Error::Tls`], [`Error::Authentication`]) and settings the broker's
    /// listener does not speak ([`Error::Mismatch`]: TLS or not, SASL or not, the SASL
    /// mechanism). Costs one connection; the listener is probed only after a failure.
    pub async fn check(
        &self,
        bootstrap: &[String],
        client_id: &str,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = Error::Config("no bootstrap brokers configured".into());
        for address in bootstrap {
            match self.check_broker(address, client_id, timeout).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_security() => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn check_broker(&self, address: &str, client_id: &str, timeout: Duration) -> Result<()> {
        let connection = Connection::connect(address, client_id, timeout, self).await?;
        // A SASL listener answers ApiVersions before authentication (KIP-43) and closes the
        // connection at any other request: only a second request shows it wants SASL.
        match diagnosis::request_metadata(&connection).await {
            Err(e @ Error::Io(_)) if self.sasl.is_none() => {
                let probe = Probe {
                    address,
                    client_id,
                    timeout,
                    tls: self.tls.as_ref(),
                };
                Err(diagnosis::after_unauthenticated_refused(&probe, e).await)
            }
            result => result,
        }
    }
}

/// The TLS handshake of a client's connection, as [`wrap`], but a port that turns out to
/// answer Kafka in plaintext is reported as [`Mismatch::TlsNotSpoken`]. Asked after a
/// failure that is not the broker's certificate (which proves TLS), and meanwhile when the
/// handshake is slow: a listener without TLS reads the ClientHello (16 03 01 ..) as the size
/// of a request of over 369 MB, which Kafka refuses at once (above socket.request.max.bytes,
/// NetworkReceive's InvalidReceiveException) but nisshi 0.7 waits for until the timeout.
pub(crate) async fn tls_handshake(
    tcp: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    probe: &Probe<'_>,
) -> Result<Box<dyn Transport>> {
    let address = probe.address;
    let handshake = TlsConnector::from(Arc::clone(config)).connect(server_name(address)?, tcp);
    let handshake = tokio::time::timeout(probe.timeout, handshake);
    tokio::pin!(handshake);
    let answers_plaintext = async {
        tokio::time::sleep(SLOW_HANDSHAKE.min(probe.timeout)).await;
        probe.speaks_plaintext_kafka().await
    };
    let outcome = tokio::select! {
        outcome = &mut handshake => outcome,
        // A `false` disables this branch: the handshake goes on to its own end.
        true = answers_plaintext => return Err(probe.mismatch(Mismatch::TlsNotSpoken)),
    };
    match outcome {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) if diagnosis::proves_tls(&e) => Err(handshake_failed(address, &e)),
        Ok(Err(e)) => Err(diagnosis::after_tls_refused(probe, handshake_failed(address, &e)).await),
        Err(_) => Err(handshake_timed_out(address, probe.timeout)),
    }
}

/// A TLS 1.3 server checks the client's certificate after the client considers the handshake
/// done, so a refusal only shows as the connection closing under the first request. Said
/// with its likely cause, but still an I/O error: a TLS proxy whose broker is down closes
/// the same way, and that heals by retrying.
fn refused_after_handshake(error: Error, address: &str) -> Error {
    match error {
        Error::Io(cause)
            if [
                "close_notify",
                "end of file",
                "alert",
                "reset by peer",
                "broken pipe",
            ]
            .iter()
            .any(|sign| cause.to_lowercase().contains(sign)) =>
        {
            Error::Io(format!(
                "{address} closed the TLS connection before answering its first request ({cause}): \
                 a broker that requires a client certificate does this when none is presented, \
                 or one it does not trust; a TLS proxy does it when its broker is down"
            ))
        }
        error => error,
    }
}
