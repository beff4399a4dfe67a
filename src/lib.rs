//! teebox: a Caddy-style HTTP server whose handler chains make traffic
//! mirroring first-class.
//!
//! The layers, from the bottom (see README's Architecture, checked by
//! `tests/layers.rs`): base ([`message`], [`chain`], [`counters`], ...),
//! engines ([`mirror`], [`upstream`]), [`config`] (the site file and the
//! handler lifecycle), [`handlers`], [`admin`], [`server`]. Each uses only
//! the layers below it.

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
pub mod lazy_timer;
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
