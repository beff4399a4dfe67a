//! Options declared once.
//!
//! Each option a node takes is one [`Spec`]: its name, where it is written
//! ([`Place`]: a child node of the block, a `name=` property, an argument),
//! whether it may be given more than once, its value type (a [`Value`]), what
//! holds when it is not given ([`Unset`]) and a one-line description. A node
//! declares its options as one static [`Table`], in the order its
//! diagnostics list them, and that table is the only place any of this is
//! written:
//!
//! - [`read`] sorts a block's children by the table, with the "unknown
//!   option", "did you mean" and "duplicate option" diagnostics of
//!   [`Reader::options`];
//! - [`Block`]'s typed accessors give each option's value, parsed by its
//!   value type, or its declared default (parsed from the declaration's text
//!   by the same parser, so a default is always a value a user could write);
//! - [`reference`] prints the table (`teebox validate --explain`), and the
//!   README's tables are checked against it (tests/docs.rs).
//!
//! Decoders (each handler's, and those of the site file's own blocks:
//! `global`, `site`, …) read an option through its `Spec`
//! (`opts.get(r, &TIMEOUT)`), not its name, so a misspelt name cannot
//! compile; reading a `Spec` that is missing from the block's table is
//! reported as teebox's own mistake, which any test that decodes the node
//! turns up. A block that is not written is decoded as an empty node, so
//! the defaults it gets are the declared ones.
//!
//! A block with nested blocks declares them with [`Nested`] (whose value is
//! the inner block's own table, printed after the outer one), reads the
//! inner node with [`Block::node`] and then [`read`]s it against that
//! table. Options a nested node takes over from its parent (a
//! `target` node's `timeout`) are the same `Spec`s in the inner table, read with
//! [`Block::get_or`] and the parent's value; the parent's own options
//! written in the nested node are set aside by [`read_among`], for the
//! caller to say where they belong. The value types most options use are in
//! [`types`]; a node with a value of its own implements [`Value`] beside its
//! table.

use std::borrow::Cow;
use std::path::PathBuf;

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

pub mod types;

pub use types::*;

use super::diag::{Problem, Problems};
use super::reader::{self, name_span, Options, Reader, Repeat};
use super::value::{self, Spanned};

/// Where an option is written on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A child node named after the option: `timeout "5s"`.
    Child,
    /// A property of the node itself: `max_size="10MiB"`.
    Property,
    /// An argument of the node itself (`Repeat::Many`: one or more).
    Argument,
    /// Every child of the node's block, each named by the user rather than
    /// by teebox (`header { "-Server" }`).
    Children,
}

/// What holds when an option is not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unset {
    /// This value, written as in a site file (`"60s"`, `#true`, `5`).
    Default(&'static str),
    /// No value; the text says what that means (`"none"`, `"system roots"`).
    Means(&'static str),
    /// The option must be given.
    Required,
}

impl Unset {
    /// As the reference and the README's tables show it.
    pub fn shown(&self) -> &'static str {
        match self {
            Unset::Default(text) | Unset::Means(text) => text,
            Unset::Required => "required",
        }
    }
}

/// A value type: how an option's value is read, and how it is described.
pub trait Value: Sync + 'static {
    type Out;

    /// The value as the reference describes it: `duration > 0`.
    fn describe(&self) -> Cow<'static, str>;

    /// What an option node of this type needs, completing "`timeout` needs
    /// …" and "`timeout` takes only …".
    fn expects(&self) -> Cow<'static, str>;

    /// One entry (an argument or a property's value). `name` is the
    /// option's, for messages that name it. A type read only as a whole
    /// node leaves this out.
    fn entry(&self, name: &'static str, entry: &KdlEntry, r: &mut Reader) -> Option<Self::Out> {
        r.push(teebox_mistake(
            entry.span(),
            format!("`{name}` is not written as a single value"),
        ));
        None
    }

    /// A whole option node: by default exactly one argument, no properties
    /// and no block.
    fn node(&self, name: &'static str, node: &KdlNode, r: &mut Reader) -> Option<Self::Out> {
        let args = r.args(node, 1, &self.expects())?;
        self.entry(name, args[0], r)
    }

    /// Several arguments of one option: each read alone, all reported.
    fn list(
        &self,
        name: &'static str,
        entries: &[&KdlEntry],
        r: &mut Reader,
    ) -> Option<Vec<Self::Out>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut ok = true;
        for entry in entries {
            match self.entry(name, entry, r) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The options of a nested block, for the reference.
    fn nested(&self) -> Option<&'static Table> {
        None
    }
}

/// One option, with its value type `V`. Declared as a `static`, and
/// listed in its node's [`Table`].
#[derive(Debug)]
pub struct Spec<V> {
    pub name: &'static str,
    pub place: Place,
    pub repeat: Repeat,
    pub value: V,
    pub unset: Unset,
    /// One line for the reference.
    pub about: &'static str,
}

impl<V> Spec<V> {
    const fn new(
        name: &'static str,
        place: Place,
        repeat: Repeat,
        value: V,
        unset: Unset,
        about: &'static str,
    ) -> Self {
        Spec {
            name,
            place,
            repeat,
            value,
            unset,
            about,
        }
    }

    /// A child option given at most once.
    pub const fn once(name: &'static str, value: V, unset: Unset, about: &'static str) -> Self {
        Spec::new(name, Place::Child, Repeat::Once, value, unset, about)
    }

    /// A child option that may be given again and again.
    pub const fn many(name: &'static str, value: V, unset: Unset, about: &'static str) -> Self {
        Spec::new(name, Place::Child, Repeat::Many, value, unset, about)
    }

    /// A `name=` property of the node.
    pub const fn property(name: &'static str, value: V, unset: Unset, about: &'static str) -> Self {
        Spec::new(name, Place::Property, Repeat::Once, value, unset, about)
    }

    /// One argument of the node; `name` names it in the reference only.
    pub const fn argument(name: &'static str, value: V, unset: Unset, about: &'static str) -> Self {
        Spec::new(name, Place::Argument, Repeat::Once, value, unset, about)
    }

    /// One or more arguments of the node.
    pub const fn arguments(
        name: &'static str,
        value: V,
        unset: Unset,
        about: &'static str,
    ) -> Self {
        Spec::new(name, Place::Argument, Repeat::Many, value, unset, about)
    }

    /// Every child of the node's block.
    pub const fn children(name: &'static str, value: V, unset: Unset, about: &'static str) -> Self {
        Spec::new(name, Place::Children, Repeat::Many, value, unset, about)
    }
}

impl<V: Value> Spec<V> {
    /// One entry read as this option's value.
    pub fn read_entry(&self, entry: &KdlEntry, r: &mut Reader) -> Option<V::Out> {
        self.value.entry(self.name, entry, r)
    }

    /// A node read as this option's value (a child of a block declared
    /// with [`Place::Children`]).
    pub fn read_node(&self, node: &KdlNode, r: &mut Reader) -> Option<V::Out> {
        self.value.node(self.name, node, r)
    }

    /// Several arguments read as this option's values.
    pub fn read_list(&self, entries: &[&KdlEntry], r: &mut Reader) -> Option<Vec<V::Out>> {
        self.value.list(self.name, entries, r)
    }

    /// What an argument needs, for the node's own count messages.
    pub fn expects(&self) -> Cow<'static, str> {
        self.value.expects()
    }

    /// The declared default, parsed. `None` when there is none, or when it
    /// does not parse (a mistake in teebox, reported at `at`).
    pub fn default_value(&self, r: &mut Reader, at: SourceSpan) -> Option<V::Out> {
        match self.parse_default() {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                r.push(teebox_mistake(
                    at,
                    format!("`{}` has no default to fall back on", self.name),
                ));
                None
            }
            Err(why) => {
                r.push(teebox_mistake(at, why));
                None
            }
        }
    }

    /// The default read by the option's own parser from its text, written
    /// as a site file would write it: `Ok(None)` when there is none.
    fn parse_default(&self) -> Result<Option<V::Out>, String> {
        let Unset::Default(text) = self.unset else {
            return Ok(None);
        };
        let node = default_node(self.name, text);
        let mut problems = Problems::default();
        let mut scratch = Reader::new(&mut problems, PathBuf::from("."));
        let parsed = match self.place {
            Place::Child | Place::Children => self.value.node(self.name, &node, &mut scratch),
            Place::Property | Place::Argument => match node.entries().first() {
                Some(entry) => self.value.entry(self.name, entry, &mut scratch),
                None => None,
            },
        };
        let problems = problems.into_vec();
        match (parsed, problems.iter().find(|p| p.is_error())) {
            (Some(value), None) => Ok(Some(value)),
            (_, Some(p)) => Err(format!(
                "the default of `{}` ({text}) is not valid: {}",
                self.name,
                p.message()
            )),
            (None, None) => Err(format!(
                "the default of `{}` ({text}) is not valid",
                self.name
            )),
        }
    }
}

/// An option node holding a default's text: as KDL when it is a KDL value
/// (`#true`, `5`, `websocket`), else as a string (`60s`).
fn default_node(name: &str, text: &str) -> KdlNode {
    if let Ok(node) = format!("{name} {text}").parse::<KdlNode>() {
        return node;
    }
    let mut node = KdlNode::new(name);
    node.push(KdlEntry::new(KdlValue::String(text.to_string())));
    node
}

fn teebox_mistake(at: SourceSpan, why: String) -> Problem {
    Problem::error(at, format!("teebox cannot read this: {why}"))
        .label("here")
        .help("this is a mistake in teebox, not in the site file: please report it")
}

/// A [`Spec`] whatever its value type: what a [`Table`] lists.
pub trait Declaration: Sync {
    fn name(&self) -> &'static str;
    fn place(&self) -> Place;
    fn repeat(&self) -> Repeat;
    fn describe(&self) -> Cow<'static, str>;
    fn unset(&self) -> Unset;
    fn about(&self) -> &'static str;
    /// A nested block's own options.
    fn nested(&self) -> Option<&'static Table>;
    /// Whether the declared default is a value of the option's type.
    fn check_default(&self) -> Result<(), String>;
}

impl<V: Value> Declaration for Spec<V> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn place(&self) -> Place {
        self.place
    }
    fn repeat(&self) -> Repeat {
        self.repeat
    }
    fn describe(&self) -> Cow<'static, str> {
        self.value.describe()
    }
    fn unset(&self) -> Unset {
        self.unset
    }
    fn about(&self) -> &'static str {
        self.about
    }
    fn nested(&self) -> Option<&'static Table> {
        self.value.nested()
    }
    fn check_default(&self) -> Result<(), String> {
        self.parse_default().map(|_| ())
    }
}

/// The options of one node, in the order its diagnostics list them.
pub type Table = [&'static dyn Declaration];

/// Whether `spec` is the declaration `declared` (the same option, even if
/// the compiler made two copies of its `static`).
fn is<V: Value>(declared: &dyn Declaration, spec: &Spec<V>) -> bool {
    declared.name() == spec.name && declared.place() == spec.place && declared.about() == spec.about
}

/// Sorts `node`'s children by `table`'s child options, reporting unknown
/// names and options given twice that may be given once.
pub fn read<'n>(node: &'n KdlNode, table: &'static Table, r: &mut Reader) -> Block<'n> {
    let keys: Vec<(&'static str, Repeat)> = table
        .iter()
        .filter(|d| d.place() == Place::Child)
        .map(|d| (d.name(), d.repeat()))
        .collect();
    Block {
        opts: r.options(node, &keys),
        table,
    }
}

/// [`read`], for a node inside another (a `target` inside its block): children
/// named by `elsewhere`'s child options (the enclosing block's) are not
/// unknown, nor read; they come back, in file order, for the caller to
/// say where they belong.
pub fn read_among<'n>(
    node: &'n KdlNode,
    table: &'static Table,
    elsewhere: &'static Table,
    r: &mut Reader,
) -> (Block<'n>, Vec<&'n KdlNode>) {
    let children = |t: &'static Table| {
        t.iter()
            .filter(|d| d.place() == Place::Child)
            .map(|d| (d.name(), d.repeat()))
    };
    let own: Vec<(&'static str, Repeat)> = children(table).collect();
    let mut keys = own.clone();
    keys.extend(
        children(elsewhere)
            .filter(|(name, _)| !own.iter().any(|(n, _)| n == name))
            .map(|(name, _)| (name, Repeat::Many)),
    );
    let opts = r.options(node, &keys);
    let misplaced = reader::children(node)
        .iter()
        .filter(|child| {
            let name = child.name().value();
            !own.iter().any(|(n, _)| *n == name) && keys.iter().any(|(n, _)| *n == name)
        })
        .collect();
    (Block { opts, table }, misplaced)
}

/// `node` against `table`, its children left alone: for a node that takes
/// no block, or whose block holds no named options.
pub fn on<'n>(node: &'n KdlNode, table: &'static Table) -> Block<'n> {
    Block {
        opts: Options::none(node),
        table,
    }
}

/// Reports properties of `node` that `table` does not declare.
pub fn check_properties(node: &KdlNode, table: &'static Table, r: &mut Reader) {
    let allowed: Vec<&str> = table
        .iter()
        .filter(|d| d.place() == Place::Property)
        .map(|d| d.name())
        .collect();
    r.known_properties(node, &allowed);
}

/// One node's options, read against its table: every lookup is checked
/// against it.
pub struct Block<'n> {
    opts: Options<'n>,
    table: &'static Table,
}

impl<'n> Block<'n> {
    /// `spec` is in this node's table; otherwise teebox reads an option it
    /// never accepted, which is reported as its own mistake.
    fn declared<V: Value>(&self, spec: &Spec<V>, r: &mut Reader) -> bool {
        let known = self.table.iter().any(|d| is(*d, spec));
        if !known {
            let node = self.opts.node();
            r.push(teebox_mistake(
                name_span(node),
                format!(
                    "`{}` is read but not declared for `{}`",
                    spec.name,
                    node.name().value()
                ),
            ));
        }
        known
    }

    /// The node of a child option given at most once.
    pub fn node(&self, spec: &Spec<impl Value>) -> Option<&'n KdlNode> {
        self.opts.one(spec.name)
    }

    /// Every node of a repeatable child option, in file order.
    pub fn nodes(&self, spec: &Spec<impl Value>) -> Vec<&'n KdlNode> {
        self.opts.all(spec.name)
    }

    /// See [`Options::maybe`].
    pub fn maybe<V: Value>(
        &self,
        r: &mut Reader,
        spec: &Spec<V>,
    ) -> Option<Option<Spanned<V::Out>>> {
        self.declared(spec, r).then(|| self.opts.maybe(r, spec))?
    }

    /// See [`Options::get`].
    pub fn get<V: Value>(&self, r: &mut Reader, spec: &Spec<V>) -> Option<V::Out> {
        self.declared(spec, r).then(|| self.opts.get(r, spec))?
    }

    /// See [`Options::get_or`].
    pub fn get_or<V: Value>(
        &self,
        r: &mut Reader,
        spec: &Spec<V>,
        fallback: V::Out,
    ) -> Option<V::Out> {
        self.declared(spec, r)
            .then(|| self.opts.get_or(r, spec, fallback))?
    }

    /// See [`Options::every`].
    pub fn every<V: Value>(&self, r: &mut Reader, spec: &Spec<V>) -> Vec<V::Out> {
        match self.declared(spec, r) {
            true => self.opts.every(r, spec),
            false => Vec::new(),
        }
    }
}

/// Typed lookups by declaration, for [`Block`], which checks each against
/// the node's table first.
impl<'n> Options<'n> {
    /// The option's value as written, with its span (the option node's, or
    /// the property's value): `Some(None)` when it is not written, `None`
    /// when it could not be read (reported).
    pub fn maybe<V: Value>(
        &self,
        r: &mut Reader,
        spec: &Spec<V>,
    ) -> Option<Option<Spanned<V::Out>>> {
        match spec.place {
            Place::Child => match self.one(spec.name) {
                Some(node) => spec
                    .value
                    .node(spec.name, node, r)
                    .map(|v| Some(Spanned::new(v, node.span()))),
                None => Some(None),
            },
            Place::Property => match self.node().entry(spec.name) {
                Some(entry) => spec
                    .read_entry(entry, r)
                    .map(|v| Some(Spanned::new(v, value::value_span(entry)))),
                None => Some(None),
            },
            Place::Argument | Place::Children => {
                r.push(teebox_mistake(
                    name_span(self.node()),
                    format!("`{}` is not an option to look up by name", spec.name),
                ));
                None
            }
        }
    }

    /// The option's value, or its declared default when not written.
    pub fn get<V: Value>(&self, r: &mut Reader, spec: &Spec<V>) -> Option<V::Out> {
        match self.maybe(r, spec)? {
            Some(given) => Some(given.value),
            None => spec.default_value(r, name_span(self.node())),
        }
    }

    /// The option's value, or `fallback` when not written: for an option a
    /// nested node takes over from its parent.
    pub fn get_or<V: Value>(
        &self,
        r: &mut Reader,
        spec: &Spec<V>,
        fallback: V::Out,
    ) -> Option<V::Out> {
        Some(self.maybe(r, spec)?.map_or(fallback, |given| given.value))
    }

    /// Every value of a repeatable child option, in file order; those that
    /// cannot be read are reported and left out.
    pub fn every<V: Value>(&self, r: &mut Reader, spec: &Spec<V>) -> Vec<V::Out> {
        self.all(spec.name)
            .into_iter()
            .filter_map(|node| spec.value.node(spec.name, node, r))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The reference: `teebox validate --explain`.

/// How the reference names an option: `timeout`, `max_size=`, `path
/// (argument)`, `upstreams (arguments)`, `edits (block)`.
pub fn shown_name(d: &dyn Declaration) -> String {
    match (d.place(), d.repeat()) {
        (Place::Child, _) => d.name().to_string(),
        (Place::Property, _) => format!("{}=", d.name()),
        (Place::Argument, Repeat::Once) => format!("{} (argument)", d.name()),
        (Place::Argument, Repeat::Many) => format!("{} (arguments)", d.name()),
        (Place::Children, _) => format!("{} (block)", d.name()),
    }
}

/// Whether a node of `table` takes a block: `log level=…` takes none, its
/// options being properties of the node.
pub fn has_block(table: &Table) -> bool {
    table
        .iter()
        .any(|d| matches!(d.place(), Place::Child | Place::Children))
}

/// `table` as aligned plain text: one line per option (name, value type,
/// default, how often, description), then each nested block's own table.
pub fn reference(table: &Table) -> String {
    reference_within(table, None)
}

/// `parent`: the table of the block a nested one is written in. An option
/// both declare (the same static) takes its default from the parent's
/// value, so its default reads `inherited` rather than the parent's own.
fn reference_within(table: &Table, parent: Option<&Table>) -> String {
    let mut out = String::new();
    reference_into(&mut out, table, parent);
    for d in table {
        if let Some(inner) = d.nested() {
            let written = if has_block(inner) { " { … }" } else { "" };
            let inherits = inner.iter().any(|o| declared_in(*o, table));
            let note = match inherits {
                true => " (an inherited option takes the enclosing block's value)",
                false => "",
            };
            out.push_str(&format!("\n{}{written} takes{note}:\n", d.name()));
            out.push_str(&reference_within(inner, Some(table)));
        }
    }
    out
}

/// Whether `table` holds this very declaration (not one of the same name).
fn declared_in(d: &dyn Declaration, table: &Table) -> bool {
    table.iter().any(|o| std::ptr::addr_eq(*o, d))
}

fn reference_into(out: &mut String, table: &Table, parent: Option<&Table>) {
    let header = ["option", "value", "default", "repeats", "description"];
    let rows: Vec<[String; 5]> = table
        .iter()
        .map(|d| {
            let repeats = match d.repeat() {
                Repeat::Once => "once",
                Repeat::Many => "many",
            };
            [
                shown_name(*d),
                d.describe().into_owned(),
                match parent.is_some_and(|p| declared_in(*d, p)) {
                    true => "inherited".to_string(),
                    false => d.unset().shown().to_string(),
                },
                repeats.to_string(),
                d.about().to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("(no options)\n");
        return;
    }
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = width - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

impl std::fmt::Debug for dyn Declaration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declaration")
            .field("name", &self.name())
            .field("place", &self.place())
            .finish_non_exhaustive()
    }
}

/// Checks every declaration of `table` (and its nested tables): names
/// unique per place, each default a valid value, a default only where one
/// can stand. For the unit tests of every table.
pub fn check_table(table: &Table) -> Result<(), String> {
    let mut seen: Vec<(&str, Place)> = Vec::new();
    for d in table {
        if seen.contains(&(d.name(), d.place())) {
            return Err(format!("`{}` is declared twice", d.name()));
        }
        seen.push((d.name(), d.place()));
        if d.name().is_empty() || d.about().is_empty() || d.about().contains('\n') {
            return Err(format!(
                "`{}` needs a name and a one-line description",
                d.name()
            ));
        }
        if matches!(d.unset(), Unset::Default(_)) && d.repeat() == Repeat::Many {
            return Err(format!(
                "`{}` may be given many times: it cannot have one default",
                d.name()
            ));
        }
        d.check_default()?;
        if let Some(inner) = d.nested() {
            check_table(inner)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static TIMEOUT: Spec<Duration> = Spec::once(
        "timeout",
        Duration::POSITIVE,
        Unset::Default("60s"),
        "How long to wait.",
    );
    static KEEPALIVE: Spec<Flag> = Spec::once(
        "keepalive",
        Flag,
        Unset::Default("#true"),
        "Reuse connections.",
    );
    static POLICY: Spec<OneOf> = Spec::once(
        "lb_policy",
        OneOf(&["round_robin", "first"]),
        Unset::Default("round_robin"),
        "Which upstream first.",
    );
    static HEADER_UP: Spec<HeaderEdit> = Spec::many(
        "header_up",
        HeaderEdit,
        Unset::Means("none"),
        "Edits the request.",
    );
    static MAX_SIZE: Spec<Size> =
        Spec::property("max_size", Size, Unset::Required, "The largest body.");
    static NOT_LISTED: Spec<Flag> = Spec::once(
        "not_listed",
        Flag,
        Unset::Default("#false"),
        "Never declared.",
    );
    static TABLE: &Table = &[&TIMEOUT, &KEEPALIVE, &POLICY, &HEADER_UP, &MAX_SIZE];

    fn node(text: &str) -> KdlNode {
        text.parse().unwrap()
    }

    fn with_reader<T>(f: impl FnOnce(&mut Reader) -> T) -> (T, Vec<Problem>) {
        let mut problems = Problems::default();
        let out = f(&mut Reader::new(&mut problems, PathBuf::from(".")));
        (out, problems.into_vec())
    }

    #[test]
    fn the_table_is_sound() {
        check_table(TABLE).unwrap();
    }

    #[test]
    fn defaults_are_read_by_the_option_s_own_parser() {
        let n = node("proxy max_size=\"1KiB\" { header_up \"X-A\" \"1\"; }");
        let ((timeout, keepalive, policy, ups, size), problems) = with_reader(|r| {
            let opts = read(&n, TABLE, r);
            (
                opts.get(r, &TIMEOUT),
                opts.get(r, &KEEPALIVE),
                opts.get(r, &POLICY),
                opts.every(r, &HEADER_UP),
                opts.maybe(r, &MAX_SIZE),
            )
        });
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(timeout, Some(std::time::Duration::from_secs(60)));
        assert_eq!(keepalive, Some(true));
        assert_eq!(policy, Some("round_robin"));
        assert_eq!(ups.len(), 1);
        assert_eq!(size.unwrap().unwrap().value, 1024);
    }

    #[test]
    fn given_values_win_and_keep_their_span() {
        let n = node("proxy { timeout \"2s\"; keepalive #false; }");
        let ((timeout, keepalive), problems) = with_reader(|r| {
            let opts = read(&n, TABLE, r);
            (opts.maybe(r, &TIMEOUT), opts.get(r, &KEEPALIVE))
        });
        assert!(problems.is_empty(), "{problems:?}");
        let timeout = timeout.unwrap().unwrap();
        assert_eq!(timeout.value, std::time::Duration::from_secs(2));
        assert_eq!(timeout.span.offset(), 8);
        assert_eq!(keepalive, Some(false));
    }

    #[test]
    fn reading_an_undeclared_option_is_teebox_s_mistake() {
        let n = node("proxy { }");
        let (got, problems) = with_reader(|r| read(&n, TABLE, r).get(r, &NOT_LISTED));
        assert_eq!(got, None);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message().contains("not declared"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bad_default_is_caught_by_the_table_check() {
        static BAD: Spec<Duration> =
            Spec::once("bad", Duration::POSITIVE, Unset::Default("0s"), "Zero.");
        static TWICE: Spec<HeaderEdit> =
            Spec::many("twice", HeaderEdit, Unset::Default("X"), "Many.");
        assert!(check_table(&[&BAD]).unwrap_err().contains("more than zero"));
        assert!(check_table(&[&TWICE]).is_err());
        assert!(check_table(&[&TIMEOUT, &TIMEOUT]).is_err());
    }

    #[test]
    fn unknown_options_are_reported_as_before() {
        let n = node("proxy { timeot \"1s\"; timeout \"1s\"; timeout \"2s\"; }");
        let (_, problems) = with_reader(|r| {
            read(&n, TABLE, r);
        });
        let messages: Vec<_> = problems
            .iter()
            .map(|p| (p.message().to_string(), p.help_text().map(str::to_string)))
            .collect();
        assert_eq!(
            messages,
            [
                (
                    "unknown option `timeot` in `proxy`".to_string(),
                    Some("did you mean `timeout`?".to_string())
                ),
                (
                    "duplicate option `timeout` in `proxy`".to_string(),
                    Some("give each option once".to_string())
                ),
            ]
        );
    }

    #[test]
    fn a_nested_block_sets_aside_its_parent_s_options() {
        static ONLY_OUTSIDE: Spec<Flag> =
            Spec::once("outside", Flag, Unset::Default("#false"), "The parent's.");
        static INNER: &Table = &[&TIMEOUT, &KEEPALIVE];
        static OUTER: &Table = &[&TIMEOUT, &ONLY_OUTSIDE];
        let n = node("target { outside #true; timeout \"1s\"; outside #false; zzz 1; }");
        let ((timeout, misplaced), problems) = with_reader(|r| {
            let (opts, misplaced) = read_among(&n, INNER, OUTER, r);
            let timeout = opts.get_or(r, &TIMEOUT, std::time::Duration::from_secs(9));
            let misplaced: Vec<String> = misplaced
                .iter()
                .map(|m| m.to_string().trim().to_string())
                .collect();
            (timeout, misplaced)
        });
        assert_eq!(timeout, Some(std::time::Duration::from_secs(1)));
        assert_eq!(misplaced, ["outside #true;", "outside #false;"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].help_text(),
            Some("`target` takes: timeout, keepalive, outside")
        );
    }

    #[test]
    fn a_nested_block_shows_what_it_inherits() {
        static INNER: &Table = &[&TIMEOUT, &MAX_SIZE];
        static NESTED: Spec<Nested> =
            Spec::many("target", Nested(INNER), Unset::Means("none"), "A target.");
        static OUTER: &Table = &[&TIMEOUT, &NESTED];
        let text = reference(OUTER);
        let (outer, inner) = text.split_once("target { … } takes").expect(&text);
        assert!(outer.contains("60s"), "{text}");
        assert!(inner.starts_with(" (an inherited option takes the enclosing block's value):"));
        let timeout = inner
            .lines()
            .find(|l| l.starts_with("timeout"))
            .expect(&text);
        assert!(
            timeout.contains("inherited") && !timeout.contains("60s"),
            "{text}"
        );
        let own = inner
            .lines()
            .find(|l| l.starts_with("max_size"))
            .expect(&text);
        assert!(own.contains("required"), "{text}");
    }

    #[test]
    fn the_reference_is_an_aligned_table() {
        let text = reference(TABLE);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].starts_with("option     value"), "{text}");
        let column = lines[0].find("default").unwrap();
        assert_eq!(&lines[1][column..column + 3], "60s", "{text}");
        assert!(lines[5].starts_with("max_size="), "{text}");
        assert!(lines[5].contains("required"), "{text}");
    }
}
