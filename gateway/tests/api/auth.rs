//! Authentication and authorization through the HTTP API, on a gateway with authentication
//! on against the real broker and database: every refused token is a 401 naming its problem
//! (JSON body and RFC 6750 `WWW-Authenticate`), another user's data without the scope is a
//! 403, and no refused request produces a record or reserves an `Idempotency-Key`.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use clap::Parser;
use gateway::{config::Cli, startup::Application};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::{
    helpers::{event, gateway_args, spawn_app_with_auth, spawn_app_with_jwks, TestApp},
    tokens::{
        self, claims, claims_with_scope, hmac_signed, now, unsigned, TestKey, AUDIENCE, ISSUER,
        RSA_PUBLIC_PEM,
    },
};

/// The keys of the test identity provider: one of each kind the gateway verifies.
struct Keys {
    es: TestKey,
    ed: TestKey,
    rsa: TestKey,
}

impl Keys {
    fn new() -> Self {
        Self {
            es: TestKey::es256("es-1"),
            ed: TestKey::ed25519("ed-1"),
            rsa: TestKey::rsa("rsa-1"),
        }
    }

    fn jwks(&self) -> Value {
        tokens::jwks(&[&self.es, &self.ed, &self.rsa])
    }

    /// A valid token for `sub` with these scopes (none when empty).
    fn token(&self, sub: &str, scope: &str) -> String {
        bearer(&self.es.sign(&claims_with_scope(sub, scope)))
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every kind of request without a valid token: (case, `Authorization` header, the `error`
/// code, a word the message must contain).
fn refused_tokens(keys: &Keys) -> Vec<(&'static str, Option<String>, &'static str, String)> {
    let alice = claims("alice");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims("alice");
        change(&mut claims);
        claims
    };
    let expired = with(&|c| {
        c["iat"] = json!(now() - 7200);
        c["exp"] = json!(now() - 3600);
    });
    let early = with(&|c| c["nbf"] = json!(now() + 3600));
    let wrong_issuer = with(&|c| c["iss"] = json!("https://impostor.example/"));
    let wrong_audience = with(&|c| c["aud"] = json!(["another-api"]));
    // jsonwebtoken 9 alone would skip checking a claim of the wrong type.
    let nbf_as_text = with(&|c| c["nbf"] = json!((now() + 3600).to_string()));
    let issuer_as_number = with(&|c| c["iss"] = json!(42));
    let without = |claim: &'static str| {
        with(&move |c| {
            if let Some(claims) = c.as_object_mut() {
                claims.remove(claim);
            }
        })
    };
    let no_sub = without("sub");
    let no_issuer = without("iss");
    // Another key under a kid of the JWKS: a forged signature.
    let impostor = TestKey::es256(&keys.es.kid);
    let some = |token: String| Some(bearer(&token));
    vec![
        (
            "no Authorization header",
            None,
            "missing_token",
            "Bearer".into(),
        ),
        (
            "another scheme",
            Some("Basic YWxpY2U6c2VjcmV0".into()),
            "missing_token",
            "Basic".into(),
        ),
        (
            "Bearer without a token",
            Some("Bearer".into()),
            "malformed_token",
            "no token".into(),
        ),
        (
            "not a JWT",
            some("not-a-jwt".into()),
            "malformed_token",
            "three parts".into(),
        ),
        (
            "expired",
            some(keys.es.sign(&expired)),
            "token_expired",
            "expired".into(),
        ),
        (
            "not yet valid",
            some(keys.es.sign(&early)),
            "token_not_yet_valid",
            "not valid yet".into(),
        ),
        (
            "signed by another key under the same kid",
            some(impostor.sign(&alice)),
            "invalid_signature",
            "signature".into(),
        ),
        (
            "wrong issuer",
            some(keys.es.sign(&wrong_issuer)),
            "wrong_issuer",
            ISSUER.into(),
        ),
        (
            "wrong audience",
            some(keys.ed.sign(&wrong_audience)),
            "wrong_audience",
            AUDIENCE.into(),
        ),
        (
            "alg none",
            some(unsigned(&keys.es.kid, &alice)),
            "algorithm_not_allowed",
            "\"none\"".into(),
        ),
        (
            "HS256 keyed with the RSA public key",
            some(hmac_signed(
                RSA_PUBLIC_PEM.as_bytes(),
                &keys.rsa.kid,
                &alice,
            )),
            "algorithm_not_allowed",
            "HS256".into(),
        ),
        (
            "RS384 with a key whose JWK says RS256",
            some(
                keys.rsa
                    .sign_as(Algorithm::RS384, Some(&keys.rsa.kid), &alice),
            ),
            "algorithm_not_allowed",
            "RS256".into(),
        ),
        (
            "ES256 naming the Ed25519 key",
            some(
                keys.es
                    .sign_as(Algorithm::ES256, Some(&keys.ed.kid), &alice),
            ),
            "algorithm_not_allowed",
            "EdDSA".into(),
        ),
        (
            "unknown kid",
            some(
                keys.es
                    .sign_as(Algorithm::ES256, Some("no-such-kid"), &alice),
            ),
            "unknown_key",
            "no-such-kid".into(),
        ),
        (
            "no kid while the JWKS has several keys",
            some(keys.es.sign_as(Algorithm::ES256, None, &alice)),
            "unknown_key",
            "no kid".into(),
        ),
        (
            "nbf as a string",
            some(keys.es.sign(&nbf_as_text)),
            "invalid_claims",
            "claims".into(),
        ),
        (
            "iss as a number",
            some(keys.es.sign(&issuer_as_number)),
            "invalid_claims",
            "claims".into(),
        ),
        (
            "no iss",
            some(keys.es.sign(&no_issuer)),
            "invalid_claims",
            "iss".into(),
        ),
        (
            "no sub",
            some(keys.es.sign(&no_sub)),
            "invalid_claims",
            "sub".into(),
        ),
    ]
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(method, format!("{}{path}", app.address));
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("request sent")
}

async fn post(
    app: &TestApp,
    path: &str,
    authorization: Option<&str>,
    body: &Value,
    idempotency_key: Option<&str>,
) -> reqwest::Response {
    send(
        app,
        reqwest::Method::POST,
        path,
        authorization,
        Some(body),
        idempotency_key,
    )
    .await
}

async fn get(app: &TestApp, path: &str, authorization: Option<&str>) -> reqwest::Response {
    send(app, reqwest::Method::GET, path, authorization, None, None).await
}

fn www_authenticate(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn json_error(response: reqwest::Response, case: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{case}: {content_type}"
    );
    let body: Value = response.json().await.expect("a JSON error body");
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "{case}: {body}"
    );
    body
}

/// A 401 in the API's error shape naming the problem, with RFC 6750's `WWW-Authenticate`.
async fn assert_unauthorized(response: reqwest::Response, code: &str, mention: &str, case: &str) {
    assert_eq!(response.status().as_u16(), 401, "{case}");
    let challenge = www_authenticate(&response);
    let body = json_error(response, case).await;
    assert_eq!(body["error"], code, "{case}: {body}");
    assert_eq!(body["field"], "Authorization", "{case}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(mention), "{case}: {message}");
    if code == "missing_token" {
        assert_eq!(challenge, r#"Bearer realm="scalable-shop""#, "{case}");
    } else {
        let prefix = r#"Bearer realm="scalable-shop", error="invalid_token", error_description=""#;
        assert!(challenge.starts_with(prefix), "{case}: {challenge}");
        assert!(challenge.ends_with('"'), "{case}: {challenge}");
        assert!(challenge.len() > prefix.len() + 1, "{case}: {challenge}");
    }
}

/// A 403 saying which scope would do, as JSON and as RFC 6750 `insufficient_scope`.
async fn assert_forbidden(response: reqwest::Response, scope: &str, case: &str) {
    assert_eq!(response.status().as_u16(), 403, "{case}");
    let challenge = www_authenticate(&response);
    assert!(
        challenge.starts_with(r#"Bearer realm="scalable-shop", error="insufficient_scope""#),
        "{case}: {challenge}"
    );
    assert!(
        challenge.ends_with(&format!("scope=\"{scope}\"")),
        "{case}: {challenge}"
    );
    let body = json_error(response, case).await;
    assert_eq!(body["error"], "insufficient_scope", "{case}: {body}");
    assert_eq!(body["field"], "userId", "{case}: {body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains(scope),
        "{case}: {body}"
    );
}

async fn accepted_event_id(response: reqwest::Response, case: &str) -> String {
    assert_eq!(response.status().as_u16(), 202, "{case}");
    let body: Value = response.json().await.expect("JSON");
    body["eventId"].as_str().expect("eventId").to_string()
}

async fn event_ids(response: reqwest::Response, case: &str) -> Vec<String> {
    assert_eq!(response.status().as_u16(), 200, "{case}");
    let body: Value = response.json().await.expect("JSON");
    let items = body
        .get("purchases")
        .unwrap_or(&body)
        .as_array()
        .unwrap_or_else(|| panic!("{case}: {body}"))
        .clone();
    items
        .iter()
        .map(|p| p["eventId"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_purchase_without_a_valid_token_is_a_401_and_nothing_is_produced_or_reserved() {
    let keys = Keys::new();
    let app = spawn_app_with_jwks(&keys.jwks(), &[]).await;
    let purchase = json!({"username": "ann", "userId": "alice", "price": 19.99});
    let cases = refused_tokens(&keys);
    for (case, authorization, code, mention) in &cases {
        let response = post(
            &app,
            "/api/purchases",
            authorization.as_deref(),
            &purchase,
            Some(&new_key()),
        )
        .await;
        assert_unauthorized(response, code, mention, case).await;
    }
    // The token is checked before the body: an invalid body without a token is a 401.
    let invalid = json!({"username": "ann", "userId": "alice", "price": -1});
    let response = post(&app, "/api/purchases", None, &invalid, None).await;
    assert_unauthorized(response, "missing_token", "Bearer", "invalid body").await;
    let response = post(
        &app,
        "/api/purchases",
        Some(&keys.token("alice", "")),
        &invalid,
        None,
    )
    .await;
    assert_eq!(
        response.status().as_u16(),
        400,
        "with a token, the body is judged"
    );

    // A valid token of another user, without the scope: 403, and its key is not reserved.
    let key = new_key();
    let response = post(
        &app,
        "/api/purchases",
        Some(&keys.token("bob", "openid purchases:read:any")),
        &purchase,
        Some(&key),
    )
    .await;
    assert_forbidden(response, "purchases:write:any", "bob buys for alice").await;

    // Alice's own token, with the same key and another price: the key is new to the server.
    let own = json!({"username": "ann", "userId": "alice", "price": 5});
    let response = post(
        &app,
        "/api/purchases",
        Some(&keys.token("alice", "")),
        &own,
        Some(&key),
    )
    .await;
    let accepted = accepted_event_id(response, "alice buys for herself").await;

    let dump = app.read_topic(1);
    assert_eq!(dump.records.len(), 1, "only alice's purchase: {dump:?}");
    assert_eq!(dump.records[0].value["eventId"], json!(accepted));
    assert_eq!(dump.records[0].value["price"], json!(5.0));
    assert_eq!(app.count_documents("idempotency_keys").await, 1);

    let metrics = app.metrics().await;
    for (reason, count) in [
        ("missing_token", 3),
        ("token_expired", 1),
        ("algorithm_not_allowed", 4),
        ("invalid_claims", 4),
        ("insufficient_scope", 1),
        ("unknown_key", 2),
    ] {
        let line = format!("gateway_auth_failures_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn own_subjects_and_any_user_scopes_are_accepted_with_every_key_kind() {
    let keys = Keys::new();
    let app = spawn_app_with_jwks(&keys.jwks(), &[]).await;
    let buy = |user: &str| json!({"username": "ann", "userId": user, "price": 1});
    let okta = {
        let mut c = claims("svc-okta");
        c["scp"] = json!(["openid", "purchases:write:any"]);
        bearer(&keys.es.sign(&c))
    };
    let accepted = [
        ("own subject, ES256", keys.token("alice", ""), "alice"),
        (
            "own subject, EdDSA",
            bearer(&keys.ed.sign(&claims("alice"))),
            "alice",
        ),
        (
            "own subject, RS256",
            bearer(&keys.rsa.sign(&claims("alice"))),
            "alice",
        ),
        (
            "write:any in scope",
            keys.token("svc", "openid purchases:write:any"),
            "bob",
        ),
        ("write:any in an scp array", okta, "carol"),
    ];
    for (case, authorization, user) in &accepted {
        let response = post(
            &app,
            "/api/purchases",
            Some(authorization),
            &buy(user),
            None,
        )
        .await;
        accepted_event_id(response, case).await;
    }
    let dump = app.read_topic(accepted.len());
    let mut users: Vec<String> = dump
        .records
        .iter()
        .map(|r| r.value["userId"].as_str().unwrap_or_default().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "alice", "alice", "bob", "carol"]);

    // Reading another user's purchases needs the read scope, not the write one.
    let bobs = event("bob", "bob", 3.0);
    app.store(std::slice::from_ref(&bobs)).await;
    let path = "/api/users/bob/purchases";
    let writer = keys.token("svc", "purchases:write:any");
    assert_forbidden(
        get(&app, path, Some(&writer)).await,
        "purchases:read:any",
        "writer reads bob",
    )
    .await;
    let reader = {
        let mut c = claims("support");
        c["scp"] = json!("purchases:read:any");
        bearer(&keys.rsa.sign(&c))
    };
    let ids = event_ids(get(&app, path, Some(&reader)).await, "reader reads bob").await;
    assert_eq!(ids, [bobs.event_id.to_string()]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn history_is_read_with_the_owners_token_or_the_read_any_scope() {
    let keys = Keys::new();
    let app = spawn_app_with_jwks(&keys.jwks(), &[]).await;
    let alices = event("alice", "ann", 1.0);
    let bobs = event("bob", "ann", 2.0);
    app.store(&[alices.clone(), bobs.clone()]).await;
    let path = "/api/users/alice/purchases";
    for (case, authorization, code, mention) in &refused_tokens(&keys) {
        let response = get(&app, path, authorization.as_deref()).await;
        assert_unauthorized(response, code, mention, case).await;
    }
    // The token comes before the path: an invalid userId without a token is a 401.
    let bad_path = "/api/users/not%20an%20id/purchases";
    assert_unauthorized(
        get(&app, bad_path, None).await,
        "missing_token",
        "Bearer",
        "bad path",
    )
    .await;
    let alice = keys.token("alice", "");
    assert_eq!(
        get(&app, bad_path, Some(&alice)).await.status().as_u16(),
        400
    );

    let bob = keys.token("bob", "purchases:write:any");
    assert_forbidden(
        get(&app, path, Some(&bob)).await,
        "purchases:read:any",
        "bob reads alice",
    )
    .await;
    let ids = event_ids(get(&app, path, Some(&alice)).await, "alice reads alice").await;
    assert_eq!(ids, [alices.event_id.to_string()]);

    // One purchase by id: another user's is not found, as if it did not exist.
    let bobs_path = format!("/api/purchases/{}", bobs.event_id);
    let response = get(&app, &bobs_path, Some(&alice)).await;
    assert_eq!(response.status().as_u16(), 404);
    let body = json_error(response, "alice reads bob's purchase").await;
    assert_eq!(body["error"], "not_found");
    assert_unauthorized(
        get(&app, &bobs_path, None).await,
        "missing_token",
        "Bearer",
        "no token",
    )
    .await;
    for (case, authorization) in [
        ("owner", keys.token("bob", "")),
        ("reader", keys.token("support", "purchases:read:any")),
    ] {
        let response = get(&app, &bobs_path, Some(&authorization)).await;
        assert_eq!(response.status().as_u16(), 200, "{case}");
        let purchase: Value = response.json().await.unwrap();
        assert_eq!(purchase["userId"], "bob", "{case}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn seed_routes_follow_the_same_rules() {
    let keys = Keys::new();
    let app = spawn_app_with_jwks(&keys.jwks(), &[]).await;
    let cm_server = json!({"username": "ann", "userid": "alice", "price": 12});
    for (case, authorization, code, mention) in &refused_tokens(&keys) {
        let response = post(&app, "/buy", authorization.as_deref(), &cm_server, None).await;
        assert_unauthorized(response, code, mention, case).await;
    }
    let bob = keys.token("bob", "");
    for path in ["/buy", "/api/buy"] {
        let response = post(&app, path, Some(&bob), &cm_server, Some(&new_key())).await;
        assert_forbidden(response, "purchases:write:any", path).await;
    }
    let alice = keys.token("alice", "");
    let accepted = accepted_event_id(
        post(&app, "/api/buy", Some(&alice), &cm_server, None).await,
        "alice on /api/buy",
    )
    .await;
    let dump = app.read_topic(1);
    assert_eq!(dump.records.len(), 1, "{dump:?}");
    assert_eq!(dump.records[0].value["eventId"], json!(accepted));
    assert_eq!(app.count_documents("idempotency_keys").await, 0);

    // Both users go by "ann"; bob also by "bob". Made 2 ms apart, so newest first is clear.
    let pause = || std::thread::sleep(Duration::from_millis(2));
    let alice_ann = event("alice", "ann", 1.0);
    pause();
    let bob_ann = event("bob", "ann", 2.0);
    pause();
    let bob_bob = event("bob", "bob", 3.0);
    app.store(&[alice_ann.clone(), bob_ann.clone(), bob_bob.clone()])
        .await;
    for path in ["/api/user/alice/purchases", "/api/purchases?userId=alice"] {
        assert_forbidden(
            get(&app, path, Some(&bob)).await,
            "purchases:read:any",
            path,
        )
        .await;
        let ids = event_ids(get(&app, path, Some(&alice)).await, path).await;
        assert_eq!(ids, [alice_ann.event_id.to_string()], "{path}");
    }
    assert_unauthorized(
        get(&app, "/buyList/ann", None).await,
        "missing_token",
        "Bearer",
        "/buyList without a token",
    )
    .await;

    // By username without the read scope: only the caller's own purchases.
    let reader = keys.token("support", "purchases:read:any");
    let id = |e: &purchase::PurchaseEvent| e.event_id.to_string();
    for (path, token, expected) in [
        ("/buyList/ann", &alice, vec![id(&alice_ann)]),
        ("/buyList/ann", &bob, vec![id(&bob_ann)]),
        ("/buyList/ann", &reader, vec![id(&bob_ann), id(&alice_ann)]),
        ("/buyList/bob", &alice, vec![]),
        ("/getAllUserBuys/ann", &alice, vec![id(&alice_ann)]),
        ("/getAllUserBuys/bob", &alice, vec![]),
        ("/getAllUserBuys/alice", &alice, vec![id(&alice_ann)]),
        (
            "/api/getAllUserBuys/bob",
            &bob,
            vec![id(&bob_bob), id(&bob_ann)],
        ),
        (
            "/api/getAllUserBuys/bob",
            &reader,
            vec![id(&bob_bob), id(&bob_ann)],
        ),
    ] {
        let ids = event_ids(get(&app, path, Some(token)).await, path).await;
        assert_eq!(ids, expected, "{path}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn health_metrics_and_docs_stay_open() {
    let keys = Keys::new();
    let app = spawn_app_with_jwks(&keys.jwks(), &[]).await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/openapi.json",
        "/",
    ] {
        assert_eq!(get(&app, path, None).await.status().as_u16(), 200, "{path}");
    }
    let spec: Value = get(&app, "/openapi.json", None).await.json().await.unwrap();
    let scheme = &spec["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    app.stop().await.unwrap();
}

/// A JWKS endpoint on 127.0.0.1 whose answer a test changes, counting its fetches.
struct JwksServer {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl JwksServer {
    async fn start(jwks: &Value) -> Self {
        use poem::{endpoint::make_sync, http::StatusCode, Response, Route};
        let answer = Arc::new(Mutex::new((200, jwks.to_string())));
        let fetches = Arc::new(AtomicUsize::new(0));
        let endpoint = make_sync({
            let (answer, fetches) = (Arc::clone(&answer), Arc::clone(&fetches));
            move |_| {
                fetches.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answer.lock().unwrap().clone();
                Response::builder()
                    .status(StatusCode::from_u16(status).unwrap())
                    .content_type("application/json")
                    .body(body)
            }
        });
        let (base, task) =
            test_support::serve_on_loopback(Route::new().at("/jwks.json", endpoint)).await;
        Self {
            url: format!("{base}/jwks.json"),
            answer,
            fetches,
            task,
        }
    }

    fn publish(&self, jwks: &Value) {
        *self.answer.lock().unwrap() = (200, jwks.to_string());
    }

    fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Waits until the gateway fetched `more` more times.
    async fn wait_for_fetches(&self, more: usize) {
        let target = self.fetches() + more;
        for _ in 0..100 {
            if self.fetches() >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the gateway did not fetch the JWKS {more} more times");
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_new_key_at_the_jwks_url_is_fetched_when_a_token_names_it() {
    let first = TestKey::es256("2026-01");
    let server = JwksServer::start(&tokens::jwks(&[&first])).await;
    let app = spawn_app_with_auth(&[&format!("--auth-jwks-url={}", server.url)]).await;
    assert_eq!(server.fetches(), 1, "loaded at start-up");
    let path = "/api/users/alice/purchases";
    let token = |key: &TestKey| bearer(&key.sign(&claims("alice")));
    assert_eq!(
        get(&app, path, Some(&token(&first)))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(server.fetches(), 1, "a known kid needs no fetch");

    // The provider rotates: a new kid, the old key retired.
    let second = TestKey::ed25519("2026-02");
    server.publish(&tokens::jwks(&[&second]));
    assert_eq!(
        get(&app, path, Some(&token(&second)))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(server.fetches(), 2, "one fetch for the unknown kid");
    assert_unauthorized(
        get(&app, path, Some(&token(&first))).await,
        "unknown_key",
        "2026-01",
        "a retired key",
    )
    .await;

    // Made-up or brand-new kids cannot make it fetch again within 30 s.
    let third = TestKey::es256("2026-03");
    server.publish(&tokens::jwks(&[&second, &third]));
    assert_unauthorized(
        get(&app, path, Some(&token(&third))).await,
        "unknown_key",
        "2026-03",
        "a kid within 30 s of the last forced fetch",
    )
    .await;
    assert_eq!(server.fetches(), 2, "at most one forced fetch per 30 s");
    assert_eq!(
        get(&app, path, Some(&token(&second)))
            .await
            .status()
            .as_u16(),
        200
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_jwks_url_keeps_the_last_good_keys() {
    let first = TestKey::es256("k1");
    let server = JwksServer::start(&tokens::jwks(&[&first])).await;
    let app = spawn_app_with_auth(&[
        &format!("--auth-jwks-url={}", server.url),
        "--auth-jwks-refresh=1s",
    ])
    .await;
    let path = "/api/users/alice/purchases";
    let token = |key: &TestKey| bearer(&key.sign(&claims("alice")));

    server.answer(500, "{\"error\": \"down\"}");
    server.wait_for_fetches(2).await;
    assert_eq!(
        get(&app, path, Some(&token(&first)))
            .await
            .status()
            .as_u16(),
        200
    );
    server.answer(200, "<html>not a JWKS</html>");
    server.wait_for_fetches(2).await;
    assert_eq!(
        get(&app, path, Some(&token(&first)))
            .await
            .status()
            .as_u16(),
        200
    );

    // Once it answers again, the background refresh brings the new set.
    let second = TestKey::es256("k2");
    server.publish(&tokens::jwks(&[&second]));
    server.wait_for_fetches(2).await;
    assert_eq!(
        get(&app, path, Some(&token(&second)))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        get(&app, path, Some(&token(&first)))
            .await
            .status()
            .as_u16(),
        401
    );
    app.stop().await.unwrap();
}

/// Start-up with these flags and no reachable broker or database: authentication is set up
/// first, so a problem with it is the error.
async fn start_up_error(flags: &[&str]) -> String {
    let mut args = gateway_args("127.0.0.1:1", "mongodb://127.0.0.1:1", "t", "d");
    args.extend(flags.iter().map(|f| f.to_string()));
    let cli = Cli::try_parse_from(args).expect("flags parse");
    match Application::build(cli.config).await {
        Ok(_) => panic!("started with {flags:?}"),
        Err(error) => format!("{error:#}"),
    }
}

fn as_strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn the_gateway_does_not_start_without_usable_keys() {
    let error = start_up_error(&[]).await;
    for flag in ["--auth-jwks-file", "--auth-jwks-url", "--auth-disabled"] {
        assert!(error.contains(flag), "{error}");
    }
    let issuer = format!("--auth-issuer={ISSUER}");
    let audience = format!("--auth-audience={AUDIENCE}");
    let with_source = |source: String| vec![issuer.clone(), audience.clone(), source];

    let missing = with_source("--auth-jwks-file=/nonexistent/jwks.json".into());
    let error = start_up_error(&as_strs(&missing)).await;
    assert!(
        error.contains("cannot load the JWKS from file /nonexistent/jwks.json"),
        "{error}"
    );
    assert!(error.contains("No such file"), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let symmetric = dir.path().join("symmetric.json");
    std::fs::write(
        &symmetric,
        json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}).to_string(),
    )
    .unwrap();
    let flags = with_source(format!("--auth-jwks-file={}", symmetric.display()));
    let error = start_up_error(&as_strs(&flags)).await;
    assert!(error.contains("no usable signing key"), "{error}");
    assert!(error.contains("symmetric"), "{error}");

    let closed = with_source("--auth-jwks-url=http://127.0.0.1:1/jwks.json".into());
    let error = start_up_error(&as_strs(&closed)).await;
    assert!(
        error.contains("cannot load the JWKS from URL http://127.0.0.1:1/jwks.json"),
        "{error}"
    );
    assert!(error.contains("request failed"), "{error}");

    let server = JwksServer::start(&json!({})).await;
    server.answer(503, "busy");
    let flags = with_source(format!("--auth-jwks-url={}", server.url));
    let error = start_up_error(&as_strs(&flags)).await;
    assert!(
        error.contains(&server.url) && error.contains("503"),
        "{error}"
    );

    let error = start_up_error(&[
        "--auth-jwks-file=/k.json",
        &format!("--auth-audience={AUDIENCE}"),
    ])
    .await;
    assert!(error.contains("--auth-issuer is required"), "{error}");

    // The binary says the same and exits non-zero.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .output()
        .expect("run the gateway binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--auth-disabled"), "{stderr}");
}
