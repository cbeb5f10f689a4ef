//! A real OIDC issuer for token tests, served in-process over HTTP on
//! 127.0.0.1: it publishes Keycloak-shaped discovery and JWKS documents for
//! one realm, signs RS256 access tokens with RSA keys made by the `openssl`
//! tool (OpenSSL 3), rotates keys and counts JWKS fetches. Also a counting
//! server that proves msgd never follows a token's `jku`/`x5u`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{self, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Seconds since the Unix epoch, as JWT time claims count them.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// An RS256 header naming `kid`.
pub fn rs256_header(kid: &str) -> Header {
    Header { kid: Some(kid.to_string()), ..Header::new(Algorithm::RS256) }
}

/// One RSA signing key.
struct RsaKey {
    kid: String,
    /// The private key as PKCS#1 DER, the form `EncodingKey::from_rsa_der`
    /// takes (so tests need no `use_pem` feature).
    der: Vec<u8>,
    /// Base64url of the modulus bytes: the JWK `n`.
    n: String,
    public_pem: String,
}

impl RsaKey {
    /// A fresh 2048-bit key with a random kid; its files go in `dir`.
    fn generate(dir: &Path) -> RsaKey {
        let kid = uuid::Uuid::new_v4().simple().to_string();
        let pem = dir.join(format!("{kid}.pem"));
        let der = dir.join(format!("{kid}.der"));
        let pem_path = pem.to_str().expect("UTF-8 temp path");
        let der_path = der.to_str().expect("UTF-8 temp path");
        openssl(&["genrsa", "-out", pem_path, "2048"]);
        // `-traditional` writes PKCS#1; OpenSSL 3 writes PKCS#8 without it.
        openssl(&["rsa", "-in", pem_path, "-outform", "DER", "-traditional", "-out", der_path]);
        let modulus = openssl(&["rsa", "-in", pem_path, "-noout", "-modulus"]);
        let modulus = modulus
            .trim()
            .strip_prefix("Modulus=")
            .unwrap_or_else(|| panic!("unexpected `openssl rsa -modulus` output: {modulus}"));
        RsaKey {
            der: std::fs::read(&der).expect("read the DER key"),
            n: URL_SAFE_NO_PAD.encode(hex_to_bytes(modulus)),
            public_pem: openssl(&["rsa", "-in", pem_path, "-pubout"]),
            kid,
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": self.n, "e": "AQAB"})
    }

    /// Signs `claims` under `header`, whose `alg` must be an RSA algorithm.
    fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_rsa_der(&self.der)).expect("sign a test token")
    }
}

fn openssl(args: &[&str]) -> String {
    let output =
        Command::new("openssl").args(args).output().expect("run the openssl tool (it generates the test RSA keys)");
    assert!(output.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("openssl prints UTF-8")
}

/// Big-endian bytes of a hex number, without leading zero bytes.
fn hex_to_bytes(hex: &str) -> Vec<u8> {
    let hex = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex.to_string() };
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex modulus")).collect();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind a test server")
}

fn spawn(listener: TcpListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move { axum::serve(listener, router).await.expect("test server") })
}

/// What the HTTP handlers and the test share.
struct Shared {
    realm: String,
    issuer: String,
    /// Every published key, oldest first; the last one signs.
    keys: Mutex<Vec<RsaKey>>,
    jwks_fetches: AtomicUsize,
}

async fn discovery(
    State(shared): State<Arc<Shared>>,
    extract::Path(realm): extract::Path<String>,
) -> Result<Json<Value>, StatusCode> {
    if realm != shared.realm {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(Json(json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}/protocol/openid-connect/certs", shared.issuer),
        "id_token_signing_alg_values_supported": ["RS256"],
    })))
}

async fn certs(
    State(shared): State<Arc<Shared>>,
    extract::Path(realm): extract::Path<String>,
) -> Result<Json<Value>, StatusCode> {
    if realm != shared.realm {
        return Err(StatusCode::NOT_FOUND);
    }
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys: Vec<Value> = shared.keys.lock().unwrap().iter().map(RsaKey::jwk).collect();
    Ok(Json(json!({ "keys": keys })))
}

/// A Keycloak-like issuer for one realm, stopped on drop.
pub struct TestIssuer {
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    server: JoinHandle<()>,
}

impl TestIssuer {
    /// Starts an issuer for realm `realm` with one RSA key published.
    pub async fn start(realm: &str) -> TestIssuer {
        let dir = tempfile::tempdir().expect("temp dir for issuer keys");
        let key = RsaKey::generate(dir.path());
        let listener = bind().await;
        let issuer = format!("http://{}/realms/{realm}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            realm: realm.to_string(),
            issuer,
            keys: Mutex::new(vec![key]),
            jwks_fetches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/realms/{realm}/.well-known/openid-configuration", get(discovery))
            .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
            .with_state(shared.clone());
        TestIssuer { shared, dir, server: spawn(listener, router) }
    }

    /// `http://127.0.0.1:PORT/realms/REALM`
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The kid of the current signing key.
    pub fn kid(&self) -> String {
        self.current(|key| key.kid.clone())
    }

    /// Publishes a new RSA key (kept alongside the old ones in the JWKS) and
    /// makes it the signing key; returns its kid.
    pub fn rotate(&self) -> String {
        let key = RsaKey::generate(self.dir.path());
        let kid = key.kid.clone();
        self.shared.keys.lock().unwrap().push(key);
        kid
    }

    /// The default claims of [`TestIssuer::token`] with `overrides` (a JSON
    /// object, or null for none) merged over them; a null value removes that
    /// claim.
    pub fn claims(&self, user: &str, overrides: Value) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": user,
            "azp": "msgd-web",
            "aud": "account",
            "typ": "Bearer",
            "preferred_username": user,
            "realm_access": {"roles": ["user"]},
            "iat": now,
            "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let map = claims.as_object_mut().expect("claims are an object");
        match overrides {
            Value::Null => {}
            Value::Object(overrides) => {
                for (name, value) in overrides {
                    if value.is_null() {
                        map.remove(&name);
                    } else {
                        map.insert(name, value);
                    }
                }
            }
            other => panic!("claim overrides must be a JSON object, got {other}"),
        }
        claims
    }

    /// A Keycloak-shaped access token for `user` signed RS256 with the
    /// current key, header kid set: iss = issuer(), sub = user, azp =
    /// "msgd-web", aud = "account", typ = "Bearer", preferred_username = user,
    /// realm_access.roles = ["user"], iat = now, exp = now + 300, jti random.
    pub fn token(&self, user: &str) -> String {
        self.token_with(user, Value::Null)
    }

    /// Same, with `overrides` merged over the default claims (a JSON null
    /// value REMOVES that claim).
    pub fn token_with(&self, user: &str, overrides: Value) -> String {
        let claims = self.claims(user, overrides);
        self.current(|key| key.sign(&rs256_header(&key.kid), &claims))
    }

    /// Signs arbitrary claims with the current key and the given header (for
    /// kid/jku/alg attacks); `header.alg` must be an RSA algorithm.
    pub fn sign(&self, header: Header, claims: &Value) -> String {
        self.current(|key| key.sign(&header, claims))
    }

    /// The PEM of the current public key (for the HS256-with-public-key attack).
    pub fn public_key_pem(&self) -> String {
        self.current(|key| key.public_pem.clone())
    }

    /// How many times the JWKS document was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    fn current<T>(&self, f: impl FnOnce(&RsaKey) -> T) -> T {
        let keys = self.shared.keys.lock().unwrap();
        f(keys.last().expect("the issuer has a key"))
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Answers every request with an attacker's (empty) JWKS and counts them.
pub struct CountingServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    hits: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl CountingServer {
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let router = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Json(json!({ "keys": [] })) }
        });
        let listener = bind().await;
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        CountingServer { url, hits, server: spawn(listener, router) }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}
