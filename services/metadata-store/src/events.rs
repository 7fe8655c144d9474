//! In-process change notifications that wake `WatchRun` streams as soon as a run changes.
//! Watchers also re-read on a timer, so writes made through another replica reach them too.

use tokio::sync::broadcast;

/// Capacity of the notification channel; a watcher that falls behind simply re-reads.
const CAPACITY: usize = 1024;

/// Publishes "this run changed" to every watcher in the process.
#[derive(Debug, Clone)]
pub struct RunEvents {
    sender: broadcast::Sender<String>,
}

impl Default for RunEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl RunEvents {
    /// A channel with no subscribers yet.
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CAPACITY);
        Self { sender }
    }

    /// Wakes the watchers of `run_id`.
    pub fn notify(&self, tenant: &str, run_id: &str) {
        // No receivers is the normal case when nobody watches.
        let _ = self.sender.send(key(tenant, run_id));
    }

    /// A receiver of every notification from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.sender.subscribe()
    }
}

/// The notification key of a run.
pub fn key(tenant: &str, run_id: &str) -> String {
    format!("{tenant}/{run_id}")
}
