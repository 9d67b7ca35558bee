use serde_json::{json, Value};

use crate::helpers::{assert_json_error, spawn_app};

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
