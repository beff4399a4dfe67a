//! The site file: KDL text → typed [`Config`] with spans → checked.
//!
//! Loading never stops at the first mistake: syntax errors, decoding errors
//! and cross-checks are all collected into one [`ConfigError`].

mod decode;
pub mod diag;
mod habits;
pub mod handler;
mod limits;
pub mod matchers;
pub mod model;
mod nesting;
pub mod options;
pub mod reader;
pub mod value;

use std::path::{Path, PathBuf};

pub use decode::{block, FileBlock, BLOCKS};
pub use diag::{ConfigError, Problem, Source, Style};
pub use handler::Registry;
pub use model::*;

/// Why a site file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// A valid config, and the warnings found while checking it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

impl Loaded {
    pub fn render_warnings(&self, style: Style) -> String {
        diag::render_problems(&self.config.source, &self.warnings, style)
    }
}

/// Reads and checks a site file, knowing the handlers in `registry`.
pub fn load(path: &Path, registry: Registry) -> Result<Loaded, LoadError> {
    let text = crate::bounded_read::read_text(
        path,
        crate::bounded_read::MAX_SITE_FILE,
        crate::bounded_read::Kind::Any,
    )
    .map_err(|source| LoadError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut loaded = parse(&path.display().to_string(), &text, base_dir, registry)?;
    loaded.config.path = Some(path.to_path_buf());
    Ok(loaded)
}

/// Checks site file text. `name` is what diagnostics call the file.
pub fn parse(
    name: &str,
    text: &str,
    base_dir: PathBuf,
    registry: Registry,
) -> Result<Loaded, ConfigError> {
    let source = Source::new(name, text);
    let doc = match read_kdl(text) {
        Ok(doc) => doc,
        Err(problems) => {
            return Err(ConfigError {
                problems,
                file: source,
            })
        }
    };
    let mut problems = diag::Problems::default();
    let config = decode::document(&doc, base_dir, source.clone(), registry, &mut problems);
    let problems = problems.into_vec();
    match config {
        Some(config) if !problems.iter().any(Problem::is_error) => Ok(Loaded {
            config,
            warnings: problems,
        }),
        _ => Err(ConfigError {
            file: source,
            problems,
        }),
    }
}

/// The site file in its normal layout (`teebox fmt`): indentation and
/// spacing normalised, comments kept. Only KDL syntax is checked.
pub fn format(name: &str, text: &str) -> Result<String, ConfigError> {
    let mut doc = read_kdl(text).map_err(|problems| ConfigError {
        problems,
        file: Source::new(name, text),
    })?;
    doc.autoformat();
    Ok(doc.to_string())
}

/// The log format an invalid site file asks for, when its `global { log }`
/// can still be read: a file refused at start is then reported in the
/// format the operator's log collector expects.
pub fn log_format_hint(text: &str) -> Option<LogFormat> {
    let doc = read_kdl(text).ok()?;
    let log = doc.get("global")?.children()?.get("log")?;
    match log.get("format")?.as_string()? {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => None,
    }
}

/// KDL text to a document, refusing nesting the parser could not survive.
fn read_kdl(text: &str) -> Result<kdl::KdlDocument, Vec<Problem>> {
    if let Some(too_deep) = nesting::check(text) {
        return Err(vec![too_deep]);
    }
    text.parse()
        .map_err(|err| decode::syntax_problems(text, &err))
}
