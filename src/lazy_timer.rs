//! A timer kept from one wait to the next and moved only when it must be:
//! for waits that follow one another on one owner (exchanges on an
//! upstream connection, copies sent by a mirror worker).
//!
//! A new timer per wait (`tokio::time::timeout`) registers with the
//! runtime's timer wheel when first polled and is taken out again when
//! dropped, each under the timer driver's lock. A kept one is armed no
//! later than the current wait's deadline: left at an earlier wait's
//! deadline, it needs no moving; moved earlier when the new deadline is
//! sooner; and when it fires before the deadline it is set to it. On a busy
//! owner that is about once per timeout.
//!
//! Left armed while its owner waits for something else, the timer may wake
//! the owner's task once for nothing; the task finds nothing to do.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct LazyTimer(Option<Pin<Box<Sleep>>>);

impl LazyTimer {
    /// `future`'s output, or `None` once the deadline has passed. `first`
    /// is the earliest the deadline can be; `due` says where it is now,
    /// asked each time the timer fires (it may have moved later since).
    ///
    /// `future` comes pinned by the caller, so that this future holds a
    /// pointer to it rather than a copy.
    pub async fn within<F: Future>(
        &mut self,
        first: Instant,
        due: impl Fn() -> Instant,
        mut future: Pin<&mut F>,
    ) -> Option<F::Output> {
        let mut timer = self.arm(first);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            poll_until(timer.as_mut(), cx, &due).map(|()| None)
        })
        .await
    }

    /// The timer, armed no later than `first`.
    fn arm(&mut self, first: Instant) -> Pin<&mut Sleep> {
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(first)));
        if timer.is_elapsed() || timer.deadline() > first {
            timer.as_mut().reset(first);
        }
        timer.as_mut()
    }
}

/// Polls `timer`, armed no later than `due()`: ready once `due()` has
/// passed, else re-armed for it when it fired early.
pub fn poll_until(
    mut timer: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
    due: impl Fn() -> Instant,
) -> Poll<()> {
    loop {
        match timer.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(()) => {
                let due = due();
                if Instant::now() >= due {
                    return Poll::Ready(());
                }
                timer.as_mut().reset(due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    /// `future` within a fixed `deadline`.
    async fn within<F: Future>(
        timer: &mut LazyTimer,
        deadline: Instant,
        future: F,
    ) -> Option<F::Output> {
        timer
            .within(deadline, || deadline, std::pin::pin!(future))
            .await
    }

    fn after(secs: f64) -> Instant {
        Instant::now() + Duration::from_secs_f64(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_ends_in_time_gives_its_output() {
        let mut timer = LazyTimer::default();
        let out = within(&mut timer, after(1.0), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        })
        .await;
        assert_eq!(out, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_past_its_deadline_is_cut() {
        let mut timer = LazyTimer::default();
        let deadline = after(1.0);
        let out = within(&mut timer, deadline, std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_left_at_an_earlier_deadline_moves_to_the_current_one() {
        let mut timer = LazyTimer::default();
        assert_eq!(within(&mut timer, after(1.0), async { 1 }).await, Some(1));
        // The next wait starts later: the timer, still at the first
        // deadline, fires during it and must not end it before its own.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = within(&mut timer, after(1.0), async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            2
        })
        .await;
        assert_eq!(out, Some(2));
        // And a wait that hangs is cut at its own deadline, not earlier.
        let third = after(1.0);
        let out = within(&mut timer, third, std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert_eq!(Instant::now(), third);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_deadline_than_the_armed_one_moves_the_timer_earlier() {
        let mut timer = LazyTimer::default();
        assert_eq!(within(&mut timer, after(10.0), async {}).await, Some(()));
        let short = after(1.0);
        let out = within(&mut timer, short, std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert_eq!(Instant::now(), short);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_moves_later_is_followed() {
        let mut timer = LazyTimer::default();
        let first = after(1.0);
        let due = Cell::new(first);
        let hang = std::pin::pin!(std::future::pending::<()>());
        let waiting = timer.within(first, || due.get(), hang);
        let mut waiting = std::pin::pin!(waiting);
        // Before the first deadline, the deadline moves a second later.
        tokio::select! {
            _ = waiting.as_mut() => panic!("ended before its deadline"),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        due.set(first + Duration::from_secs(1));
        assert_eq!(waiting.await, None);
        assert_eq!(Instant::now(), first + Duration::from_secs(1));
    }
}
