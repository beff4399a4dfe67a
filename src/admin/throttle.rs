//! Slowing down password guessing.
//!
//! Every login that needs a bcrypt check takes a turn from its client's
//! queue. A turn's time is reserved when the request arrives, after every
//! turn already reserved for that client, as if each of those were going to
//! fail: so guesses sent in parallel wait exactly as long as guesses sent
//! one after the other, and the schedule cannot be beaten by opening more
//! connections. Waiting is a timer, not a thread; only a turn whose time
//! has come takes one of the few check slots, and holds it while bcrypt
//! runs on a blocking thread, so a flood of logins never takes every
//! blocking thread. A client with too many turns waiting gets 429 at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Failed logins an address may have before its tries are slowed down.
pub const FREE_FAILURES: u32 = 4;
/// The first delay, doubled with each further failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay between two tries of one address.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Logins of one address that may wait for their turn; more get 429.
pub const MAX_WAITING: u32 = 8;
/// A quiet address's failures are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most, so the table cannot grow without bound.
const MAX_TRACKED: usize = 10_000;

/// How long a try waits when `failures` failed logins (confirmed, or still
/// waiting and counted as failed) come before it: nothing for the first
/// [`FREE_FAILURES`], then [`FIRST_DELAY`] doubling up to [`MAX_DELAY`].
pub fn delay_after(failures: u32) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES).min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// When the turns of `count` logins sent at once by an address with no
/// failures would check, counted from when they arrive: each one after the
/// one before it, waiting what the failures before it earn.
pub fn schedule(count: u32) -> Vec<Duration> {
    let mut at = Duration::ZERO;
    (0..count)
        .map(|ahead| {
            at += delay_after(ahead);
            at
        })
        .collect()
}

/// Who shares one queue: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64, and would otherwise get 2^64 queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey(IpAddr);

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

#[derive(Debug)]
struct Record {
    /// Failed logins since the last success.
    failures: u32,
    /// Turns reserved and not yet finished.
    waiting: u32,
    /// The time of the last turn reserved; the next one comes after it.
    last_turn: Instant,
    /// The last reservation or outcome, for forgetting quiet addresses.
    seen: Instant,
}

/// A login refused without a check: its address has [`MAX_WAITING`] turns
/// waiting already, or every tracked address is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// Until the address's last waiting turn is due.
    pub retry_after: Duration,
}

pub struct Throttle {
    clients: Mutex<HashMap<ClientKey, Record>>,
    /// bcrypt checks running at once, across all clients.
    checks: Arc<Semaphore>,
}

impl Default for Throttle {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Throttle::new(cores.clamp(1, 4))
    }
}

impl Throttle {
    /// A throttle that runs at most `checks` bcrypt checks at once.
    pub fn new(checks: usize) -> Self {
        Throttle {
            clients: Mutex::new(HashMap::new()),
            checks: Arc::new(Semaphore::new(checks.max(1))),
        }
    }

    /// Reserves the client's next turn: after every turn it already has
    /// waiting, each counted as a failure.
    pub fn reserve(&self, client: IpAddr) -> Result<Turn<'_>, Busy> {
        let key = ClientKey::of(client);
        let now = Instant::now();
        let mut clients = self.lock();
        if !clients.contains_key(&key) && clients.len() >= MAX_TRACKED {
            make_room(&mut clients, now);
        }
        if !clients.contains_key(&key) && clients.len() >= MAX_TRACKED {
            return Err(Busy {
                retry_after: FIRST_DELAY,
            });
        }
        let record = clients.entry(key).or_insert(Record {
            failures: 0,
            waiting: 0,
            last_turn: now,
            seen: now,
        });
        if record.waiting == 0 && now.duration_since(record.seen) >= FORGET_AFTER {
            record.failures = 0;
        }
        if record.waiting >= MAX_WAITING {
            return Err(Busy {
                retry_after: record.last_turn.saturating_duration_since(now),
            });
        }
        let at =
            record.last_turn.max(now) + delay_after(record.failures.saturating_add(record.waiting));
        record.last_turn = at;
        record.waiting += 1;
        record.seen = now;
        Ok(Turn {
            throttle: self,
            key,
            at,
            finished: false,
        })
    }

    /// Logins waiting for their turn or being checked, all clients together.
    pub fn waiting(&self) -> u64 {
        self.lock().values().map(|r| u64::from(r.waiting)).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Record>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, key: ClientKey, failed: Option<bool>) {
        let mut clients = self.lock();
        let Some(record) = clients.get_mut(&key) else {
            return;
        };
        record.waiting = record.waiting.saturating_sub(1);
        record.seen = Instant::now();
        match failed {
            Some(true) => record.failures = record.failures.saturating_add(1),
            Some(false) => record.failures = 0,
            None => {}
        }
        if record.waiting == 0 && record.failures == 0 {
            clients.remove(&key);
        }
    }
}

/// Forgets quiet addresses, or else the one quiet the longest; addresses
/// with turns waiting stay.
fn make_room(clients: &mut HashMap<ClientKey, Record>, now: Instant) {
    clients.retain(|_, r| r.waiting > 0 || now.duration_since(r.seen) < FORGET_AFTER);
    if clients.len() < MAX_TRACKED {
        return;
    }
    let oldest = clients
        .iter()
        .filter(|(_, r)| r.waiting == 0)
        .min_by_key(|(_, r)| r.seen)
        .map(|(k, _)| *k);
    if let Some(key) = oldest {
        clients.remove(&key);
    }
}

/// A reserved try. Dropped unfinished (the client went away), it counts
/// neither as a failure nor as a success.
pub struct Turn<'a> {
    throttle: &'a Throttle,
    key: ClientKey,
    at: Instant,
    finished: bool,
}

impl Turn<'_> {
    /// When this turn may check.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// Waits for this turn's time, then for a free check slot; the slot is
    /// held until the permit is dropped (move it to where the check runs).
    pub async fn begin(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::sleep_until(self.at).await;
        self.throttle.checks.clone().acquire_owned().await.ok()
    }

    pub fn failed(mut self) {
        self.finished = true;
        self.throttle.finish(self.key, Some(true));
    }

    pub fn succeeded(mut self) {
        self.finished = true;
        self.throttle.finish(self.key, Some(false));
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.throttle.finish(self.key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn delays_double_after_the_free_tries_up_to_the_cap() {
        let delays: Vec<Duration> = (0..12).map(delay_after).collect();
        assert_eq!(delays[..4], [Duration::ZERO; 4]);
        assert_eq!(delays[4], Duration::from_millis(250));
        assert_eq!(delays[5], Duration::from_millis(500));
        assert_eq!(delays[9], Duration::from_secs(8));
        assert_eq!(delays[10], MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn parallel_guesses_are_scheduled_one_after_another() {
        // 40 guesses at once wait as long as 40 one by one: over five
        // minutes, not a few seconds.
        let at = schedule(40);
        let gaps: Vec<Duration> = (0..40)
            .map(|i| at[i] - if i == 0 { Duration::ZERO } else { at[i - 1] })
            .collect();
        assert_eq!(gaps, (0..40).map(delay_after).collect::<Vec<_>>());
        assert_eq!(at[39], Duration::from_millis(315_750));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_failed_logins_check_in_turn() {
        let throttle = Arc::new(Throttle::new(2));
        let start = Instant::now();
        // The first wave arrives at once; every guess fails.
        let turns: Vec<Turn<'_>> = (0..MAX_WAITING)
            .map(|_| throttle.reserve(IP).expect("a turn"))
            .collect();
        let busy = throttle.reserve(IP).err().expect("the queue is full");
        assert_eq!(
            busy.retry_after,
            schedule(MAX_WAITING)[MAX_WAITING as usize - 1]
        );
        let checked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for turn in turns {
            let checked = checked.clone();
            tasks.push(async move {
                let permit = turn.begin().await.expect("a check slot");
                checked
                    .lock()
                    .unwrap()
                    .push(Instant::now().duration_since(start));
                drop(permit);
                turn.failed();
            });
        }
        futures_util::future::join_all(tasks).await;
        let mut checked = checked.lock().unwrap().clone();
        checked.sort();
        assert_eq!(checked, schedule(MAX_WAITING));

        // Later tries keep paying for the failures so far.
        let now = Instant::now();
        let next = throttle.reserve(IP).expect("a turn");
        assert_eq!(next.at() - now, delay_after(MAX_WAITING));
        next.succeeded();
        let after = throttle.reserve(IP).expect("a turn");
        assert_eq!(after.at(), Instant::now(), "a success resets the address");
    }

    #[tokio::test(start_paused = true)]
    async fn check_slots_are_bounded_across_addresses() {
        let throttle = Throttle::new(2);
        let ips: Vec<IpAddr> = (1..=3)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i)))
            .collect();
        let turns: Vec<Turn<'_>> = ips
            .iter()
            .map(|ip| throttle.reserve(*ip).expect("a turn"))
            .collect();
        let first = turns[0].begin().await.expect("a slot");
        let second = turns[1].begin().await.expect("a slot");
        let third = tokio::time::timeout(Duration::from_secs(60), turns[2].begin()).await;
        assert!(third.is_err(), "a third check waits for a slot");
        drop(first);
        assert!(turns[2].begin().await.is_some());
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_turn_is_no_failure_and_ipv6_shares_a_64() {
        let throttle = Throttle::new(1);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..MAX_WAITING / 2 {
            throttle.reserve(a).unwrap().failed();
            throttle.reserve(b).unwrap().failed();
        }
        // Eight failures from one /64, none of them waited for: the next
        // try comes after all of their turns.
        let next = throttle.reserve(a).unwrap();
        assert_eq!(
            next.at() - Instant::now(),
            schedule(MAX_WAITING + 1)[MAX_WAITING as usize]
        );
        drop(next);
        let other: IpAddr = "2001:db8:1::1".parse().unwrap();
        let elsewhere = throttle.reserve(other).unwrap();
        assert_eq!(elsewhere.at(), Instant::now());
        drop(elsewhere);
        assert_eq!(throttle.lock().len(), 1, "one /64; the other left nothing");
        assert_eq!(
            throttle.lock()[&ClientKey::of(a)].failures,
            MAX_WAITING,
            "the dropped turn counted nothing"
        );
    }
}
