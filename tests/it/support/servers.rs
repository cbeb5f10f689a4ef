//! Servers private to one test — Redis, Postgres, an S3 store — so a test can
//! stop and restart a dependency under a running msgd without disturbing the
//! shared services other tests use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, ServicesEnv};

/// A Redis server private to one test, so it can be stopped and started.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    binary: PathBuf,
    /// A config file and the directory for its persistence files, when started from one.
    config: Option<(PathBuf, PathBuf)>,
}

impl PrivateRedis {
    /// Without persistence.
    pub fn start(binary: &Path) -> PrivateRedis {
        let mut redis = PrivateRedis { port: free_port(), child: None, binary: binary.to_path_buf(), config: None };
        redis.resume();
        redis
    }

    /// From a config file (its port and directory replaced).
    pub fn start_with_config(binary: &Path, config: &Path, dir: &Path) -> PrivateRedis {
        let config = Some((config.to_path_buf(), dir.to_path_buf()));
        let mut redis = PrivateRedis { port: free_port(), child: None, binary: binary.to_path_buf(), config };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Stops the way an operator's restart does: SIGTERM, so Redis writes
    /// its append-only file out before it exits.
    pub fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
            child.wait().expect("redis-server exits");
        }
    }

    pub fn resume(&mut self) {
        let mut command = Command::new(&self.binary);
        match &self.config {
            Some((config, dir)) => command.arg(config).arg("--dir").arg(dir),
            None => command.args(["--save", "", "--appendonly", "no"]),
        };
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_port(self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Postgres cluster private to one test (runs as the `postgres` user).
pub struct PrivatePostgres {
    pub port: u16,
    root: tempfile::TempDir,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start(bin: &Path) -> PrivatePostgres {
        let root = tempfile::tempdir().unwrap();
        Command::new("chown").args(["postgres:postgres"]).arg(root.path()).status().unwrap();
        let data = root.path().join("data");
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let pg = PrivatePostgres { port: free_port(), root, bin: bin.to_path_buf() };
        pg.resume();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.root.path().join("data"))
            .arg("-l")
            .arg(self.root.path().join("log"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }

    pub fn resume(&self) {
        let options = format!("-c listen_addresses=127.0.0.1 -p {} -k {}", self.port, self.root.path().display());
        self.pg_ctl(&["-w", "-o", &options, "start"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.root.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An S3 server (s3s-fs) private to one test, so it can be stopped and started.
pub struct PrivateS3 {
    pub port: u16,
    pub root: tempfile::TempDir,
    child: Option<Child>,
    binary: PathBuf,
    access_key: String,
    secret_key: String,
}

impl PrivateS3 {
    pub fn start(services: &ServicesEnv, bucket: &str) -> PrivateS3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let mut s3 = PrivateS3 {
            port: free_port(),
            root,
            child: None,
            binary: services.s3s_fs.clone(),
            access_key: services.s3_access_key_id.clone(),
            secret_key: services.s3_secret_access_key.clone(),
        };
        s3.resume();
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    pub fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key, "--secret-key", &self.secret_key])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        wait_for_port(self.port);
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills and reaps a test-owned server process, if it runs.
fn stop_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
