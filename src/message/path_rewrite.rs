//! A request's path rewritten: replaced whole, or edited (a prefix
//! stripped, then a regex applied, then a prefix added). The `rewrite`
//! handler applies one to the request; a `mirror` applies its own to its
//! copies only. Both read theirs from a `rewrite` node, decoded in
//! `crate::handlers::rewrite`.

use http::uri::PathAndQuery;
use http::Uri;
use regex::Regex;

#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Replace the path, and the query when `Some`.
    Replace {
        path: String,
        query: Option<String>,
    },
    Edit(PathEdit),
}

#[derive(Debug, Clone, Default)]
pub struct PathEdit {
    strip_prefix: Option<String>,
    regex: Option<(Regex, String)>,
    add_prefix: Option<String>,
}

impl PathEdit {
    /// `strip_prefix` strips whole segments only: `/api` comes off `/api`
    /// and `/api/x`, but not off `/apiary`. `regex` is a pattern and its
    /// replacement (`$1` for captures).
    pub fn new(
        strip_prefix: Option<String>,
        regex: Option<(Regex, String)>,
        add_prefix: Option<String>,
    ) -> PathEdit {
        PathEdit {
            strip_prefix,
            regex,
            add_prefix,
        }
    }

    pub fn apply(&self, path: &str) -> String {
        let mut out = path;
        if let Some(prefix) = &self.strip_prefix {
            out = strip_path_prefix(out, prefix).unwrap_or(out);
        }
        let mut out = match &self.regex {
            Some((re, replace)) => re.replace(out, replace.as_str()).into_owned(),
            None => out.to_string(),
        };
        if let Some(prefix) = &self.add_prefix {
            out.insert_str(0, prefix);
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        out
    }
}

/// `path` without `prefix`, when `prefix` covers whole segments of it: the
/// path is the prefix, or goes on with `/` right after it (`/api` strips
/// from `/api` and `/api/x`, not from `/apiary`). A prefix that ends with
/// `/` ends on a segment boundary by itself and strips as written.
fn strip_path_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

impl Rewrite {
    /// The URI with its path rewritten; `None` if a regex replacement made
    /// something that is not a path.
    pub fn rewrite(&self, uri: &Uri) -> Option<Uri> {
        let path_and_query = match self {
            Rewrite::Replace { path, query } => match query.as_deref().or(uri.query()) {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            },
            Rewrite::Edit(edit) => {
                let path = edit.apply(uri.path());
                match uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                }
            }
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
        Uri::from_parts(parts).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_in_order() {
        let edit = PathEdit {
            strip_prefix: Some("/api".into()),
            regex: Some((Regex::new(r"^/users/(\d+)").unwrap(), "/people/$1".into())),
            add_prefix: Some("/v2".into()),
        };
        assert_eq!(edit.apply("/api/users/7/x"), "/v2/people/7/x");
        assert_eq!(edit.apply("/other"), "/v2/other");
        let strip = PathEdit {
            strip_prefix: Some("/api".into()),
            ..Default::default()
        };
        assert_eq!(strip.apply("/api"), "/");
        assert_eq!(strip.apply("/api/"), "/");
        assert_eq!(strip.apply("/api/x/y"), "/x/y");
    }

    #[test]
    fn strip_prefix_strips_whole_segments_only() {
        let strip = |prefix: &str, path: &str| {
            PathEdit {
                strip_prefix: Some(prefix.into()),
                ..Default::default()
            }
            .apply(path)
        };
        assert_eq!(strip("/api", "/apiary"), "/apiary");
        assert_eq!(strip("/api", "/api-v2/x"), "/api-v2/x");
        assert_eq!(strip("/api", "/ap"), "/ap");
        assert_eq!(strip("/api", "/api/x"), "/x");
        assert_eq!(strip("/a/b", "/a/bc"), "/a/bc");
        assert_eq!(strip("/a/b", "/a/b/c"), "/c");
        // A prefix ending with `/` strips as written.
        assert_eq!(strip("/api/", "/api/x"), "/x");
        assert_eq!(strip("/api/", "/api"), "/api");
        assert_eq!(strip("/", "/x"), "/x");
    }
}
