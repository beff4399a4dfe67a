//! HTTP pieces shared by the server and the handlers: the body type every
//! handler speaks, per-connection facts, and header treatment.

pub mod body;
pub mod conn;
pub mod forwarded;
pub mod header_ops;
pub mod hop_by_hop;

pub use body::{Body, BoxError};
pub use conn::ConnInfo;

pub type Request = http::Request<Body>;
pub type Response = http::Response<Body>;
