//! One TCP connection to one broker: framing, correlation ids and API version negotiation.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Buf, BytesMut};
use kafka_protocol::{
    messages::{
        ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorResponse,
        JoinGroupResponse, RequestHeader, ResponseHeader, SyncGroupResponse,
    },
    protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufStream},
    sync::Mutex,
};
use tokio_rustls::rustls;

use crate::{
    error::{Error, Result},
    transport::{self, tcp_connect, Transport},
};

/// Responses larger than this are refused rather than allocated (a corrupt size prefix would
/// otherwise ask for gigabytes).
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;

pub struct Connection {
    address: String,
    client_id: StrBytes,
    stream: Mutex<BufStream<Box<dyn Transport>>>,
    correlation: AtomicI32,
    /// Set when a request was interrupted mid-way: the byte stream is out of step and the
    /// connection must not be used again.
    broken: AtomicBool,
    versions: HashMap<i16, RangeInclusive<i16>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .finish()
    }
}

impl Connection {
    /// A connection without SASL whose failures are reported as they are: what the probes
    /// of a diagnosis use.
    pub(crate) async fn open(
        address: &str,
        client_id: &str,
        request_timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Self> {
        let tcp = tcp_connect(address, request_timeout).await?;
        let stream: Box<dyn Transport> = match tls {
            Some(config) => transport::wrap(tcp, address, config, request_timeout).await?,
            None => Box::new(tcp),
        };
        let mut connection = Self::new(address, client_id, stream, request_timeout);
        connection.negotiate_versions().await?;
        Ok(connection)
    }

    pub(crate) fn new(
        address: &str,
        client_id: &str,
        stream: Box<dyn Transport>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            address: address.to_string(),
            client_id: StrBytes::from_string(client_id.to_string()),
            stream: Mutex::new(BufStream::new(stream)),
            correlation: AtomicI32::new(0),
            broken: AtomicBool::new(false),
            versions: HashMap::new(),
            request_timeout,
        }
    }

    /// Asks which API versions the broker supports (the first request of every connection).
    pub(crate) async fn negotiate_versions(&mut self) -> Result<()> {
        // Version 0 is understood by every broker; its answer lists what else is.
        let response: ApiVersionsResponse = self
            .send_with_version(&ApiVersionsRequest::default(), 0, self.request_timeout)
            .await?;
        if let Some(error) = crate::error::protocol_error(response.error_code) {
            return Err(Error::Protocol {
                api: "ApiVersions",
                error,
            });
        }
        self.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version..=k.max_version))
            .collect();
        Ok(())
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bound on a request that does not wait on the broker.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// The highest version both sides speak within `ours`.
    pub fn version<R: Request>(&self, ours: RangeInclusive<i16>) -> Result<i16> {
        let api = ApiKey::try_from(R::KEY)
            .map(|k| format!("{k:?}"))
            .unwrap_or_else(|_| R::KEY.to_string());
        let theirs = self.versions.get(&R::KEY).ok_or_else(|| {
            Error::Unsupported(format!("broker {} does not support {api}", self.address))
        })?;
        let high = (*ours.end()).min(*theirs.end());
        let low = (*ours.start()).max(*theirs.start());
        if low > high {
            return Err(Error::Unsupported(format!(
                "broker {} supports {api} versions {theirs:?}, this client {ours:?}",
                self.address
            )));
        }
        Ok(high)
    }

    /// Sends with the default request timeout.
    pub async fn send<R: Request>(&self, request: &R, version: i16) -> Result<R::Response> {
        self.send_with_version(request, version, self.request_timeout)
            .await
    }

    /// Sends one request and reads its response. Requests on one connection are serialized,
    /// as the broker answers them in order anyway.
    pub async fn send_with_version<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        let body = self.exchange(request, version, timeout).await?;
        decode_response::<R>(body, version)
    }

    /// Sends a request whose error answers some brokers fill with nulls where Kafka's
    /// schema has none (librdkafka's mock cluster: a null assignment in SyncGroup, null
    /// leader and member ids in JoinGroup, a null host in FindCoordinator). A strict decoder
    /// would turn the error code that says what to do into an undecodable answer; the code
    /// sits at a fixed place ahead of those fields, so it is read on its own when the strict
    /// decoding fails.
    pub async fn send_lenient<R>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response>
    where
        R: Request,
        R::Response: ErrorAnswer,
    {
        let body = self.exchange(request, version, timeout).await?;
        match decode_response::<R>(body.clone(), version) {
            Ok(response) => Ok(response),
            Err(strict) => error_answer::<R::Response>(body, version).ok_or(strict),
        }
    }

    /// Writes one request and reads its response body, after the response header (whose
    /// correlation id is checked).
    async fn exchange<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<BytesMut> {
        if self.is_broken() {
            return Err(Error::Io(format!(
                "connection to {} was broken",
                self.address
            )));
        }
        let correlation_id = self.correlation.fetch_add(1, Ordering::Relaxed);
        let frame = encode_request(request, version, correlation_id, &self.client_id)?;
        let mut stream = self.stream.lock().await;
        // Until the exchange completes the stream is in an unknown state; a timeout or a
        // dropped future leaves this flag set.
        self.broken.store(true, Ordering::Relaxed);
        let exchange = async {
            stream.write_all(&frame).await?;
            stream.flush().await?;
            let size = stream.read_i32().await?;
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > MAX_RESPONSE_BYTES {
                return Err(std::io::Error::other(format!("response of {size} bytes")));
            }
            let mut body = BytesMut::zeroed(size);
            stream.read_exact(&mut body).await?;
            Ok(body)
        };
        let body = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                Error::Timeout(format!("{} request to {}", api_name(R::KEY), self.address))
            })?
            .map_err(|e| Error::Io(format!("{}: {e}", self.address)))?;
        self.broken.store(false, Ordering::Relaxed);
        strip_response_header::<R>(body, version, correlation_id)
    }
}

fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0; 4]);
    header
        .encode(&mut frame, R::header_version(version))
        .and_then(|()| request.encode(&mut frame, version))
        .map_err(|e| Error::Encode(format!("{} v{version}: {e}", api_name(R::KEY))))?;
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame)
}

fn strip_response_header<R: Request>(
    mut body: BytesMut,
    version: i16,
    correlation_id: i32,
) -> Result<BytesMut> {
    let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
        .map_err(|e| Error::Decode(format!("{} response header: {e}", api_name(R::KEY))))?;
    if header.correlation_id != correlation_id {
        return Err(Error::Decode(format!(
            "correlation id {} where {correlation_id} was expected",
            header.correlation_id
        )));
    }
    Ok(body)
}

fn decode_response<R: Request>(mut body: BytesMut, version: i16) -> Result<R::Response> {
    let response = R::Response::decode(&mut body, version)
        .map_err(|e| Error::Decode(format!("{} v{version} response: {e}", api_name(R::KEY))))?;
    if body.has_remaining() {
        tracing::debug!(
            api = api_name(R::KEY),
            left = body.remaining(),
            "response had trailing bytes"
        );
    }
    Ok(response)
}

/// A response that can stand for an error answer by its error code alone.
pub(crate) trait ErrorAnswer: Sized {
    /// The first version whose response starts with `throttle_time_ms`, before the error.
    const THROTTLE_SINCE: i16;

    fn error_answer(throttle_time_ms: i32, error_code: i16) -> Self;

    /// Whether what follows a success's error code is a null that means "none" (the
    /// answer is then the empty response).
    fn null_means_none(_version: i16, _rest: &[u8]) -> bool {
        false
    }
}

impl ErrorAnswer for SyncGroupResponse {
    const THROTTLE_SINCE: i16 = 1;

    fn error_answer(throttle_time_ms: i32, error_code: i16) -> Self {
        Self::default()
            .with_throttle_time_ms(throttle_time_ms)
            .with_error_code(error_code)
    }

    /// Versions 0-3 end with the assignment's i32 length: -1 is a null.
    fn null_means_none(version: i16, rest: &[u8]) -> bool {
        version < 4 && rest == (-1i32).to_be_bytes()
    }
}

impl ErrorAnswer for JoinGroupResponse {
    const THROTTLE_SINCE: i16 = 2;

    fn error_answer(throttle_time_ms: i32, error_code: i16) -> Self {
        Self::default()
            .with_throttle_time_ms(throttle_time_ms)
            .with_error_code(error_code)
    }
}

impl ErrorAnswer for FindCoordinatorResponse {
    const THROTTLE_SINCE: i16 = 1;

    fn error_answer(throttle_time_ms: i32, error_code: i16) -> Self {
        Self::default()
            .with_throttle_time_ms(throttle_time_ms)
            .with_error_code(error_code)
    }
}

/// The error answer in `body`, when it is one (or a success whose only content is a null
/// meaning none); `None` when the body is not even that.
fn error_answer<T: ErrorAnswer>(mut body: BytesMut, version: i16) -> Option<T> {
    let throttle_time_ms = if version >= T::THROTTLE_SINCE {
        (body.remaining() >= 4).then(|| body.get_i32())?
    } else {
        0
    };
    let error_code = (body.remaining() >= 2).then(|| body.get_i16())?;
    if error_code == 0 && !T::null_means_none(version, body.chunk()) {
        return None;
    }
    tracing::debug!(
        version,
        error_code,
        "an answer with nulls read by its error code"
    );
    Some(T::error_answer(throttle_time_ms, error_code))
}

pub(crate) fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("api {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{JoinGroupRequest, SyncGroupRequest};

    fn body(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn a_sync_group_error_with_a_null_assignment_keeps_its_error_code() {
        // v3: throttle 0, REBALANCE_IN_PROGRESS (27), assignment length -1.
        let raw = body(&[0, 0, 0, 0, 0, 27, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode_response::<SyncGroupRequest>(raw.clone(), 3).is_err());
        let response: SyncGroupResponse = error_answer(raw, 3).expect("the error code is readable");
        assert_eq!(response.error_code, 27);
        assert!(response.assignment.is_empty());
    }

    #[test]
    fn a_successful_sync_group_with_a_null_assignment_reads_as_no_partitions() {
        let raw = body(&[0, 0, 0, 5, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        let response: SyncGroupResponse = error_answer(raw, 3).expect("a null reads as none");
        assert_eq!((response.error_code, response.throttle_time_ms), (0, 5));
        assert!(response.assignment.is_empty());
    }

    #[test]
    fn a_truncated_sync_group_response_stays_an_error() {
        assert!(error_answer::<SyncGroupResponse>(body(&[0, 0, 0]), 3).is_none());
        // No error and garbage where the assignment belongs: not ours to guess.
        assert!(error_answer::<SyncGroupResponse>(body(&[0, 0, 0, 0, 0, 0, 0x7f]), 3).is_none());
    }

    #[test]
    fn a_join_group_error_with_null_ids_keeps_its_error_code() {
        // v5: throttle 0, COORDINATOR_LOAD_IN_PROGRESS (14), generation -1, then a null
        // protocol name, leader and member id (i16 -1 each) and no members.
        let raw = body(&[
            0, 0, 0, 0, 0, 14, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0,
            0,
        ]);
        assert!(decode_response::<JoinGroupRequest>(raw.clone(), 5).is_err());
        let response: JoinGroupResponse = error_answer(raw, 5).expect("the error code");
        assert_eq!(response.error_code, 14);
    }

    #[test]
    fn a_find_coordinator_error_with_a_null_host_keeps_its_error_code() {
        // v1: throttle 0, COORDINATOR_NOT_AVAILABLE (15), null message, node -1, null host,
        // port -1.
        let raw = body(&[
            0, 0, 0, 0, 0, 15, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff,
        ]);
        let response: FindCoordinatorResponse = error_answer(raw, 1).expect("the error code");
        assert_eq!(response.error_code, 15);
    }
}
