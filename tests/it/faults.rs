//! The fault suite: msgd under live load — HTTP and WebSocket senders that
//! retry under their `client_msg_id`, receivers that reconnect with
//! `since_seq` (support::workload) — while one fault at a time hits a real
//! process. After each: every acknowledged message is in history once, at
//! its seq, with no gap; every receiver saw each once, in order; the
//! consistency check finds nothing lost; and service came back by itself
//! within 10 s of the dependency's return. ARCHITECTURE.md ("Faults")
//! tabulates the scenarios and runbooks/faults.md says what to do.

use std::time::Duration;

use crate::support::api::Api;
use crate::support::servers::{PrivatePostgres, PrivateRedis, PrivateS3};
use crate::support::workload::Workload;
use crate::support::{backend_test, eventually, free_port, sample, scrape, services_test, Backend, ServicesEnv};

/// Service must resume within this long of a dependency's return.
const RESUME: Duration = Duration::from_secs(10);

/// Flushes every second, at a few KiB or 2 s: flushes run all the time under the load.
const FAST_FLUSH: [(&str, &str); 4] = [
    ("MSGD_FLUSH__INTERVAL", "1s"),
    ("MSGD_FLUSH__MAX_BYTES", "4096"),
    ("MSGD_FLUSH__MAX_AGE", "2s"),
    ("MSGD_FLUSH__HOT_WINDOW", "5"),
];

/// msgd on a fixed port (a restart comes back at the same address) with the
/// load running: 2 HTTP senders, 2 WebSocket senders, 2 receivers.
async fn loaded(backend: Backend, vars: &[(&str, &str)]) -> (Api, Workload) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec![("MSGD_HTTP__LISTEN", listen.as_str())];
    all.extend(FAST_FLUSH);
    all.extend(vars);
    let api = Api::start_with(backend, &all).await;
    let workload = Workload::start(&api, vec![api.msgd.addr.clone()], 2, 2, 2).await;
    assert!(workload.next_acks(50, Duration::from_secs(30)).await.is_some(), "the load runs:\n{}", api.msgd.log_text());
    (api, workload)
}

/// Checks the load's messages and the stores; returns how many messages there were.
async fn verified(api: &Api, workload: Workload) -> u64 {
    let conversation = workload.conversation().to_string();
    let messages = workload.verify(api, &api.msgd).await;
    // Every message reaches a segment (max_age is 2 s), then the check finds nothing lost.
    let stores = api.stores().await;
    let conv = api.conv_key(&conversation);
    let flushed =
        eventually(Duration::from_secs(60), async || stores.metadata.flushed_seq(&conv).await.unwrap() == messages)
            .await;
    assert!(flushed, "not every message reached a segment:\n{}", api.msgd.log_text());
    let check = api.env.run(&["flush", "--check", "--json"], "");
    assert_eq!(check.code, 0, "the check finds nothing lost: {}{}", check.stdout, check.stderr);
    eprintln!("faults: {messages} messages, each acknowledged, stored and received once");
    messages
}

/// Waits for `/readyz` and `msgd_dependency_up` to show `dependency` down.
async fn outage_shows(api: &Api, dependency: &str) {
    let gauge = format!("msgd_dependency_up{{dependency=\"{dependency}\"}}");
    let shown = eventually(Duration::from_secs(15), async || {
        let ready = reqwest::get(api.msgd.url("/readyz")).await.unwrap();
        let status = ready.status().as_u16();
        let body: serde_json::Value = ready.json().await.unwrap_or_default();
        status == 503 && body["dependencies"][dependency]["ok"] == false && {
            sample(&scrape(&api.msgd).await, &gauge) == Some(0.0)
        }
    })
    .await;
    assert!(shown, "/readyz and {gauge} never showed the outage:\n{}", api.msgd.log_text());
}

/// Asserts messages are acknowledged again, and `/readyz` is 200, within [`RESUME`].
async fn resumes(api: &Api, workload: &Workload, what: &str) {
    let acked = workload.next_acks(5, RESUME).await;
    assert!(acked.is_some(), "no message acknowledged within {RESUME:?} of {what}:\n{}", api.msgd.log_text());
    eprintln!("faults: acknowledging again {:?} after {what}", acked.unwrap());
    let ready = eventually(RESUME, async || reqwest::get(api.msgd.url("/readyz")).await.unwrap().status() == 200).await;
    assert!(ready, "not ready within {RESUME:?} of {what}");
}

/// Takes `dependency` down for `down_for` under the load, checking the outage
/// shows, then brings it back and checks service resumes and the load runs on.
async fn ride_out(
    api: &Api,
    workload: &Workload,
    dependency: &str,
    down_for: Duration,
    stop: impl FnOnce(),
    resume: impl FnOnce(),
) {
    stop();
    outage_shows(api, dependency).await;
    tokio::time::sleep(down_for).await;
    resume();
    resumes(api, workload, &format!("{dependency}'s return")).await;
    workload.next_acks(100, Duration::from_secs(30)).await.expect("the load runs on");
}

backend_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_under_load_loses_nothing_acknowledged(backend: Backend) {
        let (mut api, workload) = loaded(backend, &[]).await;
        // Inside a flush: stopped between a segment's PUT and its index commit, then killed.
        api.env.set("MSGD_FLUSH__FAILPOINT", "after-put");
        kill_and_restart(&mut api);
        let stuck = eventually(Duration::from_secs(30), async || {
            api.msgd.log_lines().iter().any(|l| l["failpoint"] == "after-put")
        })
        .await;
        assert!(stuck, "{}", api.msgd.log_text());
        api.env.vars.retain(|(name, _)| name != "MSGD_FLUSH__FAILPOINT");
        kill_and_restart(&mut api);
        resumes(&api, &workload, "the restart after a kill inside a flush").await;
        // And at points the load picks: after 20 to 140 more acknowledgements.
        for round in 0..4u64 {
            workload.next_acks(20 + 40 * round, Duration::from_secs(30)).await.expect("the load runs");
            kill_and_restart(&mut api);
            resumes(&api, &workload, "a restart after SIGKILL").await;
        }
        let messages = verified(&api, workload).await;
        assert!(messages >= 250, "{messages}");
    }
}

fn kill_and_restart(api: &mut Api) {
    api.msgd.signal("KILL");
    assert!(api.msgd.wait_exit(Duration::from_secs(5)).is_some(), "SIGKILL ends msgd");
    api.msgd = api.env.serve();
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_restart_with_aof_loses_nothing(services: ServicesEnv) {
        let dir = tempfile::tempdir().unwrap();
        let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/load/vps-redis.conf");
        let redis = PrivateRedis::start_with_config(&services.redis_server, conf.as_ref(), dir.path());
        let (api, workload) = loaded(Backend::Services, &[("MSGD_REDIS__URL", &redis.url())]).await;
        let redis = std::cell::RefCell::new(redis);
        let (down, up) = (|| redis.borrow_mut().shut_down(), || redis.borrow_mut().resume());
        ride_out(&api, &workload, "redis", Duration::from_secs(3), down, up).await;
        verified(&api, workload).await;
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_restart_without_persistence_loses_only_unflushed_messages(services: ServicesEnv) {
        // Redis without AOF or snapshots: a restart comes back empty.
        let mut redis = PrivateRedis::start(&services.redis_server);
        let (api, mut workload) = loaded(Backend::Services, &[("MSGD_REDIS__URL", &redis.url())]).await;
        let (stores, conv) = (api.stores().await, api.conv_key(workload.conversation()));
        let flushing =
            eventually(Duration::from_secs(30), async || stores.metadata.flushed_seq(&conv).await.unwrap() > 0).await;
        assert!(flushing, "{}", api.msgd.log_text());
        workload.next_acks(100, Duration::from_secs(30)).await.expect("the load runs");
        redis.stop();
        outage_shows(&api, "redis").await;
        // No flush can start without Redis; one already past its tail read ends meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let durable = stores.metadata.flushed_seq(&conv).await.unwrap();
        let before = workload.acked();
        redis.resume();
        resumes(&api, &workload, "an empty Redis' return").await;
        workload.next_acks(100, Duration::from_secs(30)).await.expect("the load runs on");
        workload.stop_senders().await;
        let history = workload.history(&api, &api.msgd).await;

        let seqs: Vec<u64> = history.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "history stays gap-free");
        let at: std::collections::HashMap<&str, u64> = history.iter().map(|(seq, id)| (id.as_str(), *seq)).collect();
        let lost: Vec<(&String, &u64)> = before.iter().filter(|(id, seq)| at.get(id.as_str()) != Some(*seq)).collect();
        // Only messages above the durable (flushed) seq were lost: every one at or below it is
        // still at its seq, so no later message was given a seq the segments hold.
        assert!(lost.iter().all(|(_, seq)| **seq > durable), "a flushed message was lost: {lost:?} (durable {durable})");
        let unflushed = before.values().filter(|seq| **seq > durable).count();
        assert_eq!(lost.len(), unflushed, "exactly the unflushed messages were lost");
        eprintln!(
            "faults: Redis came back empty with {durable} of {} acknowledged messages in segments: the other \
             {unflushed} were lost, and their seqs given to new messages",
            before.len()
        );
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_object_store_down_for_a_minute_delays_only_flushes(services: ServicesEnv) {
        let mut s3 = PrivateS3::start(&services, "faults");
        let endpoint = s3.endpoint();
        let vars = [("MSGD_S3__ENDPOINT", endpoint.as_str()), ("MSGD_S3__BUCKET", "faults")];
        let (api, workload) = loaded(Backend::Services, &vars).await;
        s3.stop();
        outage_shows(&api, "s3").await;
        // Sends go on: the object store is not on the write path.
        for _ in 0..6 {
            let acked = workload.next_acks(20, Duration::from_secs(10)).await;
            assert!(acked.is_some(), "sends stalled while S3 is down:\n{}", api.msgd.log_text());
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let failed = |scrape: &str| sample(scrape, r#"msgd_worker_steps_total{result="error",worker="segment-flush"}"#);
        assert!(failed(&scrape(&api.msgd).await) >= Some(1.0), "the flush failed while S3 was down");
        let returned = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        s3.resume();
        resumes(&api, &workload, "S3's return").await;
        // The flush resumes: out of its backoff at the recovery, not a minute later.
        let flushed = eventually(RESUME, async || {
            let scrape = scrape(&api.msgd).await;
            let last = sample(&scrape, r#"msgd_worker_last_success_timestamp_seconds{worker="segment-flush"}"#);
            last.is_some_and(|at| at > returned)
        })
        .await;
        assert!(flushed, "no flush within {RESUME:?} of S3's return:\n{}", api.msgd.log_text());
        verified(&api, workload).await;
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_down_for_30_seconds_loses_nothing(services: ServicesEnv) {
        let postgres = PrivatePostgres::start(&services.pg_bin);
        let (api, workload) = loaded(Backend::Services, &[("MSGD_POSTGRES__URL", &postgres.url())]).await;
        ride_out(&api, &workload, "postgres", Duration::from_secs(30), || postgres.stop(), || postgres.resume()).await;
        verified(&api, workload).await;
    }
}

services_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killing_one_of_two_instances_moves_clients_to_the_other(_services: ServicesEnv) {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut vars = vec![("MSGD_HTTP__LISTEN", listen.as_str())];
        vars.extend(FAST_FLUSH);
        let mut api = Api::start_with(Backend::Services, &vars).await;
        api.env.set("MSGD_HTTP__LISTEN", "127.0.0.1:0");
        let survivor = api.env.serve();
        // Clients start spread over both and move on when theirs fails.
        let workload = Workload::start(&api, vec![api.msgd.addr.clone(), survivor.addr.clone()], 2, 2, 2).await;
        workload.next_acks(100, Duration::from_secs(30)).await.expect("the load runs");
        let (stores, conv) = (api.stores().await, api.conv_key(workload.conversation()));
        let flushed_at_kill = stores.metadata.flushed_seq(&conv).await.unwrap();
        api.msgd.signal("KILL");
        assert!(api.msgd.wait_exit(Duration::from_secs(5)).is_some());
        let moved = workload.next_acks(200, Duration::from_secs(30)).await;
        assert!(moved.is_some(), "the survivor took the load:\n{}", survivor.log_text());
        // The survivor takes over the flush once the dead instance's lease expires.
        let flushed = eventually(Duration::from_secs(60), async || {
            stores.metadata.flushed_seq(&conv).await.unwrap() > flushed_at_kill
        })
        .await;
        assert!(flushed, "the survivor never flushed:\n{}", survivor.log_text());
        workload.verify(&api, &survivor).await;
        let check = api.env.run(&["flush", "--check", "--json"], "");
        assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    }
}
