//! `tracing` set-up, done once in `main`: readable lines (coloured on a terminal) or JSON lines,
//! on standard error, each carrying the rank. `RUST_LOG` filters as usual (default `info`).
use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the global subscriber. Call once, after the rank is known.
pub fn init(format: LogFormat, rank: usize) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            let inner = tracing_subscriber::fmt::format().with_ansi(ansi).with_target(false);
            builder.with_ansi(ansi).event_format(RankPrefixed { rank, inner }).try_init()
        }
        LogFormat::Json => builder.fmt_fields(DefaultFields::new()).event_format(JsonLine { rank }).try_init(),
    };
    // A second call (tests) keeps the first subscriber.
    drop(result);
}

/// The default text format with `[rank N]` in front.
struct RankPrefixed<F> {
    rank: usize,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for RankPrefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "[rank {}] ", self.rank)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// One JSON object per event: time, level, target, rank and the event's fields.
struct JsonLine {
    rank: usize,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut fields = FieldMap::default();
        fields.0.insert("time".into(), serde_json::json!(now.as_secs_f64()));
        fields.0.insert("level".into(), serde_json::json!(meta.level().as_str()));
        fields.0.insert("target".into(), serde_json::json!(meta.target()));
        fields.0.insert("rank".into(), serde_json::json!(self.rank));
        event.record(&mut fields);
        let line = serde_json::to_string(&fields.0).map_err(|_| fmt::Error)?;
        writer.write_str(&line)?;
        writer.write_char('\n')
    }
}

#[derive(Default)]
struct FieldMap(serde_json::Map<String, serde_json::Value>);

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), serde_json::json!(format!("{value:?}")));
    }
}
