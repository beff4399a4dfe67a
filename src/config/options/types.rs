//! The value types options share: flags, durations, sizes, numbers,
//! words, URLs, listen addresses, files, header edits and nested blocks. A node with a value
//! of its own (the `upgrades` list, a CA bundle) implements [`Value`]
//! beside its table.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;

use kdl::{KdlEntry, KdlNode};

use super::{Table, Value};
use crate::config::diag::Problem;
use crate::config::reader::Reader;
use crate::config::value::{self, Spanned};
use crate::message::header_ops::HeaderOp;

/// `#true` or `#false`.
#[derive(Debug)]
pub struct Flag;

impl Value for Flag {
    type Out = bool;
    fn describe(&self) -> Cow<'static, str> {
        "#true / #false".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "#true or #false".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<bool> {
        r.check(value::boolean(entry))
    }
}

/// `"500ms"`, `"2s"`, `"1m"`: see [`value::duration`].
#[derive(Debug)]
pub struct Duration {
    /// Zero is refused (timeouts, intervals).
    pub positive: bool,
}

impl Duration {
    pub const ANY: Duration = Duration { positive: false };
    pub const POSITIVE: Duration = Duration { positive: true };
}

impl Value for Duration {
    type Out = std::time::Duration;
    fn describe(&self) -> Cow<'static, str> {
        match self.positive {
            true => "duration > 0".into(),
            false => "duration".into(),
        }
    }
    fn expects(&self) -> Cow<'static, str> {
        "a duration such as \"5s\"".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        match self.positive {
            true => r.check(value::positive_duration(entry)),
            false => r.check(value::duration(entry)),
        }
    }
}

/// A byte size: `4096`, `"64KiB"`, `"1MiB"`.
#[derive(Debug)]
pub struct Size;

impl Value for Size {
    type Out = u64;
    fn describe(&self) -> Cow<'static, str> {
        "size".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a size such as \"1MiB\"".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<u64> {
        r.check(value::size(entry))
    }
}

/// A whole number in `min..=max`.
#[derive(Debug)]
pub struct Int {
    pub min: i128,
    pub max: i128,
}

impl Value for Int {
    type Out = i128;
    fn describe(&self) -> Cow<'static, str> {
        format!("{}–{}", self.min, self.max).into()
    }
    fn expects(&self) -> Cow<'static, str> {
        format!("a whole number from {} to {}", self.min, self.max).into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<i128> {
        r.check(value::integer(entry, self.min, self.max))
    }
}

/// A number from 0 to 1.
#[derive(Debug)]
pub struct Fraction;

impl Value for Fraction {
    type Out = f64;
    fn describe(&self) -> Cow<'static, str> {
        "number 0–1".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a fraction from 0 to 1".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<f64> {
        r.check(value::fraction(entry))
    }
}

/// A string; `empty` says whether `""` is one.
#[derive(Debug)]
pub struct Text {
    pub empty: bool,
}

impl Text {
    pub const ANY: Text = Text { empty: true };
    pub const NON_EMPTY: Text = Text { empty: false };
}

impl Value for Text {
    type Out = String;
    fn describe(&self) -> Cow<'static, str> {
        "string".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a string".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<String> {
        match self.empty {
            true => r.check(value::string(entry)),
            false => r.check(value::non_empty_string(entry)),
        }
    }
}

/// One of a fixed set of words.
#[derive(Debug)]
pub struct OneOf(pub &'static [&'static str]);

impl Value for OneOf {
    type Out = &'static str;
    fn describe(&self) -> Cow<'static, str> {
        self.0.join(", ").into()
    }
    fn expects(&self) -> Cow<'static, str> {
        format!("one of: {}", self.0.join(", ")).into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<&'static str> {
        r.check(value::one_of(entry, self.0))
    }
}

/// A final HTTP status, 200 to 599.
#[derive(Debug)]
pub struct Status;

impl Value for Status {
    type Out = http::StatusCode;
    fn describe(&self) -> Cow<'static, str> {
        "status 200–599".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a status code".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        r.check(value::final_status(entry))
    }
}

/// Upstream or target URLs; a list names each place once.
#[derive(Debug)]
pub struct Url {
    /// What a node missing them needs: `one or more upstream URLs, such as …`.
    pub expects: &'static str,
}

impl Value for Url {
    type Out = value::UpstreamUrl;
    fn describe(&self) -> Cow<'static, str> {
        "URLs, each listed once".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        self.expects.into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        r.check(value::upstream_url(entry))
    }
    fn list(
        &self,
        _: &'static str,
        entries: &[&KdlEntry],
        r: &mut Reader,
    ) -> Option<Vec<Self::Out>> {
        r.urls(entries)
    }
}

/// Listen addresses (`"127.0.0.1:8080"`, `":8080"`), each with the span of
/// its value; a list names each address once.
#[derive(Debug)]
pub struct ListenAddress {
    /// What a node missing one needs: `one listen address, such as …`.
    pub expects: &'static str,
}

impl Value for ListenAddress {
    type Out = Spanned<SocketAddr>;
    fn describe(&self) -> Cow<'static, str> {
        "listen address".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        self.expects.into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        r.check(value::listen_address(entry))
            .map(|addr| Spanned::new(addr, value::value_span(entry)))
    }
    /// Every address that can be read, each once: one that cannot, or one
    /// listed again, is reported and left out.
    fn list(
        &self,
        name: &'static str,
        entries: &[&KdlEntry],
        r: &mut Reader,
    ) -> Option<Vec<Self::Out>> {
        let mut seen: Vec<Spanned<SocketAddr>> = Vec::new();
        for entry in entries {
            let Some(addr) = self.entry(name, entry, r) else {
                continue;
            };
            if let Some(first) = seen.iter().find(|a| a.value == addr.value) {
                r.push(
                    Problem::error(addr.span, format!("address {} is listed twice", addr.value))
                        .label("again")
                        .also(first.span, "first here"),
                );
                continue;
            }
            seen.push(addr);
        }
        Some(seen)
    }
}

/// A file teebox writes: its directory must exist (see
/// [`Reader::file_to_write`]).
#[derive(Debug)]
pub struct FileToWrite {
    /// What the file is, in messages: "record file".
    pub what: &'static str,
}

impl Value for FileToWrite {
    type Out = PathBuf;
    fn describe(&self) -> Cow<'static, str> {
        "file path, relative to the site file".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a file path".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<PathBuf> {
        r.file_to_write(entry, self.what)
    }
}

/// A regular expression over text.
#[derive(Debug)]
pub struct Regex;

impl Value for Regex {
    type Out = regex::Regex;
    fn describe(&self) -> Cow<'static, str> {
        "regular expression".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a regular expression".into()
    }
    fn entry(&self, _: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        r.check(value::regex(entry, regex::Regex::new))
    }
}

/// A header edit node: `header_up "Name" "value"` sets, `"-Name"` removes,
/// `"+Name" "value"` adds.
#[derive(Debug)]
pub struct HeaderEdit;

impl Value for HeaderEdit {
    type Out = HeaderOp;
    fn describe(&self) -> Cow<'static, str> {
        "\"Name\" \"v\" set, \"+Name\" \"v\" add, \"-Name\" remove".into()
    }
    fn expects(&self) -> Cow<'static, str> {
        "a header name".into()
    }
    fn node(&self, _: &'static str, node: &KdlNode, r: &mut Reader) -> Option<HeaderOp> {
        r.header_op(node)
    }
}

/// A nested block with options of its own, read by its node's decoder.
#[derive(Debug)]
pub struct Nested(pub &'static Table);

impl Value for Nested {
    type Out = ();
    fn describe(&self) -> Cow<'static, str> {
        match super::has_block(self.0) {
            true => "block".into(),
            false => "properties".into(),
        }
    }
    fn expects(&self) -> Cow<'static, str> {
        "a block".into()
    }
    fn node(&self, _: &'static str, _: &KdlNode, _: &mut Reader) -> Option<()> {
        Some(())
    }
    fn nested(&self) -> Option<&'static Table> {
        Some(self.0)
    }
}
