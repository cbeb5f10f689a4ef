//! Keycloak access tokens against a real `msgd serve` trusting a real local
//! issuer: valid tokens pass, forged, expired, misdirected and malformed ones
//! are refused with a precise error code, keys rotate without a restart,
//! unknown kids cannot make msgd hammer the issuer, and refusals are counted.
//! Dev tokens, too, are accepted by every instance of a deployment.
//!
//! The tests run on a multi-thread runtime: the issuer is served by tasks of
//! the test's runtime, and `env.serve()` blocks the test's own thread while
//! msgd boots (and may fetch the issuer's documents).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::oidc::{rs256_header, unix_now, CountingServer, TestIssuer};
use crate::support::{backend_test, eventually, Backend, Msgd, TestEnv};

/// One msgd trusting one issuer, with a write key of app "acme".
/// Field order is drop order: msgd is killed before its data dir goes.
struct Deployment {
    msgd: Msgd,
    _env: TestEnv,
    issuer: TestIssuer,
    write_key: String,
    client: reqwest::Client,
}

impl Deployment {
    async fn start() -> Deployment {
        let issuer = TestIssuer::start("msgd").await;
        let mut env = TestEnv::new(Backend::Embedded).await;
        env.set("MSGD_AUTH__KEYCLOAK__ISSUER", &issuer.issuer());
        env.set("MSGD_AUTH__KEYCLOAK__AUDIENCES", "account");
        env.set("MSGD_AUTH__KEYCLOAK__ALLOWED_CLIENTS", "msgd-web");
        let app = cli_json(&env, &["keys", "create-app", "acme", "--json"]);
        let app_id = app["app"]["id"].as_str().expect("app id").to_string();
        let key = cli_json(&env, &["keys", "create", "--app", &app_id, "--scope", "write", "--json"]);
        let write_key = key["key"].as_str().expect("write key").to_string();
        let msgd = env.serve();
        Deployment { msgd, _env: env, issuer, write_key, client: reqwest::Client::new() }
    }

    /// `GET /v1/conversations` with the write key and, when given, this
    /// `Authorization` header.
    async fn probe(&self, authorization: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(self.msgd.url("/v1/conversations")).header("X-Api-Key", &self.write_key);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.expect("request msgd");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn send_token(&self, token: &str) -> (u16, Value) {
        self.probe(bearer(token).as_deref()).await
    }

    /// Panics, with msgd's log, unless `answer` is `status` with error `code`.
    fn expect(&self, what: &str, answer: &(u16, Value), status: u16, code: &str) {
        if let Some(problem) = mismatch(answer, status, code) {
            panic!("{what}: {problem}\nmsgd log:\n{}", self.msgd.log_text());
        }
    }
}

/// Runs a `--json` CLI command that must succeed and returns its output.
fn cli_json(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.run(args, "");
    assert_eq!(out.code, 0, "msgd {}: {}", args.join(" "), out.stderr);
    out.json()
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// `None` when the answer is as expected: 200 with a conversation list, or
/// `status` with `{"error": {"code": code, "message": ...}}`.
fn mismatch((status, body): &(u16, Value), expected: u16, code: &str) -> Option<String> {
    let matches = *status == expected
        && if expected == 200 {
            body["conversations"].is_array()
        } else {
            body["error"]["code"] == code && body["error"]["message"].is_string()
        };
    (!matches).then(|| format!("expected {expected} {code:?}, got {status} {body}"))
}

/// Claims of a token that expired an hour ago.
fn expired() -> Value {
    let now = unix_now();
    json!({"exp": now - 3600, "iat": now - 7200})
}

/// `alg: none` with an empty signature.
fn unsigned(kid: &str, claims: &Value) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!("{}.{}.", part(&json!({"alg": "none", "typ": "JWT", "kid": kid})), part(claims))
}

/// HS256 keyed with the issuer's public key PEM: the key-confusion forgery
/// against verifiers that let the token pick the algorithm.
fn hs256_with_public_key(issuer: &TestIssuer, kid: &str, claims: &Value) -> String {
    let pem = issuer.public_key_pem();
    let header = Header { kid: Some(kid.to_string()), ..Header::new(Algorithm::HS256) };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(pem.as_bytes())).expect("sign HS256")
}

/// (name, Authorization header, expected status, expected error code).
type Case = (&'static str, Option<String>, u16, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_accepted_or_refused_with_a_precise_code() {
    let d = Deployment::start().await;
    let issuer = &d.issuer;
    let kid = issuer.kid();
    let claims = issuer.claims("alice", Value::Null);
    // Its key was never published by `issuer`.
    let attacker = TestIssuer::start("msgd").await;
    let counting = CountingServer::start().await;
    let now = unix_now();
    let with = |overrides: Value| bearer(&issuer.token_with("alice", overrides));

    let cases: Vec<Case> = vec![
        ("valid", bearer(&issuer.token("alice")), 200, ""),
        ("alg none", bearer(&unsigned(&kid, &claims)), 401, "invalid_token"),
        (
            "HS256 keyed with the public key",
            bearer(&hs256_with_public_key(issuer, &kid, &claims)),
            401,
            "invalid_token",
        ),
        ("unknown kid", bearer(&attacker.sign(rs256_header(&attacker.kid()), &claims)), 401, "invalid_token"),
        ("published kid, unpublished key", bearer(&attacker.sign(rs256_header(&kid), &claims)), 401, "invalid_token"),
        ("path in kid", bearer(&issuer.sign(rs256_header("../../etc/passwd"), &claims)), 401, "invalid_token"),
        ("SQL in kid", bearer(&issuer.sign(rs256_header("' OR 1=1 --"), &claims)), 401, "invalid_token"),
        (
            "jku to an attacker's JWKS",
            bearer(&attacker.sign(
                Header { jku: Some(format!("{}/certs", counting.url)), ..rs256_header(&attacker.kid()) },
                &claims,
            )),
            401,
            "invalid_token",
        ),
        (
            "x5u to an attacker's server",
            bearer(&attacker.sign(
                Header { x5u: Some(format!("{}/cert.pem", counting.url)), ..rs256_header(&attacker.kid()) },
                &claims,
            )),
            401,
            "invalid_token",
        ),
        ("expired", with(expired()), 401, "token_expired"),
        ("not yet valid", with(json!({"nbf": now + 3600})), 401, "invalid_token"),
        ("wrong issuer", with(json!({"iss": "http://127.0.0.1:1/realms/other"})), 401, "wrong_issuer"),
        ("wrong audience", with(json!({"aud": "other-api"})), 401, "wrong_audience"),
        ("wrong client (azp)", with(json!({"azp": "evil-client"})), 401, "wrong_audience"),
        ("no exp", with(json!({"exp": null})), 401, "invalid_token"),
        ("malformed: one part", bearer("abc"), 401, "invalid_token"),
        ("malformed: two parts", bearer("a.b"), 401, "invalid_token"),
        ("malformed: four parts", bearer("a.b.c.d"), 401, "invalid_token"),
        ("malformed: not base64url", bearer("!!!.???.***"), 401, "invalid_token"),
        ("a subject with a control character", with(json!({"sub": "ali\u{7}ce"})), 401, "invalid_token"),
        ("a subject with a zero-width space", with(json!({"sub": "alice\u{200b}"})), 401, "invalid_token"),
        ("a 10,000-character subject", with(json!({"sub": "x".repeat(10_000)})), 401, "invalid_token"),
        ("no Authorization header", None, 401, "missing_token"),
        ("Basic scheme", Some("Basic xyz".to_string()), 401, "invalid_token"),
    ];

    let mut failures = Vec::new();
    for (name, authorization, status, code) in &cases {
        let answer = d.probe(authorization.as_deref()).await;
        if let Some(problem) = mismatch(&answer, *status, code) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}\nmsgd log:\n{}", failures.join("\n"), d.msgd.log_text());
    assert_eq!(counting.hits(), 0, "msgd fetched a URL named by a token header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_is_refused_and_serving_goes_on() {
    let d = Deployment::start().await;
    // Correctly signed by the published key, with a 100 KB claim.
    let huge = d.issuer.token_with("alice", json!({"pad": "x".repeat(100 * 1024)}));
    let (status, body) = d.send_token(&huge).await;
    assert!(
        status == 431 || (status == 401 && body["error"]["code"] == "invalid_token"),
        "a 100 KB token: got {status} {body}\nmsgd log:\n{}",
        d.msgd.log_text()
    );
    d.expect("a valid token afterwards", &d.send_token(&d.issuer.token("alice")).await, 200, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    let d = Deployment::start().await;
    let old_token = d.issuer.token("alice");
    d.expect("a token of the first key", &d.send_token(&old_token).await, 200, "");

    let new_kid = d.issuer.rotate();
    assert_eq!(d.issuer.kid(), new_kid);
    let new_token = d.issuer.token("alice");
    // Generous enough to outlast msgd's 10 s refetch cooldown.
    let accepted = eventually(Duration::from_secs(15), async || d.send_token(&new_token).await.0 == 200).await;
    assert!(accepted, "a token of the rotated-in key is still refused\nmsgd log:\n{}", d.msgd.log_text());
    d.expect("a token of the new key", &d.send_token(&new_token).await, 200, "");
    d.expect("a token of the old, still published key", &d.send_token(&old_token).await, 200, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_cannot_make_msgd_hammer_the_issuer() {
    let d = Deployment::start().await;
    d.expect("a valid token", &d.send_token(&d.issuer.token("alice")).await, 200, "");
    let before = d.issuer.jwks_fetches();

    let attacker = TestIssuer::start("msgd").await;
    let claims = d.issuer.claims("alice", Value::Null);
    let tokens: Vec<String> =
        (0..20).map(|_| attacker.sign(rs256_header(&uuid::Uuid::new_v4().simple().to_string()), &claims)).collect();
    // All at once: concurrent misses must not each trigger a fetch either.
    let answers = futures::future::join_all(tokens.iter().map(|token| d.send_token(token))).await;
    for answer in &answers {
        d.expect("a token with a random unknown kid", answer, 401, "invalid_token");
    }
    let fetches = d.issuer.jwks_fetches() - before;
    assert!(fetches <= 3, "20 unknown kids made msgd fetch the JWKS {fetches} times");
    d.expect("a valid token after the burst", &d.send_token(&d.issuer.token("alice")).await, 200, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reason() {
    let d = Deployment::start().await;
    let answer = d.send_token(&d.issuer.token_with("alice", expired())).await;
    d.expect("an expired token", &answer, 401, "token_expired");
    let metrics = d.client.get(d.msgd.url("/metrics")).send().await.expect("GET /metrics");
    let metrics = metrics.text().await.expect("metrics text");
    assert!(metrics.contains(r#"msgd_auth_failures_total{reason="token_expired"}"#), "{metrics}");
}

/// Mints a dev token for `user` on `msgd` with the app's admin key.
async fn mint_dev_token(msgd: &Msgd, admin_key: &str, user: &str) -> String {
    let reply = reqwest::Client::new()
        .post(msgd.url("/v1/dev/token"))
        .header("X-Api-Key", admin_key)
        .json(&json!({"user_id": user}))
        .send()
        .await
        .expect("request msgd");
    assert_eq!(reply.status().as_u16(), 200, "{}", msgd.log_text());
    reply.json::<Value>().await.unwrap()["access_token"].as_str().expect("a token").to_string()
}

async fn conversations_status(msgd: &Msgd, write_key: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(msgd.url("/v1/conversations"))
        .header("X-Api-Key", write_key)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("request msgd")
        .status()
        .as_u16()
}

backend_test! {
    /// Without `auth.dev_tokens.signing_key`, the generated key belongs to the
    /// deployment (kept in the metadata store), not to one instance's data dir:
    /// services-mode instances on different hosts accept each other's dev tokens,
    /// and an embedded instance accepts its predecessor's after a restart.
    #[tokio::test]
    async fn dev_tokens_are_accepted_by_every_instance_of_a_deployment(backend: Backend) {
        let mut env = TestEnv::new(backend).await;
        env.set("MSGD_AUTH__DEV_TOKENS__ENABLED", "true");
        let (app_id, admin_key) = crate::support::api::create_app(&env, "acme");
        let write_key = crate::support::api::create_key(&env, &app_id, "write");
        let mut first = env.serve();
        let from_first = mint_dev_token(&first, &admin_key, "alice").await;
        if backend == Backend::Embedded {
            first.signal("TERM");
            first.wait_exit(Duration::from_secs(10)).expect("exits");
        } else {
            // Another host: its own data dir, the same Postgres.
            env.set("MSGD_DATA_DIR", &env.dir.path().join("second-host").display().to_string());
        }
        let second = env.serve();
        assert_eq!(conversations_status(&second, &write_key, &from_first).await, 200, "{}", second.log_text());
        if backend == Backend::Services {
            let from_second = mint_dev_token(&second, &admin_key, "bob").await;
            assert_eq!(conversations_status(&first, &write_key, &from_second).await, 200, "{}", first.log_text());
        }
    }
}
