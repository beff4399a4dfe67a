//! Header edits written in the site file: `header_up`, `header_down`, the
//! `header` handler and a mirror's own `header_up`.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::placeholders::{RequestVars, Template};

/// A header value as written: fixed, or with placeholders to fill per
/// request.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderText {
    Fixed(HeaderValue),
    Template(Template),
}

impl HeaderText {
    fn value(&self, vars: Option<&RequestVars>) -> Option<HeaderValue> {
        match (self, vars) {
            (HeaderText::Fixed(value), _) => Some(value.clone()),
            // Placeholders fill in text that was a valid header value and
            // values taken from valid headers and addresses, so this holds.
            (HeaderText::Template(template), Some(vars)) => {
                HeaderValue::from_str(&template.render(vars)).ok()
            }
            (HeaderText::Template(_), None) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderOp {
    /// Replace every value of the header with this one.
    Set(HeaderName, HeaderText),
    /// Add a value, keeping the ones already there.
    Add(HeaderName, HeaderText),
    /// Remove the header.
    Remove(HeaderName),
}

/// An ordered list of header edits, applied in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderOps(Vec<HeaderOp>);

impl HeaderOps {
    pub fn new(ops: Vec<HeaderOp>) -> Self {
        HeaderOps(ops)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether applying these needs the request's [`RequestVars`]; callers
    /// make them only then, so edits without placeholders cost nothing more.
    pub fn needs_vars(&self) -> bool {
        self.0.iter().any(|op| {
            matches!(
                op,
                HeaderOp::Set(_, HeaderText::Template(_))
                    | HeaderOp::Add(_, HeaderText::Template(_))
            )
        })
    }

    /// Applies the edits; `vars` must be given when [`needs_vars`] says so
    /// (a placeholder edit without them is skipped).
    ///
    /// [`needs_vars`]: HeaderOps::needs_vars
    pub fn apply(&self, headers: &mut HeaderMap, vars: Option<&RequestVars>) {
        for op in &self.0 {
            match op {
                HeaderOp::Set(name, text) => {
                    if let Some(value) = text.value(vars) {
                        headers.insert(name.clone(), value);
                    }
                }
                HeaderOp::Add(name, text) => {
                    if let Some(value) = text.value(vars) {
                        headers.append(name.clone(), value);
                    }
                }
                HeaderOp::Remove(name) => {
                    headers.remove(name);
                }
            }
        }
    }
}
