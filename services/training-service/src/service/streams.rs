//! `WatchTrainingStatus` and `GetTrainingLogs`: a job's changes as they happen, and its log
//! followed by its backend until the job ends.

use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::mpsc;

use super::{JobView, Training};
use crate::backend::{Ended, LogFollow};
use crate::error::TrainingError;
use crate::model::JobStatus;

/// Order of states: a watcher never reports a state older than one it has sent.
fn rank(status: JobStatus) -> u8 {
    match status {
        JobStatus::Queuing => 0,
        JobStatus::Launch => 1,
        JobStatus::Running => 2,
        JobStatus::Succeed | JobStatus::Failure | JobStatus::Canceled => 3,
    }
}

impl Training {
    /// WatchTrainingStatus: the job now, then each change, ending after a final state.
    pub async fn watch(
        self: &Arc<Self>,
        tenant: &str,
        job_id: i64,
    ) -> Result<mpsc::Receiver<Result<JobView, TrainingError>>, TrainingError> {
        let mut notifications = self.events.subscribe();
        let first = self.status(tenant, job_id).await?;
        let (sender, receiver) = mpsc::channel(16);
        let this = Arc::clone(self);
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let mut last = first.clone();
            if sender.send(Ok(first)).await.is_err() || last.job.status.is_final() {
                return;
            }
            loop {
                let next = tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    () = sender.closed() => return,
                    // Writes through another replica reach us by re-reading.
                    () = tokio::time::sleep(this.config.poll_interval()) => {
                        match this.status(&tenant, job_id).await {
                            Ok(view) => view,
                            Err(err) => {
                                let _ = sender.send(Err(err)).await;
                                return;
                            }
                        }
                    }
                    received = notifications.recv() => match received {
                        Ok(change) if change.job_id == job_id => {
                            let mut view = last.clone();
                            view.job.status = change.status;
                            view.job.message = change.message;
                            view.position = 0;
                            view
                        }
                        Ok(_) => continue,
                        // Fell behind: the database has the truth.
                        Err(_) => match this.status(&tenant, job_id).await {
                            Ok(view) => view,
                            Err(err) => {
                                let _ = sender.send(Err(err)).await;
                                return;
                            }
                        },
                    },
                };
                if rank(next.job.status) > rank(last.job.status)
                    || (next.job.status == JobStatus::Queuing && next.position != last.position)
                {
                    last = next.clone();
                    if sender.send(Ok(next)).await.is_err() || last.job.status.is_final() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }

    /// GetTrainingLogs: the job's log from `from_line`, followed until the job ends.
    pub async fn logs(
        self: &Arc<Self>,
        tenant: &str,
        job_id: i64,
        from_line: i64,
    ) -> Result<mpsc::Receiver<Result<(i64, String), TrainingError>>, TrainingError> {
        if from_line < 0 {
            return Err(TrainingError::InvalidArgument(
                "from_line must not be negative".into(),
            ));
        }
        let job = self.store.get(tenant, job_id).await?;
        let Some(backend) = self.backend_of(&job) else {
            return Err(TrainingError::FailedPrecondition(format!(
                "job {job_id} ran on the {} backend, which this training-service does not have",
                job.backend
            )));
        };
        let (sender, receiver) = mpsc::channel(256);
        let this = Arc::clone(self);
        let tenant = tenant.to_string();
        let ended: Ended = Box::new(move || {
            let this = Arc::clone(&this);
            let tenant = tenant.clone();
            async move { Ok(this.store.get(&tenant, job_id).await?.status.is_final()) }.boxed()
        });
        let follow = LogFollow {
            ended,
            sender: sender.clone(),
            shutdown: self.shutdown.clone(),
            poll: self.config.poll_interval(),
        };
        let followed = backend.follow_logs(job_id, from_line, follow);
        tokio::spawn(async move {
            if let Err(err) = followed.await {
                let _ = sender.send(Err(err)).await;
            }
        });
        Ok(receiver)
    }
}
