//! What the benches share: knobs from the environment, and a fresh
//! deployment per run — a temp data dir (embedded), or a new Postgres
//! database, Redis key prefix and bucket directory on the servers of
//! scripts/services.sh (services), dropped by `cleanup`. Each bench uses a
//! part of it.
#![allow(dead_code)]

use msgd::config::Config;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// The shared services (scripts/services.sh), from the `MSGDTEST_*` variables.
pub struct Services {
    pub postgres_url: String,
    pub redis_url: String,
    pub s3_endpoint: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    pub s3_root: std::path::PathBuf,
}

pub fn services_env() -> Option<Services> {
    let var = |name: &str| std::env::var(format!("MSGDTEST_{name}")).ok();
    Some(Services {
        postgres_url: var("POSTGRES_URL")?,
        redis_url: var("REDIS_URL")?,
        s3_endpoint: var("S3_ENDPOINT")?,
        s3_access_key_id: var("S3_ACCESS_KEY_ID")?,
        s3_secret_access_key: var("S3_SECRET_ACCESS_KEY")?,
        s3_root: var("S3_ROOT")?.into(),
    })
}

/// One deployment under test and what to clean up after it.
pub struct Deployment {
    pub name: &'static str,
    pub vars: Vec<(String, String)>,
    _dir: tempfile::TempDir,
    /// Services: (admin URL, database name, bucket dir).
    services: Option<(String, String, std::path::PathBuf)>,
}

impl Deployment {
    pub async fn embedded() -> Deployment {
        let dir = tempfile::tempdir().expect("temp dir");
        let vars = vec![("MSGD_DATA_DIR".to_string(), dir.path().join("data").display().to_string())];
        Deployment { name: "embedded", vars, _dir: dir, services: None }
    }

    pub async fn services(services: &Services) -> Deployment {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = unique("bench_");
        let admin = sqlx::PgPool::connect(&services.postgres_url).await.expect("connect to postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .expect("create the bench database");
        admin.close().await;
        let mut url = url::Url::parse(&services.postgres_url).expect("postgres url");
        url.set_path(&database);
        let bucket = unique("bench-");
        let bucket_dir = services.s3_root.join(&bucket);
        std::fs::create_dir_all(&bucket_dir).expect("create the bucket dir");
        let vars = vec![
            ("MSGD_DATA_DIR".to_string(), dir.path().join("data").display().to_string()),
            ("MSGD_POSTGRES__URL".into(), url.to_string()),
            ("MSGD_REDIS__URL".into(), services.redis_url.clone()),
            ("MSGD_REDIS__KEY_PREFIX".into(), unique("bench")),
            ("MSGD_S3__ENDPOINT".into(), services.s3_endpoint.clone()),
            ("MSGD_S3__BUCKET".into(), bucket),
            ("MSGD_S3__ACCESS_KEY_ID".into(), services.s3_access_key_id.clone()),
            ("MSGD_S3__SECRET_ACCESS_KEY".into(), services.s3_secret_access_key.clone()),
        ];
        Deployment {
            name: "services",
            vars,
            _dir: dir,
            services: Some((services.postgres_url.clone(), database, bucket_dir)),
        }
    }

    /// The deployment's config with `extra` variables on top.
    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        let mut vars = self.vars.clone();
        vars.extend(extra.iter().map(|(name, value)| (name.to_string(), value.to_string())));
        msgd::config::from_toml("", vars).expect("bench config is valid")
    }

    pub async fn cleanup(self) {
        if let Some((admin_url, database, bucket_dir)) = &self.services {
            let admin = sqlx::PgPool::connect(admin_url).await.expect("connect to postgres");
            let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await {
                eprintln!("note: could not drop the bench database {database}: {e}");
            }
            admin.close().await;
            let _ = std::fs::remove_dir_all(bucket_dir);
        }
    }
}

const WORDS: &[&str] = &[
    "the", "meeting", "moved", "to", "tomorrow", "at", "ten", "can", "you", "send", "me", "draft", "thanks", "ok",
    "sounds", "good", "see", "later", "lunch", "?", "I", "think", "we", "should", "ship", "it", "review", "please",
    "done", "on", "my", "way", "call", "now", "budget", "numbers", "look", "fine", "great", "news", "!", "sure",
];

/// xorshift64*: deterministic and fast.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed-load message envelope as JSON: ~150–250 bytes of text from a small vocabulary.
pub fn envelope(rng: &mut Rng, conversation: &str, seq: u64, ts: i64, users: u64) -> Vec<u8> {
    let mut text = String::new();
    while text.len() < 150 + rng.below(100) as usize {
        text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    format!(
        r#"{{"v":1,"id":"01a2{:04x}-{:04x}-7{:03x}-8{:03x}-{:012x}","conversation_id":"{conversation}","seq":{seq},"ts":{ts},"sender":{{"kind":"user","id":"user-{}"}},"payload":{{"text":"{}"}},"attachments":[],"client_msg_id":"c-{:x}"}}"#,
        rng.below(0xffff), rng.below(0xffff), rng.below(0xfff), rng.below(0xfff), rng.next() & 0xffff_ffff_ffff,
        rng.below(users), text.trim_end(), rng.next()
    )
    .into_bytes()
}
