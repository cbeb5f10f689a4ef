//! Test support: isolated state per test on both backends, real `msgd`
//! processes, private servers for outage tests (`servers`), a local OIDC issuer
//! (`oidc`), and clients for the HTTP and WebSocket APIs (`api`, `wsclient`).
//!
//! A test written once runs once per backend (`backend_test!`), or on services
//! alone (`services_test!`). Services-mode tests read the shared servers
//! started by `scripts/services.sh` from `MSGDTEST_*` variables. When they are
//! absent the services variant of a test is skipped with a note — unless
//! `MSGDTEST_REQUIRE_SERVICES=1` (set by `scripts/test.sh`, the README's test
//! command), where their absence fails the test.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod api;
pub mod history;
pub mod oidc;
pub mod servers;
pub mod workload;
pub mod wsclient;

pub const MSGD: &str = env!("CARGO_BIN_EXE_msgd");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Services,
}

/// The shared services when this run includes services-mode tests, `None`
/// (with a note) when it skips them. Their absence fails instead under
/// `MSGDTEST_REQUIRE_SERVICES`, so a run that promises both backends never
/// passes on one.
pub fn services_or_skip() -> Option<ServicesEnv> {
    let services = services_env();
    if services.is_none() {
        skip_unless_required(
            "the MSGDTEST_* service variables are missing",
            "services-mode test skipped (run scripts/test.sh to start Postgres, Redis and S3)",
        );
    }
    services
}

/// Notes that a check is skipped because something it needs is `missing`;
/// under `MSGDTEST_REQUIRE_SERVICES`, whose run promises every check, fails
/// instead.
pub fn skip_unless_required(missing: &str, skipped: &str) {
    assert!(std::env::var("MSGDTEST_REQUIRE_SERVICES").is_err(), "MSGDTEST_REQUIRE_SERVICES is set but {missing}");
    eprintln!("note: {skipped}");
}

/// The value of the series `series` (name and labels as printed) in a
/// Prometheus text exposition.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET /metrics` of a running msgd.
pub async fn scrape(msgd: &Msgd) -> String {
    let response = reqwest::get(msgd.url("/metrics")).await.expect("scrape /metrics");
    assert_eq!(response.status().as_u16(), 200, "GET /metrics");
    response.text().await.expect("scrape body")
}

/// One test per backend from one body, so a failure names its backend:
/// `name::embedded` and `name::services`, the latter skipped as
/// [`services_or_skip`] decides. The body stays an ordinary `async fn name`
/// taking the backend; the attributes written above it (the `#[tokio::test]`
/// and any doc) go on each generated test.
///
/// ```ignore
/// backend_test! {
///     #[tokio::test]
///     async fn sends_are_stored(backend: Backend) {
///         let env = TestEnv::new(backend).await;
///     }
/// }
/// ```
macro_rules! backend_test {
    ($(#[$attr:meta])* async fn $name:ident($backend:ident: $backend_type:ty) $body:block) => {
        async fn $name($backend: $backend_type) $body

        mod $name {
            $(#[$attr])*
            async fn embedded() {
                super::$name($crate::support::Backend::Embedded).await;
            }

            $(#[$attr])*
            async fn services() {
                if $crate::support::services_or_skip().is_some() {
                    super::$name($crate::support::Backend::Services).await;
                }
            }
        }
    };
}
pub(crate) use backend_test;

/// A test of services mode alone (outages of a real server, several
/// instances on one deployment): `name::services`, skipped like the services
/// half of [`backend_test!`]. The body gets the shared services' coordinates.
macro_rules! services_test {
    ($(#[$attr:meta])* async fn $name:ident($services:tt: $services_type:ty) $body:block) => {
        async fn $name($services: $services_type) $body

        mod $name {
            $(#[$attr])*
            async fn services() {
                if let Some(services) = $crate::support::services_or_skip() {
                    super::$name(services).await;
                }
            }
        }
    };
}
pub(crate) use services_test;

/// The shared services' coordinates.
#[derive(Clone)]
pub struct ServicesEnv {
    pub postgres_url: String,
    pub redis_url: String,
    pub s3_endpoint: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    pub s3_root: PathBuf,
    pub pg_bin: PathBuf,
    pub redis_server: PathBuf,
    pub s3s_fs: PathBuf,
}

pub fn services_env() -> Option<ServicesEnv> {
    let var = |name: &str| std::env::var(format!("MSGDTEST_{name}")).ok();
    Some(ServicesEnv {
        postgres_url: var("POSTGRES_URL")?,
        redis_url: var("REDIS_URL")?,
        s3_endpoint: var("S3_ENDPOINT")?,
        s3_access_key_id: var("S3_ACCESS_KEY_ID")?,
        s3_secret_access_key: var("S3_SECRET_ACCESS_KEY")?,
        s3_root: var("S3_ROOT")?.into(),
        pg_bin: var("PG_BIN")?.into(),
        redis_server: var("REDIS_SERVER")?.into(),
        s3s_fs: var("S3S_FS")?.into(),
    })
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple().to_string().get(..16).unwrap())
}

/// One test's isolated deployment: a temp data dir, and in services mode its
/// own Postgres database, Redis key prefix and S3 bucket.
pub struct TestEnv {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    /// `MSGD_*` variables describing the deployment.
    pub vars: Vec<(String, String)>,
}

impl TestEnv {
    pub async fn new(backend: Backend) -> TestEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut vars = vec![
            ("MSGD_DATA_DIR".to_string(), dir.path().join("data").display().to_string()),
            ("MSGD_OBSERVABILITY__LOGGING__FORMAT".into(), "json".into()),
            ("MSGD_HTTP__LISTEN".into(), "127.0.0.1:0".into()),
        ];
        if backend == Backend::Services {
            let services = services_env().expect("services env");
            let database = create_database(&services.postgres_url).await;
            let bucket = unique("t-");
            std::fs::create_dir_all(services.s3_root.join(&bucket)).expect("create bucket dir");
            vars.extend([
                ("MSGD_POSTGRES__URL".to_string(), database),
                ("MSGD_REDIS__URL".into(), services.redis_url.clone()),
                ("MSGD_REDIS__KEY_PREFIX".into(), unique("t")),
                ("MSGD_S3__ENDPOINT".into(), services.s3_endpoint.clone()),
                ("MSGD_S3__BUCKET".into(), bucket),
                ("MSGD_S3__ACCESS_KEY_ID".into(), services.s3_access_key_id.clone()),
                ("MSGD_S3__SECRET_ACCESS_KEY".into(), services.s3_secret_access_key.clone()),
            ]);
        }
        TestEnv { backend, dir, vars }
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.to_string()));
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The validated config, as msgd would load it.
    pub fn config(&self) -> msgd::config::Config {
        msgd::config::from_toml("", self.vars.clone()).expect("test config is valid")
    }

    /// `msgd <args>` with this deployment's environment and nothing inherited
    /// that starts with `MSGD_`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(MSGD);
        command.args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("MSGD_") {
                command.env_remove(name);
            }
        }
        command.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs a command to completion, feeding `stdin`.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        run_command(self.command(args), stdin)
    }

    /// Starts `msgd serve` and waits until it listens.
    pub fn serve(&self) -> Msgd {
        Msgd::start(self.command(&["serve"]), self.dir.path())
    }
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

pub fn run_command(mut command: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn msgd");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().expect("wait for msgd");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn create_database(admin_url: &str) -> String {
    let name = unique("t_");
    let pool = sqlx::PgPool::connect(admin_url).await.expect("connect to the test postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create test database");
    pool.close().await;
    let mut url = url::Url::parse(admin_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// A running `msgd serve`, killed on drop.
pub struct Msgd {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Msgd {
    /// Starts `msgd` with its stderr (the log) in a file under `dir`, without waiting for anything.
    pub fn spawn(mut command: Command, dir: &Path) -> Msgd {
        let log = dir.join(unique("msgd-")).with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let child = command.stdout(Stdio::null()).stderr(file).spawn().expect("spawn msgd");
        Msgd { child, addr: String::new(), log }
    }

    /// Starts `msgd serve` and waits until it listens.
    pub fn start(command: Command, dir: &Path) -> Msgd {
        let mut msgd = Msgd::spawn(command, dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = msgd
                .log_lines()
                .iter()
                .find_map(|line| (line["message"] == "listening").then(|| line["addr"].as_str().unwrap().to_string()))
            {
                msgd.addr = addr;
                return msgd;
            }
            if let Ok(Some(status)) = msgd.child.try_wait() {
                panic!("msgd serve exited with {status} before listening:\n{}", msgd.log_text());
            }
            assert!(Instant::now() < deadline, "msgd serve did not listen within 30 s:\n{}", msgd.log_text());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Msgd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
