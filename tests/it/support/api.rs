//! A running msgd with an app, its keys and dev-issued user tokens, and a
//! small JSON client for the `/v1` API: the fixture of the write-path tests.

#![allow(dead_code)]

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{Backend, Msgd, TestEnv};

pub struct Api {
    pub env: TestEnv,
    pub msgd: Msgd,
    pub client: reqwest::Client,
    pub app_id: String,
    pub admin_key: String,
    pub write_key: String,
    pub read_key: String,
}

/// A response: status, JSON body (Null when none) and headers.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Creates an app and a key of `scope` through the CLI; returns (app id, admin key) or the key.
pub fn create_key(env: &TestEnv, app_id: &str, scope: &str) -> String {
    let out = env.run(&["keys", "create", "--app", app_id, "--scope", scope, "--json"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["key"].as_str().unwrap().to_string()
}

pub fn create_app(env: &TestEnv, name: &str) -> (String, String) {
    let out = env.run(&["keys", "create-app", name, "--json"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json = out.json();
    (json["app"]["id"].as_str().unwrap().to_string(), json["key"].as_str().unwrap().to_string())
}

impl Api {
    /// msgd with dev tokens on and rate limits high enough not to interfere.
    pub async fn start(backend: Backend) -> Api {
        Api::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, vars: &[(&str, &str)]) -> Api {
        let mut env = TestEnv::new(backend).await;
        env.set("MSGD_AUTH__DEV_TOKENS__ENABLED", "true");
        env.set("MSGD_AUTH__DEV_TOKENS__SIGNING_KEY", "test-signing-key-0123456789abcdef0123");
        env.set("MSGD_LIMITS__USER_RATE", "100000");
        env.set("MSGD_LIMITS__USER_BURST", "100000");
        env.set("MSGD_LIMITS__KEY_RATE", "100000");
        env.set("MSGD_LIMITS__KEY_BURST", "100000");
        for (name, value) in vars {
            env.set(name, value);
        }
        let (app_id, admin_key) = create_app(&env, "acme");
        let write_key = create_key(&env, &app_id, "write");
        let read_key = create_key(&env, &app_id, "read");
        let msgd = env.serve();
        Api { env, msgd, client: reqwest::Client::new(), app_id, admin_key, write_key, read_key }
    }

    /// Another `msgd serve` on the same deployment (services mode).
    pub fn second_instance(&self) -> Msgd {
        self.env.serve()
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.request_to(&self.msgd, method, path, key, token, body, headers).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn request_to(
        &self,
        msgd: &Msgd,
        method: Method,
        path: &str,
        key: Option<&str>,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.client.request(method, msgd.url(path));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, body, headers }
    }

    /// A dev token for `user`.
    pub async fn token(&self, user: &str) -> String {
        let reply = self
            .request(Method::POST, "/v1/dev/token", Some(&self.admin_key), None, Some(&json!({"user_id": user})), &[])
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["access_token"].as_str().unwrap().to_string()
    }

    /// A conversation created by `owner` (a token) with `members`.
    pub async fn conversation(&self, owner: &str, members: &[&str]) -> String {
        let reply = self
            .request(
                Method::POST,
                "/v1/conversations",
                Some(&self.write_key),
                Some(owner),
                Some(&json!({"members": members, "title": "test"})),
                &[],
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_string()
    }

    /// Sends `payload` as the user behind `token`.
    pub async fn send(&self, token: &str, conversation: &str, body: &Value) -> Reply {
        self.request(
            Method::POST,
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&self.write_key),
            Some(token),
            Some(body),
            &[],
        )
        .await
    }

    /// Sends `payloads` as batches of 100, asserting each is accepted.
    pub async fn send_batches(&self, token: &str, conversation: &str, payloads: impl IntoIterator<Item = Value>) {
        let payloads: Vec<Value> = payloads.into_iter().map(|payload| json!({"payload": payload})).collect();
        let path = format!("/v1/conversations/{conversation}/messages/batch");
        for chunk in payloads.chunks(100) {
            let body = json!({"messages": chunk});
            let reply = self.request(Method::POST, &path, Some(&self.write_key), Some(token), Some(&body), &[]).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }

    /// The stores of this deployment, opened from the test process.
    pub async fn stores(&self) -> msgd::store::Stores {
        msgd::store::Stores::open(&self.env.config(), &msgd::telemetry::Metrics::new("test")).await.unwrap()
    }

    pub fn conv_key(&self, conversation: &str) -> msgd::store::ConvKey {
        msgd::store::ConvKey::new(&self.app_id, conversation)
    }
}
