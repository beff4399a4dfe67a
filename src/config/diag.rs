//! Problems found in a site file, and how they are shown.
//!
//! Every step of loading (KDL syntax, decoding, cross-checks) records its
//! problems here instead of stopping at the first, so that `teebox validate`
//! can point at every mistake in one run.

use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity,
    SourceSpan,
};

/// One mistake (or warning) at one place in the site file.
#[derive(Debug, Clone)]
pub struct Problem {
    severity: Severity,
    message: String,
    span: SourceSpan,
    label: Option<String>,
    /// Further places worth showing, e.g. where a duplicate was first set.
    secondary: Vec<(SourceSpan, String)>,
    help: Option<String>,
}

impl Problem {
    pub fn error(span: SourceSpan, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: None,
            secondary: Vec::new(),
            help: None,
        }
    }

    pub fn warning(span: SourceSpan, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(span, message)
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn also(mut self, span: SourceSpan, label: impl Into<String>) -> Self {
        self.secondary.push((span, label.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn span(&self) -> SourceSpan {
        self.span
    }
}

/// Collects problems while a site file is decoded.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn push(&mut self, problem: Problem) {
        self.list.push(problem);
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(Problem::is_error)
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }
}

/// The site file's name and text, shared by every problem shown.
#[derive(Debug, Clone)]
pub struct Source {
    named: NamedSource<Arc<str>>,
}

impl Source {
    pub fn new(name: impl AsRef<str>, text: impl Into<Arc<str>>) -> Self {
        Source {
            named: NamedSource::new(name, text.into()).with_language("kdl"),
        }
    }

    pub fn name(&self) -> &str {
        self.named.name()
    }

    pub fn text(&self) -> &str {
        self.named.inner()
    }
}

/// A site file that cannot be used, with everything wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", file.name(), summary(problems))]
pub struct ConfigError {
    pub file: Source,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// Renders every problem as a miette report, followed by a summary line.
    pub fn render(&self, style: Style) -> String {
        render_problems(&self.file, &self.problems, style) + &format!("{self}\n")
    }
}

fn summary(problems: &[Problem]) -> String {
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let warnings = problems.len() - errors;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match warnings {
        0 => plural(errors, "error"),
        _ => format!(
            "{}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        ),
    }
}

/// How reports are drawn: colours for a terminal, plain for files and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Color,
    Plain,
}

/// Renders problems against their source, in file order.
pub fn render_problems(source: &Source, problems: &[Problem], style: Style) -> String {
    let theme = match style {
        Style::Color => GraphicalTheme::unicode(),
        Style::Plain => GraphicalTheme::unicode_nocolor(),
    };
    // A fixed width keeps the output identical on every terminal, which is
    // what the `.expected` files in testdata/ rely on.
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(120)
        .with_links(false);
    let mut sorted: Vec<&Problem> = problems.iter().collect();
    sorted.sort_by_key(|p| p.span.offset());
    let mut out = String::new();
    for problem in sorted {
        let report = Located { problem, source };
        // Writing into a String cannot fail.
        let _ = handler.render_report(&mut out, &report);
    }
    out
}

/// A problem paired with the source it points into, as miette wants it.
struct Located<'a> {
    problem: &'a Problem,
    source: &'a Source,
}

impl fmt::Debug for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.problem, f)
    }
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for Located<'_> {}

impl Diagnostic for Located<'_> {
    fn severity(&self) -> Option<Severity> {
        Some(self.problem.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problem
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source.named)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let primary =
            LabeledSpan::new_primary_with_span(self.problem.label.clone(), self.problem.span);
        let secondary = self
            .problem
            .secondary
            .iter()
            .map(|(span, label)| LabeledSpan::new_with_span(Some(label.clone()), *span));
        Some(Box::new(std::iter::once(primary).chain(secondary)))
    }
}
