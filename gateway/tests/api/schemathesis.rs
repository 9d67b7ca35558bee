//! Schemathesis (pinned in scripts/requirements-test.txt) generates requests from our own
//! spec, valid and invalid, and checks every answer against it: status codes, bodies and
//! headers as documented, valid data accepted, invalid data refused, 405 with `Allow`. It
//! runs against a gateway on the real broker and database, with authentication on: it sends
//! a token allowed to act for every user, and its `ignored_auth` check probes each protected
//! operation without it and with a made-up one, expecting the documented 401. Every check
//! must pass.

use std::time::Duration;

use test_support::workspace_root;

use crate::{
    helpers::{event, python, spawn_app_with_jwks},
    tokens::{self, claims_with_scope, TestKey},
};

/// Examples per operation and phase: enough to find a disagreement between the spec and the
/// server, few enough to finish in about a minute on two cores.
const MAX_EXAMPLES: &str = "100";

#[tokio::test]
async fn schemathesis_finds_the_server_and_its_spec_in_agreement() {
    let key = TestKey::es256("schemathesis");
    let app = spawn_app_with_jwks(&tokens::jwks(&[&key]), &[]).await;
    let mut claims = claims_with_scope("u1", "purchases:write:any purchases:read:any");
    claims["exp"] = serde_json::json!(tokens::now() + 3600);
    let authorization = format!("Authorization: Bearer {}", key.sign(&claims));
    // Stored purchases, so history answers carry data to check against the spec (their
    // userId and username are the spec's examples, which schemathesis tries first).
    app.store(&[
        event("u1", "ann", 19.99),
        event("u1", "ann", 0.29),
        event("u1", "ann", 0.01),
        event("u1", "ann", 1_000_000.0),
    ])
    .await;

    // A directory of its own: schemathesis may write reports and its example database.
    let workdir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(python())
        .current_dir(workdir.path())
        // Re-judges "schema-violating request accepted" with exact Unicode classes; see the
        // module's docstring for the schemathesis approximation it corrects.
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", workspace_root().join("test-support/py"))
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/openapi.json", app.address))
        .args(["--url", &app.address])
        .args(["--header", &authorization])
        .args(["--checks", "all"])
        // A 202 means the broker has the purchase; it is readable once a worker stored it, and
        // no worker runs here. This check expects a created resource to be readable at once,
        // which is deliberately not this API's contract (202 + Location, eventual reads).
        .args(["--exclude-checks", "ensure_resource_availability"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "10"])
        // One worker: Python 3.11.7's `ast` is not thread-safe (hypothesis inspects lambdas
        // with it), and two workers crash schemathesis with "AST constructor recursion depth
        // mismatch" now and then.
        .args(["--workers", "1"])
        .arg("--no-color")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within 10 minutes")
        .expect("run schemathesis (make test-deps installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{stderr}",
        output.status
    );
    app.stop().await.unwrap();
}
