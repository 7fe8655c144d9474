//! The local backend: each job's trainer is a child process with the trainer environment; its
//! stdout and stderr go to the job's log file; cancel kills it; its exit code decides the
//! outcome.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::TrainingError;

/// How a trainer process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit code 0.
    Success,
    /// Another exit code, or a signal; the text says which.
    Failed(String),
    /// Killed on request.
    Canceled,
}

/// Variables of training-service's own environment a local trainer inherits: what locates
/// programs, libraries and GPUs, the locale, and log settings.
pub const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// Runs trainers as child processes.
#[derive(Debug)]
pub struct LocalBackend {
    log_dir: PathBuf,
    running: Mutex<HashMap<i64, CancellationToken>>,
}

impl LocalBackend {
    /// A backend writing job logs under `log_dir`.
    pub fn new(log_dir: PathBuf) -> Self {
        Self {
            log_dir,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The log file of a job.
    pub fn log_path(&self, job_id: i64) -> PathBuf {
        self.log_dir.join(format!("job-{job_id}.log"))
    }

    /// Starts `command` with `args` and `env` for `job_id`; returns its pid. The exit is sent
    /// to `exits`.
    pub fn launch(
        &self,
        job_id: i64,
        command: &Path,
        args: &[String],
        env: &[(String, String)],
        exits: mpsc::UnboundedSender<(i64, Exit)>,
    ) -> Result<u32, TrainingError> {
        std::fs::create_dir_all(&self.log_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(job_id))?;
        let mut child = Command::new(command)
            .args(args)
            // The trainer sees the contract's environment and a few basics, never this
            // process's own (its database URL, S3 keys, internal secret).
            .env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|k| Some((*k, std::env::var_os(k)?))),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                TrainingError::FailedPrecondition(format!(
                    "cannot start trainer {}: {err}",
                    command.display()
                ))
            })?;
        let pid = child.id().unwrap_or_default();
        let cancel = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(job_id, cancel.clone());
        }
        tokio::spawn(async move {
            let exit = tokio::select! {
                status = child.wait() => match status {
                    Ok(status) if status.success() => Exit::Success,
                    Ok(status) => Exit::Failed(match status.code() {
                        Some(code) => format!("exit code {code}"),
                        None => "killed by a signal".to_string(),
                    }),
                    Err(err) => Exit::Failed(format!("lost the trainer process: {err}")),
                },
                () = cancel.cancelled() => {
                    let _ = child.kill().await;
                    Exit::Canceled
                }
            };
            let _ = exits.send((job_id, exit));
        });
        Ok(pid)
    }

    /// Kills a job's trainer; false when this process does not run it.
    pub fn cancel(&self, job_id: i64) -> bool {
        let token = self
            .running
            .lock()
            .ok()
            .and_then(|mut running| running.remove(&job_id));
        match token {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Forgets a finished job.
    pub fn finished(&self, job_id: i64) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&job_id);
        }
    }
}

/// Whether a process with this pid exists (Linux: /proc).
pub fn process_alive(pid: &str) -> bool {
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && Path::new(&format!("/proc/{pid}")).exists()
}
