//! What trainers did, made into job states: what the backends report (exits, pods running,
//! Jobs gone, the lists after a (re)watch), jobs a previous process left running (followed after a restart until their
//! trainer is gone), and cancels that hold until the trainer is gone.

use std::collections::HashSet;
use std::sync::Arc;

use automl_common::error::error_chain;
use automl_common::request_id;
use automl_common::time::now_iso;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{CANCELED, CANCELING, Training, job_scope};
use crate::backend::{JobRef, Observed, Stopped};
use crate::error::TrainingError;
use crate::local::{Exit, deadline_message};
use crate::model::{Job, JobStatus};

impl Training {
    /// One attempt to stop a canceling job's trainer; the job ends `canceled` once it is gone,
    /// and the next scheduling pass tries again while it is not.
    pub(super) async fn stop_canceling(&self, job: &Job) -> Result<(), TrainingError> {
        let Some(backend) = self.backend_of(job) else {
            tracing::warn!(
                job_id = job.job_id,
                backend = %job.backend,
                "job runs on a backend this training-service does not have"
            );
            return Ok(());
        };
        match backend.stop(job, self.is_launching(job.job_id)).await {
            Ok(Stopped::Gone) => self.canceled(job).await,
            // Its end is reported as it comes (or the next pass tries again).
            Ok(Stopped::Stopping) => Ok(()),
            Err(err) => {
                tracing::warn!(job_id = job.job_id, error = %error_chain(&err), "cannot stop the trainer yet; retrying");
                let message = format!(
                    "{CANCELING}: cannot delete {} yet ({err}); retrying",
                    backend.trainer_kind()
                );
                self.store
                    .transition(
                        job.job_id,
                        &[JobStatus::Launch, JobStatus::Running],
                        job.status,
                        &message,
                        None,
                        &now_iso(),
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// A canceling job whose trainer is gone ends `canceled`.
    pub(super) async fn canceled(&self, job: &Job) -> Result<(), TrainingError> {
        let message = if job.cancel_reason.is_empty() {
            CANCELED
        } else {
            job.cancel_reason.as_str()
        };
        self.end_run(&job.tenant, job.job_id, message).await;
        self.finish(
            job.job_id,
            &[JobStatus::Launch, JobStatus::Running],
            JobStatus::Canceled,
            message,
        )
        .await
    }

    /// Applies what the backends observed.
    pub(super) async fn handle_observed(
        self: Arc<Self>,
        mut observed: mpsc::UnboundedReceiver<Observed>,
    ) {
        while let Some(item) = observed.recv().await {
            let result = match &item {
                Observed::Listed(present) => self.settle_missing(present).await,
                Observed::Running(found) | Observed::Gone(found) | Observed::Exited(found, _) => {
                    // One read: whether the Job is this job's, and its tenant and request id.
                    match self.store.get_by_id(found.job_id).await {
                        Ok(job) if found.is_of(&job) => {
                            let (id, span) = job_scope(job.job_id, &job.spec.request_id);
                            let applied = self.apply_observed(&job, item);
                            request_id::scope(id, applied.instrument(span)).await
                        }
                        // A Job of another job with the same id.
                        Ok(_) => Ok(()),
                        // A trainer of a job not in this database.
                        Err(TrainingError::JobNotFound(_)) => Ok(()),
                        Err(err) => Err(err),
                    }
                }
            };
            if let Err(err) = result {
                tracing::error!(error = %error_chain(&err), "cannot record what a backend reported");
            }
        }
    }

    /// What a Job of this database's `job` reported.
    pub(super) async fn apply_observed(
        &self,
        job: &Job,
        item: Observed,
    ) -> Result<(), TrainingError> {
        match item {
            Observed::Running(_) => self.running(job.job_id).await,
            Observed::Exited(_, exit) => self.record_exit(job, exit).await,
            // Deleted on a cancel: the job ends as asked.
            Observed::Gone(_) if job.canceling => self.canceled(job).await,
            Observed::Gone(_) => {
                let stopping = self
                    .stopping
                    .lock()
                    .ok()
                    .and_then(|stopping| stopping.get(&job.job_id).cloned());
                match stopping {
                    Some(reason) => self.fail_unstarted(job, &reason).await,
                    None => {
                        let kind = self
                            .backend_of(job)
                            .map_or("the trainer", |b| b.trainer_kind());
                        let reason = format!("{kind} was deleted before it finished");
                        self.settle(job.job_id, &reason).await
                    }
                }
            }
            Observed::Listed(present) => self.settle_missing(&present).await,
        }
    }

    pub(super) async fn running(&self, job_id: i64) -> Result<(), TrainingError> {
        let message = "trainer running";
        if self
            .store
            .transition(
                job_id,
                &[JobStatus::Launch],
                JobStatus::Running,
                message,
                None,
                &now_iso(),
            )
            .await?
        {
            tracing::info!(job_id, "trainer pod running");
            self.changed(job_id, JobStatus::Running, message);
        }
        Ok(())
    }

    /// Re-attach after a (re)list of the configured backend's trainers: its active jobs
    /// without a trainer are settled.
    pub(super) async fn settle_missing(
        &self,
        present: &HashSet<JobRef>,
    ) -> Result<(), TrainingError> {
        let backend = self.launcher();
        let gone = format!("{} is gone", backend.trainer_kind());
        for job in self.store.active().await? {
            if job.backend != backend.name() || present.iter().any(|found| found.is_of(&job)) {
                continue;
            }
            // A trainer started after the list was taken is not missing.
            if backend.exists(&job).await? {
                continue;
            }
            // Claimed by this process and being started right now.
            if job.backend_ref.is_empty() && self.is_launching(job.job_id) {
                continue;
            }
            self.settle(job.job_id, &gone).await?;
        }
        Ok(())
    }

    /// Settles a job whose trainer is gone from its run's outcome in metadata-store.
    pub(super) async fn settle(&self, job_id: i64, reason: &str) -> Result<(), TrainingError> {
        let tenant = self.job_tenant(job_id).await;
        let (status, message) = match self.run_outcome(&tenant, job_id).await {
            Some((true, message)) => (JobStatus::Succeed, message),
            Some((false, message)) => (JobStatus::Failure, message),
            None => {
                self.end_run(&tenant, job_id, reason).await;
                (JobStatus::Failure, reason.to_string())
            }
        };
        self.finish(
            job_id,
            &[JobStatus::Launch, JobStatus::Running],
            status,
            &message,
        )
        .await
    }

    pub(super) async fn record_exit(&self, job: &Job, exit: Exit) -> Result<(), TrainingError> {
        let (job_id, tenant) = (job.job_id, job.tenant.as_str());
        let active = [JobStatus::Launch, JobStatus::Running];
        // A cancel was asked for: whatever the trainer did last, the job ends as asked.
        if job.canceling || exit == Exit::Canceled {
            return self.canceled(job).await;
        }
        // Kubernetes stopped the Job at its `activeDeadlineSeconds`.
        let exit = match exit {
            Exit::Failed(reason) if reason.contains("DeadlineExceeded") => Exit::Failed(format!(
                "{} ({reason})",
                deadline_message(self.max_runtime(job).as_secs())
            )),
            other => other,
        };
        match exit {
            Exit::Success => {
                let message = self
                    .run_outcome(tenant, job_id)
                    .await
                    .map_or_else(|| "training succeeded".to_string(), |(_, message)| message);
                self.finish(job_id, &active, JobStatus::Succeed, &message)
                    .await
            }
            Exit::Failed(reason) => {
                // The trainer's own error line says more than its exit code.
                let line = match self.backend_of(job) {
                    Some(backend) => backend.trainer_error(job.job_id).await,
                    None => None,
                };
                let reason = match line {
                    Some(line) if reason.starts_with("exit code") => format!("{reason}: {line}"),
                    _ => reason,
                };
                self.end_run(tenant, job_id, &reason).await;
                self.finish(job_id, &active, JobStatus::Failure, &reason)
                    .await
            }
            Exit::Canceled => self.canceled(job).await,
        }
    }

    /// After a restart: jobs a previous process left running whose backend follows them here
    /// (local trainers) are followed until their trainer is gone (stopped at their deadline),
    /// then settled from their run's outcome; none stays running forever. A local trainer is
    /// known by its pid and start time: a pid now used by another process is neither signalled
    /// nor taken for the trainer.
    pub(super) async fn reconcile(self: &Arc<Self>) -> Result<(), TrainingError> {
        for job in self.store.active().await? {
            let Some(backend) = self.backend_of(&job) else {
                continue;
            };
            let Some(gone) = backend.follow_orphan(&job, self.max_runtime(&job)) else {
                continue;
            };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let reason = tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    reason = gone => reason,
                };
                let (id, span) = job_scope(job.job_id, &job.spec.request_id);
                let settled = async {
                    // A cancel asked for meanwhile ends the job as asked.
                    match this.store.get_by_id(job.job_id).await {
                        Ok(current) if current.canceling => this.canceled(&current).await,
                        _ => this.settle(job.job_id, &reason).await,
                    }
                };
                if let Err(err) = request_id::scope(id, settled.instrument(span)).await {
                    tracing::error!(error = %error_chain(&err), "cannot settle a job after a restart");
                }
            });
        }
        Ok(())
    }
}
