//! A route's chain: the interface every handler implements and the server
//! runs. A route runs its [`Middleware`] in file order, each deciding
//! whether and how to call the rest of the chain through [`Next`], and ends
//! in exactly one [`Terminal`] that produces the response (the shape of
//! Caddy's `ServeHTTP(w, r, next)`). The split into two traits means a
//! chain that does not end in a terminal handler cannot be built.
//!
//! Our own trait rather than tower's `Service`: measured faster on the hot
//! path (no `poll_ready`, no cloning of services per request).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::{ConnInfo, Request, Response};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handler that passes the request on (possibly changed) and may change
/// the response on its way back.
pub trait Middleware: Send + Sync + 'static {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response>;
}

/// A handler that answers: the end of every chain.
pub trait Terminal: Send + Sync + 'static {
    fn serve<'a>(&'a self, req: Request, conn: &'a ConnInfo) -> BoxFuture<'a, Response>;
}

/// The rest of a chain, as seen from one middleware.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    terminal: &'a dyn Terminal,
    conn: &'a ConnInfo,
}

impl<'a> Next<'a> {
    pub fn run(self, req: Request) -> BoxFuture<'a, Response> {
        match self.rest.split_first() {
            Some((first, rest)) => first.handle(req, Next { rest, ..self }),
            None => self.terminal.serve(req, self.conn),
        }
    }

    /// The connection the request came in on.
    pub fn conn(&self) -> &'a ConnInfo {
        self.conn
    }
}

/// A route's built handlers.
pub struct Chain {
    middleware: Vec<Arc<dyn Middleware>>,
    terminal: Arc<dyn Terminal>,
}

impl Chain {
    pub fn new(middleware: Vec<Arc<dyn Middleware>>, terminal: Arc<dyn Terminal>) -> Self {
        Chain {
            middleware,
            terminal,
        }
    }

    pub fn run<'a>(&'a self, req: Request, conn: &'a ConnInfo) -> BoxFuture<'a, Response> {
        Next {
            rest: &self.middleware,
            terminal: &*self.terminal,
            conn,
        }
        .run(req)
    }
}
