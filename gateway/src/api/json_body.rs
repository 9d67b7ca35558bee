//! A JSON response body written straight from the type's serde form. poem-openapi's
//! `Json<T>` first builds a `serde_json::Value` of the whole body (a map and a string per
//! field) and then serializes that; on the write path this was a fifth of the allocations a
//! purchase's answer made. The spec is the same: the schema comes from the type's `Object`
//! derive, the content type is `Json`'s, and a unit test holds the two forms equal.

use poem::{
    http::{header::CONTENT_TYPE, HeaderValue},
    IntoResponse, Response,
};
use poem_openapi::{
    payload::{Json, Payload},
    registry::{MetaSchemaRef, Registry},
    types::Type,
};
use serde::Serialize;

pub struct JsonBody<T>(pub T);

impl<T: Type + Serialize> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + Serialize> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder()
                .header(CONTENT_TYPE, HeaderValue::from_static(Self::CONTENT_TYPE))
                .body(body),
            // Only a type with a non-string map key or a failing `Serialize` impl gets here.
            Err(e) => Response::builder()
                .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
                .body(format!("cannot write the response body: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;
    use crate::api::model::Accepted;

    #[tokio::test]
    async fn the_body_is_the_one_poem_openapi_json_would_write() {
        let accepted = Accepted {
            event_id: uuid::Uuid::now_v7(),
            location: "/api/purchases/x".to_string(),
            message: "Purchase accepted".to_string(),
        };
        let theirs = accepted.to_json().expect("an object");
        let response = JsonBody(accepted).into_response();
        assert_eq!(
            response.content_type(),
            Some(<Json<Accepted> as Payload>::CONTENT_TYPE)
        );
        let body = response.into_body().into_vec().await.expect("a body");
        let written: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(written, theirs);
    }
}
