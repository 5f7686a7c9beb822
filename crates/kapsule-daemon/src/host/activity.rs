//! Whether the daemon is doing anything, so that it can exit when it has been idle a while.
//!
//! Busy means: a method call being answered (the identity layer's requester of the call holds a
//! `Busy`), an operation running, a session's helper alive, a client connected to the
//! daemon's own socket. Every message from the bus also counts as a moment of activity, so a
//! quick read-only call (`Version`, `ListContainers`) restarts the idle period too.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, which tests can pause and advance.
use tokio::time::Instant;

/// The daemon's activity: how many things are under way, and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    busy: usize,
    last: Instant,
}

/// Something under way; the daemon is not idle while it lives.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(Counts {
                busy: 0,
                last: Instant::now(),
            }),
        })
    }

    /// Marks something under way until the returned guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>) -> Busy {
        self.state.lock().expect("activity lock").busy += 1;
        Busy(self.clone())
    }

    /// Notes a moment of activity (a message arrived).
    pub(crate) fn touch(&self) {
        self.state.lock().expect("activity lock").last = Instant::now();
    }

    /// How long the daemon has been idle; `None` while something is under way.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        let counts = self.state.lock().expect("activity lock");
        (counts.busy == 0).then(|| counts.last.elapsed())
    }

    /// Returns once nothing has been under way for `period`.
    pub(crate) async fn idle(&self, period: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= period => return,
                Some(idle) => period - idle,
                // Whatever is under way ends with a touch, and the full period starts then.
                None => period,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut counts = self.0.state.lock().expect("activity lock");
        counts.busy -= 1;
        counts.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_a_full_period_with_nothing_under_way() {
        let activity = Activity::new();
        let period = Duration::from_secs(60);
        let busy = activity.hold();
        assert_eq!(activity.idle_for(), None, "not idle while something is under way");
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(activity.idle_for(), None);
        drop(busy);
        // The period starts when the last thing ended, not when it began.
        let started = Instant::now();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle(period).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        activity.touch();
        idle.await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(90),
            "a touch restarts the period: idle after {:?}",
            started.elapsed()
        );
    }
}
