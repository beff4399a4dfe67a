//! `primary_status`: a copy goes out only once the primary's response head
//! has come back through the mirror handler with a status the mirror wants.
//!
//! Two things meet here, in either order: the finished copy (its body may
//! end before or after the primary answers) and the verdict on the
//! primary's head. Whichever comes second decides: the copy is offered to
//! its targets, or discarded and counted `primary_filtered`. The client's
//! response is never held for this: the verdict is taken from the head as
//! it passes, and offering a copy is the usual non-blocking send.
//!
//! A gate holds at most one copy, already bounded by `max_body`, and only
//! until the primary's head is known (or the request is gone), so it adds
//! no queue of its own.

use std::sync::{Arc, Mutex};

use super::copy::CopyRequest;
use super::policy::StatusFilter;
use super::stats::bump;
use super::target::Target;
use crate::message::{NoUpstreamAnswer, Response};

/// Where one request's copy waits for its primary.
pub struct Gate {
    filter: Arc<StatusFilter>,
    state: Mutex<State>,
}

enum State {
    /// Neither the copy nor the verdict yet.
    Waiting,
    /// The copy is complete; the primary has not answered yet.
    Held(Arc<CopyRequest>, Arc<Vec<Arc<Target>>>),
    /// The primary's head was judged before the copy was complete.
    Decided(bool),
    /// The copy went out or was discarded.
    Closed,
}

impl Gate {
    pub fn new(filter: Arc<StatusFilter>) -> Arc<Gate> {
        Arc::new(Gate {
            filter,
            state: Mutex::new(State::Waiting),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Each update is one assignment: a panicked holder leaves a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The copy is complete: sent or discarded now if the primary has been
    /// judged, else held until it is.
    pub fn copy_ready(&self, copy: Arc<CopyRequest>, targets: Arc<Vec<Arc<Target>>>) {
        let mut state = self.lock();
        match *state {
            State::Waiting => *state = State::Held(copy, targets),
            State::Decided(send) => {
                *state = State::Closed;
                drop(state);
                release(send, &copy, &targets);
            }
            // A copy is made once per request.
            State::Held(..) | State::Closed => {}
        }
    }

    fn decide(&self, send: bool) {
        let held = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, State::Closed) {
                State::Waiting => {
                    *state = State::Decided(send);
                    None
                }
                State::Held(copy, targets) => Some((copy, targets)),
                // Decided once; a second verdict changes nothing.
                done @ (State::Decided(_) | State::Closed) => {
                    *state = done;
                    None
                }
            }
        };
        if let Some((copy, targets)) = held {
            release(send, &copy, &targets);
        }
    }
}

fn release(send: bool, copy: &Arc<CopyRequest>, targets: &[Arc<Target>]) {
    for target in targets {
        match send {
            true => target.offer(copy),
            false => bump(&target.state().stats.primary_filtered),
        }
    }
}

/// The handler's side of a gate: judges the primary's response head, or,
/// if dropped unused (the client left before the primary answered),
/// discards the copy.
pub struct Verdict(Option<Arc<Gate>>);

impl Verdict {
    pub fn new(gate: Arc<Gate>) -> Verdict {
        Verdict(Some(gate))
    }

    pub fn judge(mut self, response: &Response) {
        if let Some(gate) = self.0.take() {
            let answered = response.extensions().get::<NoUpstreamAnswer>().is_none();
            gate.decide(answered && gate.filter.matches(response.status()));
        }
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        if let Some(gate) = self.0.take() {
            gate.decide(false);
        }
    }
}
