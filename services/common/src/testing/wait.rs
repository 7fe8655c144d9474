//! The one polling loop of the tests: look, and if the state is not there yet, wait a little and
//! look again, until a deadline that fails the test naming what it waited for.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a poll waits between two looks unless told otherwise.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A deadline for a polling loop. Look at the state, and when it is not there yet call
/// [`Poll::tick`], which sleeps one interval, or fails the test once `timeout` has passed.
#[derive(Debug)]
pub struct Poll {
    /// What the loop waits for, for the failure message.
    what: String,
    /// When the wait fails.
    deadline: Instant,
    /// How long to sleep between two looks.
    interval: Duration,
}

impl Poll {
    /// A wait for `what` of at most `timeout`, looking every [`POLL_INTERVAL`].
    pub fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Self {
            what: what.into(),
            deadline: Instant::now() + timeout,
            interval: POLL_INTERVAL,
        }
    }

    /// The same wait, looking every `interval` (for looks that cost a process or a scan).
    #[must_use]
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sleeps until the next look; fails the test if the deadline has passed.
    pub async fn tick(&mut self) {
        self.check(None::<&str>);
        tokio::time::sleep(self.interval).await;
    }

    /// [`Poll::tick`], with the last state seen in the failure message.
    pub async fn tick_with(&mut self, seen: impl Display) {
        self.check(Some(seen));
        tokio::time::sleep(self.interval).await;
    }

    /// [`Poll::tick`] for code that runs off the async runtime (a thread, `block_in_place`).
    pub fn tick_blocking(&mut self) {
        self.check(None::<&str>);
        std::thread::sleep(self.interval);
    }

    /// Whether the deadline has passed, for loops that end without failing.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn check(&self, seen: Option<impl Display>) {
        if !self.expired() {
            return;
        }
        match seen {
            Some(seen) => panic!("timed out waiting for {}; last seen: {seen}", self.what),
            None => panic!("timed out waiting for {}", self.what),
        }
    }
}

/// Calls `probe` until it answers `Some`, and returns that; fails the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut poll = Poll::new(what, timeout);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        poll.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_for_returns_what_the_probe_finds() {
        let mut looks = 0;
        let found = wait_for("the third look", Duration::from_secs(5), || {
            looks += 1;
            let answer = (looks == 3).then_some(looks);
            async move { answer }
        })
        .await;
        assert_eq!(found, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for nothing; last seen: 7")]
    async fn a_poll_fails_past_its_deadline_naming_what_it_waited_for() {
        let mut poll = Poll::new("nothing", Duration::ZERO);
        poll.tick_with(7).await;
    }
}
