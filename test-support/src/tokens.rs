//! Test tokens for the authenticated API, shared by the gateway's and the pipeline's tests:
//! signing keys (ES256 and Ed25519 made on the fly with ring; RS256 from the test-only
//! fixture, ring cannot make RSA keys), their JWKS, and JWTs signed with them or made by hand
//! for the attacks a verifier must refuse.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://id.scalable-shop.test/";
pub const AUDIENCE: &str = "scalable-shop-api";

const RSA_PRIVATE_PEM: &str = include_str!("../fixtures/test-only-rsa-private.pem");
pub const RSA_PUBLIC_PEM: &str = include_str!("../fixtures/test-only-rsa-public.pem");
const RSA_PUBLIC_JWK: &str = include_str!("../fixtures/test-only-rsa-public.jwk.json");

/// A signing key and the JWK that publishes its public half.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    /// A new P-256 key; its JWK carries no `alg` (the curve says ES256).
    pub fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("make a P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("read the P-256 key");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        Self {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }),
        }
    }

    /// A new Ed25519 key, `alg: EdDSA` in its JWK.
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("make a key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("read the key");
        Self {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
        }
    }

    /// The fixture RSA key, `alg: RS256` in its JWK.
    pub fn rsa(kid: &str) -> Self {
        let body: String = RSA_PRIVATE_PEM
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("the fixture is PEM");
        let mut jwk: Value = serde_json::from_str(RSA_PUBLIC_JWK).expect("the fixture is JSON");
        jwk["kid"] = json!(kid);
        Self {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&der),
            jwk,
        }
    }

    /// A JWT with these claims, signed with this key and naming its kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    /// A JWT signed with this key, saying `alg` and `kid` in its header.
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a test token")
    }
}

/// A JWKS document publishing these keys.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Claims of a valid token for `sub`, good for 10 minutes.
pub fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now(),
        "exp": now() + 600,
    })
}

/// `claims` with `scope` added.
pub fn claims_with_scope(sub: &str, scope: &str) -> Value {
    let mut claims = claims(sub);
    claims["scope"] = json!(scope);
    claims
}

/// An HMAC token (`alg: HS256`) keyed with `secret`: what an attacker signs with a public
/// key it read from the JWKS or a PEM file, hoping the server verifies HMAC with it.
pub fn hmac_signed(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
        .expect("sign an HMAC token")
}

/// An unsigned token (`alg: none`, empty signature), made by hand: no library makes one.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}
