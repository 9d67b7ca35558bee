//! API information, liveness and readiness.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{
    payload::{Json, PlainText},
    ApiResponse, Object, OpenApi,
};

use super::ApiTags;
use crate::state::AppState;

#[derive(Debug, Object)]
pub struct ApiInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Swagger UI.
    pub docs: String,
    /// OpenAPI 3 spec.
    pub openapi: String,
}

#[derive(Debug, Object)]
pub struct Readiness {
    /// `ok`, or what went wrong with the broker.
    pub kafka: String,
    /// `ok`, or what is wrong with the database and what to change.
    pub mongodb: String,
    /// `ok`; `unreachable` (no answer: may heal by waiting); or `refused` (the database
    /// answers and refuses what the gateway needs: credentials, privileges or TLS settings
    /// must change).
    #[oai(rename = "mongodbState")]
    pub mongodb_state: String,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Broker and database answered.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A dependency did not answer; the body says which.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

pub struct OpsApi;

#[OpenApi(tag = "ApiTags::Operations")]
impl OpsApi {
    /// Information about this API (seed route `/`)
    #[oai(path = "/", method = "get", operation_id = "apiInfo")]
    async fn info(&self) -> Json<ApiInfo> {
        Json(ApiInfo {
            name: "scalable-shop gateway".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "POST /api/purchases to buy; GET /api/users/{userId}/purchases for history".into(),
            docs: "/docs".into(),
            openapi: "/openapi.json".into(),
        })
    }

    /// Liveness: 200 `Success` while the process serves HTTP
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> PlainText<&'static str> {
        PlainText("Success")
    }

    /// Readiness: 200 when Kafka has the topic (and lets the gateway write it, where the
    /// brokers report it) and MongoDB lets the gateway read purchases and
    /// record idempotency keys, else 503
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, state: Data<&Arc<AppState>>) -> ReadyResponse {
        let timeout = state.probe_timeout;
        let (kafka, mongodb) = tokio::join!(
            probe(timeout, async {
                match state
                    .topics
                    .usable(&state.topic, infra::kafka::PRODUCE)
                    .await
                {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(format!("topic {} does not exist", state.topic)),
                    Err(e) => Err(e.to_string()),
                }
            }),
            tokio::time::timeout(timeout, state.mongo_access.run()),
        );
        let kafka = match (kafka.as_str(), state.producer.refusal()) {
            ("ok", Some(refusal)) => refusal,
            _ => kafka,
        };
        let (mongodb_state, mongodb) = match mongodb {
            Ok(Ok(())) => ("ok", "ok".to_string()),
            Ok(Err(problem)) => (problem.state(), problem.to_string()),
            Err(_) => ("unreachable", format!("no answer within {timeout:?}")),
        };
        let ready = kafka == "ok" && mongodb_state == "ok";
        let body = Json(Readiness {
            kafka,
            mongodb,
            mongodb_state: mongodb_state.to_string(),
        });
        if ready {
            ReadyResponse::Ready(body)
        } else {
            ReadyResponse::NotReady(body)
        }
    }
}

async fn probe<E: std::fmt::Display>(
    timeout: std::time::Duration,
    check: impl std::future::Future<Output = Result<(), E>>,
) -> String {
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {timeout:?}"),
    }
}
