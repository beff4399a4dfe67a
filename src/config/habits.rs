//! Habits from nginx and other config files that KDL reads differently:
//! `# comments` and `'single quoted'` strings. Each gets a message in KDL's
//! own spelling instead of a parser's raw complaint, or instead of being
//! taken silently as text with the quote marks in it.

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::diag::Problem;
use super::value::value_span;

/// Whether a syntax error kdl reports at `found` (the text under its span)
/// is a `#` meant to start a comment: a `#` on its own or followed by a
/// word that is no KDL keyword (`#true`, `#null`, `#inf`, ...), which a
/// mistyped keyword would be, and no raw string (`#"..."#`).
pub fn is_hash_comment(message: &str, found: &str) -> bool {
    if !matches!(message, "Found invalid node name" | "Expected keyword") {
        return false;
    }
    let Some(after) = found.strip_prefix('#') else {
        return false;
    };
    if after.starts_with(['"', '#']) {
        return false;
    }
    let word = after.split_whitespace().next().unwrap_or("");
    let keywords = ["true", "false", "null", "nan", "inf", "-inf"];
    !keywords.iter().any(|k| k.eq_ignore_ascii_case(word))
}

pub fn hash_comment(span: SourceSpan) -> Problem {
    Problem::error(span, "`#` does not start a comment in KDL")
        .label("use //")
        .help("KDL comments are // to the end of the line, or /* ... */; /- comments out a whole node")
}

/// Every node name, property name and bare value in the document written
/// between single quotes. KDL takes `'X-A'` as a bare word, quote marks
/// and all, so it would reach a header or a body as typed.
pub fn single_quotes(doc: &KdlDocument) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut stack: Vec<&KdlNode> = doc.nodes().iter().collect();
    stack.reverse();
    while let Some(node) = stack.pop() {
        let name = node.name();
        if let Some(p) = quoted(name.repr().unwrap_or(name.value()), name.span()) {
            problems.push(p);
        }
        for entry in node.entries() {
            if let Some(key) = entry.name() {
                if let Some(p) = quoted(key.repr().unwrap_or(key.value()), key.span()) {
                    problems.push(p);
                }
            }
            if let Some(p) = bare_value(entry).and_then(|repr| quoted(repr, value_span(entry))) {
                problems.push(p);
            }
        }
        if let Some(children) = node.children() {
            stack.extend(children.nodes().iter().rev());
        }
    }
    problems
}

/// How a string value was written, when kdl kept it.
fn bare_value(entry: &KdlEntry) -> Option<&str> {
    match entry.value() {
        KdlValue::String(s) => Some(entry.format().map_or(s.as_str(), |f| f.value_repr.as_str())),
        _ => None,
    }
}

fn quoted(written: &str, span: SourceSpan) -> Option<Problem> {
    let inner = written.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(
        Problem::error(
            span,
            format!("KDL strings use double quotes: write \"{inner}\""),
        )
        .label("the single quotes would be part of the text")
        .help(format!(
            "write \"{inner}\"; if the quote marks are meant, write \"'{inner}'\""
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_comments_are_told_from_keywords_and_raw_strings() {
        assert!(is_hash_comment("Found invalid node name", "#"));
        assert!(is_hash_comment("Expected keyword", "# ok"));
        assert!(is_hash_comment("Expected keyword", "#ok"));
        assert!(!is_hash_comment("Expected keyword", "#True"));
        assert!(!is_hash_comment("Expected keyword", "#-INF"));
        assert!(!is_hash_comment("Expected keyword", "#\"raw"));
        assert!(!is_hash_comment(
            "Unexpected newline in single-line quoted string",
            "#"
        ));
    }

    #[test]
    fn only_bare_single_quoted_words_are_flagged() {
        let doc: KdlDocument = r#"'a' 'b' "'c'" d='e' 'f'=1 g { 'h' }"#.parse().unwrap();
        let found: Vec<String> = single_quotes(&doc)
            .iter()
            .map(|p| p.message().to_string())
            .collect();
        let want = ["a", "b", "e", "f", "h"]
            .map(|w| format!("KDL strings use double quotes: write \"{w}\""));
        assert_eq!(found, want);
    }
}
