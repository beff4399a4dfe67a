//! KDL syntax errors as problems, in the words a reader of the site
//! file needs.

use kdl::KdlError;
use miette::SourceSpan;

use crate::config::diag::Problem;

/// Turns kdl's syntax errors into problems, with a clearer word for the most
/// common habits from elsewhere: KDL v1's bare `true`, `false` and `null`,
/// and nginx's `# comments`.
pub fn syntax_problems(text: &str, err: &KdlError) -> Vec<Problem> {
    let mut bare_words = Vec::new();
    let mut others = Vec::new();
    let mut comment_lines = Vec::new();
    for d in &err.diagnostics {
        let span = d.span;
        let found = text
            .get(span.offset()..span.offset() + span.len())
            .unwrap_or("");
        let message = d.message.as_deref().unwrap_or("");
        if crate::config::habits::is_hash_comment(message, found) {
            // kdl may stumble more than once on one comment's words.
            let line = text
                .get(..span.offset())
                .map_or(0, |t| t.matches('\n').count());
            if !comment_lines.contains(&line) {
                comment_lines.push(line);
                bare_words.push(crate::config::habits::hash_comment(SourceSpan::new(
                    span.offset().into(),
                    1,
                )));
            }
            continue;
        }
        if let Some(word) = ["true", "false", "null"].into_iter().find(|w| *w == found) {
            bare_words.push(
                Problem::error(span, format!("bare `{word}` is not a KDL v2 value"))
                    .label(format!("use #{word}"))
                    .help(format!(
                        "KDL v2 writes booleans and null with a #: use #{word} (or \"{word}\" if you meant a string)"
                    )),
            );
            continue;
        }
        let message = d.message.clone().unwrap_or_else(|| "invalid KDL".into());
        let digits = !found.is_empty() && found.bytes().all(|b| b.is_ascii_digit());
        let known = match message.as_str() {
            "No closing '}' for child block" => Some((
                "unclosed block: this `{` has no matching `}`",
                "opened here",
                "add the missing `}`",
            )),
            "Unexpected newline in single-line quoted string" => Some((
                "unclosed string",
                "not closed on this line",
                "close it with \" on the same line; a multi-line string starts and ends with \"\"\" on lines of their own",
            )),
            "Expected quoted string" if found.starts_with("\"\"\"") => Some((
                "unclosed multi-line string",
                "opened here",
                "end it with \"\"\" on a line of its own",
            )),
            "Expected end of document" if found == "}" => Some((
                "unexpected `}`: no block is open here",
                "nothing to close",
                "remove it, or look for a block closed too early above",
            )),
            _ if digits => Some((
                "number out of range",
                "too large",
                "integers must fit in 128 bits; no option takes one this large",
            )),
            _ => None,
        };
        let cascade = matches!(
            message.as_str(),
            "No closing '}' for child block"
                | "Closing '}' was not found after nodes"
                | "Expected end of document"
        );
        others.push((
            cascade,
            match known {
                Some((message, label, help)) => {
                    Problem::error(span, message).label(label).help(help)
                }
                None => {
                    let p = Problem::error(span, format!("KDL syntax error: {message}"))
                        .label(d.label.clone().unwrap_or_else(|| "here".into()));
                    match &d.help {
                        Some(help) => p.help(help.clone()),
                        None => p,
                    }
                }
            },
        ));
    }
    // After a real syntax error kdl's recovery reports follow-on errors
    // that only confuse; the first one is the one to fix. Bare `true` and
    // friends, and `#` comments, are independent of each other, so each
    // is kept.
    // A block left open is often the echo of another mistake inside it.
    others.sort_by_key(|(cascade, p)| (*cascade, p.span().offset()));
    bare_words.extend(others.into_iter().take(1).map(|(_, p)| p));
    bare_words
}
