//! The bearer token of the protected operations. `Authenticated` is their first argument, so
//! poem-openapi extracts it before any path parameter or body: a request without a valid
//! token is answered 401 before its body is read, validated, reserved or produced.
//!
//! `BearerAuth` (poem-openapi's `SecurityScheme`) declares the scheme in the spec, so Swagger
//! UI's "Authorize" button sends the token. The checking is ours rather than its extractor's,
//! to answer in our JSON error shape with `WWW-Authenticate`, and to let `--auth-disabled`
//! take requests without a token.

use std::sync::Arc;

use poem::{Request, RequestBody};
use poem_openapi::{
    auth::Bearer, registry::Registry, ApiExtractor, ApiExtractorType, ExtractParamOptions,
    SecurityScheme,
};

use crate::{
    auth::{Action, Caller},
    error::ApiError,
    state::AppState,
};

/// A JWT from the identity provider, sent as `Authorization: Bearer <JWT>`. It is verified
/// against the gateway's JWKS (asymmetric algorithms only) and must carry the configured `iss`
/// and `aud`, a `sub`, and a current `exp`. A caller buys and reads only for the userId equal
/// to its token's `sub`, unless its `scope` (or `scp`) claim grants `purchases:write:any`
/// (buy for any user) or `purchases:read:any` (read any user's purchases).
#[allow(dead_code)] // only its spec registration is used; `Authenticated` extracts
#[derive(SecurityScheme)]
#[oai(rename = "bearerAuth", ty = "bearer", bearer_format = "JWT")]
struct BearerAuth(Bearer);

/// Whom a protected operation acts for.
pub struct Authenticated(pub Caller);

impl<'a> ApiExtractor<'a> for Authenticated {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        BearerAuth::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        BearerAuth::security_schemes()
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let Some(state) = request.data::<Arc<AppState>>() else {
            return Err(poem::Error::from_string(
                "application state missing",
                poem::http::StatusCode::INTERNAL_SERVER_ERROR,
            ));
        };
        match state.auth.authenticate(request.headers()).await {
            Ok(caller) => Ok(Self(caller)),
            Err(failure) => {
                tracing::debug!(reason = failure.reason.code(), message = %failure.message, "request refused: no valid token");
                state.metrics.auth_failure(failure.reason);
                Err(ApiError::unauthorized(&failure).into())
            }
        }
    }
}

impl Authenticated {
    /// 403 unless the caller may `action` for `user_id` (`field` is how the request named
    /// it). Call it before anything is reserved or produced.
    pub fn check(
        &self,
        state: &AppState,
        action: Action,
        user_id: &str,
        field: &str,
    ) -> Result<(), ApiError> {
        self.0.may(action, user_id).map_err(|refusal| {
            tracing::debug!(%refusal, "request refused: insufficient scope");
            state
                .metrics
                .auth_failure(crate::auth::Reason::InsufficientScope);
            ApiError::forbidden(&refusal, field)
        })
    }
}
