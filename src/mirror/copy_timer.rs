//! The timeout of a worker's copies: one timer per worker, kept from copy
//! to copy and moved only when it must be.
//!
//! A timer per copy (`tokio::time::timeout`) registers with the runtime's
//! timer wheel when first polled and is taken out again when dropped, each
//! under the timer driver's lock: two of the costliest steps of a copy to a
//! fast target. A worker sends one copy at a time, so it can keep one timer
//! armed no later than the current copy's deadline: left at the previous
//! copy's deadline, which is earlier, it needs no moving; when it fires
//! before the current deadline it is moved to it. On a busy worker that is
//! about once per `timeout`. (The upstream pool times response heads the
//! same way, per connection.)
//!
//! Left armed while the worker waits for its next copy, the timer may wake
//! the worker once for nothing; the worker finds no copy and waits again.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct CopyTimer(Option<Pin<Box<Sleep>>>);

impl CopyTimer {
    /// `future`'s output, or `None` if `deadline` passed first.
    pub async fn within<F: Future>(&mut self, deadline: Instant, future: F) -> Option<F::Output> {
        let timer = match &mut self.0 {
            Some(timer) => {
                if timer.is_elapsed() || timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            loop {
                match timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    // Armed for this copy's deadline, or a later one's
                    // (a deadline never moves earlier than `deadline`
                    // here): this copy's time is up.
                    Poll::Ready(()) if timer.deadline() >= deadline => return Poll::Ready(None),
                    // Fired at an earlier copy's deadline: on to this one's.
                    Poll::Ready(()) => timer.as_mut().reset(deadline),
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_future_that_ends_in_time_gives_its_output() {
        let mut timer = CopyTimer::default();
        let deadline = Instant::now() + Duration::from_secs(1);
        let out = timer
            .within(deadline, async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                7
            })
            .await;
        assert_eq!(out, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_past_its_deadline_is_cut() {
        let mut timer = CopyTimer::default();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(1);
        let out = timer.within(deadline, std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_left_at_an_earlier_deadline_moves_to_the_current_one() {
        let mut timer = CopyTimer::default();
        let first = Instant::now() + Duration::from_secs(1);
        assert_eq!(timer.within(first, async { 1 }).await, Some(1));
        // The next copy starts later: the timer, still at `first`, fires
        // during it and must not end it before its own deadline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = Instant::now() + Duration::from_secs(1);
        let out = timer
            .within(second, async {
                tokio::time::sleep(Duration::from_millis(900)).await;
                2
            })
            .await;
        assert_eq!(out, Some(2));
        // And a copy that hangs is cut at its own deadline, not earlier.
        let third = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            timer.within(third, std::future::pending::<()>()).await,
            None
        );
        assert_eq!(Instant::now(), third);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_deadline_than_the_armed_one_moves_the_timer_earlier() {
        let mut timer = CopyTimer::default();
        let long = Instant::now() + Duration::from_secs(10);
        assert_eq!(timer.within(long, async {}).await, Some(()));
        let short = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            timer.within(short, std::future::pending::<()>()).await,
            None
        );
        assert_eq!(Instant::now(), short);
    }
}
