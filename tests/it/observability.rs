//! Observability as an operator meets it: the metrics catalogue
//! (`dashboards/METRICS.md`) against a live scrape on both backends, the
//! dashboards and alert rules against the catalogue, every alert documented
//! and proven to fire by `promtool test rules`, and a real Prometheus that
//! scrapes a real msgd, loads the alert rules and answers every dashboard query.
//!
//! `promtool` and `prometheus` come from `MSGDTEST_PROMTOOL` and
//! `MSGDTEST_PROMETHEUS` (exported by `scripts/services.sh`), else from the
//! `PATH`. When one is missing the checks that need it are skipped with a note
//! — unless `MSGDTEST_REQUIRE_SERVICES=1`, where its absence fails the test.
//!
//! The crate has no YAML parser, so the rules and their tests are read by
//! indentation ([`entries`], [`items`], [`scalar`]): the subset those files use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::support::api::{create_app, create_key, Api};
use crate::support::wsclient::Client;
use crate::support::{
    backend_test, eventually, free_port, sample, scrape, services_test, skip_unless_required, unique, Backend,
    ServicesEnv, TestEnv,
};

/// The repository root: the dashboards, alerts and runbooks live there.
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

const CATALOGUE: &str = "dashboards/METRICS.md";
const RULES: &str = "alerts/msgd.rules.yml";
const RULE_TESTS: &str = "alerts/tests";

/// The flush ticker every second, with no hot window and no minimum age, so
/// the messages a test sends reach a segment within the test.
const FLUSH_EVERY_SECOND: &[(&str, &str)] =
    &[("MSGD_FLUSH__INTERVAL", "1s"), ("MSGD_FLUSH__MAX_AGE", "0s"), ("MSGD_FLUSH__HOT_WINDOW", "0")];

/// Dashboard queries that may rightly return nothing in a short, healthy
/// test: a piece of the query's text, and why. An entry that matches no
/// dashboard query fails the test, so the list cannot go stale.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    // A ratio whose numerator is `sum(…{status=~"5.."})` is empty, not 0, while no request has failed.
    ("status=~\"5..\"", "no 5xx response in a healthy test: the ratio has no numerator series"),
    // The panels keep maxmemory only when set (`> 0`); the shared test Redis runs without a limit.
    ("msgd_redis_memory_max_bytes", "the test Redis has no maxmemory (0: no limit), which the panels leave out"),
];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

// ---------------------------------------------------------------------------
// Tools

/// A tool the tests run (`promtool`, `prometheus`): `MSGDTEST_<var>` when set,
/// else the `PATH`. `None`, with a note, when it is missing; a failure under
/// `MSGDTEST_REQUIRE_SERVICES`, whose run promises every check.
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    let found = match std::env::var_os(format!("MSGDTEST_{var}")) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "MSGDTEST_{var}={} does not exist", path.display());
            Some(path)
        }
        None => std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file())),
    };
    if found.is_none() {
        skip_unless_required(
            &format!("{name} is missing (scripts/services.sh up installs it)"),
            &format!("{name} is missing; the checks that need it are skipped (scripts/services.sh up installs it)"),
        );
    }
    found
}

/// Runs `program args` in the repository root with `stdin`; whether it
/// succeeded, and its stdout and stderr together.
fn run_tool(program: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).expect("write to the tool's stdin");
    let output = child.wait_with_output().expect("wait for the tool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

// ---------------------------------------------------------------------------
// The catalogue

/// One row of the catalogue.
#[derive(Debug)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    /// `both`, `services` or `embedded`.
    backends: String,
}

/// The cells of a markdown table row.
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let inner = line.strip_prefix('|').unwrap_or(line);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(|cell| cell.trim().to_string()).collect()
}

/// The `backticked` pieces of a text.
fn backticked(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// A text without its parenthesised asides (label values listed after a label's name).
fn without_asides(text: &str) -> String {
    let mut depth = 0usize;
    text.chars()
        .filter(|&c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

/// `dashboards/METRICS.md`: its one table, metric name → family.
fn catalogue() -> BTreeMap<String, Family> {
    let text = read(CATALOGUE);
    let header = ["metric", "type", "labels", "backends", "meaning"];
    let mut lines = text.lines().skip_while(|line| cells(line) != header);
    assert!(lines.next().is_some(), "{CATALOGUE} has no `| metric | type | labels | backends | meaning |` table");
    let mut families = BTreeMap::new();
    for line in lines.take_while(|line| line.trim_start().starts_with('|')) {
        if line.chars().all(|c| "|-: ".contains(c)) {
            continue; // the header's separator
        }
        let row = cells(line);
        assert!(row.len() >= 5, "{CATALOGUE}: a row needs five cells: {line}");
        let name = backticked(&row[0]).into_iter().next().unwrap_or_else(|| panic!("{CATALOGUE}: no `name` in {line}"));
        assert!(name.starts_with("msgd_"), "{CATALOGUE}: {name} lacks the msgd_ prefix");
        let kind = row[1].clone();
        assert!(["counter", "gauge", "histogram"].contains(&kind.as_str()), "{CATALOGUE}: {name} has type {kind:?}");
        let backends = row[3].clone();
        assert!(["both", "services", "embedded"].contains(&backends.as_str()), "{CATALOGUE}: {name}: {backends:?}");
        let labels = backticked(&without_asides(&row[2])).into_iter().collect();
        let family = Family { kind, labels, backends };
        assert!(families.insert(name.clone(), family).is_none(), "{CATALOGUE}: {name} has two rows");
    }
    assert!(!families.is_empty(), "{CATALOGUE}: the table has no rows");
    families
}

/// Whether a name a query uses is catalogued: a family, or one of a histogram's series.
fn catalogued(catalogue: &BTreeMap<String, Family>, name: &str) -> bool {
    catalogue.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).and_then(|base| catalogue.get(base)).is_some_and(|f| f.kind == "histogram")
        })
}

// ---------------------------------------------------------------------------
// Scrapes

/// A family as a scrape shows it: its `# TYPE` and the label names of its
/// samples (`le` aside).
#[derive(Debug, Default)]
struct Scraped {
    kind: String,
    labels: BTreeSet<String>,
}

/// The label names of a sample, from the text after its `{`.
fn sample_labels(rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        if chars.peek().is_none_or(|c| *c == '}') {
            return names;
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        chars.next_if_eq(&'"');
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        names.push(name.trim().to_string());
    }
}

/// Every family of a scrape by name; a sample no `# TYPE` accounts for panics.
fn families(scrape: &str) -> BTreeMap<String, Scraped> {
    let mut families: BTreeMap<String, Scraped> = BTreeMap::new();
    for line in scrape.lines().filter(|line| !line.trim().is_empty()) {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed.split_once(' ').unwrap_or((typed, ""));
            families.entry(name.to_string()).or_default().kind = kind.trim().to_string();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..end];
        let family = if families.contains_key(sample) {
            sample.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| sample.strip_suffix(suffix))
                .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
                .unwrap_or_else(|| panic!("sample {sample} has no # TYPE line"))
                .to_string()
        };
        let labels = line[end..].strip_prefix('{').map(sample_labels).unwrap_or_default();
        families.get_mut(&family).unwrap().labels.extend(labels.into_iter().filter(|label| label != "le"));
    }
    families
}

// ---------------------------------------------------------------------------
// Traffic

/// A little of everything: messages over HTTP delivered to a WebSocket, a
/// history read from the tail and one from a segment, a request refused for
/// its missing key, and flush ticks that wrote a segment.
async fn make_traffic(api: &Api) {
    let alice = api.token("alice").await;
    let bob = api.token("bob").await;
    let conversation = api.conversation(&alice, &["bob"]).await;
    let mut socket = Client::connect(&api.msgd.addr, &api.read_key, &bob).await;
    socket.send(json!({"op": "subscribe", "conversation_id": conversation})).await;
    socket.expect_op("subscribed").await;
    for n in 0..5 {
        let reply = api.send(&alice, &conversation, &json!({"payload": {"n": n}})).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    socket.expect_op("message").await;

    let history = format!("/v1/conversations/{conversation}/messages?limit=10");
    let page = api.request(Method::GET, &history, Some(&api.read_key), Some(&bob), None, &[]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let refused = api.request(Method::GET, &history, None, None, None, &[]).await;
    assert_eq!(refused.status, 401, "a request without a key: {}", refused.body);

    let flushed = eventually(Duration::from_secs(30), async || {
        sample(&scrape(&api.msgd).await, "msgd_segment_records_count").is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(flushed, "no segment written within 30 s:\n{}", api.msgd.log_text());
    let page = api.request(Method::GET, &history, Some(&api.read_key), Some(&bob), None, &[]).await;
    assert_eq!(page.status, 200, "{}", page.body);
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Embedded => "embedded",
        Backend::Services => "services",
    }
}

backend_test! {
    /// Every family msgd exports on this backend is catalogued with its type
    /// and labels, every family catalogued for it is exported, and promtool
    /// accepts the exposition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_metrics_catalogue_matches_a_live_scrape(backend: Backend) {
        let catalogue = catalogue();
        let api = Api::start_with(backend, FLUSH_EVERY_SECOND).await;
        make_traffic(&api).await;
        let text = scrape(&api.msgd).await;
        let scraped = families(&text);
        let this = backend_name(backend);

        let mut problems = Vec::new();
        for (name, family) in catalogue.iter().filter(|(_, f)| f.backends == "both" || f.backends == this) {
            let Some(seen) = scraped.get(name) else {
                problems.push(format!("{name}: catalogued for {} but not in the scrape", family.backends));
                continue;
            };
            if seen.kind != family.kind {
                problems.push(format!("{name}: catalogued as a {}, scraped as a {}", family.kind, seen.kind));
            }
            if seen.labels != family.labels {
                problems.push(format!("{name}: catalogued labels {:?}, scraped {:?}", family.labels, seen.labels));
            }
        }
        for name in scraped.keys() {
            match catalogue.get(name) {
                None => problems.push(format!("{name}: scraped but not catalogued")),
                Some(family) if family.backends != "both" && family.backends != this => {
                    problems.push(format!("{name}: catalogued for {} only, but scraped on {this}", family.backends))
                }
                Some(_) => {}
            }
        }
        if let Some(promtool) = tool("PROMTOOL", "promtool") {
            let (ok, output) = run_tool(&promtool, &["check", "metrics"], &text);
            if !ok {
                problems.push(format!("promtool check metrics rejects the scrape:\n{output}"));
            }
        }
        assert!(
            problems.is_empty(),
            "{this}: {CATALOGUE} and a live scrape disagree:\n{}\n\nthe scrape:\n{text}",
            problems.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Dashboards

/// Every `dashboards/*.json`, parsed, by path.
fn dashboards() -> Vec<(String, Value)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("dashboards"))
        .expect("read dashboards/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no dashboards/*.json");
    paths
        .into_iter()
        .map(|path| {
            let name = format!("dashboards/{}", path.file_name().unwrap().to_string_lossy());
            let dashboard = serde_json::from_str(&read(&name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, dashboard)
        })
        .collect()
}

/// Every JSON object under `value`, with the title of the nearest panel (or
/// row) around it.
fn objects<'a>(value: &'a Value, title: &str, out: &mut Vec<(String, &'a serde_json::Map<String, Value>)>) {
    match value {
        Value::Object(object) => {
            let title = object.get("title").and_then(Value::as_str).unwrap_or(title);
            out.push((title.to_string(), object));
            for child in object.values() {
                objects(child, title, out);
            }
        }
        Value::Array(values) => values.iter().for_each(|child| objects(child, title, out)),
        _ => {}
    }
}

/// A PromQL query of a dashboard: a panel's (or an annotation's) target, or
/// a query variable's query (Grafana's `label_values(…)` and the like).
struct Query {
    at: String,
    expr: String,
    variable: bool,
}

fn dashboard_queries(path: &str, dashboard: &Value) -> Vec<Query> {
    let mut all = Vec::new();
    objects(dashboard, "", &mut all);
    let mut queries: Vec<Query> = all
        .into_iter()
        .filter_map(|(title, object)| {
            let expr = object.get("expr")?.as_str()?;
            Some(Query { at: format!("{path}: panel {title:?}"), expr: expr.to_string(), variable: false })
        })
        .collect();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let query = variable["query"].as_str().or(variable["query"]["query"].as_str());
        let query = query.or(variable["definition"].as_str());
        queries.push(Query {
            at: format!("{path}: variable ${name}"),
            expr: query.unwrap_or_default().to_string(),
            variable: true,
        });
    }
    queries
}

/// The problems of a dashboard's data sources: it needs a datasource
/// variable, and every query must go through it (no uid baked in, no
/// fallback to Grafana's default).
fn datasource_problems(path: &str, dashboard: &Value) -> Vec<String> {
    let mut names = BTreeSet::new();
    for list in [&dashboard["templating"]["list"], &dashboard["__inputs"]] {
        for variable in list.as_array().into_iter().flatten().filter(|v| v["type"] == "datasource") {
            names.extend(variable["name"].as_str().map(str::to_string));
        }
    }
    let mut problems = Vec::new();
    if names.is_empty() {
        problems.push(format!("{path}: no datasource variable (a templating variable of type `datasource`)"));
    }
    let uid = |source: &Value| source.as_str().or(source["uid"].as_str()).unwrap_or_default().to_string();
    let through_variable = |source: &Value| {
        let uid = uid(source);
        names.iter().any(|name| uid == format!("${name}") || uid == format!("${{{name}}}"))
    };
    let built_in = |source: &Value| uid(source).starts_with("-- ") || source["type"] == "grafana";
    let mut all = Vec::new();
    objects(dashboard, "", &mut all);
    for (title, object) in all {
        if let Some(source) = object.get("datasource").filter(|s| !s.is_null()) {
            if !through_variable(source) && !built_in(source) {
                problems.push(format!("{path}: {title:?}: data source {source} is not the datasource variable"));
            }
        }
        let targets = object.get("targets").and_then(Value::as_array).filter(|targets| !targets.is_empty());
        if let Some(targets) = targets {
            let panel = object.get("datasource").is_some_and(through_variable);
            let every_target = targets.iter().all(|target| target.get("datasource").is_some_and(through_variable));
            if !panel && !every_target {
                problems.push(format!("{path}: panel {title:?} queries Grafana's default data source"));
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        if !variable.get("datasource").is_some_and(through_variable) {
            problems.push(format!("{path}: variable ${} queries Grafana's default data source", variable["name"]));
        }
    }
    problems
}

/// Every metric name (`msgd_[a-z0-9_]+`) a query names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = expr[at..].find("msgd_") {
        let start = at + found;
        let inside_a_word =
            expr[..start].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let length = expr[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(expr.len() - start);
        if !inside_a_word {
            names.insert(expr[start..start + length].to_string());
        }
        at = start + length;
    }
    names
}

/// Every metric a dashboard or an alert queries is in the catalogue (a
/// histogram's `_bucket`, `_sum` and `_count` as their family), and the
/// dashboards query through a datasource variable.
#[test]
fn dashboards_and_alerts_use_only_catalogued_metrics() {
    let catalogue = catalogue();
    let mut problems = Vec::new();
    let mut queries = Vec::new();
    for (path, dashboard) in dashboards() {
        problems.extend(datasource_problems(&path, &dashboard));
        queries.extend(dashboard_queries(&path, &dashboard));
    }
    let (_, rules) = rules_in(&read(RULES));
    assert!(!rules.is_empty(), "{RULES} has no rules");
    for rule in rules {
        queries.push(Query { at: format!("{RULES}: {}", rule.name()), expr: rule.expr, variable: false });
    }
    for query in &queries {
        if query.expr.trim().is_empty() {
            problems.push(format!("{}: an empty query", query.at));
        }
        for name in metric_names(&query.expr).into_iter().filter(|name| !catalogued(&catalogue, name)) {
            problems.push(format!("{}: {name} is not in {CATALOGUE}", query.at));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

// ---------------------------------------------------------------------------
// Rules files and their tests (YAML)

/// A rules file: its groups.
#[derive(Deserialize)]
struct RulesFile {
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

/// A rule of a Prometheus rules file: an alert or a recording rule.
#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Rule {
    /// The alert's name, or the recorded series' name.
    fn name(&self) -> &str {
        self.alert.as_deref().or(self.record.as_deref()).unwrap_or_default()
    }
}

/// A rules file's group names and its rules.
fn rules_in(text: &str) -> (Vec<String>, Vec<Rule>) {
    let file: RulesFile = serde_yaml::from_str(text).expect("a rules file");
    let names = file.groups.iter().map(|group| group.name.clone()).collect();
    (names, file.groups.into_iter().flat_map(|group| group.rules).collect())
}

/// A `promtool test rules` file, as far as the tests read it.
#[derive(Deserialize)]
struct RuleTests {
    tests: Vec<RuleTest>,
}

#[derive(Deserialize)]
struct RuleTest {
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
}

#[derive(Deserialize)]
struct AlertCase {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde_yaml::Value>,
}

/// The alerts a `promtool test rules` file expects to fire: the names of its
/// `alert_rule_test` cases whose `exp_alerts` is not empty.
fn alerts_expected_to_fire(text: &str) -> BTreeSet<String> {
    let file: RuleTests = serde_yaml::from_str(text).expect("a promtool test file");
    let cases = file.tests.into_iter().flat_map(|test| test.alert_rule_test);
    cases.filter(|case| !case.exp_alerts.is_empty()).map(|case| case.alertname).collect()
}

#[test]
fn metric_names_are_found_in_queries() {
    assert_eq!(metric_names("rate(msgd_a_total[5m]) / xmsgd_b + msgd_c_bucket{job=\"msgd\"}"), {
        BTreeSet::from(["msgd_a_total".to_string(), "msgd_c_bucket".to_string()])
    });
}

// ---------------------------------------------------------------------------
// Alerts

/// The runbook file an annotation names (a repository path; an anchor or a
/// URL prefix up to `runbooks/` is dropped).
fn runbook_path(annotation: &str) -> PathBuf {
    let path = annotation.split('#').next().unwrap_or_default().trim();
    let path = match path.find("://") {
        Some(_) => path.find("runbooks/").map_or(path, |at| &path[at..]),
        None => path,
    };
    Path::new(ROOT).join(path)
}

/// Every alert rule is labelled and annotated for the person it pages, its
/// runbook exists, and a `promtool test rules` case proves it fires; the
/// rules and their tests pass promtool.
#[test]
fn every_alert_is_documented_and_proven_by_promtool() {
    let (_, rules) = rules_in(&read(RULES));
    let alerts: Vec<&Rule> = rules.iter().filter(|rule| rule.alert.is_some()).collect();
    assert!(!alerts.is_empty(), "{RULES} has no alerts");
    let mut tests: Vec<String> = std::fs::read_dir(Path::new(ROOT).join(RULE_TESTS))
        .unwrap_or_else(|e| panic!("cannot read {RULE_TESTS}/: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yml") || name.ends_with(".yaml"))
        .map(|name| format!("{RULE_TESTS}/{name}"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no {RULE_TESTS}/*.yml");
    let fired: BTreeSet<String> = tests.iter().flat_map(|path| alerts_expected_to_fire(&read(path))).collect();

    let mut problems = Vec::new();
    for alert in &alerts {
        let name = alert.name();
        if alert.labels.get("severity").is_none_or(|severity| severity.is_empty()) {
            problems.push(format!("{name}: no severity label"));
        }
        for annotation in ["summary", "description", "runbook"] {
            if alert.annotations.get(annotation).is_none_or(|text| text.is_empty()) {
                problems.push(format!("{name}: no {annotation} annotation"));
            }
        }
        if let Some(runbook) = alert.annotations.get("runbook").filter(|runbook| !runbook.is_empty()) {
            if !runbook_path(runbook).is_file() {
                problems.push(format!("{name}: runbook {runbook} is not a file of the repository"));
            }
        }
        if !fired.contains(name) {
            problems.push(format!("{name}: no case in {RULE_TESTS}/ expects it to fire (exp_alerts)"));
        }
    }
    if let Some(promtool) = tool("PROMTOOL", "promtool") {
        let (ok, output) = run_tool(&promtool, &["check", "rules", RULES], "");
        if !ok {
            problems.push(format!("promtool check rules {RULES}:\n{output}"));
        }
        let mut args = vec!["test", "rules"];
        args.extend(tests.iter().map(String::as_str));
        let (ok, output) = run_tool(&promtool, &args, "");
        if !ok {
            problems.push(format!("promtool test rules {}:\n{output}", tests.join(" ")));
        }
    }
    // Rules that share an alert's name (one per severity or reason) share its problems: say each once.
    let mut seen = BTreeSet::new();
    problems.retain(|problem| seen.insert(problem.clone()));
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

// ---------------------------------------------------------------------------
// A real Prometheus

/// A real Prometheus in a temp dir, scraping one msgd as job `msgd` every
/// second and evaluating the alert rules every second; killed on drop.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    client: reqwest::Client,
}

impl Prometheus {
    async fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = Path::new(ROOT).join(RULES);
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: msgd\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut prometheus =
            Prometheus { child, dir, url: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() };
        let ready = eventually(Duration::from_secs(30), async || {
            let answer = prometheus.client.get(format!("{}/-/ready", prometheus.url)).send().await;
            answer.is_ok_and(|answer| answer.status().is_success())
        })
        .await;
        let exited = prometheus.child.try_wait().unwrap();
        assert!(ready, "Prometheus not ready within 30 s (exit: {exited:?}):\n{}", prometheus.log());
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.url), params).unwrap();
        let answer = self.client.get(url).send().await.expect("ask Prometheus");
        answer.json().await.expect("Prometheus answers JSON")
    }

    /// An instant query's whole answer.
    async fn query(&self, promql: &str) -> Value {
        self.get("/api/v1/query", &[("query", promql)]).await
    }

    /// How many scrapes of msgd Prometheus has stored.
    async fn scrapes(&self) -> u64 {
        let answer = self.query("count_over_time(up{job=\"msgd\"}[1h])").await;
        answer["data"]["result"][0]["value"][1].as_str().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Waits until `more` scrapes after now are stored.
    async fn wait_for_scrapes(&self, more: u64) {
        let target = self.scrapes().await + more;
        let scraped = eventually(Duration::from_secs(30), async || self.scrapes().await >= target).await;
        assert!(scraped, "Prometheus did not scrape msgd {more} more times in 30 s:\n{}", self.log());
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values the variables of a dashboard's queries take here: the job and
/// every instance, fixed windows for Grafana's built-ins, and for the
/// dashboard's own variables their current value, else "all".
fn variable_values(dashboard: &Value) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let Some(name) = variable["name"].as_str() else { continue };
        let all = variable["allValue"].as_str().filter(|all| !all.is_empty()).unwrap_or(".*").to_string();
        let value = match (variable["type"].as_str(), &variable["current"]["value"]) {
            (Some("constant" | "textbox"), _) if variable["query"].is_string() => {
                variable["query"].as_str().unwrap_or_default().to_string()
            }
            (_, Value::String(value)) if value != "$__all" && !value.is_empty() => value.clone(),
            (_, Value::Array(values)) if !values.is_empty() && !values.iter().any(|v| v == "$__all") => {
                values.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("|")
            }
            _ => all,
        };
        values.insert(name.to_string(), value);
    }
    let fixed = [
        ("job", "msgd"),
        ("instance", ".*"),
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__interval_ms", "15000"),
        ("__range", "5m"),
        ("__range_s", "300"),
        ("__range_ms", "300000"),
    ];
    values.extend(fixed.map(|(name, value)| (name.to_string(), value.to_string())));
    values
}

/// A query with its variables (`$name`, `${name}`, `${name:format}`,
/// `[[name]]`) replaced; the name of an unknown variable as the error.
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find(['$', '[']) {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let (name, length) = if let Some(braced) = after.strip_prefix("${") {
            let inner = braced.split('}').next().unwrap_or_default();
            (inner.split(':').next().unwrap_or_default(), inner.len() + 3)
        } else if let Some(bracketed) = after.strip_prefix("[[").filter(|b| b.starts_with(is_name)) {
            let inner = bracketed.split("]]").next().unwrap_or_default();
            (inner.split(':').next().unwrap_or_default(), inner.len() + 4)
        } else if let Some(plain) = after.strip_prefix('$') {
            let name = &plain[..plain.find(|c: char| !is_name(c)).unwrap_or(plain.len())];
            (name, name.len() + 1)
        } else {
            ("", 1)
        };
        if name.is_empty() {
            out.push_str(&after[..1]);
            rest = &after[1..];
            continue;
        }
        out.push_str(values.get(name).ok_or_else(|| name.to_string())?);
        rest = &after[length.min(after.len())..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What Prometheus evaluates for a query variable, and the label whose values
/// it offers: `label_values(expr, label)` → `expr`, `label_values(label)` →
/// every series with that label, `query_result(expr)` → `expr`.
fn variable_query(query: &str) -> (String, Option<String>) {
    let query = query.trim();
    let call = |name: &str| query.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')');
    if let Some(arguments) = call("label_values") {
        let mut depth = 0i32;
        let mut quoted = false;
        let mut last_comma = None;
        for (at, c) in arguments.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '(' | '{' | '[' if !quoted => depth += 1,
                ')' | '}' | ']' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => last_comma = Some(at),
                _ => {}
            }
        }
        return match last_comma {
            Some(at) => (arguments[..at].trim().to_string(), Some(arguments[at + 1..].trim().to_string())),
            None => (format!("{{{}!=\"\"}}", arguments.trim()), Some(arguments.trim().to_string())),
        };
    }
    if let Some(expr) = call("query_result") {
        return (expr.to_string(), None);
    }
    (query.to_string(), None)
}

/// Api::start_with's msgd, with a backup target, after one `msgd backup-r2
/// run` and one `msgd retention` (as a timer or cron would run them): serve's
/// first stats poll exports when they last succeeded, so the recency panels
/// have data (serve's own retention worker waits 30 s before its first run).
async fn start_after_a_backup_and_retention(services: &ServicesEnv) -> Api {
    let mut env = TestEnv::new(Backend::Services).await;
    let bucket = unique("b-");
    std::fs::create_dir_all(services.s3_root.join(&bucket)).expect("create the backup bucket");
    let vars = [
        ("MSGD_AUTH__DEV_TOKENS__ENABLED", "true"),
        ("MSGD_AUTH__DEV_TOKENS__SIGNING_KEY", "test-signing-key-0123456789abcdef0123"),
        ("MSGD_LIMITS__USER_RATE", "100000"),
        ("MSGD_LIMITS__USER_BURST", "100000"),
        ("MSGD_LIMITS__KEY_RATE", "100000"),
        ("MSGD_LIMITS__KEY_BURST", "100000"),
        ("MSGD_BACKUP__ENDPOINT", services.s3_endpoint.as_str()),
        ("MSGD_BACKUP__BUCKET", bucket.as_str()),
        ("MSGD_BACKUP__ACCESS_KEY_ID", services.s3_access_key_id.as_str()),
        ("MSGD_BACKUP__SECRET_ACCESS_KEY", services.s3_secret_access_key.as_str()),
    ];
    for (name, value) in vars.into_iter().chain(FLUSH_EVERY_SECOND.iter().copied()) {
        env.set(name, value);
    }
    let (app_id, admin_key) = create_app(&env, "acme");
    let write_key = create_key(&env, &app_id, "write");
    let read_key = create_key(&env, &app_id, "read");
    let backup = env.run(&["backup-r2", "run", "--json"], "");
    assert_eq!(backup.code, 0, "msgd backup-r2 run: {}", backup.stderr);
    let retention = env.run(&["retention", "--json"], "");
    assert_eq!(retention.code, 0, "msgd retention: {}", retention.stderr);
    let msgd = env.serve();
    Api { env, msgd, client: reqwest::Client::new(), app_id, admin_key, write_key, read_key }
}

services_test! {
    /// Prometheus scrapes a busy msgd, loads every alert group healthy, and
    /// every dashboard query (panels and variables) returns data, bar the few
    /// MAY_BE_EMPTY names with a reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_real_prometheus_scrapes_msgd_and_the_dashboard_queries_return_data(services: ServicesEnv) {
        let Some(binary) = tool("PROMETHEUS", "prometheus") else { return };
        let dashboards = dashboards();
        let (groups, _) = rules_in(&read(RULES));
        let api = start_after_a_backup_and_retention(&services).await;
        let prometheus = Prometheus::start(&binary, &api.msgd.addr).await;
        prometheus.wait_for_scrapes(1).await;
        make_traffic(&api).await;
        // Two scrapes after the traffic: a rate over series it created has two points.
        prometheus.wait_for_scrapes(3).await;

        let mut rules = Value::Null;
        let healthy = eventually(Duration::from_secs(30), async || {
            rules = prometheus.get("/api/v1/rules", &[]).await;
            let loaded = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
            let names: BTreeSet<_> = loaded.iter().filter_map(|group| group["name"].as_str()).collect();
            names == groups.iter().map(String::as_str).collect()
                && loaded.iter().all(|group| {
                    let group_rules = group["rules"].as_array().cloned().unwrap_or_default();
                    !group_rules.is_empty() && group_rules.iter().all(|rule| rule["health"] == "ok")
                })
        })
        .await;
        assert!(
            healthy,
            "Prometheus did not load every group of {RULES} ({groups:?}) with every rule healthy:\n{rules:#}\n{}",
            prometheus.log()
        );

        let mut problems = Vec::new();
        let mut queries = 0;
        for (path, dashboard) in &dashboards {
            let values = variable_values(dashboard);
            for query in dashboard_queries(path, dashboard) {
                queries += 1;
                let (expr, label) =
                    if query.variable { variable_query(&query.expr) } else { (query.expr.clone(), None) };
                let promql = match substitute(&expr, &values) {
                    Ok(promql) => promql,
                    Err(name) => {
                        problems.push(format!("{}: unknown variable ${name} in `{}`", query.at, query.expr));
                        continue;
                    }
                };
                let answer = prometheus.query(&promql).await;
                if answer["status"] != "success" {
                    problems.push(format!("{}: `{promql}` fails: {}", query.at, answer["error"]));
                    continue;
                }
                let result = answer["data"]["result"].as_array().cloned().unwrap_or_default();
                let has_data = match &label {
                    Some(label) => result.iter().any(|series| series["metric"][label.as_str()].is_string()),
                    None => !result.is_empty(),
                };
                if has_data {
                    continue;
                }
                match MAY_BE_EMPTY.iter().find(|(piece, _)| query.expr.contains(piece)) {
                    Some((_, why)) => eprintln!("note: {}: `{promql}` has no data, as expected: {why}", query.at),
                    None => problems.push(format!("{}: `{promql}` returned no data", query.at)),
                }
            }
        }
        for (piece, _) in MAY_BE_EMPTY {
            let used = dashboards
                .iter()
                .any(|(path, dashboard)| dashboard_queries(path, dashboard).iter().any(|q| q.expr.contains(piece)));
            if !used {
                problems.push(format!("MAY_BE_EMPTY entry {piece:?} matches no dashboard query: remove it"));
            }
        }
        assert!(queries > 0, "the dashboards hold no queries");
        assert!(
            problems.is_empty(),
            "{} of {queries} dashboard queries fail against a real Prometheus:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}
