//! The HTTP API as poem-openapi operations. Handlers reach shared state through
//! `Data<&Arc<AppState>>`, so the spec can be built without any server (`gateway openapi`).

mod history;
mod legacy;
pub(crate) mod model;
mod ops;
mod purchases;

use poem_openapi::{OpenApiService, Tags};

pub use model::{Accepted, Purchase, PurchasePage};

#[derive(Tags)]
enum ApiTags {
    /// Taking purchases.
    Purchases,
    /// Reading purchase history.
    History,
    /// Routes of the original services, kept for their clients. Deprecated: use the
    /// `/api/purchases` and `/api/users/{userId}/purchases` routes.
    Legacy,
    /// Health, readiness and API information.
    Operations,
}

pub type Apis = (
    purchases::PurchasesApi,
    history::HistoryApi,
    legacy::LegacyApi,
    ops::OpsApi,
);

pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            purchases::PurchasesApi,
            history::HistoryApi,
            legacy::LegacyApi,
            ops::OpsApi,
        ),
        "scalable-shop gateway",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Takes purchases into Kafka (a 202 means the broker acknowledged the record) and \
         serves purchase history from MongoDB. Every error is JSON `{error, message, field?}`.",
    )
}

/// The spec as pretty JSON, for `gateway openapi` and `/openapi.json`.
pub fn spec_json() -> String {
    service().spec()
}
