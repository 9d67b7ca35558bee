//! SASL authentication on a fresh connection: SaslHandshake names the mechanism, then
//! SaslAuthenticate carries the mechanism's messages (computed by `rsasl`) until it ends.

use std::io::Cursor;

use kafka_protocol::{
    messages::{SaslAuthenticateRequest, SaslHandshakeRequest},
    protocol::StrBytes,
};
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
use secrecy::ExposeSecret;

use crate::{
    connection::Connection,
    diagnosis::{self, Probe, SaslAnswer},
    error::{protocol_error, Error, Result},
    mismatch::{self, Mismatch},
    security::SaslCredentials,
};

const HANDSHAKE_VERSIONS: std::ops::RangeInclusive<i16> = 1..=1;
const AUTHENTICATE_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

/// Runs the SASL exchange on a fresh connection: SaslHandshake names the mechanism, then
/// SaslAuthenticate carries the mechanism's messages (computed by `rsasl`) until it ends.
/// A listener without SASL, or without this mechanism, is an [`Error::Mismatch`].
pub(crate) async fn authenticate(
    connection: &Connection,
    sasl: &SaslCredentials,
    probe: &Probe<'_>,
) -> Result<()> {
    handshake(connection, sasl, probe).await?;
    exchange(connection, sasl).await
}

/// The refusal of `sasl` by the broker at the other end of `connection`, and why.
fn refused(connection: &Connection, sasl: &SaslCredentials, why: String) -> Error {
    Error::Authentication(format!(
        "{} refused SASL {} authentication as {:?}: {why}",
        connection.address(),
        sasl.mechanism.name(),
        sasl.username
    ))
}

/// SaslHandshake: the broker accepts the mechanism, or says which it offers instead.
async fn handshake(
    connection: &Connection,
    sasl: &SaslCredentials,
    probe: &Probe<'_>,
) -> Result<()> {
    let mechanism = sasl.mechanism.name();
    let version = connection.version::<SaslHandshakeRequest>(HANDSHAKE_VERSIONS)?;
    let handshake = match connection
        .send(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
            version,
        )
        .await
    {
        Ok(handshake) => handshake,
        // nisshi 0.7 hangs up on a mechanism it does not offer; a listener without SASL may.
        Err(e @ Error::Io(_)) => {
            let error = refused(connection, sasl, format!(
                "the broker closed the connection at the SaslHandshake ({e}); it may not offer {mechanism}"
            ));
            return Err(diagnosis::after_handshake_hang_up(probe, sasl.mechanism, error).await);
        }
        Err(e) => return Err(e),
    };
    let Some(error) = protocol_error(handshake.error_code) else {
        return Ok(());
    };
    let offered: Vec<String> = handshake
        .mechanisms
        .iter()
        .map(|m| m.as_str().to_string())
        .collect();
    Err(
        match SaslAnswer::classify(mechanism, handshake.error_code, &offered) {
            SaslAnswer::NotEnabled => probe.mismatch(Mismatch::SaslNotEnabled),
            SaslAnswer::Offers(offered) => probe.mismatch(Mismatch::MechanismNotOffered {
                mechanism: sasl.mechanism,
                offered,
            }),
            SaslAnswer::Unclear => refused(
                connection,
                sasl,
                format!(
                    "{error} (the broker offers {})",
                    mismatch::listing(&offered)
                ),
            ),
        },
    )
}

/// SaslAuthenticate rounds, each carrying the mechanism's next message, until it ends.
async fn exchange(connection: &Connection, sasl: &SaslCredentials) -> Result<()> {
    let mechanism = sasl.mechanism.name();
    let config = SASLConfig::with_credentials(
        None,
        sasl.username.clone(),
        sasl.password.expose_secret().to_string(),
    )
    .map_err(|e| Error::Config(format!("SASL credentials: {e}")))?;
    let name = Mechname::parse(mechanism.as_bytes())
        .map_err(|e| Error::Config(format!("SASL mechanism {mechanism}: {e}")))?;
    let mut session = SASLClient::new(config)
        .start_suggested(&[name])
        .map_err(|e| Error::Config(format!("SASL mechanism {mechanism}: {e}")))?;
    let version = connection.version::<SaslAuthenticateRequest>(AUTHENTICATE_VERSIONS)?;
    let mut received: Option<Vec<u8>> = None;
    loop {
        let mut message = Cursor::new(Vec::new());
        let state = session
            .step(received.as_deref(), &mut message)
            .map_err(|e| {
                refused(
                    connection,
                    sasl,
                    format!("{e} (a wrong user name or password ends the exchange so)"),
                )
            })?;
        if state.has_sent_message() {
            let response = connection
                .send(
                    &SaslAuthenticateRequest::default()
                        .with_auth_bytes(message.into_inner().into()),
                    version,
                )
                .await?;
            if let Some(error) = protocol_error(response.error_code) {
                let detail = response
                    .error_message
                    .as_ref()
                    .map(|m| m.as_str())
                    .filter(|m| !m.is_empty())
                    .map(|m| format!("{error}: {m}"))
                    .unwrap_or_else(|| error.to_string());
                return Err(refused(connection, sasl, detail));
            }
            received = Some(response.auth_bytes.to_vec());
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}
