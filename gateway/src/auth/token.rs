//! Verifying one bearer token: its header picks a key of the JWKS by `kid` and an algorithm
//! that key allows, then jsonwebtoken checks the signature and `exp`, `nbf`, `iss` and `aud`.
//!
//! The header is read here first so that a refusal names its cause (`alg: none` is not
//! "malformed JSON"), and so that the algorithm is chosen against the key, never taken from
//! the token alone: `none` and HMAC (`HS*`, which would let anyone who has the public key
//! sign) are refused before any key is looked at.
//!
//! jsonwebtoken 9 skips a check whose claim does not parse (an `nbf` sent as a string, an
//! `iss` sent as a number). So `Claims` types every checked claim, and `iss`, `aud`, `sub` and
//! `exp` are required: a claim of the wrong type fails decoding instead of passing unchecked.

use std::{collections::HashSet, str::FromStr, sync::Arc};

use base64::Engine;
use jsonwebtoken::{errors::ErrorKind, Algorithm, Validation};
use serde::Deserialize;

use super::{
    jwks::{KeyStore, Lookup},
    policy::{Principal, ScopeList, Scopes},
    Failure, Reason,
};

pub struct Verifier {
    pub keys: Arc<KeyStore>,
    pub issuer: String,
    pub audience: String,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
}

/// The part of the JOSE header read before verifying.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: Option<serde_json::Value>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The claims a token must carry, typed so that a wrongly typed one is refused.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "iss")]
    _iss: String,
    #[serde(rename = "aud")]
    _aud: Audience,
    #[serde(rename = "exp")]
    _exp: f64,
    #[serde(rename = "nbf", default)]
    _nbf: Option<f64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScopeList>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(#[allow(dead_code)] String),
    Many(#[allow(dead_code)] Vec<String>),
}

impl Verifier {
    pub async fn verify(&self, token: &str) -> Result<Principal, Failure> {
        let header = peek_header(token)?;
        let alg = allowed_algorithm(header.alg.as_ref())?;
        if header.crit.is_some() {
            return Err(Failure::new(
                Reason::MalformedToken,
                "the token's header has \"crit\" extensions, which this API does not understand",
            ));
        }
        let key = match self.keys.key_for(header.kid.as_deref()).await {
            Lookup::Found(key) => key,
            Lookup::Unknown => {
                let message = match &header.kid {
                    Some(kid) => format!(
                        "the token's kid {kid:?} is not among the keys of the JWKS ({})",
                        self.keys.source()
                    ),
                    None => format!(
                        "the token has no kid and the JWKS holds {} keys: it must name one",
                        self.keys.current().len()
                    ),
                };
                return Err(Failure::new(Reason::UnknownKey, message));
            }
        };
        if !key.algorithms.contains(&alg) {
            return Err(Failure::new(
                Reason::AlgorithmNotAllowed,
                format!(
                    "the token says alg {alg:?} but {} is for {}",
                    key.name(),
                    names(&key.algorithms)
                ),
            ));
        }

        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| self.refusal(e.kind(), &key.name()))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(Failure::new(
                Reason::InvalidClaims,
                "the token's sub is empty",
            ));
        }
        Ok(Principal {
            scopes: Scopes::from_claims(claims.scope.as_deref(), claims.scp.as_ref()),
            subject: claims.sub,
        })
    }

    fn refusal(&self, kind: &ErrorKind, key: &str) -> Failure {
        let (reason, message) = match kind {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Crypto(_) => (
                Reason::InvalidSignature,
                format!("the token's signature does not verify with {key}"),
            ),
            ErrorKind::ExpiredSignature => (
                Reason::TokenExpired,
                format!(
                    "the token has expired (exp is more than {}s in the past); get a new one",
                    self.leeway
                ),
            ),
            ErrorKind::ImmatureSignature => (
                Reason::TokenNotYetValid,
                format!(
                    "the token is not valid yet (nbf is more than {}s in the future)",
                    self.leeway
                ),
            ),
            ErrorKind::InvalidIssuer => (
                Reason::WrongIssuer,
                format!("the token's iss is not {:?}", self.issuer),
            ),
            ErrorKind::InvalidAudience => (
                Reason::WrongAudience,
                format!("the token's aud does not include {:?}", self.audience),
            ),
            ErrorKind::MissingRequiredClaim(claim) => (
                Reason::InvalidClaims,
                format!("the token has no {claim} claim"),
            ),
            ErrorKind::Json(e) => (
                Reason::InvalidClaims,
                format!("the token's claims are not as required: {e}"),
            ),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => (
                Reason::AlgorithmNotAllowed,
                "the token's alg is not allowed".to_string(),
            ),
            other => (
                Reason::MalformedToken,
                format!("the token is not a well-formed JWT: {other:?}"),
            ),
        };
        Failure::new(reason, message)
    }
}

/// A JWS in compact form is `header.payload.signature`; its header is base64url JSON.
fn peek_header(token: &str) -> Result<PeekedHeader, Failure> {
    let malformed = |why: &str| {
        Failure::new(
            Reason::MalformedToken,
            format!("the token is not a JWT: {why}"),
        )
    };
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err(malformed("encrypted tokens (JWE) are not accepted")),
        _ => return Err(malformed("a JWT has three parts separated by dots")),
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| malformed("its header is not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| malformed("its header is not a JSON object"))
}

/// The asymmetric algorithms we verify. Everything else, `none` and HMAC above all, is
/// refused whatever the key.
fn allowed_algorithm(alg: Option<&serde_json::Value>) -> Result<Algorithm, Failure> {
    let refuse = |what: String| {
        Failure::new(
            Reason::AlgorithmNotAllowed,
            format!(
                "{what}: tokens must be signed with RS256, RS384, RS512, PS256, PS384, PS512, \
                 ES256, ES384 or EdDSA"
            ),
        )
    };
    let Some(serde_json::Value::String(name)) = alg else {
        return Err(refuse("the token's header has no alg".into()));
    };
    match Algorithm::from_str(name) {
        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => {
            Err(refuse(format!("alg {name:?} is not allowed")))
        }
        Ok(alg) => Ok(alg),
    }
}

fn names(algorithms: &[Algorithm]) -> String {
    let names: HashSet<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn encode(value: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn reason(result: Result<impl Sized, Failure>) -> Reason {
        match result {
            Ok(_) => panic!("accepted"),
            Err(failure) => failure.reason,
        }
    }

    #[test]
    fn only_asymmetric_algorithms_are_allowed() {
        for alg in [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ] {
            assert!(allowed_algorithm(Some(&json!(alg))).is_ok(), "{alg}");
        }
        for alg in [
            json!("none"),
            json!("None"),
            json!("HS256"),
            json!("HS384"),
            json!("HS512"),
            json!("ES512"),
            json!("rs256"),
            json!(""),
            json!(7),
        ] {
            assert_eq!(
                reason(allowed_algorithm(Some(&alg))),
                Reason::AlgorithmNotAllowed,
                "{alg}"
            );
        }
        assert_eq!(reason(allowed_algorithm(None)), Reason::AlgorithmNotAllowed);
    }

    #[test]
    fn a_token_must_be_a_compact_jws() {
        let header = encode(&json!({"alg": "ES256", "kid": "k"}));
        let peeked = peek_header(&format!("{header}.e30.sig")).expect("a JWS header");
        assert_eq!(peeked.kid.as_deref(), Some("k"));
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            &format!("{}.e30.sig", encode(&json!("string"))),
        ] {
            assert_eq!(reason(peek_header(bad)), Reason::MalformedToken, "{bad}");
        }
        let jwe = peek_header("a.b.c.d.e").err().unwrap();
        assert!(jwe.message.contains("JWE"), "{}", jwe.message);
    }
}
