//! What an accept loop does when accepting fails, usually because the
//! process is out of file descriptors (EMFILE) or the system is (ENFILE):
//! it waits before trying again, as Go's net/http does (5 ms, doubling up
//! to 1 s, back to the start after a success), so that it neither spins nor
//! leaves connections waiting long once descriptors are free again; and it
//! logs at most one line a second, counting the failures it did not log.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// One accept loop's failures.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    /// The wait after the last failure; zero after a success.
    delay: Duration,
    last_logged: Option<Instant>,
    /// Failures since the last line that no line told of.
    unlogged: u64,
}

/// What to do about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// How long to wait before accepting again.
    pub wait: Duration,
    /// `Some(n)`: log this failure, and the `n` before it that were not.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    pub fn failed(&mut self, now: Instant) -> Failed {
        self.delay = match self.delay {
            Duration::ZERO => FIRST_DELAY,
            delay => (delay * 2).min(MAX_DELAY),
        };
        let log = match self.last_logged {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        };
        Failed {
            wait: self.delay,
            log,
        }
    }

    /// A connection was accepted. `Some(n)`: log that accepting works
    /// again, after `n` failures no line told of (at most one line a
    /// second, failures and recoveries together).
    pub fn succeeded(&mut self, now: Instant) -> Option<u64> {
        self.delay = Duration::ZERO;
        if self.unlogged == 0 {
            return None;
        }
        match self.last_logged {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => None,
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// The next connection `listener` accepts, riding out failures: a client
/// that left before it was accepted is passed over, and any other failure
/// (out of descriptors) is waited out as [`AcceptBackoff`] says and logged
/// at most once a second. `None` once `stop` turns true. `what` and
/// `address` name the listener in the log ("listener", "admin endpoint").
pub async fn accept_next(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    stop: &mut watch::Receiver<bool>,
    (what, address): (&str, SocketAddr),
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return None,
        };
        match accepted {
            Ok(accepted) => {
                if let Some(unlogged) = backoff.succeeded(Instant::now()) {
                    tracing::info!(%address, unlogged, "{what}: accepting again");
                }
                return Some(accepted);
            }
            Err(err) if only_this_connection(&err) => {
                tracing::debug!(%address, error = %err, "a client left before it was accepted");
            }
            Err(err) => {
                let failed = backoff.failed(Instant::now());
                if let Some(unlogged) = failed.log {
                    tracing::warn!(%address, error = %err, retry_in = ?failed.wait, unlogged, "{what}: accept failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(failed.wait) => {}
                    _ = stop.wait_for(|stop| *stop) => return None,
                }
            }
        }
    }
}

/// Whether an accept error is about the one connection only (the client
/// gave up before it was accepted): accepting again at once is right.
pub fn only_this_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_from_5ms_to_1s_and_start_again_after_a_success() {
        let start = Instant::now();
        let mut backoff = AcceptBackoff::default();
        let waits: Vec<u64> = (0..10)
            .map(|_| backoff.failed(start).wait.as_millis() as u64)
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded(start);
        assert_eq!(backoff.failed(start).wait, ms(5));
    }

    #[test]
    fn logs_at_most_once_a_second_with_the_count_of_the_rest() {
        let start = Instant::now();
        let mut backoff = AcceptBackoff::default();
        let mut at = start;
        let mut logged = Vec::new();
        // Failures as a loop that waits as told would have them, for 3.5s.
        while at < start + ms(3500) {
            let failed = backoff.failed(at);
            if let Some(unlogged) = failed.log {
                logged.push(((at - start).as_millis(), unlogged));
            }
            at += failed.wait;
        }
        // 0, 5, 15, 35, 75, 155, 315, 635 (not logged), 1275 (logged with
        // the 7 before it), 2275, 3275.
        assert_eq!(logged, [(0, 0), (1275, 7), (2275, 0), (3275, 0)]);
    }

    #[test]
    fn a_recovery_tells_of_the_unlogged_failures_within_the_same_rate() {
        let start = Instant::now();
        let mut backoff = AcceptBackoff::default();
        assert_eq!(backoff.failed(start).log, Some(0));
        assert_eq!(backoff.failed(start + ms(5)).log, None);
        assert_eq!(backoff.succeeded(start + ms(10)), None, "too soon");
        assert_eq!(backoff.failed(start + ms(20)).log, None);
        assert_eq!(backoff.succeeded(start + ms(1500)), Some(2));
        // Nothing left untold: no line.
        assert_eq!(backoff.succeeded(start + ms(5000)), None);
        assert_eq!(backoff.failed(start + ms(5001)).log, Some(0));
    }

    #[test]
    fn only_a_given_up_client_is_retried_at_once() {
        use io::ErrorKind::*;
        for kind in [ConnectionAborted, ConnectionReset, Interrupted] {
            assert!(only_this_connection(&kind.into()), "{kind:?}");
        }
        let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert!(!only_this_connection(&emfile));
    }
}
