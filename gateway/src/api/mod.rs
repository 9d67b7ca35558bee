//! The HTTP API as poem-openapi operations. Handlers reach shared state through
//! `Data<&Arc<AppState>>`, so the spec can be built without any server (`gateway openapi`).

mod history;
mod json_body;
mod legacy;
pub(crate) mod model;
mod ops;
mod params;
pub mod paths;
mod purchases;
pub mod render;
mod security;

use std::{collections::HashMap, sync::LazyLock};

use poem::{endpoint::BoxEndpoint, http::Method};
use poem_openapi::{
    registry::{MetaApi, MetaParamIn, Registry},
    ApiResponse, OpenApi, OpenApiService, Tags,
};

pub use model::{Accepted, Purchase, PurchasePage};

use crate::error::RouterError;

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

pub fn service() -> OpenApiService<WithRouterAnswers<Apis>, ()> {
    OpenApiService::new(
        WithRouterAnswers((
            purchases::PurchasesApi,
            history::HistoryApi,
            legacy::LegacyApi,
            ops::OpsApi,
        )),
        "scalable-shop gateway",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Takes purchases into Kafka (a 202 means the broker acknowledged the record) and \
         serves purchase history from MongoDB. Every error is JSON `{error, message, field?}`.\n\n\
         Purchases and history need a bearer JWT (`bearerAuth`; Swagger UI: Authorize). A \
         caller buys and reads only for the userId equal to its token's `sub`; scope \
         `purchases:write:any` lets it buy for any user and `purchases:read:any` read any \
         user's purchases (from the `scope` claim, space-separated, or an `scp` array). No \
         valid token: 401 with `WWW-Authenticate`; another user without the scope: 403. \
         `/healthz`, `/readyz`, `/metrics`, `/docs` and `/openapi.json` are open.",
    )
}

/// The spec as pretty JSON, for `gateway openapi` and `/openapi.json`.
pub fn spec_json() -> String {
    service().spec()
}

/// The API plus the answers that come from the router and the payload extractor rather than
/// from a handler, so the spec lists them where they happen: 405 (with `Allow`) on every
/// operation, 415 on those that take a body. Handlers' own answers are untouched.
pub struct WithRouterAnswers<T>(T);

impl<T: OpenApi> OpenApi for WithRouterAnswers<T> {
    fn meta() -> Vec<MetaApi> {
        let mut apis = T::meta();
        let operations = apis
            .iter_mut()
            .flat_map(|api| &mut api.paths)
            .flat_map(|path| &mut path.operations);
        for operation in operations {
            let takes_body = operation.request.is_some();
            let responses = &mut operation.responses.responses;
            responses.extend(
                RouterError::meta()
                    .responses
                    .into_iter()
                    .filter(|r| takes_body || r.status != Some(415)),
            );
            responses.sort_by_key(|r| r.status);
        }
        apis
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
        RouterError::register(registry);
    }

    fn add_routes(self, route_table: &mut HashMap<String, HashMap<Method, BoxEndpoint<'static>>>) {
        self.0.add_routes(route_table);
    }
}

/// The spec's name of a path parameter that did not parse. poem-openapi reports it as
/// `param{n}`, the operation's n-th path argument (the spec lists parameters in the same
/// order), so the operation's metadata gives it back its name.
pub fn path_parameter_name(operation_id: &str, reported: &str) -> Option<&'static str> {
    static PATH_PARAMETERS: LazyLock<HashMap<&'static str, Vec<String>>> = LazyLock::new(|| {
        Apis::meta()
            .into_iter()
            .flat_map(|api| api.paths)
            .flat_map(|path| path.operations)
            .filter_map(|operation| {
                let names = operation
                    .params
                    .into_iter()
                    .filter(|p| p.in_type == MetaParamIn::Path)
                    .map(|p| p.name)
                    .collect();
                Some((operation.operation_id?, names))
            })
            .collect()
    });
    let index: usize = reported.strip_prefix("param")?.parse().ok()?;
    PATH_PARAMETERS
        .get(operation_id)?
        .get(index)
        .map(String::as_str)
}

/// The path template of an operation (`/api/users/{userId}/purchases` for
/// `listUserPurchases`), from the same metadata as the spec: a span name that does not grow
/// with the ids in the path.
pub fn route_of(operation_id: &str) -> Option<&'static str> {
    static ROUTES: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
        Apis::meta()
            .into_iter()
            .flat_map(|api| api.paths)
            .flat_map(|path| {
                let template = path.path.to_string();
                path.operations
                    .into_iter()
                    .filter_map(move |o| Some((o.operation_id?, template.clone())))
            })
            .collect()
    });
    ROUTES.get(operation_id).map(String::as_str)
}

/// The `Allow` header value for a request path (`GET, HEAD` for a read: poem answers HEAD on
/// GET routes), from the same metadata as the spec. `None` for a path the API does not have.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    /// Each API path template, split in segments (`{name}` matches any one segment), with
    /// its `Allow` value.
    static TABLE: LazyLock<Vec<(Vec<String>, String)>> = LazyLock::new(|| {
        Apis::meta()
            .into_iter()
            .flat_map(|api| api.paths)
            .map(|path| {
                let mut methods: Vec<String> = path
                    .operations
                    .iter()
                    .map(|o| o.method.to_string())
                    .collect();
                if path.operations.iter().any(|o| o.method == Method::GET) {
                    methods.push(Method::HEAD.to_string());
                }
                methods.sort();
                let segments = path.path.split('/').map(str::to_string).collect();
                (segments, methods.join(", "))
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    TABLE
        .iter()
        .find(|(template, _)| {
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| {
                    t == s || (t.starts_with('{') && t.ends_with('}') && !s.is_empty())
                })
        })
        .map(|(_, allow)| allow.as_str())
}

#[cfg(test)]
mod tests {
    use purchase::validation::{USERNAME_PATTERN, USER_ID_PATTERN};
    use serde_json::{json, Value};

    use super::*;

    fn spec() -> Value {
        serde_json::from_str(&spec_json()).expect("the spec is JSON")
    }

    fn parameter<'a>(spec: &'a Value, path: &str, name: &str) -> &'a Value {
        let parameters = spec["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path} has parameters"));
        let parameter = parameters.iter().find(|p| p["name"] == name);
        &parameter.unwrap_or_else(|| panic!("GET {path} has {name}"))["schema"]
    }

    #[test]
    fn body_schemas_carry_the_parsers_rules() {
        let spec = spec();
        let schemas = &spec["components"]["schemas"];
        for (schema, id) in [
            ("PurchaseRequest", "userId"),
            ("SeedPurchaseRequest", "userid"),
        ] {
            let properties = &schemas[schema]["properties"];
            assert_eq!(
                properties["username"]["pattern"], USERNAME_PATTERN,
                "{schema}"
            );
            assert_eq!(properties[id]["pattern"], USER_ID_PATTERN, "{schema}");
            assert_eq!(schemas[schema]["maxProperties"], 3, "{schema} is closed");
        }
        for schema in ["PurchaseRequest", "SeedPurchaseRequest", "Purchase"] {
            let price = &schemas[schema]["properties"]["price"];
            assert_eq!(price["multipleOf"], json!(0.01), "{schema}");
            assert_eq!(price["minimum"], json!(0.0), "{schema}");
            assert_eq!(price["exclusiveMinimum"], true, "{schema}");
            assert_eq!(price["maximum"], json!(1_000_000.0), "{schema}");
        }
        let legacy = schemas["LegacyPurchaseRequest"]["oneOf"]
            .as_array()
            .unwrap();
        assert_eq!(legacy.len(), 2, "userId or userid, never both");
    }

    #[test]
    fn parameters_carry_their_rules_and_event_ids_are_uuids() {
        let spec = spec();
        let user_id = parameter(&spec, "/api/users/{userId}/purchases", "userId");
        assert_eq!(user_id["pattern"], USER_ID_PATTERN);
        let username = parameter(&spec, "/buyList/{username}", "username");
        assert_eq!(username["pattern"], USERNAME_PATTERN);
        assert_eq!(username["maxLength"], 64);
        let limit = parameter(&spec, "/api/users/{userId}/purchases", "limit");
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&json!(1.0), &json!(100.0))
        );
        for path in [
            "/api/purchases",
            "/api/user/{userId}/purchases",
            "/buyList/{username}",
            "/getAllUserBuys/{user}",
            "/api/getAllUserBuys/{user}",
        ] {
            let limit = parameter(&spec, path, "limit");
            assert_eq!(limit["maximum"], json!(1000.0), "{path}");
        }
        let uuid = json!({"type": "string", "format": "uuid"});
        assert_eq!(
            *parameter(&spec, "/api/purchases/{eventId}", "eventId"),
            uuid
        );
        assert_eq!(
            *parameter(&spec, "/api/users/{userId}/purchases", "cursor"),
            uuid
        );
        let schemas = &spec["components"]["schemas"];
        assert_eq!(
            schemas["Accepted"]["properties"]["eventId"]["format"],
            "uuid"
        );
        assert_eq!(
            schemas["Purchase"]["properties"]["eventId"]["format"],
            "uuid"
        );
        assert_eq!(
            schemas["PurchasePage"]["properties"]["nextCursor"]["format"],
            "uuid"
        );
    }

    #[test]
    fn every_operation_documents_405_with_allow_and_those_with_a_body_415() {
        let spec = spec();
        for (path, operations) in spec["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                let responses = &operation["responses"];
                let allow = &responses["405"]["headers"]["ALLOW"];
                assert_eq!(allow["required"], true, "{method} {path}");
                let takes_body = operation.get("requestBody").is_some();
                assert_eq!(
                    responses.get("415").is_some(),
                    takes_body,
                    "{method} {path}"
                );
            }
        }
    }

    #[test]
    fn protected_operations_declare_the_bearer_scheme_and_open_ones_do_not() {
        let spec = spec();
        let scheme = &spec["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        assert_eq!(scheme["bearerFormat"], "JWT");
        let description = scheme["description"].as_str().unwrap();
        for scope in [crate::auth::SCOPE_WRITE_ANY, crate::auth::SCOPE_READ_ANY] {
            assert!(description.contains(scope), "{description}");
        }
        let mut protected = 0;
        for (path, operations) in spec["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                let responses = &operation["responses"];
                if ["/", "/healthz", "/readyz"].contains(&path.as_str()) {
                    assert!(operation.get("security").is_none(), "{method} {path}");
                    assert!(responses.get("401").is_none(), "{method} {path}");
                    continue;
                }
                protected += 1;
                assert_eq!(
                    operation["security"],
                    json!([{"bearerAuth": []}]),
                    "{method} {path}"
                );
                for status in ["401", "403"] {
                    let challenge = &responses[status]["headers"]["WWW-AUTHENTICATE"];
                    assert_eq!(challenge["required"], true, "{status} {method} {path}");
                }
            }
        }
        assert_eq!(protected, 10, "purchases, history and the seed routes");
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_path() {
        assert_eq!(allowed_methods("/api/purchases"), Some("GET, HEAD, POST"));
        assert_eq!(allowed_methods("/api/purchases/x"), Some("GET, HEAD"));
        assert_eq!(
            allowed_methods("/api/users/u1/purchases"),
            Some("GET, HEAD")
        );
        assert_eq!(allowed_methods("/buy"), Some("POST"));
        assert_eq!(allowed_methods("/"), Some("GET, HEAD"));
        assert_eq!(allowed_methods("/api/users//purchases"), None);
        assert_eq!(allowed_methods("/nowhere"), None);
    }

    #[test]
    fn path_parameters_get_back_their_spec_names() {
        assert_eq!(
            path_parameter_name("getPurchase", "param0"),
            Some("eventId")
        );
        assert_eq!(
            path_parameter_name("legacyBuyList", "param0"),
            Some("username")
        );
        assert_eq!(
            path_parameter_name("legacyGetAllUserBuys", "param0"),
            Some("user")
        );
        assert_eq!(path_parameter_name("getPurchase", "param1"), None);
        assert_eq!(path_parameter_name("getPurchase", "eventId"), None);
    }
}
