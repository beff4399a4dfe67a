//! Header edits written in the site file: `header_up`, `header_down`, the
//! `header` handler and, later, a mirror's own `header_up`.

use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderOp {
    /// Replace every value of the header with this one.
    Set(HeaderName, HeaderValue),
    /// Add a value, keeping the ones already there.
    Add(HeaderName, HeaderValue),
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

    pub fn apply(&self, headers: &mut HeaderMap) {
        for op in &self.0 {
            match op {
                HeaderOp::Set(name, value) => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderOp::Add(name, value) => {
                    headers.append(name.clone(), value.clone());
                }
                HeaderOp::Remove(name) => {
                    headers.remove(name);
                }
            }
        }
    }
}
