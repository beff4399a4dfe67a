//! Problems found in a site file, and how they are shown.
//!
//! Every step of loading (KDL syntax, decoding, cross-checks) records its
//! problems here instead of stopping at the first, so that `teebox validate`
//! can point at every mistake in one run.

use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError,
    MietteSpanContents, NamedSource, Severity, SourceCode, SourceSpan, SpanContents,
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

    /// The fix suggested, if any: tests read an unknown option's list of
    /// the options a block takes from it (tests/docs.rs).
    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }

    pub fn span(&self) -> SourceSpan {
        self.span
    }
}

/// Collects problems while a site file is decoded.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
    /// Kept as they come: decoding asks after every node whether any error
    /// was found, and a file can hold tens of thousands of problems.
    errors: usize,
}

impl Problems {
    pub fn push(&mut self, problem: Problem) {
        self.errors += usize::from(problem.is_error());
        self.list.push(problem);
    }

    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }
}

/// The site file's name and text, shared by every problem shown.
#[derive(Debug, Clone)]
pub struct Source {
    named: NamedSource<Arc<Lines>>,
}

impl Source {
    pub fn new(name: impl AsRef<str>, text: impl Into<Arc<str>>) -> Self {
        let lines = Lines {
            text: text.into(),
            starts: std::sync::OnceLock::new(),
        };
        Source {
            named: NamedSource::new(name, Arc::new(lines)).with_language("kdl"),
        }
    }

    pub fn name(&self) -> &str {
        self.named.name()
    }

    pub fn text(&self) -> &str {
        &self.named.inner().text
    }
}

/// The site file's text with an index of where its lines start.
///
/// miette finds a span's line by scanning the text from its start, so a
/// report costs the whole file and a file with many problems takes time
/// quadratic in its size. Here each report reads only its own lines: the
/// index finds them, and miette's own scan runs over that window, so the
/// output is exactly what miette would print from the whole text.
#[derive(Debug)]
pub struct Lines {
    text: Arc<str>,
    /// Byte offsets where lines start, by miette's rule: after `\n`, after a
    /// lone `\r`, and after `\r\n` taken as one. Built on the first report.
    starts: std::sync::OnceLock<Vec<usize>>,
}

impl Lines {
    fn starts(&self) -> &[usize] {
        self.starts.get_or_init(|| {
            let bytes = self.text.as_bytes();
            let mut starts = vec![0];
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                        i += 1;
                        starts.push(i + 1);
                    }
                    b'\r' | b'\n' => starts.push(i + 1),
                    _ => {}
                }
                i += 1;
            }
            starts
        })
    }

    /// The index of the line that holds `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.starts().partition_point(|&start| start <= offset) - 1
    }
}

/// A line longer than this is shown cropped around the span: miette's
/// drawing takes time quadratic in a line's length (a minute for 70,000
/// characters) and panics past 65,535 columns.
const LONG_LINE: usize = 1024;

/// How much of a long line is shown on each side of the span, and the
/// longest underline drawn in one.
const CROP: usize = 256;

impl Lines {
    /// The part of a long line around a span that lies on it, as miette
    /// would read it were the line that short; `None` for other spans.
    fn crop_long_line(
        &self,
        span: &SourceSpan,
        context_lines_before: usize,
    ) -> Option<MietteSpanContents<'_>> {
        let starts = self.starts();
        let line = self.line_of(span.offset());
        let line_start = starts[line];
        let line_end = self.text[line_start..]
            .find(['\r', '\n'])
            .map_or(self.text.len(), |n| line_start + n);
        let end = span.offset() + span.len();
        if line_end - line_start <= LONG_LINE || end > line_end {
            return None;
        }
        let from = floor_char_boundary(
            &self.text,
            span.offset().saturating_sub(CROP).max(line_start),
        );
        let to = floor_char_boundary(&self.text, end.saturating_add(CROP).min(line_end));
        let to = if to < end { end } else { to };
        Some(MietteSpanContents::new(
            &self.text.as_bytes()[from..to],
            SourceSpan::new(from.into(), to - from),
            line,
            if context_lines_before == 0 {
                span.offset() - line_start
            } else {
                0
            },
            line,
        ))
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl SourceCode for Lines {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let text = self.text.as_bytes();
        let end = span.offset().saturating_add(span.len());
        if end > text.len() {
            // What miette says of a span past the end.
            return text.read_span(span, context_lines_before, context_lines_after);
        }
        let starts = self.starts();
        if let Some(cropped) = self.crop_long_line(span, context_lines_before) {
            return Ok(Box::new(cropped));
        }
        // One line more than miette shows before the span: for an empty span
        // at a line's start, miette's scan stops on the newline before it.
        let first = self
            .line_of(span.offset())
            .saturating_sub(context_lines_before.saturating_add(1));
        // Two lines more than miette reads after the span, so that its scan
        // stops where it would in the whole text.
        let last = self
            .line_of(end)
            .saturating_add(context_lines_after)
            .saturating_add(2);
        let from = starts[first];
        let to = starts.get(last).copied().unwrap_or(text.len());
        let window = &text[from..to];
        let local = SourceSpan::new((span.offset() - from).into(), span.len());
        let inner = window.read_span(&local, context_lines_before, context_lines_after)?;
        Ok(Box::new(MietteSpanContents::new(
            inner.data(),
            SourceSpan::new((inner.span().offset() + from).into(), inner.span().len()),
            inner.line() + first,
            inner.column(),
            inner.line_count() + first,
        )))
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

/// Reports drawn in full at most; the rest are counted. A file with
/// thousands of problems is usually one mistake repeated, and nobody reads
/// past the first screens.
pub const MAX_SHOWN: usize = 100;

/// Renders problems against their source, in file order: at most
/// [`MAX_SHOWN`], errors before warnings, then a line that counts the rest.
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
    let shown = shown(problems);
    let mut out = String::new();
    for problem in &shown {
        let report = Located { problem, source };
        // Writing into a String cannot fail.
        let _ = handler.render_report(&mut out, &report);
    }
    if let Some(hidden) = problems.len().checked_sub(shown.len()).filter(|n| *n > 0) {
        let hidden_errors = problems.iter().filter(|p| p.is_error()).count()
            - shown.iter().filter(|p| p.is_error()).count();
        out.push_str(&format!(
            "... and {hidden} more problem{} not shown ({hidden_errors} of them errors): the first {MAX_SHOWN} are above\n",
            if hidden == 1 { "" } else { "s" },
        ));
    }
    out
}

/// The problems worth drawing, in file order: all of them, or past
/// [`MAX_SHOWN`] the first ones, errors chosen before warnings.
pub fn shown(problems: &[Problem]) -> Vec<&Problem> {
    let mut shown: Vec<&Problem> = problems.iter().collect();
    if shown.len() > MAX_SHOWN {
        shown.sort_by_key(|p| (!p.is_error(), p.span.offset()));
        shown.truncate(MAX_SHOWN);
    }
    // A stable sort: problems at one place keep the order they were found in.
    shown.sort_by_key(|p| p.span.offset());
    shown
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
        let text = self.source.text();
        let primary = LabeledSpan::new_primary_with_span(
            self.problem.label.clone(),
            drawable(text, self.problem.span),
        );
        let secondary = self.problem.secondary.iter().map(|(span, label)| {
            LabeledSpan::new_with_span(Some(label.clone()), drawable(text, *span))
        });
        Some(Box::new(std::iter::once(primary).chain(secondary)))
    }
}

/// A span as it can be drawn: one on a single line is cut to [`CROP`]
/// bytes, which is what a cropped long line shows of it.
fn drawable(text: &str, span: SourceSpan) -> SourceSpan {
    let end = span.offset().saturating_add(span.len());
    match text.as_bytes().get(span.offset()..end) {
        Some(spanned)
            if span.len() > CROP && !spanned.iter().any(|b| matches!(b, b'\r' | b'\n')) =>
        {
            let cut = floor_char_boundary(text, span.offset() + CROP).max(span.offset());
            SourceSpan::new(span.offset().into(), cut - span.offset())
        }
        _ => span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything miette uses of what a source gives for a span.
    fn read(source: &dyn SourceCode, span: SourceSpan, before: usize, after: usize) -> String {
        let contents = source.read_span(&span, before, after).expect("in bounds");
        format!(
            "{:?} {:?} {} {} {}",
            std::str::from_utf8(contents.data()),
            contents.span(),
            contents.line(),
            contents.column(),
            contents.line_count()
        )
    }

    #[test]
    fn the_line_index_reads_what_miette_reads_from_the_whole_text() {
        let texts = [
            "a\nbb\nccc\n\ndddd\neeeee\nf",
            "one\r\ntwo\r\nthree\rfour\n\r\nfive\r\n",
            "no newline at all",
            "\n\n\n\n\n\n",
            "x\n",
        ];
        for text in texts {
            let lines = Lines {
                text: text.into(),
                starts: std::sync::OnceLock::new(),
            };
            for offset in 0..=text.len() {
                for len in 0..=(text.len() - offset).min(7) {
                    for (before, after) in [(0, 0), (1, 1), (2, 3), (0, 2), (5, 0)] {
                        let span = SourceSpan::new(offset.into(), len);
                        assert_eq!(
                            read(&lines, span, before, after),
                            read(&text, span, before, after),
                            "{text:?} at {offset}+{len}, context {before}/{after}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_problem_far_along_a_long_line_is_drawn_cropped_at_its_real_column() {
        // miette alone panics past 65,535 columns ("Formatting argument out
        // of range") and takes minutes before that.
        let text = format!(
            "é{} bogus {}\nnext\n",
            "a".repeat(70_000),
            "b".repeat(70_000)
        );
        let at = text.find("bogus").expect("in the text");
        let source = Source::new("long.kdl", text.as_str());
        let problems = [
            Problem::error((at, 5).into(), "the mistake").label("here"),
            Problem::warning((1, 100_000).into(), "a long span"),
        ];
        let out = render_problems(&source, &problems, Style::Plain);
        assert!(out.contains(&format!("[long.kdl:1:{}]", at + 1)), "{out}");
        assert!(out.contains(&format!(
            "{} bogus {}",
            "a".repeat(256 - 1),
            "b".repeat(250)
        )));
        assert!(out.contains("here"));
        assert!(out.len() < 10_000, "{}", out.len());
    }

    #[test]
    fn past_the_first_hundred_problems_only_a_count_is_shown() {
        let text = "x\n".repeat(150);
        let source = Source::new("many.kdl", text.as_str());
        let mut problems: Vec<Problem> = (0..150)
            .map(|i| Problem::warning((i * 2, 1).into(), format!("warning {i}")))
            .collect();
        problems.push(Problem::error((299, 1).into(), "the error"));
        let out = render_problems(&source, &problems, Style::Plain);
        // The error comes first in choosing what to show, the rest in file order.
        assert!(out.contains("the error"));
        assert!(out.contains("warning 98\n"));
        assert!(!out.contains("warning 99\n"));
        assert!(out.ends_with(
            "... and 51 more problems not shown (0 of them errors): the first 100 are above\n"
        ));
    }
}
