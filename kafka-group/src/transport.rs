//! The byte stream under a connection: TCP, and TLS around it. A TLS failure (an untrusted
//! or expired certificate, a name mismatch) is an [`Error::Tls`], never retried as plaintext.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    rustls::{self, pki_types::ServerName},
    TlsConnector,
};

use crate::error::{Error, Result};

/// The byte stream under a connection: plain TCP or TLS over TCP.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

pub(crate) async fn tcp_connect(address: &str, timeout: Duration) -> Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| Error::Timeout(format!("connecting to {address}")))?
        .map_err(|e| Error::Io(format!("connecting to {address}: {e}")))?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// The certificate check's name for `address` (`host:port` or `[v6]:port`): an IP address
/// is matched against the certificate's IP entries, anything else against its DNS names.
pub(crate) fn server_name(address: &str) -> Result<ServerName<'static>> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Config(format!("{address} is not a valid TLS server name: {e}")))
}

/// The TLS handshake of a probe: a failure (an untrusted or expired certificate, a name
/// mismatch, a plaintext listener) is an [`Error::Tls`], never retried as plaintext.
pub(crate) async fn wrap(
    tcp: TcpStream,
    address: &str,
    config: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Box<dyn Transport>> {
    let handshake = TlsConnector::from(Arc::clone(config)).connect(server_name(address)?, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(handshake_failed(address, &e)),
        Err(_) => Err(handshake_timed_out(address, timeout)),
    }
}

pub(crate) fn handshake_failed(address: &str, error: &std::io::Error) -> Error {
    Error::Tls(format!("TLS handshake with {address} failed: {error}"))
}

pub(crate) fn handshake_timed_out(address: &str, timeout: Duration) -> Error {
    Error::Tls(format!(
        "TLS handshake with {address} timed out after {timeout:?} (is it a plaintext listener?)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_of_an_ip_address_is_an_ip() {
        assert!(matches!(
            server_name("127.0.0.1:9092"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:9092"),
            Ok(ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn server_name_of_a_host_is_a_dns_name() {
        assert!(matches!(
            server_name("kafka-0.kafka.svc:9093"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad host:9092").is_err());
    }
}
