//! The scheduler: each pass serves tenants in fair order (see [`crate::policy`]), waits with
//! backoff for snapshots still being built, fails jobs whose snapshot failed, and claims and
//! launches the others under the concurrency limit and the tenant's quota; it also supervises
//! active jobs (cancels still to carry out, trainers that never started).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automl_common::error::error_chain;
use automl_common::metrics::metrics;
use automl_common::request_id;
use automl_common::time::now_iso;
use automl_proto::data_management::{SnapshotState, VersionQuery};
use tonic::Code;
use tracing::Instrument;

use super::{Training, job_scope, now_ms};
use crate::backend::Stopped;
use crate::error::TrainingError;
use crate::model::{Job, JobSpec, JobStatus};
use crate::policy::serve_first;
use crate::store::Claim;

/// Longest a snapshot check waits before looking again.
const MAX_SNAPSHOT_BACKOFF: Duration = Duration::from_secs(5);
/// Most queued jobs one scheduling pass considers (oldest first).
const QUEUE_SCAN: i64 = 10_000;
/// What the scheduler learns about a job's snapshot.
pub(super) enum Snapshot {
    Ready(String),
    NotYet,
    Failed(String),
}

impl Training {
    pub(super) async fn schedule_forever(self: Arc<Self>) {
        loop {
            if let Err(err) = self.supervise().await {
                tracing::warn!(error = %error_chain(&err), "supervising pass failed");
            }
            if let Err(err) = self.schedule_once().await {
                tracing::warn!(error = %error_chain(&err), "scheduling pass failed");
            }
            self.update_gauges().await;
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval()) => {}
            }
        }
    }

    pub(super) async fn update_gauges(&self) {
        match self.store.counts().await {
            Ok((queued, active)) => {
                let training = &metrics().training;
                training.set_queue_depth(u64::try_from(queued).unwrap_or_default());
                training.set_running_jobs(u64::try_from(active).unwrap_or_default());
            }
            Err(err) => tracing::warn!(error = %error_chain(&err), "cannot count jobs"),
        }
    }

    /// Active jobs that need the service: canceling ones whose trainer is not yet gone, and
    /// jobs whose trainer can wait to start (a Kubernetes pod) and has not started within the
    /// launch timeout.
    pub(super) async fn supervise(&self) -> Result<(), TrainingError> {
        let launch_timeout = self.config.limits.launch_timeout_seconds;
        let now = now_ms();
        for job in self.store.active().await? {
            let (id, span) = job_scope(job.job_id, &job.spec.request_id);
            let result = if job.canceling {
                request_id::scope(id, self.stop_canceling(&job).instrument(span)).await
            } else if self
                .backend_of(&job)
                .is_some_and(|backend| backend.can_wait_to_start())
                && job.status == JobStatus::Launch
                && job.claimed_ms > 0
                && now - job.claimed_ms > launch_timeout.saturating_mul(1000)
                && !self.is_launching(job.job_id)
            {
                request_id::scope(id, self.launch_timed_out(&job).instrument(span)).await
            } else {
                Ok(())
            };
            if let Err(err) = result {
                tracing::warn!(job_id = job.job_id, error = %error_chain(&err), "cannot supervise a job");
            }
        }
        Ok(())
    }

    /// A job whose trainer did not start in time: its trainer is stopped (a Kubernetes Job
    /// deleted; retried on the next pass when that fails) and the job fails with the reason
    /// it waited (its pod's), freeing the slot.
    pub(super) async fn launch_timed_out(&self, job: &Job) -> Result<(), TrainingError> {
        let Some(backend) = self.backend_of(job) else {
            return Ok(());
        };
        let reason = backend.pending_reason(job.job_id).await;
        let message = format!(
            "the trainer did not start within {} s: {reason}",
            self.config.limits.launch_timeout_seconds
        );
        if let Ok(mut stopping) = self.stopping.lock() {
            stopping.insert(job.job_id, message.clone());
        }
        let result = match backend.stop(job, false).await {
            Ok(Stopped::Gone) => self.fail_unstarted(job, &message).await,
            Ok(Stopped::Stopping) => Ok(()),
            Err(err) => Err(err),
        };
        if let Ok(mut stopping) = self.stopping.lock() {
            stopping.remove(&job.job_id);
        }
        result
    }

    pub(super) async fn fail_unstarted(
        &self,
        job: &Job,
        message: &str,
    ) -> Result<(), TrainingError> {
        self.end_run(&job.tenant, job.job_id, message).await;
        self.finish(
            job.job_id,
            &[JobStatus::Launch],
            JobStatus::Failure,
            message,
        )
        .await
    }

    /// One pass: serve tenants in fair order (see [`crate::policy`]), each tenant's queued jobs
    /// by priority then age; launch jobs whose snapshot is READY while the concurrency limit
    /// and the tenant's quota allow; fail those whose snapshot FAILED.
    pub(super) async fn schedule_once(&self) -> Result<(), TrainingError> {
        let queued = self.store.queued(QUEUE_SCAN).await?;
        if queued.is_empty() {
            return Ok(());
        }
        let mut queues: BTreeMap<String, VecDeque<Job>> = BTreeMap::new();
        for job in queued {
            queues.entry(job.tenant.clone()).or_default().push_back(job);
        }
        for queue in queues.values_mut() {
            queue
                .make_contiguous()
                .sort_by_key(|job| (std::cmp::Reverse(job.spec.priority), job.job_id));
        }
        let tenants: Vec<&str> = queues.keys().map(String::as_str).collect();
        let mut loads = self.store.tenant_loads(&tenants).await?;
        let mut next_claim = loads.values().map(|l| l.last_claim).max().unwrap_or(0) + 1;
        loop {
            let Some(tenant) = queues
                .iter()
                .filter(|(_, queue)| !queue.is_empty())
                .map(|(tenant, _)| tenant)
                .min_by(|a, b| {
                    let load = |t: &str| loads.get(t).copied().unwrap_or_default();
                    let weight = |t: &str| self.config.quotas.of(t).weight;
                    serve_first((a, &load(a), weight(a)), (b, &load(b), weight(b)))
                })
                .cloned()
            else {
                return Ok(());
            };
            let quota = self.config.quotas.of(&tenant);
            let Some(job) = queues.get_mut(&tenant).and_then(VecDeque::pop_front) else {
                continue;
            };
            if !self.due(job.job_id) {
                continue;
            }
            let (id, span) = job_scope(job.job_id, &job.spec.request_id);
            let claim =
                request_id::scope(id, self.schedule_job(&job, &quota).instrument(span)).await?;
            match claim {
                Some(Claim::Claimed) => {
                    let load = loads.entry(tenant).or_default();
                    load.active += 1;
                    load.gpus += i64::from(job.spec.resources.gpus);
                    load.last_claim = next_claim;
                    next_claim += 1;
                }
                // The platform is full: the rest waits for a change.
                Some(Claim::AtLimit) => return Ok(()),
                // This tenant is at its quota: its other jobs wait too (they say why when
                // asked).
                Some(Claim::Quota) => {
                    queues.remove(&tenant);
                }
                Some(Claim::Gone) | None => {}
            }
        }
    }

    /// Launches or fails one queued job as its snapshot says; the claim's outcome when the
    /// snapshot is READY, `None` otherwise.
    pub(super) async fn schedule_job(
        &self,
        job: &Job,
        quota: &crate::config::Quota,
    ) -> Result<Option<Claim>, TrainingError> {
        let snapshot = match self.snapshot(&job.tenant, &job.spec).await {
            Ok(snapshot) => snapshot,
            Err(TrainingError::VersionNotFound { .. }) => {
                Snapshot::Failed("the dataset version no longer exists".into())
            }
            Err(err) => return Err(err),
        };
        match snapshot {
            Snapshot::NotYet => {
                self.back_off(job.job_id);
                Ok(None)
            }
            Snapshot::Failed(reason) => {
                self.finish(
                    job.job_id,
                    &[JobStatus::Queuing],
                    JobStatus::Failure,
                    &format!("snapshot FAILED: {reason}"),
                )
                .await?;
                Ok(None)
            }
            Snapshot::Ready(path) => {
                let claim = self
                    .store
                    .claim(
                        job,
                        self.config.max_concurrent_jobs,
                        quota,
                        &now_iso(),
                        now_ms(),
                    )
                    .await?;
                if claim == Claim::Claimed {
                    self.changed(job.job_id, JobStatus::Launch, "launching the trainer");
                    self.launch(job, &path).await?;
                }
                Ok(Some(claim))
            }
        }
    }

    /// Asks data-management about the job's snapshot.
    pub(super) async fn snapshot(
        &self,
        tenant: &str,
        spec: &JobSpec,
    ) -> Result<Snapshot, TrainingError> {
        let response = self
            .data
            .clone()
            .fetch_training_dataset(self.on_behalf(
                tenant,
                VersionQuery {
                    dataset_id: spec.dataset_id.clone(),
                    version_hash: spec.train_data_version_hash.clone(),
                },
            ))
            .await;
        match response {
            Ok(found) => {
                let found = found.into_inner();
                Ok(match found.state() {
                    SnapshotState::Ready => {
                        Snapshot::Ready(found.root.map(|root| root.path).unwrap_or_default())
                    }
                    SnapshotState::Running => Snapshot::NotYet,
                    SnapshotState::Failed => Snapshot::Failed(found.message),
                })
            }
            Err(status) => Err(match status.code() {
                Code::NotFound => TrainingError::VersionNotFound {
                    dataset_id: spec.dataset_id.clone(),
                    version_hash: spec.train_data_version_hash.clone(),
                },
                Code::InvalidArgument => TrainingError::InvalidArgument(status.message().into()),
                _ => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "data-management call failed");
                    TrainingError::Unavailable("data-management".into())
                }
            }),
        }
    }

    pub(super) fn due(&self, job_id: i64) -> bool {
        self.backoff
            .lock()
            .map(|backoff| {
                backoff
                    .get(&job_id)
                    .is_none_or(|(at, _)| Instant::now() >= *at)
            })
            .unwrap_or(true)
    }

    pub(super) fn back_off(&self, job_id: i64) {
        if let Ok(mut backoff) = self.backoff.lock() {
            let delay = backoff
                .get(&job_id)
                .map_or(Duration::from_millis(100), |(_, d)| {
                    (*d * 2).min(MAX_SNAPSHOT_BACKOFF)
                });
            backoff.insert(job_id, (Instant::now() + delay, delay));
        }
    }
}
