use serde_json::{json, Value};

use crate::helpers::{assert_json_error, spawn_app};

/// A purchase body with `price` spelled exactly as given.
fn with_price(price: &str) -> String {
    format!(r#"{{"username":"ann","userId":"u1","price":{price}}}"#)
}

#[tokio::test]
async fn each_bad_input_gets_a_json_4xx_naming_the_field_and_nothing_reaches_the_topic() {
    let app = spawn_app().await;
    let good = json!({"username": "ann", "userId": "u1", "price": 12.5});
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing username", without("username"), "username"),
        ("missing userId", without("userId"), "userId"),
        ("missing price", without("price"), "price"),
        ("empty username", with("username", json!("")), "username"),
        (
            "username too long",
            with("username", json!("n".repeat(65))),
            "username",
        ),
        (
            "username with markup",
            with("username", json!("<b>ann</b>")),
            "username",
        ),
        (
            "username with control char",
            with("username", json!("ann\u{7}")),
            "username",
        ),
        (
            "username not a string",
            with("username", json!(42)),
            "username",
        ),
        ("userId with slash", with("userId", json!("a/b")), "userId"),
        ("userId with space", with("userId", json!("a b")), "userId"),
        (
            "userId too long",
            with("userId", json!("x".repeat(65))),
            "userId",
        ),
        ("userId a number", with("userId", json!(555)), "userId"),
        ("price a string", with("price", json!("12.00")), "price"),
        ("price null", with("price", Value::Null), "price"),
        ("price zero", with("price", json!(0)), "price"),
        ("price negative", with("price", json!(-3.5)), "price"),
        ("price three decimals", with("price", json!(9.999)), "price"),
        (
            "price too large",
            with("price", json!(1_000_000.01)),
            "price",
        ),
        ("price huge exponent", with("price", json!(1e300)), "price"),
        ("unknown field", with("coupon", json!("FREE")), "coupon"),
        (
            "legacy userid on the current route",
            with("userid", json!("u1")),
            "userid",
        ),
    ];
    for (case, body, field) in cases {
        let response = app.post_purchase(&body).await;
        let status = response.status().as_u16();
        assert_eq!(status, 400, "{case}: status {status}");
        assert_json_error(response, 400, Some(field)).await;
    }

    // Shapes that are not a purchase object at all.
    let raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(format!("{}/api/purchases", app.address))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let body = assert_json_error(
        raw("{\"username\": ", "application/json").await.unwrap(),
        400,
        None,
    )
    .await;
    assert_eq!(body["error"], "malformed_json");
    assert_json_error(raw("[1, 2]", "application/json").await.unwrap(), 400, None).await;
    assert_json_error(raw("", "application/json").await.unwrap(), 400, None).await;
    let body = assert_json_error(
        raw("username=ann", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
        415,
        None,
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{body}"
    );
    let huge = format!(
        r#"{{"username": "{}", "userId": "u1", "price": 1}}"#,
        "a".repeat(20_000)
    );
    let response = app
        .client
        .post(format!("{}/api/purchases", app.address))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_json_error(response, 413, None).await;

    // After all that, one good purchase: it is the only record on the topic.
    assert_eq!(app.post_purchase(&good).await.status().as_u16(), 202);
    let dump = app.read_topic(1);
    assert_eq!(
        dump.records.len(),
        1,
        "rejected input must never be produced"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    assert_json_error(app.get("/no/such/route").await, 404, None).await;
    let response = app
        .client
        .delete(format!("{}/api/purchases", app.address))
        .send()
        .await
        .unwrap();
    assert_json_error(response, 405, None).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn money_and_json_edge_cases_are_refused_with_the_field_named() {
    let app = spawn_app().await;
    // (case, body, error code, field)
    let mut cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        // A float would round these to 20.00 and 0.10; the text has more than cents.
        (
            "17 nines",
            with_price("19.999999999999999"),
            "invalid_field",
            Some("price"),
        ),
        (
            "0.1 as its double",
            with_price("0.1000000000000000055511151231257827"),
            "invalid_field",
            Some("price"),
        ),
        (
            "three decimals",
            with_price("9.999"),
            "invalid_field",
            Some("price"),
        ),
        (
            "exponent below a cent",
            with_price("1.5e-3"),
            "invalid_field",
            Some("price"),
        ),
        (
            "minus zero",
            with_price("-0"),
            "invalid_field",
            Some("price"),
        ),
        (
            "zero with decimals",
            with_price("0.00"),
            "invalid_field",
            Some("price"),
        ),
        (
            "negative",
            with_price("-3.50"),
            "invalid_field",
            Some("price"),
        ),
        (
            "a cent over the maximum",
            with_price("1000000.01"),
            "invalid_field",
            Some("price"),
        ),
        (
            "huge exponent",
            with_price("1e400"),
            "invalid_field",
            Some("price"),
        ),
        (
            "huger exponent",
            with_price("1e99999999999999999999"),
            "invalid_field",
            Some("price"),
        ),
        (
            "20 digits",
            with_price("12345678901234567890"),
            "invalid_field",
            Some("price"),
        ),
        (
            "price as a string",
            with_price(r#""19.99""#),
            "invalid_field",
            Some("price"),
        ),
        (
            "price true",
            with_price("true"),
            "invalid_field",
            Some("price"),
        ),
        (
            "price null",
            with_price("null"),
            "invalid_field",
            Some("price"),
        ),
        (
            "price an object",
            with_price(r#"{"amount":19.99}"#),
            "invalid_field",
            Some("price"),
        ),
        (
            "price an array",
            with_price("[19.99]"),
            "invalid_field",
            Some("price"),
        ),
        (
            "username an object",
            r#"{"username":{"first":"ann"},"userId":"u1","price":1}"#.into(),
            "invalid_field",
            Some("username"),
        ),
        (
            "userId an operator",
            r#"{"username":"ann","userId":{"$gt":""},"price":1}"#.into(),
            "invalid_field",
            Some("userId"),
        ),
        // Most parsers keep the last of two equal keys; we refuse to guess.
        (
            "price twice",
            r#"{"username":"a","userId":"x","price":1,"price":2}"#.into(),
            "invalid_body",
            Some("price"),
        ),
        (
            "userId twice",
            r#"{"username":"a","userId":"x","userId":"y","price":1}"#.into(),
            "invalid_body",
            Some("userId"),
        ),
        (
            "username twice",
            r#"{"username":"a","username":"b","userId":"x","price":1}"#.into(),
            "invalid_body",
            Some("username"),
        ),
        (
            "price twice, once escaped",
            r#"{"username":"a","userId":"x","price":1,"pr\u0069ce":2}"#.into(),
            "invalid_body",
            Some("price"),
        ),
        (
            "leading zero (not JSON)",
            with_price("01.5"),
            "malformed_json",
            None,
        ),
        (
            "trailing garbage",
            format!("{} x", with_price("1")),
            "malformed_json",
            None,
        ),
        (
            "two objects",
            format!("{0}{0}", with_price("1")),
            "malformed_json",
            None,
        ),
        ("empty body", String::new(), "malformed_json", None),
        ("only whitespace", " \n".into(), "malformed_json", None),
        ("NaN", with_price("NaN"), "malformed_json", None),
        ("an array", "[]".into(), "invalid_body", None),
        ("null", "null".into(), "invalid_body", None),
        ("a number", "19.99".into(), "invalid_body", None),
    ];
    for route in ["/api/purchases", "/buy", "/api/buy"] {
        for (case, body, code, field) in &cases {
            let response = app.post_raw(route, body.clone()).await;
            let status = response.status().as_u16();
            assert_eq!(status, 400, "{route} {case}: status {status}");
            let error = assert_json_error(response, 400, *field).await;
            assert_eq!(error["error"], *code, "{route} {case}: {error}");
        }
    }

    // A byte order mark is not JSON whitespace.
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(with_price("1").as_bytes());
    let error = assert_json_error(app.post_raw("/api/purchases", bom).await, 400, None).await;
    assert_eq!(error["error"], "malformed_json", "{error}");

    // The seed routes' own spelling follows the same rules.
    cases = vec![
        (
            "userid twice",
            r#"{"username":"a","userid":"x","userid":"y","price":1}"#.into(),
            "invalid_body",
            Some("userid"),
        ),
        (
            "userId and userid",
            r#"{"username":"a","userId":"x","userid":"x","price":1}"#.into(),
            "invalid_field",
            Some("userid"),
        ),
        (
            "userid with a float-rounded price",
            r#"{"username":"a","userid":"x","price":19.999999999999999}"#.into(),
            "invalid_field",
            Some("price"),
        ),
    ];
    for (case, body, code, field) in &cases {
        let response = app.post_raw("/buy", body.clone()).await;
        let error = assert_json_error(response, 400, *field).await;
        assert_eq!(error["error"], *code, "{case}: {error}");
    }

    let dump = app.read_topic(0);
    assert!(dump.records.is_empty(), "nothing refused reaches the topic");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_spelling_of_an_exact_amount_is_accepted_as_that_amount() {
    let app = spawn_app().await;
    let spellings = [
        ("19.990", 19.99),
        ("1999e-2", 19.99),
        ("1.999E1", 19.99),
        ("1e2", 100.0),
        ("1000000.00", 1_000_000.0),
        ("0.01", 0.01),
    ];
    for (spelling, _) in spellings {
        let response = app.post_raw("/api/purchases", with_price(spelling)).await;
        assert_eq!(response.status().as_u16(), 202, "{spelling}");
    }
    let mut written: Vec<String> = app
        .read_topic(spellings.len())
        .records
        .iter()
        .map(|r| r.value["price"].to_string())
        .collect();
    let mut expected: Vec<String> = spellings
        .iter()
        .map(|(_, v)| serde_json::json!(v).to_string())
        .collect();
    written.sort();
    expected.sort();
    assert_eq!(
        written, expected,
        "each amount is produced as its exact value"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_parameters_are_named_on_every_route() {
    let app = spawn_app().await;
    let cases = [
        ("/api/users/u1/purchases?limit=-1", "limit"),
        ("/api/users/u1/purchases?limit=0", "limit"),
        ("/api/users/u1/purchases?limit=101", "limit"),
        ("/api/users/u1/purchases?limit=1.5", "limit"),
        ("/api/users/u1/purchases?limit=", "limit"),
        ("/api/users/u1/purchases?cursor=nope", "cursor"),
        ("/api/users/a%2Fb/purchases", "userId"),
        ("/api/purchases/not-a-uuid", "eventId"),
        // The 32-digit form is not `format: uuid`.
        ("/api/purchases/0190f5a47b7e7c3e8a9b3c4d5e6f7a8b", "eventId"),
        ("/api/purchases?userId[$gt]=", "userId"),
        ("/api/purchases?userId=u1&limit=1001", "limit"),
        ("/api/purchases?userId=a%20b", "userId"),
        ("/api/user/u1/purchases?limit=-1", "limit"),
        ("/api/user/%24gt/purchases", "userId"),
        ("/buyList/%3Cb%3E", "username"),
        ("/buyList/%20ann", "username"),
        ("/buyList/ann?limit=1001", "limit"),
        ("/getAllUserBuys/ann%0A", "user"),
        ("/api/getAllUserBuys/ann?limit=0", "limit"),
    ];
    for (path, field) in cases {
        let response = app.get(path).await;
        let status = response.status().as_u16();
        assert_eq!(status, 400, "{path}: status {status}");
        let error = assert_json_error(response, 400, Some(field)).await;
        assert_eq!(error["error"], "invalid_field", "{path}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("failed to parse"),
            "the message is ours, not the framework's: {message}"
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_405_lists_the_methods_of_its_path_and_a_415_asks_for_json() {
    let app = spawn_app().await;
    let cases = [
        ("TRACE", "/api/purchases", "GET, HEAD, POST"),
        ("DELETE", "/api/purchases", "GET, HEAD, POST"),
        (
            "PUT",
            "/api/purchases/0190f5a4-7b7e-7c3e-8a9b-3c4d5e6f7a8b",
            "GET, HEAD",
        ),
        ("TRACE", "/", "GET, HEAD"),
        ("OPTIONS", "/healthz", "GET, HEAD"),
        ("GET", "/buy", "POST"),
        ("PATCH", "/buyList/ann", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let response = app
            .client
            .request(method.parse().unwrap(), format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        let header = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(header.as_deref(), Some(allow), "{method} {path}");
        assert_json_error(response, 405, None).await;
    }

    // No body at all, and a body that is not JSON: 415, as documented.
    let response = app
        .client
        .post(format!("{}/api/purchases", app.address))
        .send()
        .await
        .unwrap();
    assert_json_error(response, 415, None).await;
    let response = app
        .client
        .post(format!("{}/buy", app.address))
        .header("content-type", "text/plain")
        .body(with_price("1"))
        .send()
        .await
        .unwrap();
    assert_json_error(response, 415, None).await;
    app.stop().await.unwrap();
}
