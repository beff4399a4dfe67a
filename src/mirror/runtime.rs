//! The threads that send copies.
//!
//! Copies are sent from a runtime of their own, so that a shadow's traffic
//! never queues behind the serving threads' work (and the reverse): a copy's
//! response is handled as soon as it arrives instead of after every ready
//! client connection, which is what lets a few workers keep up with a busy
//! route. The runtime lives as long as the process and is shared by every
//! mirror, so adding targets at runtime never adds threads.
//!
//! Its threads are batch threads (`SCHED_BATCH`): they get the same share
//! of the CPU, but a copy handed over does not preempt the serving thread
//! that made it. On a shared core the copy thread then wakes once for many
//! copies instead of once for each, which measured 13% more mirrored GETs
//! per second on one core (a context switch per request fell to 0.01).
//!
//! A batch thread that a shadow's answer wakes waits for the serving
//! thread's time slice to end (a millisecond or more on a busy core), and
//! with every worker waiting for an answer, that wait bounds how many
//! copies a second a target gets: at 1024 busy connections the backlog
//! filled and up to a quarter of the copies were dropped, with the CPU
//! share to send them unused. Workers of plain `http://` targets now send
//! the bodyless GETs waiting for them as one pipeline, so a turn sends
//! many; and a thread whose targets still fall behind ([`keep_pace`])
//! turns normal, and is woken at once, until none has been behind for a
//! while. Either way it has the same share of the CPU.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle, Runtime};

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// One thread for every four cores: sending a copy costs less than serving
/// the request it came from.
fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.div_ceil(4)
}

/// How long a thread stays normal after a target on it was last behind.
const CATCH_UP: Duration = Duration::from_millis(100);

/// A copy thread's scheduling, as it last set it.
#[derive(Clone, Copy)]
enum Pace {
    /// Not a copy thread, or the batch policy was refused: left alone.
    Fixed,
    /// `SCHED_BATCH`: the serving threads are not preempted.
    Yielding,
    /// Normal, since a target on this thread was last behind at this time.
    CatchingUp(Instant),
}

thread_local! {
    static PACE: Cell<Pace> = const { Cell::new(Pace::Fixed) };
}

/// Makes the calling thread a batch thread. Refused (a seccomp profile
/// may forbid it), copies are still sent, with more context switches.
fn yield_to_serving() {
    match set_policy(Policy::Batch) {
        Ok(()) => PACE.set(Pace::Yielding),
        Err(err) => tracing::debug!(error = %err, "mirror thread stays a normal thread"),
    }
}

/// Called by a worker after each copy: `behind` when its target's backlog
/// holds several rounds of copies while the target answers quickly (a slow
/// target is not helped by a faster thread). Costs a system call only
/// when the thread changes policy.
pub fn keep_pace(behind: bool) {
    match (PACE.get(), behind) {
        (Pace::Fixed, _) => {}
        (Pace::Yielding, false) => {}
        (Pace::Yielding, true) => PACE.set(match set_policy(Policy::Normal) {
            Ok(()) => {
                tracing::debug!("mirror thread falls behind; no longer yields to serving threads");
                Pace::CatchingUp(Instant::now())
            }
            // Refused now: not tried again for every copy.
            Err(_) => Pace::Fixed,
        }),
        (Pace::CatchingUp(_), true) => PACE.set(Pace::CatchingUp(Instant::now())),
        (Pace::CatchingUp(since), false) if since.elapsed() >= CATCH_UP => {
            PACE.set(match set_policy(Policy::Batch) {
                Ok(()) => {
                    tracing::debug!("mirror thread caught up; yields to serving threads again");
                    Pace::Yielding
                }
                Err(_) => Pace::Fixed,
            })
        }
        (Pace::CatchingUp(_), false) => {}
    }
}

enum Policy {
    Batch,
    Normal,
}

fn set_policy(policy: Policy) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = match policy {
            Policy::Batch => libc::SCHED_BATCH,
            Policy::Normal => libc::SCHED_OTHER,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call; pid 0 is the
        // calling thread, and no memory is handed to the kernel to keep.
        match unsafe { libc::sched_setscheduler(0, policy, &param) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = policy;
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The copy runtime, or the caller's runtime if the threads could not be
/// started (copies then share the serving threads, which still works).
pub fn handle() -> Handle {
    let runtime = RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(threads())
            .thread_name("teebox-mirror")
            .on_thread_start(yield_to_serving)
            .enable_all()
            .build()
            .inspect_err(|err| tracing::warn!(error = %err, "cannot start the mirror threads; copies share the serving threads"))
            .ok()
    });
    match runtime {
        Some(runtime) => runtime.handle().clone(),
        None => Handle::current(),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: pid 0 is the calling thread; nothing is passed.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_thread_behind_stops_yielding_until_it_has_caught_up() {
        std::thread::spawn(|| {
            yield_to_serving();
            if matches!(PACE.get(), Pace::Fixed) {
                // Refused here (a seccomp profile): nothing to switch.
                return;
            }
            assert_eq!(policy(), libc::SCHED_BATCH);
            keep_pace(false);
            assert_eq!(policy(), libc::SCHED_BATCH);
            keep_pace(true);
            assert_eq!(policy(), libc::SCHED_OTHER);
            // Not yet: it was behind a moment ago.
            keep_pace(false);
            assert_eq!(policy(), libc::SCHED_OTHER);
            std::thread::sleep(CATCH_UP);
            keep_pace(false);
            assert_eq!(policy(), libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn other_threads_are_left_alone() {
        std::thread::spawn(|| {
            let before = policy();
            keep_pace(true);
            assert_eq!(policy(), before);
        })
        .join()
        .unwrap();
    }
}
