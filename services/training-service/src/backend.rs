//! Where trainers run: the [`Backend`] trait, implemented by the local backend
//! ([`crate::local`], child processes) and the Kubernetes backend ([`crate::kubernetes`],
//! batch/v1 Jobs). The service finds a job's backend by the name recorded on the job, asks it
//! to start, stop, follow and re-attach to the job's trainer, and learns what trainers did
//! from the [`Observed`] reports backends send.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AlgorithmConfig;
use crate::error::TrainingError;
use crate::local::Exit;
use crate::model::Job;

/// How automl-train starts the error line it writes before a failing exit.
pub const TRAINER_ERROR: &str = "automl-train: error: ";

/// Which job a trainer belongs to, as its backend knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobRef {
    /// The training job id.
    pub job_id: i64,
    /// The job's submission id; empty where the backend does not record it (a local trainer
    /// is this process's own child), and on Jobs made before submissions had one.
    pub submission: String,
}

impl JobRef {
    /// Whether this trainer is the one of `job` (and not an older job's with the same id).
    pub fn is_of(&self, job: &Job) -> bool {
        self.job_id == job.job_id
            && (self.submission.is_empty()
                || job.spec.submission.is_empty()
                || self.submission == job.spec.submission)
    }
}

/// What a backend observed about a job's trainer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Its trainer runs.
    Running(JobRef),
    /// Its trainer ended.
    Exited(JobRef, Exit),
    /// Its trainer is gone without having finished (its Job deleted, or expired while nobody
    /// watched).
    Gone(JobRef),
    /// A (re)list of the backend's trainers is complete: these jobs have one.
    Listed(HashSet<JobRef>),
}

/// What a backend is given to start a job's trainer.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The job; its `max_runtime_seconds` is the run time it gets.
    pub job: &'a Job,
    /// The job's algorithm, as the registry describes it.
    pub algorithm: &'a AlgorithmConfig,
    /// The trainer environment of the contract.
    pub env: &'a [(String, String)],
    /// The longest the trainer may run.
    pub max_runtime: Duration,
}

/// A trainer that was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launched {
    /// The trainer runs already; its identity (a local process's `pid:start`).
    Running(String),
    /// The trainer's Job was created (its name, its image); its pod is still to start.
    Created {
        /// The Job's name.
        name: String,
        /// The image it runs.
        image: String,
    },
}

/// What a stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The trainer is gone: the job may end now.
    Gone,
    /// The trainer is being stopped: its end is reported as it comes, or the next scheduling
    /// pass asks again.
    Stopping,
}

/// Whether a job has ended, asked before each look at its log.
pub type Ended = Box<dyn Fn() -> BoxFuture<'static, Result<bool, TrainingError>> + Send + Sync>;

/// A job's log lines (numbered from 0), as `GetTrainingLogs` sends them.
pub type LogSender = mpsc::Sender<Result<(i64, String), TrainingError>>;

/// How a log is followed: until the job has ended, the receiver is gone, or shutdown.
pub struct LogFollow {
    /// Whether the job has ended: read before each look at the log, so that every line
    /// written before the end is sent before the stream ends.
    pub ended: Ended,
    /// Where the lines go.
    pub sender: LogSender,
    /// The service's shutdown.
    pub shutdown: CancellationToken,
    /// How long to wait before looking for a trainer's log again.
    pub poll: Duration,
}

/// Runs trainers: one implementation per place they can run.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The name recorded on the jobs it runs.
    fn name(&self) -> &'static str;

    /// What its trainers are, in messages (`the Kubernetes Job`).
    fn trainer_kind(&self) -> &'static str;

    /// Starts a job's trainer.
    fn launch<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Launched, TrainingError>>;

    /// One attempt to stop a job's trainer; `launching` when this process is starting it right
    /// now.
    fn stop<'a>(
        &'a self,
        job: &'a Job,
        launching: bool,
    ) -> BoxFuture<'a, Result<Stopped, TrainingError>>;

    /// Whether a stopped trainer is gone within moments (a cancel then waits to answer with
    /// the outcome).
    fn stops_at_once(&self) -> bool;

    /// Sends a job's log from `from_line`, followed until the job ends.
    fn follow_logs(
        &self,
        job_id: i64,
        from_line: i64,
        follow: LogFollow,
    ) -> BoxFuture<'static, Result<(), TrainingError>>;

    /// The trainer's own last error line, where the backend reads it from the log (a pod's
    /// comes with its termination message instead).
    fn trainer_error(&self, job_id: i64) -> BoxFuture<'_, Option<String>>;

    /// Whether the trainer of `job` still exists.
    fn exists<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, TrainingError>>;

    /// Whether a trainer can wait to start (a pod to schedule, an image to pull): such a job
    /// fails when it has not started within the launch timeout.
    fn can_wait_to_start(&self) -> bool;

    /// Why a job's trainer has not started yet.
    fn pending_reason(&self, job_id: i64) -> BoxFuture<'_, String>;

    /// After a restart: waits until the trainer a previous process started for `job` is gone,
    /// stopping it once it has run `max_runtime` since the job was claimed, and says why it
    /// ended; `None` where the backend re-attaches to its trainers itself (through its
    /// [`Backend::track`] reports).
    fn follow_orphan(&self, job: &Job, max_runtime: Duration)
    -> Option<BoxFuture<'static, String>>;

    /// Starts reporting what the backend's trainers do to `observed`, until `shutdown`.
    fn track(&self, observed: mpsc::UnboundedSender<Observed>, shutdown: CancellationToken);
}
