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

/// The first place where the text nests deeper than [`MAX_DEPTH`], if any.
///
/// The scan knows just enough KDL to tell code from text: strings (quoted,
/// multi-line, raw with `#`s), line comments and nested block comments.
/// Whatever else the text holds is the parser's business.
pub fn check(text: &str) -> Option<Problem> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = skip_quoted(bytes, i),
            b'#' => i = skip_raw(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => match skip_block_comment(bytes, i) {
                Ok(end) => i = end,
                Err(at) => return Some(too_deep(at, 2, "block comments")),
            },
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
            _ => i += 1,
        }
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

/// Past a string that starts with `"` at `start`: `"…"` with backslash
/// escapes, or `"""…"""` across lines.
fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let multi_line = bytes[start..].starts_with(b"\"\"\"");
    let mut i = start + if multi_line { 3 } else { 1 };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' if !multi_line => return i + 1,
            b'"' if bytes[i..].starts_with(b"\"\"\"") => return i + 3,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Past a raw string (`#"…"#`, `##"""…"""##`) starting at `start`, or just
/// past the `#` when it starts a keyword such as `#true`.
fn skip_raw(bytes: &[u8], start: usize) -> usize {
    let hashes = bytes[start..].iter().take_while(|&&b| b == b'#').count();
    let open = start + hashes;
    if bytes.get(open) != Some(&b'"') {
        return start + 1;
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
            return at + quotes + hashes;
        }
        i = at + 1;
    }
    bytes.len()
}

/// Past a block comment starting at `start` (KDL's nest: `/* /* */ */`),
/// or `Err` with where it opens one level too many.
fn skip_block_comment(bytes: &[u8], start: usize) -> Result<usize, usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(i);
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
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("x {}{}", "{ a ".repeat(levels), "}".repeat(levels))
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
    fn unclosed_things_end_the_scan_quietly() {
        for text in [
            "a \"open",
            "a #\"open",
            "a /* open",
            "a \"\"\"\nopen",
            "a \\",
        ] {
            assert!(check(text).is_none());
        }
    }
}
