//! teebox: a Caddy-style HTTP server whose handler chains make traffic
//! mirroring first-class.
//!
//! The pieces, in the order a request meets them: [`config`] turns the site
//! file into typed structs; [`server`] listens, picks a site and a route, and
//! runs the route's chain of [`handlers`]; [`http`] holds what the handlers
//! share.

pub mod accept_backoff;
pub mod admin;
pub mod bounded_read;
pub mod certs;
pub mod chain;
pub mod config;
pub mod counters;
pub mod diff;
pub mod fnv;
pub mod handlers;
pub mod lines;
pub mod logging;
pub mod message;
pub mod mirror;
pub mod passwords;
pub mod replay;
pub mod safe_write;
pub mod server;
pub mod state_file;
pub mod suggest;
pub mod upstream;
pub mod workers;
