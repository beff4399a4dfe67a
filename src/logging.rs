//! The process's log: `global { log level=… format=… }`, which a reload
//! may change, and the site file's diagnostics written into it.
//!
//! The filter and the formatter each sit in a `reload` layer, so a reload
//! swaps them in place; `RUST_LOG`, when set, keeps deciding the level.
//! With `format="json"` every line teebox writes is one JSON object: a
//! diagnostic's drawing (several lines) goes in its `diagnostic` field.

use std::sync::OnceLock;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat, Problem, Source, Style};

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Formatter = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    formatter: reload::Handle<Formatter, Filtered>,
    /// Whether the text format may use colours (stderr is a terminal).
    ansi: bool,
    /// RUST_LOG was set: it decides the level, whatever the file says.
    from_env: bool,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();
static FORMAT: OnceLock<std::sync::atomic::AtomicBool> = OnceLock::new();

/// Starts logging to stderr as `log` says. Once per process; later calls
/// are [`apply`].
pub fn init(log: &LogConfig, ansi: bool) {
    if HANDLES.get().is_some() {
        return apply(log);
    }
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = match from_env {
        true => EnvFilter::try_from_default_env().unwrap_or_else(|_| filter_for(log)),
        false => filter_for(log),
    };
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (formatter, formatter_handle) = reload::Layer::new(formatter_for(log.format, ansi));
    if tracing_subscriber::registry()
        .with(filter)
        .with(formatter)
        .try_init()
        .is_err()
    {
        return;
    }
    set_json(log.format == LogFormat::Json);
    log_panics();
    let _ = HANDLES.set(Handles {
        filter: filter_handle,
        formatter: formatter_handle,
        ansi,
        from_env,
    });
}

/// Puts a reloaded file's `log` settings in place. Does nothing in a
/// process that did not [`init`] (tests, the library used alone).
pub fn apply(log: &LogConfig) {
    let Some(handles) = HANDLES.get() else {
        return;
    };
    if !handles.from_env {
        let _ = handles.filter.reload(filter_for(log));
    }
    let _ = handles
        .formatter
        .reload(formatter_for(log.format, handles.ansi));
    set_json(log.format == LogFormat::Json);
}

/// With JSON logs a panic (a bug: no input may cause one) is logged as an
/// event too, so that even it is one JSON object; text logs keep Rust's
/// own report.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_json() {
            return default(info);
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let thread = std::thread::current().name().map(str::to_string);
        tracing::error!(panic = %payload, location, thread, "panicked");
    }));
}

/// Whether log lines are JSON objects now.
pub fn is_json() -> bool {
    FORMAT
        .get()
        .is_some_and(|json| json.load(std::sync::atomic::Ordering::Relaxed))
}

fn set_json(json: bool) {
    FORMAT
        .get_or_init(Default::default)
        .store(json, std::sync::atomic::Ordering::Relaxed);
}

/// `debug` and `trace` are for teebox itself: hyper and h2 at those levels
/// would drown it.
fn filter_for(log: &LogConfig) -> EnvFilter {
    let directives = match log.level {
        verbose @ ("debug" | "trace") => format!("info,teebox={verbose}"),
        level => level.to_string(),
    };
    EnvFilter::new(directives)
}

fn formatter_for(format: LogFormat, ansi: bool) -> Formatter {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Text => layer.with_ansi(ansi).boxed(),
    }
}

/// Writes a site file's problems to the log: with JSON logs, one object per
/// problem with its drawing in `diagnostic`; with text logs, one event with
/// every drawing below its message, as `teebox validate` draws them.
pub fn problems(level: tracing::Level, message: &str, source: &Source, problems: &[Problem]) {
    if problems.is_empty() {
        return;
    }
    if is_json() {
        let shown = crate::config::diag::shown(problems);
        for problem in &shown {
            let drawing = crate::config::diag::render_problems(
                source,
                std::slice::from_ref(*problem),
                Style::Plain,
            );
            let severity = if problem.is_error() {
                "error"
            } else {
                "warning"
            };
            event(
                level,
                message,
                Some(problem.message()),
                severity,
                drawing.trim_end(),
            );
        }
        if problems.len() > shown.len() {
            let more = format!("{} more not shown", problems.len() - shown.len());
            event(level, message, None, "summary", &more);
        }
        return;
    }
    let drawing = crate::config::diag::render_problems(source, problems, Style::Plain);
    event(level, message, None, "", drawing.trim_end());
}

fn event(
    level: tracing::Level,
    message: &str,
    problem: Option<&str>,
    severity: &str,
    drawing: &str,
) {
    match (level, is_json()) {
        (tracing::Level::ERROR, true) => {
            tracing::error!(problem, severity, diagnostic = drawing, "{message}")
        }
        (tracing::Level::ERROR, false) => tracing::error!("{message}\n{drawing}"),
        (_, true) => tracing::warn!(problem, severity, diagnostic = drawing, "{message}"),
        (_, false) => tracing::warn!("{message}\n{drawing}"),
    }
}
