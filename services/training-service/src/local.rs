//! The local backend: each job's trainer is a child process with the trainer environment, in
//! its own process group; its stdout and stderr go to the job's log file; cancel and the
//! job's deadline kill the group; its exit code decides the outcome.
//!
//! A trainer is known by its pid and the kernel's start time of that pid (`pid:start`), so
//! after a restart a pid that now belongs to another process is neither signalled nor taken
//! for the trainer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{
    Backend, JobRef, Launch, Launched, LogFollow, Observed, Stopped, TRAINER_ERROR,
};
use crate::config::AlgorithmConfig;
use crate::error::TrainingError;
use crate::model::{Job, JobStatus};

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

/// Why a trainer was stopped at its deadline.
pub fn deadline_message(seconds: u64) -> String {
    format!("deadline exceeded after {seconds} s")
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

/// The name recorded on jobs run as local processes.
pub const NAME: &str = "local";
/// How long a log follow waits before it reads the log file again.
const LOG_POLL: Duration = Duration::from_millis(200);
/// How often a trainer left running by a previous process is looked at.
const ORPHAN_POLL: Duration = Duration::from_secs(1);

/// Runs trainers as child processes.
#[derive(Debug)]
pub struct LocalBackend {
    /// Where each job's log file is written.
    log_dir: PathBuf,
    /// This process's running trainers, by job id: cancel stops the one of a job.
    running: Arc<Mutex<HashMap<i64, CancellationToken>>>,
    /// Where a trainer's exit is reported.
    exits: mpsc::UnboundedSender<Observed>,
}

impl LocalBackend {
    /// A backend writing job logs under `log_dir` and reporting trainer exits to `exits`.
    pub fn new(log_dir: PathBuf, exits: mpsc::UnboundedSender<Observed>) -> Self {
        Self {
            log_dir,
            running: Arc::new(Mutex::new(HashMap::new())),
            exits,
        }
    }

    /// The log file of a job.
    pub fn log_path(&self, job_id: i64) -> PathBuf {
        self.log_dir.join(format!("job-{job_id}.log"))
    }

    /// Starts `command` with `args` and `env` for `job_id`, to be killed after `deadline`;
    /// returns its identity (`pid:start`). Its exit is reported as [`Observed::Exited`].
    pub fn start_process(
        &self,
        job_id: i64,
        command: &Path,
        args: &[String],
        env: &[(String, String)],
        deadline: Duration,
    ) -> Result<String, TrainingError> {
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
            // Its own group: cancel and the deadline stop what it started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                TrainingError::FailedPrecondition(format!(
                    "cannot start trainer {}: {err}",
                    command.display()
                ))
            })?;
        let pid = child.id().unwrap_or_default();
        // Read even if it has ended already (a trainer may exit within a millisecond): until
        // the task below reaps it, its pid is not reused, and its exit is reported as usual.
        let identity = child_identity(pid).ok_or_else(|| {
            TrainingError::FailedPrecondition(format!(
                "trainer {} ended before it could be followed",
                command.display()
            ))
        })?;
        let cancel = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(job_id, cancel.clone());
        }
        let running = Arc::clone(&self.running);
        let exits = self.exits.clone();
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
                    kill_group(pid);
                    let _ = child.kill().await;
                    Exit::Canceled
                }
                () = tokio::time::sleep(deadline) => {
                    kill_group(pid);
                    let _ = child.kill().await;
                    Exit::Failed(deadline_message(deadline.as_secs()))
                }
            };
            if let Ok(mut running) = running.lock() {
                running.remove(&job_id);
            }
            let job = JobRef {
                job_id,
                submission: String::new(),
            };
            let _ = exits.send(Observed::Exited(job, exit));
        });
        Ok(identity)
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

    /// The last error line automl-train wrote to a job's log (`automl-train: error: …`).
    async fn last_error_line(&self, job_id: i64) -> Option<String> {
        const TAIL: u64 = 64 * 1024;
        let mut file = tokio::fs::File::open(self.log_path(job_id)).await.ok()?;
        let length = file.metadata().await.ok()?.len();
        file.seek(std::io::SeekFrom::Start(length.saturating_sub(TAIL)))
            .await
            .ok()?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).await.ok()?;
        let text = String::from_utf8_lossy(&tail);
        let line = text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(TRAINER_ERROR))?;
        Some(line.chars().take(1024).collect())
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn trainer_kind(&self) -> &'static str {
        "the trainer process"
    }

    fn launch<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Launched, TrainingError>> {
        Box::pin(async move {
            let (command, args) = trainer_command(launch.algorithm);
            let identity = self.start_process(
                launch.job.job_id,
                &command,
                &args,
                launch.env,
                launch.max_runtime,
            )?;
            Ok(Launched::Running(identity))
        })
    }

    fn stop<'a>(
        &'a self,
        job: &'a Job,
        launching: bool,
    ) -> BoxFuture<'a, Result<Stopped, TrainingError>> {
        Box::pin(async move {
            // This process's child: killed now, its exit reported.
            if self.cancel(job.job_id) {
                return Ok(Stopped::Stopping);
            }
            // Started by an earlier process (or another replica on this machine): signalled
            // only if its pid still names the process that was started.
            if job.status == JobStatus::Running && trainer_alive(&job.backend_ref) {
                kill_trainer(&job.backend_ref);
                if trainer_alive(&job.backend_ref) {
                    return Ok(Stopped::Stopping);
                }
            }
            // Claimed but not yet started here: the launch sees the cancel and stops.
            if job.status == JobStatus::Launch && launching {
                return Ok(Stopped::Stopping);
            }
            Ok(Stopped::Gone)
        })
    }

    fn stops_at_once(&self) -> bool {
        true
    }

    fn follow_logs(
        &self,
        job_id: i64,
        from_line: i64,
        follow: LogFollow,
    ) -> BoxFuture<'static, Result<(), TrainingError>> {
        Box::pin(follow_file(self.log_path(job_id), from_line, follow))
    }

    fn trainer_error(&self, job_id: i64) -> BoxFuture<'_, Option<String>> {
        Box::pin(self.last_error_line(job_id))
    }

    fn exists<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, TrainingError>> {
        Box::pin(async move { Ok(trainer_alive(&job.backend_ref)) })
    }

    fn can_wait_to_start(&self) -> bool {
        false
    }

    fn pending_reason(&self, _job_id: i64) -> BoxFuture<'_, String> {
        Box::pin(async { "the trainer process has not started".to_string() })
    }

    fn follow_orphan(
        &self,
        job: &Job,
        max_runtime: Duration,
    ) -> Option<BoxFuture<'static, String>> {
        let identity = job.backend_ref.clone();
        // Counted from the claim, as this process would have.
        let deadline = u64::try_from(job.claimed_ms)
            .ok()
            .filter(|claimed| *claimed > 0)
            .map(|claimed| UNIX_EPOCH + Duration::from_millis(claimed) + max_runtime);
        Some(Box::pin(async move {
            let mut reason =
                "the trainer process ended while training-service was down".to_string();
            while trainer_alive(&identity) {
                if deadline.is_some_and(|deadline| SystemTime::now() >= deadline) {
                    kill_trainer(&identity);
                    reason = deadline_message(max_runtime.as_secs());
                    continue;
                }
                tokio::time::sleep(ORPHAN_POLL).await;
            }
            reason
        }))
    }

    fn track(&self, _observed: mpsc::UnboundedSender<Observed>, _shutdown: CancellationToken) {
        // Exits are reported as they happen, to the sender given at construction.
    }
}

/// The local trainer program of `algorithm` and its arguments.
fn trainer_command(algorithm: &AlgorithmConfig) -> (PathBuf, Vec<String>) {
    if !algorithm.command.is_empty() {
        return (PathBuf::from(&algorithm.command), algorithm.args.clone());
    }
    match std::env::current_exe() {
        Ok(exe) => builtin_trainer(&exe, algorithm.args.clone()),
        Err(_) => (PathBuf::from("automl-train"), algorithm.args.clone()),
    }
}

/// Sends the lines of a job's log file from `from_line`, reading it again until the job has
/// ended; the last line is sent then even without its newline.
async fn follow_file(
    path: PathBuf,
    from_line: i64,
    follow: LogFollow,
) -> Result<(), TrainingError> {
    let LogFollow {
        ended,
        sender,
        shutdown,
        ..
    } = follow;
    let mut offset = 0u64;
    let mut line_number = 0i64;
    let mut partial = String::new();
    loop {
        // Read the job's state before the file, so lines written before it ended are all
        // read before the stream ends.
        let ended = ended().await?;
        for line in read_lines(&path, &mut offset, &mut partial).await? {
            if line_number >= from_line && sender.send(Ok((line_number, line))).await.is_err() {
                return Ok(());
            }
            line_number += 1;
        }
        if ended {
            if !partial.is_empty() && line_number >= from_line {
                let _ = sender
                    .send(Ok((line_number, std::mem::take(&mut partial))))
                    .await;
            }
            return Ok(());
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = sender.closed() => return Ok(()),
            () = tokio::time::sleep(LOG_POLL) => {}
        }
    }
}

/// New complete lines of `path` from `offset`; an unfinished last line stays in `partial`.
async fn read_lines(
    path: &Path,
    offset: &mut u64,
    partial: &mut String,
) -> std::io::Result<Vec<String>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    file.seek(std::io::SeekFrom::Start(*offset)).await?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut lines = Vec::new();
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = reader.read_until(b'\n', &mut buffer).await?;
        if read == 0 {
            return Ok(lines);
        }
        *offset += read as u64;
        partial.push_str(&String::from_utf8_lossy(&buffer));
        if partial.ends_with('\n') {
            let line = std::mem::take(partial);
            lines.push(line.trim_end_matches(['\n', '\r']).to_string());
        }
    }
}

/// The kernel's start time of running process `pid` (clock ticks after boot, `/proc/<pid>/stat`
/// field 22), which tells it from a later process given the same pid; `None` once it ended.
pub fn start_time(pid: u32) -> Option<u64> {
    match stat_start(pid)? {
        (start, false) => Some(start),
        // A zombie has ended; only its parent has yet to reap it.
        (_, true) => None,
    }
}

/// The start time of process `pid` and whether it is a zombie (state Z).
fn stat_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let zombie = fields.next()? == "Z";
    Some((fields.nth(18)?.parse().ok()?, zombie))
}

/// `pid:start` of a running process.
pub fn identity_of(pid: u32) -> Option<String> {
    Some(format!("{pid}:{}", start_time(pid)?))
}

/// `pid:start` of a child of this process not yet reaped, running or ended.
fn child_identity(pid: u32) -> Option<String> {
    Some(format!("{pid}:{}", stat_start(pid)?.0))
}

/// The pid and start time a stored identity (`pid:start`) names.
fn parse_identity(identity: &str) -> Option<(u32, u64)> {
    let (pid, start) = identity.split_once(':')?;
    Some((
        pid.parse().ok().filter(|pid| *pid > 1)?,
        start.parse().ok()?,
    ))
}

/// The pid of a stored identity, when the process it names still runs; `None` for a pid now
/// used by another process, a process that ended, or a reference without a start time.
fn verified_pid(identity: &str) -> Option<u32> {
    let (pid, start) = parse_identity(identity)?;
    (start_time(pid) == Some(start)).then_some(pid)
}

/// Whether the trainer of a stored identity still runs.
pub fn trainer_alive(identity: &str) -> bool {
    verified_pid(identity).is_some()
}

/// Kills the trainer of a stored identity and its process group, only if that pid is still
/// the process this backend started; false when it is not (or is gone).
pub fn kill_trainer(identity: &str) -> bool {
    let Some(pid) =
        parse_identity(identity).and_then(|(pid, _)| Pid::from_raw(i32::try_from(pid).ok()?))
    else {
        return false;
    };
    // Hold the process by a pidfd first: once its start time is verified, the signal cannot
    // reach a process that took the pid in between.
    let Ok(pidfd) = rustix::process::pidfd_open(pid, PidfdFlags::empty()) else {
        return false;
    };
    if verified_pid(identity).is_none() {
        return false;
    }
    let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    true
}

/// Kills the process group a trainer leads (it was started as its own group); only called
/// before the trainer is reaped, while its pid cannot be given to another process.
fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}

/// The local program of the built-in trainer and its arguments: the `automl-train` beside
/// `exe`, or, when there is none and `exe` is the `automl` binary, `automl trainer` (the same
/// program inside it).
pub fn builtin_trainer(exe: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
    let beside = exe.with_file_name("automl-train");
    if !beside.is_file() && exe.file_stem().is_some_and(|stem| stem == "automl") {
        let mut inside = vec!["trainer".to_string()];
        inside.extend(args);
        return (exe.to_path_buf(), inside);
    }
    (beside, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_with_another_start_time_is_not_the_trainer() {
        let me = std::process::id();
        let identity = identity_of(me).expect("own identity");
        assert!(trainer_alive(&identity));
        let (pid, start) = identity.split_once(':').expect("pid:start");
        let start: u64 = start.parse().expect("number");
        let reused = format!("{pid}:{}", start + 1);
        assert!(!trainer_alive(&reused));
        assert!(
            !kill_trainer(&reused),
            "never signals a process it did not start"
        );
        assert!(!trainer_alive(pid), "a bare pid cannot be verified");
        assert!(!trainer_alive("1:0") && !trainer_alive("") && !trainer_alive("x:y"));
    }

    /// A trainer that exits at once, before its identity is read, is followed all the same:
    /// its start is recorded and its exit reported.
    #[tokio::test]
    async fn a_trainer_that_ends_at_once_is_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (exits, mut observed) = mpsc::unbounded_channel();
        let backend = LocalBackend::new(dir.path().to_path_buf(), exits);
        for (job_id, command) in [(1, "/bin/true"), (2, "/bin/false")] {
            let identity = backend
                .start_process(
                    job_id,
                    Path::new(command),
                    &[],
                    &[],
                    Duration::from_secs(60),
                )
                .expect("started");
            assert!(parse_identity(&identity).is_some(), "{identity}");
            let Some(Observed::Exited(job, exit)) = observed.recv().await else {
                panic!("no exit reported");
            };
            assert_eq!(job.job_id, job_id);
            match command {
                "/bin/true" => assert_eq!(exit, Exit::Success),
                _ => assert_eq!(exit, Exit::Failed("exit code 1".into())),
            }
        }
    }

    /// The identity of an ended child not yet reaped still reads; a running process's only
    /// while it runs.
    #[tokio::test]
    async fn an_ended_child_keeps_its_identity_until_reaped() {
        let mut child = Command::new("/bin/true").spawn().expect("spawn");
        let pid = child.id().expect("pid");
        // Wait until it is a zombie (without reaping it).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stat_start(pid).is_some_and(|(_, zombie)| !zombie) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never ended"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            identity_of(pid).is_none(),
            "an ended process is not running"
        );
        let identity = child_identity(pid).expect("an ended child's identity");
        assert!(identity.starts_with(&format!("{pid}:")), "{identity}");
        child.wait().await.expect("reaped");
        assert!(
            child_identity(pid).is_none(),
            "a reaped child has no identity"
        );
    }

    #[test]
    fn the_built_in_trainer_is_automl_train_beside_else_automl_trainer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("automl");
        let args = vec!["--quiet".to_string()];
        assert_eq!(
            builtin_trainer(&exe, args.clone()),
            (
                exe.clone(),
                vec!["trainer".to_string(), "--quiet".to_string()]
            )
        );
        // An automl-train beside the binary runs as before.
        std::fs::write(dir.path().join("automl-train"), "").expect("write");
        assert_eq!(
            builtin_trainer(&exe, args.clone()),
            (dir.path().join("automl-train"), args.clone())
        );
        // Another program (a test binary) never runs itself as the trainer.
        let other = dir.path().join("other").join("training-abc123");
        assert_eq!(
            builtin_trainer(&other, args.clone()),
            (other.with_file_name("automl-train"), args)
        );
    }
}
