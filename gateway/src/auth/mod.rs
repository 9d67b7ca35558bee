//! Authentication and authorization: bearer JWTs verified against a JWKS (`jwks`, `token`),
//! and the rule that a caller acts for the user whose `userId` is its token's `sub` unless a
//! scope lets it act for any user (`policy`).
//!
//! The API checks a request's token before anything else of it (`api::security`), so a
//! refused request never has its body read, an `Idempotency-Key` reserved or a record
//! produced. Authorization needs the `userId`, so it comes once the body or path parsed, and
//! still before anything is reserved or produced.

pub mod jwks;
pub mod policy;
mod token;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use poem::http::{header::AUTHORIZATION, HeaderMap};

pub use policy::{Action, Caller, Refusal, SCOPE_READ_ANY, SCOPE_WRITE_ANY};

use crate::config::AuthArgs;
use jwks::{JwksSource, KeyStore};
use token::Verifier;

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "scalable-shop";

/// Why a request was refused: the `error` code of its JSON body and the metric label
/// (`gateway_auth_failures_total{reason}`), a fixed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingToken,
    MalformedToken,
    TokenExpired,
    TokenNotYetValid,
    InvalidSignature,
    WrongIssuer,
    WrongAudience,
    AlgorithmNotAllowed,
    UnknownKey,
    InvalidClaims,
    /// A valid token that may not act for this user (403).
    InsufficientScope,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::MissingToken,
        Reason::MalformedToken,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::InvalidSignature,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownKey,
        Reason::InvalidClaims,
        Reason::InsufficientScope,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::InvalidSignature => "invalid_signature",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKey => "unknown_key",
            Reason::InvalidClaims => "invalid_claims",
            Reason::InsufficientScope => "insufficient_scope",
        }
    }
}

/// A request without a valid token (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// RFC 6750 section 3: no error code when the request had no token at all, else
    /// `invalid_token` with a description.
    pub fn www_authenticate(&self) -> String {
        match self.reason {
            Reason::MissingToken => format!("Bearer realm=\"{REALM}\""),
            _ => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quotable(&self.message)
            ),
        }
    }
}

impl Refusal {
    /// RFC 6750 section 3.1: `insufficient_scope`, naming the scope that would do.
    pub fn www_authenticate(&self) -> String {
        format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\", \
             scope=\"{}\"",
            quotable(&self.to_string()),
            self.needed_scope()
        )
    }
}

/// RFC 6750 allows only visible ASCII without `"` and `\` (and spaces) in
/// `error_description`; anything else becomes `'` or `?`.
fn quotable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' ' | '!'..='~' => c,
            _ => '?',
        })
        .collect()
}

/// Bounds that keep the settings meaningful (and the time arithmetic far from overflowing).
const MAX_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// Validated authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSettings {
    Disabled,
    Jwt {
        source: JwksSource,
        issuer: String,
        audience: String,
        refresh: Duration,
        leeway: Duration,
    },
}

impl AuthSettings {
    /// Secure by default: without `--auth-disabled` a JWKS source, an issuer and an audience
    /// are required, and contradictory settings are refused rather than guessed at.
    pub fn from_args(args: &AuthArgs) -> Result<Self, String> {
        let given: Vec<&str> = [
            ("--auth-jwks-file", args.jwks_file.is_some()),
            ("--auth-jwks-url", args.jwks_url.is_some()),
            ("--auth-issuer", args.issuer.is_some()),
            ("--auth-audience", args.audience.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if args.disabled {
            if !given.is_empty() {
                return Err(format!(
                    "--auth-disabled contradicts {}: remove one or the other",
                    given.join(", ")
                ));
            }
            return Ok(Self::Disabled);
        }
        let source = match (&args.jwks_file, &args.jwks_url) {
            (Some(path), None) => JwksSource::File(path.clone()),
            (None, Some(url)) => JwksSource::Url(jwks_url(url)?),
            (Some(_), Some(_)) => {
                return Err("give --auth-jwks-file or --auth-jwks-url, not both".into())
            }
            (None, None) => {
                return Err("authentication is on by default and needs its keys: set \
                     --auth-jwks-file or --auth-jwks-url (with --auth-issuer and \
                     --auth-audience), or --auth-disabled for local development"
                    .into())
            }
        };
        let required = |value: &Option<String>, flag: &str| match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(format!(
                "{flag} is required with --auth-jwks-file/--auth-jwks-url: the value every \
                 token must carry"
            )),
        };
        let issuer = required(&args.issuer, "--auth-issuer")?;
        let audience = required(&args.audience, "--auth-audience")?;
        if args.jwks_refresh < Duration::from_secs(1) || args.jwks_refresh > MAX_REFRESH {
            return Err("--auth-jwks-refresh must be from 1s to 7days".into());
        }
        if args.leeway > MAX_LEEWAY {
            return Err("--auth-leeway is for clock skew: at most 1h".into());
        }
        Ok(Self::Jwt {
            source,
            issuer,
            audience,
            refresh: args.jwks_refresh,
            leeway: args.leeway,
        })
    }
}

fn jwks_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("--auth-jwks-url {text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "--auth-jwks-url must be http or https, not {other}"
        )),
    }
}

/// Turns a request's `Authorization` header into a `Caller`.
pub enum Authenticator {
    Disabled,
    Jwt(Verifier),
}

impl Authenticator {
    /// Loads the JWKS (the gateway does not start without it) and starts its background
    /// refresh.
    pub async fn start(args: &AuthArgs) -> anyhow::Result<Arc<Self>> {
        match AuthSettings::from_args(args).map_err(anyhow::Error::msg)? {
            AuthSettings::Disabled => {
                tracing::warn!(
                    "authentication is DISABLED: anyone can buy as any user and read any \
                     history (--auth-disabled); never run like this outside local development"
                );
                Ok(Arc::new(Self::Disabled))
            }
            AuthSettings::Jwt {
                source,
                issuer,
                audience,
                refresh,
                leeway,
            } => {
                let keys = KeyStore::load(source.clone())
                    .await
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("cannot load the JWKS from {source}"))?;
                keys.refresh_in_background(refresh);
                tracing::info!(%source, keys = keys.current().len(), %issuer, %audience, "authentication on: bearer JWTs");
                Ok(Arc::new(Self::Jwt(Verifier {
                    keys,
                    issuer,
                    audience,
                    leeway: leeway.as_secs(),
                })))
            }
        }
    }

    /// Who the request acts for, from its `Authorization: Bearer` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Failure> {
        match self {
            Self::Disabled => Ok(Caller::Anyone),
            Self::Jwt(verifier) => {
                let token = bearer_token(headers)?;
                verifier.verify(token).await.map(Caller::Token)
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 section 2.1; the scheme name is
/// case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Result<&str, Failure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            Failure::new(Reason::MalformedToken, "more than one Authorization header")
        } else {
            Failure::new(
                Reason::MissingToken,
                "no bearer token: send `Authorization: Bearer <JWT>`",
            )
        });
    };
    let value = value.to_str().map_err(|_| {
        Failure::new(
            Reason::MalformedToken,
            "the Authorization header is not visible ASCII",
        )
    })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Failure::new(
            Reason::MissingToken,
            format!("Authorization uses the {scheme:?} scheme; send `Authorization: Bearer <JWT>`"),
        ));
    }
    match token.trim() {
        "" => Err(Failure::new(
            Reason::MalformedToken,
            "the Authorization header has no token after Bearer",
        )),
        token => Ok(token),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;
    use poem::http::HeaderValue;

    use super::*;
    use crate::config::Cli;

    fn settings(flags: &[&str]) -> Result<AuthSettings, String> {
        let cli = Cli::try_parse_from(std::iter::once("gateway").chain(flags.iter().copied()))
            .expect("flags parse");
        AuthSettings::from_args(&cli.config.auth)
    }

    #[test]
    fn without_any_auth_setting_start_up_fails_saying_what_to_set() {
        let error = settings(&[]).unwrap_err();
        for flag in [
            "--auth-jwks-file",
            "--auth-jwks-url",
            "--auth-issuer",
            "--auth-audience",
            "--auth-disabled",
        ] {
            assert!(error.contains(flag), "{error}");
        }
    }

    #[test]
    fn a_jwks_source_needs_issuer_and_audience() {
        let error = settings(&["--auth-jwks-file=/k.json", "--auth-audience=shop"]).unwrap_err();
        assert!(error.contains("--auth-issuer is required"), "{error}");
        let error =
            settings(&["--auth-jwks-file=/k.json", "--auth-issuer=https://id"]).unwrap_err();
        assert!(error.contains("--auth-audience is required"), "{error}");
        let error = settings(&[
            "--auth-jwks-file=/k.json",
            "--auth-issuer= ",
            "--auth-audience=shop",
        ])
        .unwrap_err();
        assert!(error.contains("--auth-issuer"), "{error}");
        assert_eq!(
            settings(&[
                "--auth-jwks-file=/k.json",
                "--auth-issuer=https://id",
                "--auth-audience=shop",
                "--auth-leeway=5s",
            ]),
            Ok(AuthSettings::Jwt {
                source: JwksSource::File(PathBuf::from("/k.json")),
                issuer: "https://id".into(),
                audience: "shop".into(),
                refresh: Duration::from_secs(300),
                leeway: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn a_jwks_url_is_http_or_https() {
        let ok = |url: &str| {
            settings(&[
                &format!("--auth-jwks-url={url}"),
                "--auth-issuer=i",
                "--auth-audience=a",
            ])
        };
        assert!(ok("https://id.example/.well-known/jwks.json").is_ok());
        assert!(ok("http://127.0.0.1:8081/jwks").is_ok());
        assert!(ok("file:///etc/jwks.json")
            .unwrap_err()
            .contains("http or https"));
        assert!(ok("not a url").unwrap_err().contains("not a URL"));
    }

    #[test]
    fn disabled_is_explicit_and_settings_stay_in_bounds() {
        assert_eq!(settings(&["--auth-disabled"]), Ok(AuthSettings::Disabled));
        let error = settings(&["--auth-disabled", "--auth-jwks-file=/k.json"]).unwrap_err();
        assert!(error.contains("contradicts --auth-jwks-file"), "{error}");
        assert!(settings(&["--auth-disabled=false"]).is_err());
        let error = settings(&[
            "--auth-jwks-file=/k.json",
            "--auth-issuer=i",
            "--auth-audience=a",
            "--auth-jwks-refresh=0s",
        ])
        .unwrap_err();
        assert!(error.contains("from 1s to 7days"), "{error}");
        let error = settings(&[
            "--auth-jwks-file=/k.json",
            "--auth-issuer=i",
            "--auth-audience=a",
            "--auth-leeway=100years",
        ])
        .unwrap_err();
        assert!(error.contains("at most 1h"), "{error}");
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_token_comes_from_one_bearer_authorization_header() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])),
            Ok("abc.def.ghi")
        );
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok("abc"));
        let reason = |values: &[&str]| bearer_token(&headers(values)).unwrap_err().reason;
        assert_eq!(reason(&[]), Reason::MissingToken);
        assert_eq!(reason(&["Basic dXNlcjpwYXNz"]), Reason::MissingToken);
        assert_eq!(reason(&["Bearer"]), Reason::MalformedToken);
        assert_eq!(reason(&["Bearer   "]), Reason::MalformedToken);
        assert_eq!(reason(&["Bearer a", "Bearer b"]), Reason::MalformedToken);
    }

    #[test]
    fn www_authenticate_follows_rfc_6750() {
        let missing = Failure::new(Reason::MissingToken, "no token");
        assert_eq!(
            missing.www_authenticate(),
            r#"Bearer realm="scalable-shop""#
        );
        let expired = Failure::new(Reason::TokenExpired, "the \"token\" has expired\u{e9}\\");
        assert_eq!(
            expired.www_authenticate(),
            r#"Bearer realm="scalable-shop", error="invalid_token", error_description="the 'token' has expired?/""#
        );
        let refusal = Caller::Token(policy::Principal {
            subject: "alice".into(),
            scopes: policy::Scopes::default(),
        })
        .may(Action::Read, "bob")
        .unwrap_err();
        let header = refusal.www_authenticate();
        assert!(header.starts_with(r#"Bearer realm="scalable-shop", error="insufficient_scope""#));
        assert!(
            header.ends_with(r#"scope="purchases:read:any""#),
            "{header}"
        );
    }

    #[test]
    fn reasons_have_unique_snake_case_codes() {
        let codes: std::collections::HashSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert!(codes
            .iter()
            .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')));
    }
}
