//! `msgd config` and config loading through the real binary: exit codes,
//! named keys, env over file, redaction.

use crate::support::servers::PrivateRedis;
use crate::support::{run_command, services_test, ServicesEnv, MSGD};

fn msgd(args: &[&str], env: &[(&str, &str)]) -> crate::support::Output {
    let mut command = std::process::Command::new(MSGD);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("MSGD_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    run_command(command, "")
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("msgd.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

const SERVICES: &str = r#"
[postgres]
url = "postgres://msgd:pg-hunter2@db.internal:5432/msgd"
[redis]
url = "redis://:redis-hunter2@cache.internal:6379"
[s3]
endpoint = "http://minio.internal:9000"
bucket = "msgd-segments"
access_key_id = "msgd"
secret_access_key = "s3-hunter2"
"#;

#[test]
fn each_kind_of_bad_value_exits_2_naming_the_key() {
    // (what, environment, config file)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("unknown key in the file", &[], "[http]\nlistn = \"x\"\n"),
        ("unknown key from env", &[("MSGD_RETENTION__DAYZ", "3")], ""),
        ("not a number", &[("MSGD_RETENTION__BATCH", "thirty")], ""),
        ("zero", &[], "[retention]\nbatch = 0\n"),
        ("bad listen address", &[("MSGD_HTTP__LISTEN", "localhost")], ""),
        ("bad duration", &[("MSGD_HTTP__SHUTDOWN_TIMEOUT", "soon")], ""),
        ("bad log format", &[("MSGD_OBSERVABILITY__LOGGING__FORMAT", "xml")], ""),
        ("wrong type", &[], "[retention]\nbatch = \"x\"\n"),
        ("malformed postgres url", &[("MSGD_POSTGRES__URL", "postgres//nohost")], SERVICES),
        ("wrong scheme", &[("MSGD_REDIS__URL", "http://cache:6379")], SERVICES),
        ("malformed s3 endpoint", &[("MSGD_S3__ENDPOINT", "minio:9000")], SERVICES),
        ("bad bucket name", &[("MSGD_S3__BUCKET", "Bad_Bucket")], SERVICES),
        ("hash tag in the redis prefix", &[("MSGD_REDIS__KEY_PREFIX", "a{b}")], SERVICES),
    ];
    let expected_keys = [
        "http.listn",
        "retention.dayz",
        "retention.batch",
        "retention.batch",
        "http.listen",
        "http.shutdown_timeout",
        "observability.logging.format",
        "retention.batch",
        "postgres.url",
        "redis.url",
        "s3.endpoint",
        "s3.bucket",
        "redis.key_prefix",
    ];
    for ((name, env, file), key) in cases.iter().zip(expected_keys) {
        let (_dir, path) = write_config(file);
        let out = msgd(&["--config", &path, "config", "--check"], env);
        assert_eq!(out.code, 2, "{name}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("`{key}`")), "{name}: error does not name {key}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
        // The same error stops every other subcommand before it starts.
        let out = msgd(&["--config", &path, "keys", "list"], env);
        assert_eq!(out.code, 2, "{name}: keys list: {}", out.stderr);
    }
}

#[test]
fn the_json_check_names_key_value_and_reason() {
    let out = msgd(&["config", "--check", "--json"], &[("MSGD_HTTP__LISTEN", "nope")]);
    assert_eq!(out.code, 2);
    let error = &out.json()["error"];
    assert_eq!(error["key"], "http.listen");
    assert_eq!(error["value"], "nope");
    assert_eq!(error["env_var"], "MSGD_HTTP__LISTEN");
    assert!(error["reason"].as_str().unwrap().contains("socket address"));
}

#[test]
fn env_overrides_the_file() {
    let (_dir, path) = write_config("[retention]\nperiod = \"7d\"\n[http]\nlisten = \"127.0.0.1:9000\"\n");
    let out = msgd(&["--config", &path, "config", "--json"], &[("MSGD_RETENTION__PERIOD", "14d")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let config = out.json();
    assert_eq!(config["retention"]["period"], "14days");
    assert_eq!(config["http"]["listen"], "127.0.0.1:9000");
    assert_eq!(config["mode"], "embedded");
    // MSGD_CONFIG names the file too.
    let out = msgd(&["config", "--json"], &[("MSGD_CONFIG", &path)]);
    assert_eq!(out.json()["retention"]["period"], "7days");
}

#[test]
fn a_partial_services_set_is_refused() {
    for env in [
        vec![("MSGD_POSTGRES__URL", "postgres://h/db")],
        vec![("MSGD_POSTGRES__URL", "postgres://h/db"), ("MSGD_REDIS__URL", "redis://h")],
        vec![("MSGD_S3__BUCKET", "b-1")],
    ] {
        let out = msgd(&["config", "--check"], &env);
        assert_eq!(out.code, 2, "{env:?}: {}", out.stderr);
        assert!(out.stderr.contains("services mode needs postgres, redis and s3 together"), "{}", out.stderr);
    }
    let (_dir, path) = write_config(SERVICES);
    let out = msgd(&["--config", &path, "config", "--check"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("services mode"));
}

#[test]
fn secrets_are_never_printed() {
    let (_dir, path) = write_config(SERVICES);
    for args in [vec!["config"], vec!["config", "--json"]] {
        let mut full = vec!["--config", path.as_str()];
        full.extend(args);
        let out = msgd(&full, &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        for secret in ["pg-hunter2", "redis-hunter2", "s3-hunter2"] {
            assert!(!out.stdout.contains(secret), "{secret} printed:\n{}", out.stdout);
        }
        assert!(out.stdout.contains("<redacted>"));
        assert!(out.stdout.contains("db.internal"), "non-secret parts stay visible");
    }
    // Nor in errors about them.
    let bad = SERVICES.replace("\"s3-hunter2\"", "12345");
    let (_dir, path) = write_config(&bad);
    let out = msgd(&["--config", &path, "config"], &[]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("s3.secret_access_key") && !out.stderr.contains("12345"), "{}", out.stderr);
    let out = msgd(
        &["config"],
        &[
            ("MSGD_POSTGRES__URL", "mysql://u:pg-hunter2@h/db"),
            ("MSGD_REDIS__URL", "redis://h"),
            ("MSGD_S3__BUCKET", "b-1"),
            ("MSGD_S3__ACCESS_KEY_ID", "a"),
            ("MSGD_S3__SECRET_ACCESS_KEY", "s"),
        ],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("postgres.url") && !out.stderr.contains("pg-hunter2"), "{}", out.stderr);
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = msgd(&["--config", "/nonexistent/msgd.toml", "config"], &[]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/msgd.toml"), "{}", out.stderr);
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(msgd(&["no-such-command"], &[]).code, 2);
    assert_eq!(msgd(&["keys", "create", "--app", "x", "--scope", "root"], &[]).code, 2);
}

#[test]
fn secrets_outside_url_userinfo_are_never_printed() {
    let services = r#"
[postgres]
url = "postgres://db.internal:5432/msgd?user=msgd&password=pg-hunter2&sslpassword=ssl-hunter2"
[redis]
url = "redis://cache.internal:6379/?token=redis-hunter2"
[s3]
endpoint = "http://s3user:s3-hunter2@minio.internal:9000"
bucket = "msgd-segments"
access_key_id = "msgd"
secret_access_key = "key-hunter2"
[auth.keycloak]
issuer = "https://kc:kc-hunter2@sso.internal/realms/acme"
audiences = ["account"]
"#;
    let (_dir, path) = write_config(services);
    for args in [vec!["config"], vec!["config", "--json"]] {
        let mut full = vec!["--config", path.as_str()];
        full.extend(args);
        let out = msgd(&full, &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(!out.stdout.contains("hunter2"), "a secret printed:\n{}", out.stdout);
        for visible in ["db.internal", "user=msgd", "minio.internal:9000", "sso.internal/realms/acme"] {
            assert!(out.stdout.contains(visible), "{visible} hidden:\n{}", out.stdout);
        }
    }
    // Errors about those keys show the same redacted values.
    for (var, value, key) in [
        ("MSGD_POSTGRES__URL", "mysql://db/msgd?password=pg-hunter2", "postgres.url"),
        ("MSGD_S3__ENDPOINT", "ftp://s3user:s3-hunter2@minio.internal", "s3.endpoint"),
        ("MSGD_AUTH__KEYCLOAK__ISSUER", "ftp://kc-hunter2@sso.internal/realms/acme", "auth.keycloak.issuer"),
    ] {
        for json in [false, true] {
            let args: &[&str] = if json {
                &["--config", &path, "config", "--check", "--json"]
            } else {
                &["--config", &path, "config", "--check"]
            };
            let out = msgd(args, &[(var, value)]);
            assert_eq!(out.code, 2, "{var}: {}", out.stderr);
            assert!(out.stderr.contains(key) || out.stdout.contains(key), "{var}: {}{}", out.stdout, out.stderr);
            assert!(
                !out.stderr.contains("hunter2") && !out.stdout.contains("hunter2"),
                "{var}: {}{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

#[test]
fn an_unknown_section_is_named_never_echoed() {
    // A section a newer release knows (and an older binary does not), holding credentials.
    let (_dir, path) = write_config(
        "[backup]\nurl = \"s3://AKIAEXAMPLE:backup-hunter2@bucket\"\npassphrase = \"backup-hunter2\"\nschedule = \"daily\"\n",
    );
    for args in [vec!["config", "--check"], vec!["config", "--check", "--json"]] {
        let mut full = vec!["--config", path.as_str()];
        full.extend(args);
        let out = msgd(&full, &[]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        let shown = format!("{}{}", out.stdout, out.stderr);
        assert!(shown.contains("backup"), "the section is named: {shown}");
        for content in ["hunter2", "AKIAEXAMPLE", "daily"] {
            assert!(!shown.contains(content), "{content} echoed: {shown}");
        }
    }
    // So is an unknown key in a known section, from the file or the environment.
    let (_dir, path) = write_config("[http]\nlisten_secret_thing = \"file-hunter2\"\n");
    let out =
        msgd(&["--config", &path, "config", "--check"], &[("MSGD_OBSERVABILITY__SINK", "https://u:env-hunter2@logs")]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("`http.listen_secret_thing`") && !out.stderr.contains("hunter2"), "{}", out.stderr);
    let out = msgd(&["config", "--check"], &[("MSGD_OBSERVABILITY__SINK", "https://u:env-hunter2@logs")]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("`observability.sink`") && !out.stderr.contains("hunter2"), "{}", out.stderr);
}

#[test]
fn services_sh_env_prints_a_deployment_on_the_servers_it_starts() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let mut command = std::process::Command::new("bash");
    command.args([script, "env"]);
    let out = run_command(command, "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let vars: Vec<(String, String)> = out
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let var = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    for name in ["MSGD_POSTGRES__URL", "MSGD_REDIS__URL", "MSGD_S3__ENDPOINT", "MSGD_S3__BUCKET"] {
        assert!(var(name).is_some(), "{name} missing from:\n{}", out.stdout);
    }
    assert!(vars.iter().all(|(k, _)| k.starts_with("MSGD_")), "{}", out.stdout);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let mut env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("MSGD_DATA_DIR", &data));
    let out = msgd(&["config", "--check"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The same servers, ports and credentials as the ones `up` started for the tests.
    if let Some(services) = crate::support::services_env() {
        assert_eq!(var("MSGD_REDIS__URL"), Some(services.redis_url.as_str()));
        assert_eq!(var("MSGD_S3__ENDPOINT"), Some(services.s3_endpoint.as_str()));
        assert_eq!(var("MSGD_S3__ACCESS_KEY_ID"), Some(services.s3_access_key_id.as_str()));
        assert_eq!(var("MSGD_S3__SECRET_ACCESS_KEY"), Some(services.s3_secret_access_key.as_str()));
        let ours = url::Url::parse(var("MSGD_POSTGRES__URL").unwrap()).unwrap();
        let theirs = url::Url::parse(&services.postgres_url).unwrap();
        assert_eq!(
            (ours.host_str(), ours.port(), ours.username()),
            (theirs.host_str(), theirs.port(), theirs.username())
        );
    }
}

/// load/vps.toml is a config msgd accepts (secrets from the environment, as
/// its header says) and sets what runbooks/tuning.md says it sets.
#[test]
fn the_vps_profile_checks_and_sets_the_budgeted_values() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/load/vps.toml");
    let secrets = [
        ("MSGD_POSTGRES__URL", "postgres://msgd:pg-hunter2@127.0.0.1:5432/msgd"),
        ("MSGD_S3__SECRET_ACCESS_KEY", "s3-hunter2"),
    ];
    let out = msgd(&["--config", path, "config", "--check"], &secrets);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("services mode"), "{}", out.stdout);
    let missing = msgd(&["--config", path, "config", "--check"], &[]);
    assert_eq!(missing.code, 2, "the secrets are not in the file");

    let config = msgd(&["--config", path, "config", "--json"], &secrets).json();
    assert_eq!(config["flush"]["hot_window"], 4);
    assert_eq!(config["flush"]["max_age"], "15m");
    assert_eq!(config["limits"]["idempotency_ttl"], "1day");
    assert_eq!(config["redis"]["idempotency_filter_bytes"], 16 << 20);
    assert_eq!(config["history"]["block_cache_bytes"], 32 << 20);
    assert_eq!(
        (config["ws"]["max_per_ip"].as_u64(), config["http"]["max_connections"].as_u64()),
        (Some(0), Some(4096))
    );
    assert!(!config.to_string().contains("hunter2"), "secrets redacted");
}

services_test! {
    #[tokio::test]
    async fn the_vps_redis_and_postgres_files_are_accepted_by_the_real_servers(services: ServicesEnv) {
        let dir = tempfile::tempdir().unwrap();
        let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/load/vps-redis.conf");
        let redis = PrivateRedis::start_with_config(&services.redis_server, conf.as_ref(), dir.path());
        let client = redis::Client::open(redis.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.expect("redis-server starts from the file");
        let setting = |name: &'static str| {
            let mut connection = connection.clone();
            async move {
                let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut connection).await.unwrap();
                pair[1].clone()
            }
        };
        assert_eq!(setting("maxmemory").await, (256u64 << 20).to_string());
        assert_eq!(setting("maxmemory-policy").await, "noeviction", "msgd's keys are never evicted");
        assert_eq!(setting("appendonly").await, "yes");
        assert_eq!(setting("appendfsync").await, "everysec");
        assert_eq!(setting("stream-node-max-bytes").await, "2048");
        // load/redis-memory.sh (what tuning.md measures with) counts keys and bytes per family.
        let _: () = redis::pipe()
            .cmd("XADD").arg("msgd:{s1}:log:app_a:c1").arg("1-0").arg("body").arg("x".repeat(400))
            .cmd("XADD").arg("msgd:{s1}:log:app_a:c1").arg("2-0").arg("body").arg("y".repeat(400))
            .cmd("SET").arg("msgd:{s1}:idem:app_a:c1:user:5:alice:k \"1\"").arg("1:ab").arg("PX").arg(60_000)
            .cmd("SET").arg("msgd:{s1}:seq:app_a:c1").arg(2)
            .cmd("SET").arg("other:{s1}:seq:app_a:c1").arg(2)
            .query_async(&mut connection)
            .await
            .unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/load/redis-memory.sh");
        let out = std::process::Command::new(script)
            .args(["-u", &redis.url(), "msgd"])
            .output()
            .expect("run load/redis-memory.sh");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report} {}", String::from_utf8_lossy(&out.stderr));
        let family = |name: &str| {
            let line = report.lines().find(|line| line.split_whitespace().next() == Some(name));
            let fields: Vec<u64> = line.unwrap_or_default().split_whitespace().skip(1).map(|n| n.parse().unwrap_or(0)).collect();
            (fields.first().copied(), fields.get(1).copied())
        };
        assert_eq!(family("log").0, Some(1), "{report}");
        assert!(family("log").1.unwrap() > 800, "{report}");
        assert_eq!((family("idem").0, family("seq").0, family("total").0), (Some(1), Some(1), Some(3)), "{report}");
        drop(redis);

        // postgres -C parses the whole file and refuses an unknown setting (exit 1).
        let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/load/vps-postgresql.conf");
        let check = |conf: &str, name: &str| {
            let data = tempfile::tempdir().unwrap();
            let postgres = services.pg_bin.join("postgres");
            let args = ["-D", &data.path().display().to_string(), "-c", &format!("config_file={conf}"), "-C", name];
            // Postgres will not run as root: as the postgres user, as PrivatePostgres does.
            std::process::Command::new("chown").arg("postgres").arg(data.path()).status().unwrap();
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&postgres).args(args);
            let out = command.output().expect("run postgres -C");
            (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        assert_eq!(check(conf, "shared_buffers"), (true, "65536".to_string()), "512MB in 8 kB pages");
        assert_eq!(check(conf, "max_connections"), (true, "30".to_string()));
        let bad = dir.path().join("bad.conf");
        std::fs::write(&bad, std::fs::read_to_string(conf).unwrap() + "shared_bufers = 1GB\n").unwrap();
        let readable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(dir.path(), readable).unwrap();
        assert!(!check(&bad.display().to_string(), "shared_buffers").0, "a misspelt setting is refused");
    }
}

/// `msgd config | head -1`: a reader that leaves early ends the command
/// quietly (SIGPIPE), not with a panic.
#[test]
fn a_reader_that_leaves_early_ends_the_command_quietly() {
    // The reader is gone before msgd starts: dropping it after the spawn
    // raced msgd, which could fill the pipe's buffer first and exit 0.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut command = std::process::Command::new(MSGD);
    command.args(["config", "--json"]).env_remove("MSGD_CONFIG");
    command.stdout(writer).stderr(std::process::Stdio::piped());
    let out = command.spawn().unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(libc::SIGPIPE), "{stderr}");
}
