//! The cluster's clock: the real one, or a virtual one that tests advance by hand so that
//! soak times and timeouts never wait in wall-clock time.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

/// Where the simulated cluster reads the time.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The system clock.
    Real,
    /// A clock that moves only when advanced.
    Virtual(Arc<watch::Sender<Timestamp>>),
}

impl Clock {
    /// A virtual clock starting at `start`.
    pub fn virtual_at(start: Timestamp) -> Self {
        Clock::Virtual(Arc::new(watch::Sender::new(start)))
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match self {
            // The simulator is the cluster: reading its clock is its job.
            Clock::Real => Timestamp::now(),
            Clock::Virtual(now) => *now.borrow(),
        }
    }

    /// The current time as Kubernetes writes it (RFC 3339, seconds).
    pub fn rfc3339(&self) -> String {
        jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", self.now()).unwrap_or_default()
    }

    /// Moves a virtual clock forward; the real clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        if let Clock::Virtual(now) = self {
            now.send_modify(|t| {
                *t = t
                    .saturating_add(jiff::SignedDuration::try_from(by).unwrap_or_default())
                    .unwrap_or(*t)
            });
        }
    }

    /// Notifications of a virtual clock moving; None for the real clock.
    pub fn subscribe(&self) -> Option<watch::Receiver<Timestamp>> {
        match self {
            Clock::Real => None,
            Clock::Virtual(now) => Some(now.subscribe()),
        }
    }

    /// Waits until `deadline` on this clock.
    pub async fn sleep_until(&self, deadline: Timestamp) {
        match self {
            Clock::Real => {
                let wait = Duration::try_from(deadline.duration_since(Timestamp::now()))
                    .unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Clock::Virtual(now) => {
                let mut changes = now.subscribe();
                let _ = changes.wait_for(|t| *t >= deadline).await;
            }
        }
    }

    /// Waits for `duration` on this clock.
    pub async fn sleep(&self, duration: Duration) {
        let deadline = self
            .now()
            .saturating_add(jiff::SignedDuration::try_from(duration).unwrap_or_default())
            .unwrap_or_else(|_| self.now());
        self.sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn virtual_sleep_ends_when_advanced() {
        let clock = Clock::virtual_at(Timestamp::from_second(1_000).expect("valid"));
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep(Duration::from_secs(600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(600));
        sleeper.await.expect("woke");
        assert_eq!(clock.now().as_second(), 1_600);
    }
}
