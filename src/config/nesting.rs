//! How deep a site file nests, measured before the KDL parser reads it.
//!
//! kdl's parser recurses once per block (`{`) and once per nested block
//! comment (`/* /* */ */`), so a few thousand levels overflow the stack and
//! abort the process: a typo-sized file could kill a running server on
//! reload. A site file needs five levels at most (site, route, handler,
//! option, a header block), so anything past [`MAX_DEPTH`] is refused here,
//! with a diagnostic, by a scan that keeps no stack of its own.

use super::diag::Problem;

/// The deepest nesting of blocks, and of block comments, a site file may have.
pub const MAX_DEPTH: usize = 16;

/// The most slashdashes (`/-`) in a row: kdl's parser recurses once for each
/// one that comments out the next.
pub const MAX_SLASHDASHES: usize = 16;

/// The first place where the text nests deeper than [`MAX_DEPTH`], chains
/// more than [`MAX_SLASHDASHES`] slashdashes, or leaves a string or block
/// comment open, if any.
///
/// The scan knows just enough KDL to tell code from text: strings (quoted,
/// multi-line, raw with `#`s), line comments and nested block comments.
/// A string or block comment left open is refused here, not passed on: the
/// file is invalid anyway, and the parser, recovering, would read on past it
/// as code this scan never looked at. Whatever else the text holds is the
/// parser's business.
pub fn check(text: &str) -> Option<Problem> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut slashdashes = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => match skip_quoted(text, i) {
                Ok(end) => i = end,
                Err(unclosed) => return Some(unclosed),
            },
            b'#' => match skip_raw(bytes, i) {
                Ok(end) => i = end,
                Err(unclosed) => return Some(unclosed),
            },
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = line_end(text, i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                match skip_block_comment(bytes, i) {
                    Ok(end) => i = end,
                    Err(problem) => return Some(problem),
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'-') => {
                slashdashes += 1;
                if slashdashes > MAX_SLASHDASHES {
                    return Some(too_many_slashdashes(i));
                }
                i += 2;
                continue;
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(too_deep(i, 1, "blocks"));
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            // Space and line continuations keep a slashdash chain going.
            b' ' | b'\t' | b'\\' | b'\n' | b'\r' | 0x0B | 0x0C => {
                i += 1;
                continue;
            }
            b if b >= 0x80 => {
                let c = text[i..].chars().next().unwrap_or(' ');
                i += c.len_utf8();
                if c.is_whitespace() {
                    continue;
                }
            }
            _ => i += 1,
        }
        slashdashes = 0;
    }
    None
}

fn too_deep(offset: usize, len: usize, what: &str) -> Problem {
    Problem::error(
        (offset, len).into(),
        format!("{what} nested deeper than {MAX_DEPTH} levels"),
    )
    .label(format!("level {}", MAX_DEPTH + 1))
    .help(format!(
        "a site file needs five levels at most (site, route, handler, option, header block); teebox reads at most {MAX_DEPTH}"
    ))
}

fn too_many_slashdashes(offset: usize) -> Problem {
    Problem::error(
        (offset, 2).into(),
        format!("more than {MAX_SLASHDASHES} slashdashes (`/-`) in a row"),
    )
    .label(format!("slashdash {}", MAX_SLASHDASHES + 1))
    .help(format!(
        "one `/-` comments out the node, value or block after it; teebox reads at most {MAX_SLASHDASHES} in a row"
    ))
}

fn unclosed(offset: usize, len: usize, what: &str, label: &str) -> Problem {
    Problem::error((offset, len).into(), format!("unclosed {what}")).label(label)
}

/// Where a line comment starting at `start` ends: at the first of KDL's
/// newlines (CR, LF, NEL, VT, FF, LS, PS), where the parser ends it too.
fn line_end(text: &str, start: usize) -> usize {
    text[start..]
        .find([
            '\r', '\n', '\u{85}', '\u{b}', '\u{c}', '\u{2028}', '\u{2029}',
        ])
        .map_or(text.len(), |n| start + n)
}

/// Past a string that starts with `"` at `start`: `"…"` with backslash
/// escapes on one line, or `"""…"""` across lines.
fn skip_quoted(text: &str, start: usize) -> Result<usize, Problem> {
    let bytes = text.as_bytes();
    let multi_line = bytes[start..].starts_with(b"\"\"\"");
    let mut i = start + if multi_line { 3 } else { 1 };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i = past_escape(text, i),
            b'"' if !multi_line => return Ok(i + 1),
            b'"' if bytes[i..].starts_with(b"\"\"\"") => return Ok(i + 3),
            b'\r' | b'\n' | 0x0B | 0x0C if !multi_line => break,
            // Whole characters past ASCII: some of them are newlines too,
            // and a byte index must never land inside one.
            b if b >= 0x80 => {
                let c = text[i..].chars().next().unwrap_or(' ');
                if !multi_line && matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}') {
                    break;
                }
                i += c.len_utf8();
            }
            _ => i += 1,
        }
    }
    // The words decode.rs gives the parser's own report of these, so a
    // file reads the same whichever of the two finds it first.
    Err(if multi_line {
        let after = &text[start + 3..];
        let newline = match after.chars().next() {
            Some(_) if after.starts_with("\r\n") => 2,
            Some(c) if line_end(after, 0) == 0 => c.len_utf8(),
            _ => 0,
        };
        unclosed(start, 3 + newline, "multi-line string", "opened here")
            .help(r#"end it with """ on a line of its own"#)
    } else {
        unclosed(start, i - start, "string", "not closed on this line")
            .help(r#"close it with " on the same line; a multi-line string starts and ends with """ on lines of their own"#)
    })
}

/// Past the escape whose `\` is at `at`: a whitespace escape takes every
/// space and newline after it (a line continuation), any other one char.
fn past_escape(text: &str, at: usize) -> usize {
    let rest = &text[at + 1..];
    match rest.chars().next() {
        None => text.len(),
        Some(c) if c.is_whitespace() => {
            at + 1
                + rest
                    .find(|c: char| !c.is_whitespace())
                    .unwrap_or(rest.len())
        }
        Some(c) => at + 1 + c.len_utf8(),
    }
}

/// Past a raw string (`#"…"#`, `##"""…"""##`) starting at `start`, or just
/// past the `#` when it starts a keyword such as `#true`.
fn skip_raw(bytes: &[u8], start: usize) -> Result<usize, Problem> {
    let hashes = bytes[start..].iter().take_while(|&&b| b == b'#').count();
    let open = start + hashes;
    if bytes.get(open) != Some(&b'"') {
        return Ok(start + 1);
    }
    let quotes = if bytes[open..].starts_with(b"\"\"\"") {
        3
    } else {
        1
    };
    let body = open + quotes;
    let mut i = body;
    while let Some(n) = memchr::memchr(b'"', &bytes[i..]) {
        let at = i + n;
        let closes = bytes[at..].starts_with(&b"\"\"\""[..quotes])
            && bytes[at + quotes..]
                .iter()
                .take(hashes)
                .filter(|&&b| b == b'#')
                .count()
                == hashes;
        if closes {
            return Ok(at + quotes + hashes);
        }
        i = at + 1;
    }
    Err(unclosed(
        start,
        hashes + quotes,
        "raw string",
        "opened here and never closed",
    )
    .help("close it with a `\"` followed by as many `#` as open it"))
}

/// Past a block comment starting at `start` (KDL's nest: `/* /* */ */`),
/// or the problem: it opens one level too many, or is never closed.
fn skip_block_comment(bytes: &[u8], start: usize) -> Result<usize, Problem> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep(i, 2, "block comments"));
                }
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(unclosed(
        start,
        2,
        "block comment",
        "opened here and never closed",
    )
    .help("close it with `*/`; block comments nest, so each `/*` inside it needs a `*/` of its own"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("x {}{}", "{ a ".repeat(levels), "}".repeat(levels))
    }

    proptest::proptest! {
        /// Any text at all: the scan ends, without panicking.
        #[test]
        fn any_text_is_scanned_without_panicking(
            text in "(\\PC|[\"#/*{}\\\\\r\n\u{85}\u{2028} -]){0,64}"
        ) {
            let _ = check(&text);
        }
    }

    #[test]
    fn strings_of_characters_past_ascii_are_read_whole() {
        assert!(check("a \"霓 Ѩ 񘼡\" b").is_none());
        let open = check("a \"霓 Ѩ\u{2028}\" b").expect("a line separator ends the string");
        assert_eq!(open.span().offset(), 2);
        assert!(check("// 霓\na \"\"\"\n霓\u{2028}\n\"\"\"").is_none());
    }

    #[test]
    fn the_limit_itself_is_fine_one_more_is_refused_at_its_brace() {
        assert!(check(&nested(MAX_DEPTH)).is_none());
        let text = nested(MAX_DEPTH + 1);
        let problem = check(&text).expect("too deep");
        assert_eq!(problem.span().offset(), 2 + 4 * MAX_DEPTH);
        assert_eq!(&text[problem.span().offset()..][..1], "{");
    }

    #[test]
    fn thousands_of_levels_are_refused_without_recursion() {
        assert!(check(&nested(100_000)).is_some());
        let comments = format!("{}{}", "/* ".repeat(100_000), "*/ ".repeat(100_000));
        let problem = check(&comments).expect("too deep");
        assert!(problem.message().starts_with("block comments"));
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_count() {
        let deep = "{".repeat(40);
        for text in [
            format!("a \"{deep}\""),
            format!("a \"\\\"{deep}\""),
            format!("a \"\"\"\n{deep}\n\"\"\""),
            format!("a #\"{deep}\"#"),
            format!("a ##\"\"#{deep}\"##"),
            format!("a #\"\"\"\n\"{deep}\n\"\"\"#"),
            format!("// {deep}\na 1"),
            format!("/* {deep} /* {deep} */ */ a 1"),
            "a #true { b #false }".to_string(),
        ] {
            assert!(check(&text).is_none(), "{text}");
        }
    }

    #[test]
    fn block_comments_nest_to_the_limit() {
        let ok = format!("{}{}", "/* ".repeat(MAX_DEPTH), "*/ ".repeat(MAX_DEPTH));
        assert!(check(&ok).is_none());
        let over = format!(
            "{}{}",
            "/* ".repeat(MAX_DEPTH + 1),
            "*/ ".repeat(MAX_DEPTH + 1)
        );
        assert!(check(&over).is_some());
    }

    #[test]
    fn unclosed_strings_and_comments_are_refused_where_they_open() {
        for (text, at, message) in [
            ("a \"open", 2, "unclosed string"),
            ("a #\"open", 2, "unclosed raw string"),
            ("a /* open", 2, "unclosed block comment"),
            ("a \"\"\"\nopen", 2, "unclosed multi-line string"),
            ("a \"open\nb \"{{{\"", 2, "unclosed string"),
            ("a \"open\r{{{\"", 2, "unclosed string"),
            ("a \"open\u{2028}{{{\"", 2, "unclosed string"),
        ] {
            let problem = check(text).expect(text);
            assert_eq!(problem.message(), message, "{text:?}");
            assert_eq!(problem.span().offset(), at, "{text:?}");
        }
        assert!(check("a \\").is_none());
    }

    #[test]
    fn an_escaped_line_break_keeps_a_string_open() {
        for text in [
            "a \"x\\\n  y\"",
            "a \"x\\\r\n  y\"",
            "a \"x\\ \u{2028} y\"",
            "a \"x\\\"\"",
        ] {
            assert!(check(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn a_line_comment_ends_at_every_kdl_newline() {
        for newline in ["\r", "\u{85}", "\u{b}", "\u{c}", "\u{2028}", "\u{2029}"] {
            let text = format!("// c{newline}{}", nested(MAX_DEPTH + 1));
            assert!(check(&text).is_some(), "{text:?}");
        }
    }

    #[test]
    fn slashdashes_chain_to_the_limit() {
        let chain = |n: usize| format!("x {}1", "/- ".repeat(n));
        assert!(check(&chain(MAX_SLASHDASHES)).is_none());
        let problem = check(&chain(MAX_SLASHDASHES + 1)).expect("too many");
        assert_eq!(problem.span().offset(), 2 + 3 * MAX_SLASHDASHES);
        // Comments and line continuations keep a chain going; anything else ends it.
        let through = format!("{}x", "/- /* c */ \\\n// c\n".repeat(MAX_SLASHDASHES + 1));
        assert!(check(&through).is_some());
        let apart = format!("x {}", "/- 1 ".repeat(1000));
        assert!(check(&apart).is_none());
    }
}
