//! Open files (RLIMIT_NOFILE). Every client connection holds a descriptor,
//! and so does each upstream connection it is proxied over and each
//! connection a handler holds on its own (workers that send copies).
//! Services often start with a soft limit of 1024 (systemd's default) and a far higher hard one (systemd: 524288), while
//! the default `max_connections` is 10000: out of descriptors, an upstream
//! connect fails (502) and accepting does too. So teebox raises the soft
//! limit to the hard one at start, as Go's runtime does, and says when even
//! that is below what its limits may need.

use crate::config::Limits;

/// Descriptors besides connections: listeners, the runtimes' epoll and
/// wake-up descriptors, standard streams, the access log, certificate and
/// state files, DNS lookups.
pub const MARGIN: u64 = 64;

/// What teebox's limits may have open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub max_connections: usize,
    /// What the handlers hold open on their own (see
    /// `HandlerState::connections`).
    pub handler_connections: usize,
}

impl Need {
    /// Each client connection and the upstream connection serving it, the
    /// handlers' own connections, and [`MARGIN`].
    pub fn total(&self) -> u64 {
        (self.max_connections as u64)
            .saturating_mul(2)
            .saturating_add(self.handler_connections as u64)
            .saturating_add(MARGIN)
    }

    /// The largest `max_connections` whose need fits in `limit`.
    fn connections_within(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.handler_connections as u64 + MARGIN) / 2
    }
}

/// The open-files limit is below what teebox may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    pub limit: u64,
    pub need: Need,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Shortfall { limit, need } = self;
        write!(
            f,
            "the open files limit (RLIMIT_NOFILE) is {limit}, below the {} teebox may need: \
             2 x max_connections {} + {} handler connections + {MARGIN} for listeners and files; \
             raise the limit (systemd: LimitNOFILE=, shell: ulimit -n)",
            need.total(),
            need.max_connections,
            need.handler_connections,
        )?;
        match need.connections_within(*limit) {
            0 => Ok(()),
            fits => write!(f, " or lower max_connections to {fits}"),
        }
    }
}

/// Whether `limit` (`None`: unlimited) falls short of `need`.
pub fn shortfall(limit: Option<u64>, need: Need) -> Option<Shortfall> {
    let limit = limit?;
    (limit < need.total()).then_some(Shortfall { limit, need })
}

/// The soft limit on open files, before and after [`raise_to_hard`];
/// `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub before: Option<u64>,
    pub now: Option<u64>,
}

/// Raises the soft limit on open files to the hard limit. An unlimited
/// hard limit leaves the soft one as it is: no soft value is known to be
/// accepted then (Linux caps it at `fs.nr_open`, macOS at `OPEN_MAX`).
pub fn raise_to_hard() -> Result<OpenFiles, std::io::Error> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) if current < maximum => {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(maximum),
                    maximum: Some(maximum),
                },
            )?;
            Ok(OpenFiles {
                before,
                now: getrlimit(Resource::Nofile).current,
            })
        }
        _ => Ok(OpenFiles {
            before,
            now: before,
        }),
    }
}

/// At start: raises the limit, and warns once if it is still short of what
/// `limits` and the handlers' own connections may need.
pub fn raise_and_check(limits: &Limits, handler_connections: usize) {
    let open_files = match raise_to_hard() {
        Ok(open_files) => open_files,
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open files limit");
            let current = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
            OpenFiles {
                before: current,
                now: current,
            }
        }
    };
    if open_files.now != open_files.before {
        tracing::debug!(from = ?open_files.before, to = ?open_files.now, "raised the open files limit");
    }
    let need = Need {
        max_connections: limits.max_connections,
        handler_connections,
    };
    if let Some(short) = shortfall(open_files.now, need) {
        tracing::warn!(
            open_files_limit = short.limit,
            needed = need.total(),
            "{short}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_is_two_per_connection_plus_handler_connections_plus_a_margin() {
        let need = Need {
            max_connections: 10_000,
            handler_connections: 8,
        };
        assert_eq!(need.total(), 20_072);
        let huge = Need {
            max_connections: usize::MAX,
            handler_connections: usize::MAX,
        };
        assert_eq!(huge.total(), u64::MAX);
    }

    #[test]
    fn a_limit_below_the_need_is_reported_with_its_numbers() {
        let need = Need {
            max_connections: 10_000,
            handler_connections: 8,
        };
        assert_eq!(shortfall(Some(20_072), need), None);
        assert_eq!(shortfall(None, need), None);
        let short = shortfall(Some(1024), need).expect("1024 is short");
        assert_eq!(
            short.to_string(),
            "the open files limit (RLIMIT_NOFILE) is 1024, below the 20072 teebox may need: \
             2 x max_connections 10000 + 8 handler connections + 64 for listeners and files; \
             raise the limit (systemd: LimitNOFILE=, shell: ulimit -n) or lower max_connections to 476"
        );
        // No max_connections fits in a limit the rest already takes.
        let tiny = shortfall(Some(64), need).expect("64 is short");
        assert!(
            tiny.to_string()
                .ends_with("(systemd: LimitNOFILE=, shell: ulimit -n)"),
            "{tiny}"
        );
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let raised = raise_to_hard().expect("raising to the hard limit is allowed");
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(raised.now, limit.current);
        if limit.maximum.is_some() {
            assert_eq!(limit.current, limit.maximum);
        }
    }
}
