//! Log lines: the one tracing layer every msgd process writes through, set
//! from `[observability.logging]` and re-set by a reload (SIGHUP in `serve`).
//!
//! A line is an event's fields plus the fields of the spans it happened in
//! (the worker runner opens one per tick, so every line of a tick carries its
//! `worker` and `tick-id`). Below `warn`, a line can be left out by the
//! `components`/`workers` selection, the segment-flush toggles or sampling;
//! warnings and errors are always written. Then `error.stack` is dropped
//! unless stack traces are on, `redact_fields` are masked, and the line is
//! written to stderr in one write, as JSON or text.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LoggingConfig};

/// The value a redacted field shows.
const REDACTED: &str = "<redacted>";
/// Sampling keeps one counter per component; components are names in the
/// code, so this bound is never reached in practice but holds anyway.
const MAX_SAMPLED_COMPONENTS: usize = 64;

/// Lines left out by sampling, since the process started (`msgd_log_lines_sampled_out_total`).
static SAMPLED_OUT: AtomicU64 = AtomicU64::new(0);
/// The settings in force; `None` until [`init`].
static SETTINGS: RwLock<Option<Arc<Settings>>> = RwLock::new(None);
/// Swaps the level filter on reload.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The logging settings in force, as the writer and the workers read them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: LoggingConfig,
    /// Lines below this level from outside `components`/`workers` are left out.
    others: LevelFilter,
    components: BTreeSet<String>,
    workers: BTreeSet<String>,
    redact: BTreeSet<String>,
}

impl Settings {
    fn new(config: &LoggingConfig) -> Settings {
        let most_verbose = filter(&config.level).max_level_hint().unwrap_or(LevelFilter::INFO);
        Settings {
            others: most_verbose.min(LevelFilter::INFO),
            components: config.components.iter().cloned().collect(),
            workers: config.workers.iter().cloned().collect(),
            redact: config.redact_fields.iter().map(|name| name.to_ascii_lowercase()).collect(),
            config: config.clone(),
        }
    }

    /// Whether a line below `warn` with these fields is written (before sampling).
    fn selects(&self, level: &Level, fields: &Map<String, Value>) -> bool {
        let component = fields.get("component").and_then(Value::as_str).unwrap_or("");
        let outside = |set: &BTreeSet<String>, name: &str| !set.is_empty() && !set.contains(name);
        if (outside(&self.components, component)
            || fields.get("worker").and_then(Value::as_str).is_some_and(|worker| outside(&self.workers, worker)))
            && *level > self.others
        {
            return false;
        }
        let flush = &self.config.segment_flush;
        component != "segment-flush" || (flush.enabled && (flush.stage_logs || !fields.contains_key("stage")))
    }
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::builder().parse_lossy(level)
}

/// The settings in force (the defaults before [`init`]).
pub fn settings() -> Arc<Settings> {
    let current = SETTINGS.read().expect("settings lock").clone();
    current.unwrap_or_else(|| Arc::new(Settings::new(&LoggingConfig::default())))
}

/// Lines left out by sampling since the process started.
pub fn sampled_out() -> u64 {
    SAMPLED_OUT.load(Ordering::Relaxed)
}

/// Installs the process's log writer (stderr). Idempotent: a second call
/// (tests run many servers in one process) keeps the first.
pub fn init(config: &LoggingConfig) {
    let (level, handle) = reload::Layer::new(filter(&config.level));
    let installed = tracing_subscriber::registry().with(level).with(LineWriter::default()).try_init();
    if installed.is_ok() {
        let _ = FILTER.set(handle);
        *SETTINGS.write().expect("settings lock") = Some(Arc::new(Settings::new(config)));
    }
}

/// Puts `config` in force: the level filter and every toggle. The caller has
/// validated it ([`LoggingConfig::validate`]).
pub fn reload(config: &LoggingConfig) -> Result<(), String> {
    if let Some(handle) = FILTER.get() {
        handle.reload(filter(&config.level)).map_err(|e| format!("cannot swap the level filter: {e}"))?;
    }
    *SETTINGS.write().expect("settings lock") = Some(Arc::new(Settings::new(config)));
    Ok(())
}

/// The layer that turns events into lines.
#[derive(Default)]
struct LineWriter {
    /// Lines seen per component, for sampling.
    seen: Mutex<HashMap<String, u64>>,
    /// Where lines go instead of stderr (unit tests).
    sink: Option<Arc<Mutex<String>>>,
}

/// A span's fields, kept in its extensions.
struct SpanFields(Map<String, Value>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for LineWriter {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut Fields(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(SpanFields(fields)) = span.extensions_mut().get_mut::<SpanFields>() {
                values.record(&mut Fields(fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(SpanFields(outer)) = span.extensions().get::<SpanFields>() {
                    for (name, value) in outer {
                        fields.entry(name.clone()).or_insert_with(|| value.clone());
                    }
                }
            }
        }
        let settings = settings();
        let level = event.metadata().level();
        if *level > Level::WARN {
            if !settings.selects(level, &fields) {
                return;
            }
            let component = fields.get("component").and_then(Value::as_str).unwrap_or("");
            let rate = settings.config.sampling.rate(component);
            if rate < 1.0 {
                if !self.keep(component, rate) {
                    SAMPLED_OUT.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                fields.insert("sampled".into(), Value::Bool(true));
                fields.insert("sample-rate".into(), rate.into());
            }
        }
        if !settings.config.include_stacktraces {
            fields.remove("error.stack");
        }
        for (name, value) in fields.iter_mut() {
            if settings.redact.contains(&name.to_ascii_lowercase()) {
                *value = Value::String(REDACTED.into());
            }
        }
        let line = format_line(settings.config.format, level, fields);
        match &self.sink {
            Some(sink) => sink.lock().expect("sink").push_str(&line),
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }
}

impl LineWriter {
    /// Whether the next line of `component` is kept at `rate`: evenly spread,
    /// `rate` of every run of lines (no randomness, so tests can count).
    fn keep(&self, component: &str, rate: f64) -> bool {
        let mut seen = self.seen.lock().expect("sampling counters");
        let key = match seen.len() < MAX_SAMPLED_COMPONENTS || seen.contains_key(component) {
            true => component,
            false => "",
        };
        let n = seen.entry(key.to_string()).or_insert(0);
        let kept = ((*n + 1) as f64 * rate).floor() > (*n as f64 * rate).floor();
        *n += 1;
        kept
    }
}

/// One line, newline included: `ts`, `level`, `message`, then the fields.
fn format_line(format: LogFormat, level: &Level, mut fields: Map<String, Value>) -> String {
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let message = fields.remove("message").unwrap_or(Value::String(String::new()));
    let level = level.as_str().to_ascii_lowercase();
    match format {
        LogFormat::Json => {
            let mut line = Map::new();
            line.insert("ts".into(), ts.into());
            line.insert("level".into(), level.into());
            line.insert("message".into(), message);
            line.extend(fields);
            let mut text = Value::Object(line).to_string();
            text.push('\n');
            text
        }
        LogFormat::Text => {
            let message = match message {
                Value::String(text) => text,
                other => other.to_string(),
            };
            let mut text = format!("{ts} {:>5} {message}", level.to_ascii_uppercase());
            for (name, value) in fields {
                let _ = match value {
                    Value::String(value) if !value.contains([' ', '"', '=']) => write!(text, " {name}={value}"),
                    value => write!(text, " {name}={value}"),
                };
            }
            text.push('\n');
            text
        }
    }
}

/// Reads a span's or an event's fields into JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect()
    }

    #[test]
    fn selection_narrows_only_the_lines_below_info() {
        let config =
            LoggingConfig { level: "debug".into(), components: vec!["retention".into()], ..LoggingConfig::default() };
        let settings = Settings::new(&config);
        assert!(settings.selects(&Level::DEBUG, &fields(&[("component", "retention")])));
        assert!(!settings.selects(&Level::DEBUG, &fields(&[("component", "http")])));
        assert!(settings.selects(&Level::INFO, &fields(&[("component", "http")])), "others keep info");
        let workers = LoggingConfig { level: "debug".into(), workers: vec!["retention".into()], ..config };
        let settings = Settings::new(&LoggingConfig { components: vec![], ..workers });
        assert!(!settings.selects(&Level::DEBUG, &fields(&[("worker", "segment-flush")])));
        assert!(settings.selects(&Level::DEBUG, &fields(&[("component", "http")])), "no worker, not narrowed");
    }

    #[test]
    fn segment_flush_toggles_leave_out_its_lines_or_its_stages() {
        let mut config = LoggingConfig::default();
        config.segment_flush.stage_logs = false;
        let settings = Settings::new(&config);
        assert!(!settings.selects(&Level::INFO, &fields(&[("component", "segment-flush"), ("stage", "encode")])));
        assert!(settings.selects(&Level::INFO, &fields(&[("component", "segment-flush")])));
        config.segment_flush.enabled = false;
        assert!(!Settings::new(&config).selects(&Level::INFO, &fields(&[("component", "segment-flush")])));
    }

    #[test]
    fn sampling_keeps_an_even_share_per_component() {
        let writer = LineWriter::default();
        let kept = (0..1000).filter(|_| writer.keep("access", 0.1)).count();
        assert_eq!(kept, 100);
        assert!(writer.keep("other", 0.5) || writer.keep("other", 0.5), "components count apart");
    }

    #[test]
    fn lines_carry_their_spans_fields_and_never_a_redacted_value_or_a_stack_unasked() {
        let sink = Arc::new(Mutex::new(String::new()));
        let writer = LineWriter { sink: Some(sink.clone()), ..LineWriter::default() };
        let subscriber = tracing_subscriber::registry().with(writer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("tick", worker = "retention", "tick-id" = "ab12").in_scope(|| {
                tracing::warn!(component = "retention", token = "hunter2", "error.stack" = "at x", "inside");
            });
        });
        let line: Value = serde_json::from_str(sink.lock().unwrap().trim()).unwrap();
        assert_eq!((line["worker"].as_str(), line["tick-id"].as_str()), (Some("retention"), Some("ab12")));
        assert_eq!(line["token"], REDACTED);
        assert!(line.get("error.stack").is_none(), "{line}");
        assert_eq!(line["level"], "warn");
    }

    #[test]
    fn lines_carry_ts_level_and_message_first() {
        let line = format_line(LogFormat::Json, &Level::INFO, fields(&[("message", "hi"), ("component", "boot")]));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!((value["level"].as_str(), value["message"].as_str()), (Some("info"), Some("hi")));
        assert!(value["ts"].as_str().unwrap().ends_with('Z'));
        let text = format_line(LogFormat::Text, &Level::WARN, fields(&[("message", "hi"), ("k", "a b")]));
        assert!(text.contains(" WARN hi k=\"a b\"\n"), "{text}");
    }
}
