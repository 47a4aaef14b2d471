//! How trouble with the API server is logged.
//!
//! A kube error's own text stops at its outermost layer: a TLS failure
//! towards the API server read only `ServiceError: client error (Connect)`,
//! the certificate problem being three `source()`s down. [`Causes`] prints
//! the whole chain. [`Outage`] keeps a failing loop (a watch retrying with
//! backoff, lease attempts every two seconds) to one warning when it starts
//! failing, one every [`REPEAT_EVERY`] while it goes on, and one line when
//! it recovers, so that an absent API server is visible without flooding
//! the log.

use std::error::Error;
use std::fmt;
use std::time::{Duration, Instant};

/// How often a failure that goes on is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// An error and every `source()` beneath it, `outer: inner: innermost`;
/// a source whose text its parent already shows is not repeated.
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&shown)
    }
}

/// What to log about one more failure of a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first failure after success: warn.
    Started,
    /// Still failing, [`REPEAT_EVERY`] since the last warning: warn again,
    /// with how long and how many failures went unlogged.
    Continuing {
        /// Since the first failure.
        failing_for: Duration,
        /// Failures not logged since the last warning.
        unlogged: u64,
    },
    /// Still failing, logged recently: stay quiet.
    Quiet,
}

/// The state of one loop that talks to the API server.
#[derive(Debug, Default)]
pub struct Outage {
    /// First failure, last warning, failures since it.
    failing: Option<(Instant, Instant, u64)>,
}

impl Outage {
    /// Records a failure at `now`; says what to log.
    pub fn failed(&mut self, now: Instant) -> Report {
        match &mut self.failing {
            None => {
                self.failing = Some((now, now, 0));
                Report::Started
            }
            Some((since, logged, unlogged)) => {
                if now.saturating_duration_since(*logged) >= REPEAT_EVERY {
                    let report = Report::Continuing {
                        failing_for: now.saturating_duration_since(*since),
                        unlogged: *unlogged,
                    };
                    *logged = now;
                    *unlogged = 0;
                    report
                } else {
                    *unlogged += 1;
                    Report::Quiet
                }
            }
        }
    }

    /// Records a success at `now`; returns how long the outage lasted
    /// when there was one (to log the recovery).
    pub fn succeeded(&mut self, now: Instant) -> Option<Duration> {
        self.failing
            .take()
            .map(|(since, _, _)| now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn the_whole_chain_is_shown_without_repeats() {
        let e = Layer(
            "ServiceError: client error (Connect)",
            Some(Box::new(Layer(
                "client error (Connect)",
                Some(Box::new(Layer(
                    "invalid peer certificate: UnknownIssuer",
                    None,
                ))),
            ))),
        );
        assert_eq!(
            Causes(&e).to_string(),
            "ServiceError: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn a_long_outage_is_logged_when_it_starts_every_interval_and_when_it_ends() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.succeeded(t0), None);
        assert_eq!(o.failed(t0), Report::Started);
        let mut at = t0;
        for _ in 0..14 {
            at += Duration::from_secs(2);
            assert_eq!(o.failed(at), Report::Quiet);
        }
        at += Duration::from_secs(2);
        assert_eq!(
            o.failed(at),
            Report::Continuing {
                failing_for: Duration::from_secs(30),
                unlogged: 14
            }
        );
        assert_eq!(o.succeeded(at), Some(Duration::from_secs(30)));
        assert_eq!(o.failed(at), Report::Started);
    }
}
