//! The keys that sign tokens: a JWKS read from a file or fetched from a URL, kept in memory
//! and replaced by each successful refresh (every `--auth-jwks-refresh`, and when a token
//! names a `kid` we do not know, at most once per `FORCED_REFRESH_INTERVAL`). A refresh that
//! fails keeps the last good set: an identity provider's outage must not lock every caller
//! out while their tokens are still valid.
//!
//! Each key's algorithms come from the key itself (its `alg`, else its type and curve), never
//! from a token: a token may only pick among them. Symmetric (`oct`) keys, encryption keys
//! and keys of types or curves we cannot verify are left out with a warning; a set with no
//! usable key is an error.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock, Weak},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse},
    Algorithm, DecodingKey,
};
use serde::Deserialize;

/// At most one refresh per this interval is triggered by tokens with an unknown `kid`, so
/// that made-up kids cannot make us hammer the identity provider.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Bound on one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A JWKS is a few KiB; anything far larger is not one.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(reqwest::Url),
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "file {}", path.display()),
            JwksSource::Url(url) => write!(f, "URL {url}"),
        }
    }
}

/// One key a token may be verified with.
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// What tokens signed with this key may say in `alg`.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl VerifyingKey {
    /// How a message names this key.
    pub fn name(&self) -> String {
        match &self.kid {
            Some(kid) => format!("key {kid:?}"),
            None => "the key without kid".to_string(),
        }
    }
}

/// The usable keys of one JWKS.
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
}

/// What a token's `kid` finds.
pub enum Lookup {
    Found(Arc<VerifyingKey>),
    Unknown,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document, leaving out (and naming) the keys it cannot use.
    pub fn parse(json: &[u8]) -> Result<(Self, Vec<String>), String> {
        let raw: RawSet = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWKS (a JSON object with a \"keys\" array): {e}"))?;
        let mut keys: Vec<Arc<VerifyingKey>> = Vec::new();
        let mut skipped = Vec::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            let name = value
                .get("kid")
                .and_then(|k| k.as_str())
                .map_or_else(|| format!("key #{index}"), |kid| format!("key {kid:?}"));
            match verifying_key(value) {
                Ok(key) if keys.iter().any(|k| k.kid.is_some() && k.kid == key.kid) => {
                    skipped.push(format!("{name}: a second key with this kid"));
                }
                Ok(key) => keys.push(Arc::new(key)),
                Err(reason) => skipped.push(format!("{name}: {reason}")),
            }
        }
        if keys.is_empty() {
            return Err(if skipped.is_empty() {
                "the JWKS has no keys".to_string()
            } else {
                format!(
                    "the JWKS has no usable signing key ({})",
                    skipped.join("; ")
                )
            });
        }
        Ok((Self { keys }, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key a token names. A token without `kid` is verified with the only key of a set
    /// that has one key; with several keys it must say which.
    pub fn find(&self, kid: Option<&str>) -> Lookup {
        let found = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        };
        found.map_or(Lookup::Unknown, |k| Lookup::Found(Arc::clone(k)))
    }

    fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }
}

/// A JWK as a verifying key, with the algorithms it allows.
fn verifying_key(value: serde_json::Value) -> Result<VerifyingKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK we know: {e}"))?;
    if let Some(usage) = &jwk.common.public_key_use {
        if *usage != PublicKeyUse::Signature {
            return Err("not a signing key (use is not \"sig\")".into());
        }
    }
    if let Some(operations) = &jwk.common.key_operations {
        if !operations.contains(&KeyOperations::Verify) {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let algorithms = key_algorithms(&jwk)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key material: {e}"))?;
    Ok(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// Asymmetric algorithms only, as the key's type and curve allow; a key's own `alg`
/// narrows them to that one.
fn key_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGORITHMS.to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            ref other => return Err(format!("EC curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            ref other => return Err(format!("OKP curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys (kty \"oct\") are never accepted".into())
        }
    };
    match jwk.common.key_algorithm {
        None => Ok(by_type),
        Some(alg) => match signing_algorithm(alg) {
            Some(alg) if by_type.contains(&alg) => Ok(vec![alg]),
            _ => Err(format!(
                "alg {alg:?} does not fit this key type or is not allowed"
            )),
        },
    }
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        // HMAC and the encryption algorithms never sign tokens we accept.
        _ => return None,
    })
}

/// The current key set and how to get a newer one.
pub struct KeyStore {
    source: JwksSource,
    http: reqwest::Client,
    current: RwLock<Arc<KeySet>>,
    /// When a token's unknown `kid` last made us refresh; held during that refresh, so that
    /// concurrent requests with the new kid wait for it instead of fetching again.
    forced: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyStore {
    /// Loads the JWKS once; an error says what went wrong with it (the caller names the
    /// source).
    pub async fn load(source: JwksSource) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let set = fetch(&source, &http).await?;
        let store = Self {
            source,
            http,
            current: RwLock::new(Arc::new(set)),
            forced: tokio::sync::Mutex::new(None),
        };
        Ok(Arc::new(store))
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Fetches the JWKS again; on success it replaces the current set, on failure the
    /// current set stays (and the failure is logged).
    pub async fn refresh(&self) -> bool {
        match fetch(&self.source, &self.http).await {
            Ok(set) => {
                let before = self.current();
                if before.kids() != set.kids() {
                    tracing::info!(source = %self.source, keys = ?set.kids(), "JWKS changed");
                }
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                true
            }
            Err(error) => {
                tracing::warn!(source = %self.source, %error, "JWKS refresh failed; keeping the last good keys");
                false
            }
        }
    }

    /// The key for a token's `kid`. An unknown kid may be a key the provider just added, so
    /// the JWKS is fetched again first, unless that was done within
    /// `FORCED_REFRESH_INTERVAL`.
    pub async fn key_for(&self, kid: Option<&str>) -> Lookup {
        if let Lookup::Found(key) = self.current().find(kid) {
            return Lookup::Found(key);
        }
        let mut last = self.forced.lock().await;
        // Another request may have refreshed while this one waited for the lock.
        if let Lookup::Found(key) = self.current().find(kid) {
            return Lookup::Found(key);
        }
        if last.is_none_or(|at| at.elapsed() >= FORCED_REFRESH_INTERVAL) {
            *last = Some(Instant::now());
            tracing::info!(source = %self.source, ?kid, "token names an unknown key; fetching the JWKS again");
            self.refresh().await;
        }
        self.current().find(kid)
    }

    /// Refreshes every `every` until the store is dropped (the task holds it weakly, so
    /// dropping the gateway's state ends it at its next tick).
    pub fn refresh_in_background(self: &Arc<Self>, every: Duration) {
        let store: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is now: the set was just loaded
            loop {
                ticks.tick().await;
                let Some(store) = store.upgrade() else { return };
                store.refresh().await;
            }
        });
    }
}

async fn fetch(source: &JwksSource, http: &reqwest::Client) -> Result<KeySet, String> {
    let bytes = match source {
        JwksSource::File(path) => tokio::fs::read(path).await.map_err(|e| e.to_string())?,
        JwksSource::Url(url) => fetch_url(http, url).await?,
    };
    let (set, skipped) = KeySet::parse(&bytes)?;
    for reason in skipped {
        tracing::warn!(%source, %reason, "JWKS key left out");
    }
    Ok(set)
}

async fn fetch_url(http: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer failed: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("answer larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's error with its causes ("error sending request: connection refused"), which
/// its `Display` alone leaves out.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A real P-256 public key (from RFC 7517 appendix A.1).
    fn ec_key(kid: &str) -> serde_json::Value {
        json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
            "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        })
    }

    /// A real RSA public key (from RFC 7517 appendix A.1).
    fn rsa_key(kid: &str) -> serde_json::Value {
        json!({
            "kty": "RSA", "kid": kid, "e": "AQAB",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        })
    }

    fn parse(keys: Vec<serde_json::Value>) -> Result<(KeySet, Vec<String>), String> {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes())
    }

    fn algorithms(set: &KeySet, kid: &str) -> Vec<Algorithm> {
        match set.find(Some(kid)) {
            Lookup::Found(key) => key.algorithms.clone(),
            Lookup::Unknown => panic!("no key {kid}"),
        }
    }

    #[test]
    fn a_keys_algorithms_come_from_its_type_and_its_own_alg() {
        let mut pinned = rsa_key("rsa-pinned");
        pinned["alg"] = json!("PS256");
        let mut ed = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        ed["use"] = json!("sig");
        let (set, skipped) =
            parse(vec![ec_key("ec"), rsa_key("rsa"), pinned, ed]).expect("a usable set");
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(set.len(), 4);
        assert_eq!(algorithms(&set, "ec"), vec![Algorithm::ES256]);
        assert_eq!(algorithms(&set, "rsa"), RSA_ALGORITHMS.to_vec());
        assert_eq!(algorithms(&set, "rsa-pinned"), vec![Algorithm::PS256]);
        assert_eq!(algorithms(&set, "ed"), vec![Algorithm::EdDSA]);
    }

    #[test]
    fn symmetric_encryption_and_mismatched_keys_are_left_out() {
        let secret = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let mut encryption = rsa_key("enc");
        encryption["use"] = json!("enc");
        let mut wrong_alg = ec_key("ec-as-rsa");
        wrong_alg["alg"] = json!("RS256");
        let mut hmac_alg = rsa_key("rsa-hs");
        hmac_alg["alg"] = json!("HS256");
        let mut no_verify = rsa_key("sign-only");
        no_verify["key_ops"] = json!(["sign"]);
        let (set, skipped) = parse(vec![
            secret,
            encryption,
            wrong_alg,
            hmac_alg,
            no_verify,
            json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}),
            json!({"kty": "XYZ", "kid": "strange"}),
            ec_key("good"),
            ec_key("good"),
        ])
        .expect("one good key is enough");
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 8, "{skipped:?}");
        assert!(skipped[0].contains("symmetric"), "{skipped:?}");
        assert!(skipped[7].contains("second key"), "{skipped:?}");
    }

    #[test]
    fn a_set_without_a_usable_key_is_an_error_naming_why() {
        let error = parse(vec![json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})])
            .err()
            .expect("refused");
        assert!(error.contains("no usable signing key"), "{error}");
        assert!(error.contains("symmetric"), "{error}");
        assert!(parse(vec![]).err().unwrap().contains("no keys"));
        assert!(KeySet::parse(b"{}").err().unwrap().contains("not a JWKS"));
        assert!(KeySet::parse(b"<html>")
            .err()
            .unwrap()
            .contains("not a JWKS"));
    }

    #[test]
    fn a_token_without_kid_needs_a_single_key_set() {
        let (one, _) = parse(vec![ec_key("only")]).unwrap();
        assert!(matches!(one.find(None), Lookup::Found(_)));
        assert!(matches!(one.find(Some("other")), Lookup::Unknown));
        let (two, _) = parse(vec![ec_key("a"), rsa_key("b")]).unwrap();
        assert!(matches!(two.find(None), Lookup::Unknown));
        assert!(matches!(two.find(Some("b")), Lookup::Found(_)));
    }
}
