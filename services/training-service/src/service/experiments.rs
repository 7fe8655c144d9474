//! Experiments in training-service: CreateExperiment's checks, the driver that queues trials,
//! reads their epochs, stops weak ones and ends the experiment, and Get/List/Watch/Stop.
//!
//! The driver keeps nothing in memory that matters: each pass reads the experiment, its
//! trials and their jobs from the database and the trials' epochs from metadata-store, so a
//! restarted process (or a second replica) carries on where the last pass left off. A trial
//! and its job are inserted in one transaction under the trial's number, so no trial is ever
//! queued twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use automl_common::error::error_chain;
use automl_common::time::now_iso;
use automl_proto::metadata_store::GetRunStatusRequest;
use tokio::sync::mpsc;
use tonic::Code;

use super::{Training, job_scope};
use crate::error::TrainingError;
use crate::experiment::search::{Observation, median_stop, suggest};
use crate::experiment::{
    Experiment, ExperimentSpec, ExperimentStatus, ExperimentView, Trial, check_experiment,
};
use crate::model::{JobSpec, JobStatus};
use crate::store::NewTrial;

impl Training {
    /// CreateExperiment: checks the experiment as a trial's submission would be checked, and
    /// its search space against the algorithm's declared parameters, then records it; the
    /// driver queues its first trials at once.
    pub async fn create_experiment(
        &self,
        tenant: &str,
        mut spec: ExperimentSpec,
    ) -> Result<ExperimentView, TrainingError> {
        if spec.algorithm.is_empty() {
            spec.algorithm = self.algorithms().await.1;
        }
        if spec.output_model_name.is_empty() {
            spec.output_model_name = if spec.name.is_empty() {
                "model".into()
            } else {
                spec.name.clone()
            };
        }
        // Every trial is this job with some parameters added: check it as Train would.
        let mut template = trial_job(&spec, "", &BTreeMap::new());
        self.admit(tenant, &mut template)
            .await
            .map_err(|err| match err {
                TrainingError::InvalidArgument(message) => {
                    TrainingError::InvalidArgument(message.replace("metadata.", "spec."))
                }
                other => other,
            })?;
        spec.resources = template.resources;
        let builtin = self.is_builtin(&spec.algorithm);
        let declared = self.declared_parameters(&spec.algorithm);
        let algorithm = spec.algorithm.clone();
        check_experiment(&mut spec, &declared, |parameters| {
            if !builtin {
                return super::submission::check_declared(&declared, parameters);
            }
            let parameters = parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            automl_text_classification::program::check_parameters(&algorithm, &parameters)
                .map_err(|err| err.to_string())
        })?;
        let experiment_id = self
            .store
            .insert_experiment(tenant, &spec, &now_iso())
            .await?;
        tracing::info!(
            experiment_id,
            algorithm = %spec.algorithm,
            search = ?spec.search,
            max_trials = spec.max_trials,
            "experiment created"
        );
        self.experiment_changed(experiment_id);
        self.experiment_view(tenant, experiment_id).await
    }

    /// GetExperiment.
    pub async fn experiment_view(
        &self,
        tenant: &str,
        experiment_id: i64,
    ) -> Result<ExperimentView, TrainingError> {
        let experiment = self.store.experiment(tenant, experiment_id).await?;
        let trials = self.store.trials(experiment_id).await?;
        Ok(ExperimentView { experiment, trials })
    }

    /// ListExperiments.
    pub async fn list_experiments(
        &self,
        tenant: &str,
        statuses: &[ExperimentStatus],
        limit: i32,
        index: i32,
    ) -> Result<(Vec<ExperimentView>, i64), TrainingError> {
        let (limit, offset) = super::submission::page(limit, index)?;
        let (experiments, total) = self
            .store
            .experiments(tenant, statuses, limit, offset)
            .await?;
        let mut views = Vec::with_capacity(experiments.len());
        for experiment in experiments {
            let trials = self.store.trials(experiment.experiment_id).await?;
            views.push(ExperimentView { experiment, trials });
        }
        Ok((views, total))
    }

    /// StopExperiment: ends a running experiment as stopped and cancels its unfinished trials
    /// (what a cancel cannot finish now, the driver finishes).
    pub async fn stop_experiment(
        &self,
        tenant: &str,
        experiment_id: i64,
    ) -> Result<ExperimentView, TrainingError> {
        let experiment = self.store.experiment(tenant, experiment_id).await?;
        if experiment.status != ExperimentStatus::Running {
            return Err(TrainingError::FailedPrecondition(format!(
                "experiment {experiment_id} has already ended"
            )));
        }
        self.end_experiment(&experiment, ExperimentStatus::Stopped, "stopped by request")
            .await?;
        self.experiment_view(tenant, experiment_id).await
    }

    /// WatchExperiment: the experiment now, then after each change, until it and its trials
    /// have ended.
    pub async fn watch_experiment(
        self: &Arc<Self>,
        tenant: &str,
        experiment_id: i64,
    ) -> Result<mpsc::Receiver<Result<ExperimentView, TrainingError>>, TrainingError> {
        let mut jobs = self.events.subscribe();
        let mut experiments = self.experiment_events.subscribe();
        let first = self.experiment_view(tenant, experiment_id).await?;
        let (sender, receiver) = mpsc::channel(16);
        let this = Arc::clone(self);
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let mut last = first.clone();
            if sender.send(Ok(first)).await.is_err() || last.is_final() {
                return;
            }
            loop {
                tokio::select! {
                    () = this.shutdown.cancelled() => return,
                    () = sender.closed() => return,
                    // Changes made by another replica reach us by re-reading.
                    () = tokio::time::sleep(this.config.poll_interval()) => {}
                    received = jobs.recv() => match received {
                        Ok(change) if !last.trials.iter().any(|t| t.job_id == change.job_id) => continue,
                        _ => {}
                    },
                    received = experiments.recv() => match received {
                        Ok(id) if id != experiment_id => continue,
                        _ => {}
                    },
                }
                let next = match this.experiment_view(&tenant, experiment_id).await {
                    Ok(view) => view,
                    Err(err) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                };
                // A trial whose job has just ended is shown once the driver has read its
                // last epochs (a moment later), not before with an incomplete curve.
                let reading = next
                    .trials
                    .iter()
                    .any(|t| t.status.is_final() && !t.settled);
                if next != last && !reading {
                    last = next.clone();
                    if sender.send(Ok(next)).await.is_err() || last.is_final() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }

    fn experiment_changed(&self, experiment_id: i64) {
        let _ = self.experiment_events.send(experiment_id);
        self.experiments_wake.notify_one();
    }

    /// The driver: a pass over every experiment with work, after each change and at the poll
    /// interval.
    pub(super) async fn drive_forever(self: Arc<Self>) {
        loop {
            match self.store.experiments_to_drive().await {
                Ok(experiments) => {
                    for experiment in experiments {
                        let span = tracing::info_span!(
                            "experiment",
                            experiment_id = experiment.experiment_id
                        );
                        let driven = tracing::Instrument::instrument(self.drive(&experiment), span);
                        if let Err(err) = driven.await {
                            tracing::warn!(
                                experiment_id = experiment.experiment_id,
                                error = %error_chain(&err),
                                "cannot drive the experiment; next pass retries"
                            );
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %error_chain(&err), "cannot read the experiments")
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.experiments_wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval()) => {}
            }
        }
    }

    /// One pass over one experiment.
    async fn drive(&self, experiment: &Experiment) -> Result<(), TrainingError> {
        let id = experiment.experiment_id;
        let spec = &experiment.spec;
        let mut trials = self.store.trials(id).await?;
        let running = experiment.status == ExperimentStatus::Running;
        let mut touched = false;
        // Read new epochs; settle trials whose jobs have ended.
        for index in 0..trials.len() {
            if trials[index].settled {
                continue;
            }
            let ended = trials[index].status.is_final();
            let curve = if trials[index].status == JobStatus::Queuing {
                Vec::new()
            } else {
                self.read_curve(
                    &experiment.tenant,
                    trials[index].job_id,
                    &spec.objective.metric,
                )
                .await?
            };
            let judged = trials[index].curve.len();
            if curve == trials[index].curve && !ended {
                continue;
            }
            trials[index].curve = curve;
            trials[index].settled = ended;
            let stop_at = if running && spec.early_stopping.median && !ended {
                median_rule(spec, &trials, index, judged)
            } else {
                None
            };
            // Stopped at the epoch it has reached (the rule may have held from an earlier
            // epoch read in the same pass).
            if stop_at.is_some() {
                trials[index].early_stopped_epoch =
                    i64::try_from(trials[index].curve.len()).unwrap_or(i64::MAX);
            }
            self.store
                .update_trial(id, &trials[index], &now_iso())
                .await?;
            touched = true;
        }
        // Stop what the median rule stopped (again, when a pass died before the cancel).
        for trial in trials.iter_mut() {
            if trial.early_stopped_epoch > 0 && !trial.status.is_final() && !trial.canceling {
                let reason = format!("early stopped at epoch {}", trial.early_stopped_epoch);
                if self
                    .cancel_trial(&experiment.tenant, trial, &reason)
                    .await?
                {
                    automl_common::metrics::metrics()
                        .training
                        .trial_early_stopped();
                } else {
                    // It ended first: it was not stopped.
                    trial.early_stopped_epoch = 0;
                    self.store.update_trial(id, trial, &now_iso()).await?;
                }
                touched = true;
            }
        }
        if touched {
            self.experiment_changed(id);
        }
        if !running {
            let reason = ended_reason(experiment.status);
            for trial in &trials {
                if !trial.status.is_final() && !trial.canceling {
                    self.cancel_trial(&experiment.tenant, trial, reason).await?;
                }
            }
            return Ok(());
        }
        self.advance(experiment, trials).await
    }

    /// The experiment's outcome when it has one, else its next trials.
    async fn advance(
        &self,
        experiment: &Experiment,
        mut trials: Vec<Trial>,
    ) -> Result<(), TrainingError> {
        let id = experiment.experiment_id;
        let spec = &experiment.spec;
        let metric = &spec.objective.metric;
        let view = ExperimentView {
            experiment: experiment.clone(),
            trials: trials.clone(),
        };
        let best = view.best().cloned();
        if let (Some(goal), Some(best)) = (spec.objective.goal, &best)
            && let Some(value) = best.objective()
            && spec.objective.direction.reaches(value, goal)
        {
            let message = format!(
                "goal reached: trial {} has {metric} {value:.4} (goal {goal})",
                best.number
            );
            return self
                .end_experiment(experiment, ExperimentStatus::Succeeded, &message)
                .await;
        }
        let failed: Vec<&Trial> = trials.iter().filter(|t| t.failed()).collect();
        if failed.len() >= spec.max_failed_trials as usize {
            let last = failed.last().map_or(String::new(), |t| {
                if t.status == JobStatus::Succeed {
                    format!("trial {} reported no {metric}", t.number)
                } else {
                    format!("trial {}: {}", t.number, t.message)
                }
            });
            let message = format!(
                "{} trials failed (max_failed_trials {}); last: {last}",
                failed.len(),
                spec.max_failed_trials
            );
            return self
                .end_experiment(experiment, ExperimentStatus::Failed, &message)
                .await;
        }
        let settled = trials.iter().filter(|t| t.settled).count();
        if trials.len() >= spec.max_trials as usize && settled == trials.len() {
            return match &best {
                Some(best) => {
                    let message = format!(
                        "{} trials ended; best: trial {} (run {}) with {metric} {:.4}",
                        trials.len(),
                        best.number,
                        best.job_id,
                        best.objective().unwrap_or(f64::NAN)
                    );
                    self.end_experiment(experiment, ExperimentStatus::Succeeded, &message)
                        .await
                }
                None => {
                    let message = format!("{} trials ended and none succeeded", trials.len());
                    self.end_experiment(experiment, ExperimentStatus::Failed, &message)
                        .await
                }
            };
        }
        // Queue trials while fewer than parallel_trials are unfinished.
        let mut queued = false;
        while trials.len() < spec.max_trials as usize
            && trials.iter().filter(|t| !t.settled).count() < spec.parallel_trials as usize
        {
            let number = trials.len() as u64 + 1;
            let finished: Vec<Observation> = trials
                .iter()
                .filter(|t| t.completed() || (t.settled && t.early_stopped_epoch > 0))
                .map(|t| Observation {
                    parameters: t.parameters.clone(),
                    objective: if t.completed() { t.objective() } else { None },
                })
                .collect();
            let parameters = suggest(spec, number, &finished);
            let mut job = trial_job(spec, &trial_name(experiment, number), &parameters);
            job.submission = uuid::Uuid::new_v4().simple().to_string();
            let number = i64::try_from(number).unwrap_or(i64::MAX);
            let inserted = self
                .store
                .insert_trial(
                    &experiment.tenant,
                    &NewTrial {
                        experiment_id: id,
                        number,
                        parameters: &parameters,
                        job: &job,
                    },
                    self.config.backend.name(),
                    &now_iso(),
                )
                .await?;
            let Some(job_id) = inserted else {
                // Another replica queued it: its next pass (or ours) carries on.
                return Ok(());
            };
            let (_, span) = job_scope(job_id, &job.request_id);
            span.in_scope(|| {
                tracing::info!(
                    experiment_id = id,
                    trial = number,
                    ?parameters,
                    "trial queued"
                );
            });
            self.changed(job_id, JobStatus::Queuing, "");
            trials.push(Trial {
                number,
                job_id,
                parameters,
                status: JobStatus::Queuing,
                ..Trial::default()
            });
            queued = true;
        }
        let message = progress(spec, &trials);
        self.store
            .experiment_message(id, &message, &now_iso())
            .await?;
        if queued {
            self.experiment_changed(id);
        }
        Ok(())
    }

    /// Cancels a trial's job for `reason`; false when it had already ended.
    async fn cancel_trial(
        &self,
        tenant: &str,
        trial: &Trial,
        reason: &str,
    ) -> Result<bool, TrainingError> {
        match self.cancel_for(tenant, trial.job_id, reason, false).await {
            Ok(_) => {
                tracing::info!(
                    job_id = trial.job_id,
                    trial = trial.number,
                    reason,
                    "trial canceled"
                );
                Ok(true)
            }
            Err(TrainingError::FailedPrecondition(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Ends a running experiment and cancels its unfinished trials (the driver retries what
    /// cannot be canceled now).
    async fn end_experiment(
        &self,
        experiment: &Experiment,
        status: ExperimentStatus,
        message: &str,
    ) -> Result<(), TrainingError> {
        let id = experiment.experiment_id;
        if !self
            .store
            .end_experiment(id, status, message, &now_iso())
            .await?
        {
            return Ok(());
        }
        tracing::info!(experiment_id = id, ?status, message, "experiment ended");
        automl_common::metrics::metrics()
            .training
            .experiment_ended(match status {
                ExperimentStatus::Succeeded => "succeeded",
                ExperimentStatus::Failed => "failed",
                ExperimentStatus::Stopped | ExperimentStatus::Running => "stopped",
            });
        let reason = ended_reason(status);
        for trial in self.store.trials(id).await? {
            if !trial.status.is_final()
                && !trial.canceling
                && let Err(err) = self.cancel_trial(&experiment.tenant, &trial, reason).await
            {
                tracing::warn!(job_id = trial.job_id, error = %error_chain(&err), "cannot cancel the trial yet");
            }
        }
        self.experiment_changed(id);
        Ok(())
    }

    /// The objective per epoch of a trial's run, in epoch order (empty before its run starts).
    async fn read_curve(
        &self,
        tenant: &str,
        job_id: i64,
        metric: &str,
    ) -> Result<Vec<f64>, TrainingError> {
        let response = self
            .metadata
            .clone()
            .get_run_status(self.on_behalf(
                tenant,
                GetRunStatusRequest {
                    run_id: job_id.to_string(),
                },
            ))
            .await;
        let run = match response {
            Ok(found) => found.into_inner().run_info.unwrap_or_default(),
            Err(status) if status.code() == Code::NotFound => return Ok(Vec::new()),
            Err(status) => {
                tracing::warn!(job_id, code = ?status.code(), message = status.message(), "cannot read the trial's epochs");
                return Err(TrainingError::Unavailable("metadata-store".into()));
            }
        };
        let mut epochs: Vec<(i64, String, f64)> = run
            .epochs
            .into_iter()
            .filter_map(|(key, epoch)| {
                let value = epoch.metrics.get(metric)?.trim().parse::<f64>().ok()?;
                let order = epoch.epoch_id.parse::<i64>().unwrap_or(i64::MAX);
                value.is_finite().then_some((order, key, value))
            })
            .collect();
        epochs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(epochs.into_iter().map(|(_, _, value)| value).collect())
    }
}

/// Whether (at which epoch) the median rule holds for trial `index`, judging only the
/// epochs after the first `judged`.
fn median_rule(
    spec: &ExperimentSpec,
    trials: &[Trial],
    index: usize,
    judged: usize,
) -> Option<usize> {
    let trial = &trials[index];
    if trial.early_stopped_epoch > 0 || trial.canceling || trial.curve.len() <= judged {
        return None;
    }
    let completed: Vec<&[f64]> = trials
        .iter()
        .filter(|t| t.completed())
        .map(|t| t.curve.as_slice())
        .collect();
    let rule = &spec.early_stopping;
    median_stop(
        &trial.curve,
        judged + 1..=trial.curve.len(),
        &completed,
        spec.objective.direction,
        rule.min_trials_required as usize,
        rule.start_step as usize,
    )
}

/// The job of trial `name` with the search's `chosen` values added to the fixed parameters.
fn trial_job(spec: &ExperimentSpec, name: &str, chosen: &BTreeMap<String, String>) -> JobSpec {
    let mut parameters = spec.parameters.clone();
    parameters.extend(chosen.iter().map(|(k, v)| (k.clone(), v.clone())));
    JobSpec {
        algorithm: spec.algorithm.clone(),
        dataset_id: spec.dataset_id.clone(),
        name: name.to_string(),
        train_data_version_hash: spec.train_data_version_hash.clone(),
        parameters,
        output_model_name: spec.output_model_name.clone(),
        resources: spec.resources.clone(),
        base_run_id: String::new(),
        priority: spec.priority,
        request_id: automl_common::request_id::current().unwrap_or_default(),
        traceparent: automl_common::otlp::current_traceparent().unwrap_or_default(),
        submission: String::new(),
    }
}

fn trial_name(experiment: &Experiment, number: u64) -> String {
    let name = if experiment.spec.name.is_empty() {
        format!("experiment-{}", experiment.experiment_id)
    } else {
        experiment.spec.name.clone()
    };
    format!("{name} trial {number}")
}

/// Why an ended experiment's unfinished trials are canceled.
fn ended_reason(status: ExperimentStatus) -> &'static str {
    match status {
        ExperimentStatus::Running => "experiment running",
        ExperimentStatus::Succeeded => "experiment ended (succeeded)",
        ExperimentStatus::Failed => "experiment ended (failed)",
        ExperimentStatus::Stopped => "experiment stopped",
    }
}

/// A running experiment's message: its trials by state.
fn progress(spec: &ExperimentSpec, trials: &[Trial]) -> String {
    let count = |f: &dyn Fn(&Trial) -> bool| trials.iter().filter(|t| f(t)).count();
    let running = count(&|t| !t.status.is_final());
    let succeeded = count(&|t| t.completed());
    let failed = count(&|t| t.failed());
    let stopped = count(&|t| t.status.is_final() && t.early_stopped_epoch > 0);
    format!(
        "{} of {} trials: {running} running, {succeeded} succeeded, {failed} failed, {stopped} stopped early",
        trials.len(),
        spec.max_trials
    )
}
