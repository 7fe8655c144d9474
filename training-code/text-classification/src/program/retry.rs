//! Deadlines and retries of the trainer's calls to metadata-store: every call gets
//! [`CALL_TIMEOUT`]; a call that fails because metadata-store could not be reached or did not
//! answer in time (UNAVAILABLE, DEADLINE_EXCEEDED, a dropped connection) is repeated after 0.2 s,
//! 0.4 s, … up to 5 s between tries, until [`RETRY_SECONDS_ENV`] seconds (300 by default) have
//! passed since the first try. metadata-store records a repeated LogRunStart, LogEpoch,
//! CreateArtifact or LogRunEnd of the same content once, so a retry after a lost answer is safe.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use tonic::{Code, Status};

/// The most a single call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long, in seconds, the trainer keeps retrying one call before it gives up. Not under
/// the `AUTOML_` prefix, which job parameters may not set: a job can choose its own budget.
pub const RETRY_SECONDS_ENV: &str = "METADATA_RETRY_SECONDS";

/// When and how long to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The deadline of each try.
    pub call_timeout: Duration,
    /// The wait before the first retry; each later wait doubles it.
    pub first_delay: Duration,
    /// The longest wait between tries.
    pub max_delay: Duration,
    /// No try starts later than this after the first one.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            call_timeout: CALL_TIMEOUT,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The default policy with the budget of [`RETRY_SECONDS_ENV`] when it holds a number of
    /// seconds (0: no retries).
    pub fn from_env() -> Self {
        Self::with_budget(std::env::var(RETRY_SECONDS_ENV).ok().as_deref())
    }

    /// The default policy with a budget of `seconds` when that is a number of seconds.
    fn with_budget(seconds: Option<&str>) -> Self {
        let mut policy = Self::default();
        if let Some(seconds) = seconds
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        {
            policy.budget = Duration::from_secs_f64(seconds);
        }
        policy
    }
}

/// Whether a failed call may succeed when tried again: metadata-store was unreachable or slow,
/// or the connection failed under the call (tonic reports that as UNKNOWN, INTERNAL or
/// CANCELLED with the transport's error as the source, which a status sent by the server
/// never has). tonic reports a deadline that ran out as CANCELLED "Timeout expired", on either
/// side.
pub fn is_transient(status: &Status) -> bool {
    let local = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Unknown | Code::Internal => local,
        Code::Cancelled => local || status.message() == tonic::TimeoutExpired(()).to_string(),
        _ => false,
    }
}

/// Makes the call `what` (e.g. `LogEpoch 3`) with `request`, retried per
/// [`RetryPolicy::from_env`]; `send` makes one try with the request it is given.
pub async fn call<Req, Resp, F, Fut>(what: &str, request: &Req, send: F) -> Result<Resp, Status>
where
    Req: Clone,
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    call_with(&RetryPolicy::from_env(), what, request, send).await
}

/// [`call`] with an explicit policy.
pub async fn call_with<Req, Resp, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    request: &Req,
    mut send: F,
) -> Result<Resp, Status>
where
    Req: Clone,
    F: FnMut(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let started = Instant::now();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.first_delay)
        .with_max_delay(policy.max_delay)
        .with_factor(2.0)
        .without_max_times();
    let try_once = || {
        let mut attempt = tonic::Request::new(request.clone());
        // The server sees the deadline too (grpc-timeout); the timer below also covers a
        // connection that never completes.
        attempt.set_timeout(policy.call_timeout);
        let answer = tokio::time::timeout(policy.call_timeout, send(attempt));
        async move {
            match answer.await {
                Ok(answer) => answer.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {} s",
                    policy.call_timeout.as_secs_f64()
                ))),
            }
        }
    };
    try_once
        .retry(backoff)
        .when(is_transient)
        // No try starts later than the budget allows.
        .adjust(|_, delay| delay.filter(|delay| started.elapsed() + *delay <= policy.budget))
        .notify(|status, delay| {
            println!(
                "metadata-store unavailable ({}); retrying {what} in {:.1} s",
                describe(status),
                delay.as_secs_f64()
            );
        })
        .await
}

/// `UNAVAILABLE: message` on one line.
fn describe(status: &Status) -> String {
    let code = format!("{:?}", status.code());
    let message = status.message().replace('\n', " ");
    if message.is_empty() {
        code
    } else {
        format!("{code}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn quick(budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            call_timeout: Duration::from_millis(200),
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            budget: Duration::from_millis(budget_ms),
        }
    }

    type Answer = std::future::Ready<Result<tonic::Response<String>, Status>>;

    /// A call that fails with each status of `failures` in turn, then answers its request.
    fn flaky(
        failures: Vec<Status>,
        tries: Arc<AtomicUsize>,
    ) -> impl FnMut(tonic::Request<String>) -> Answer {
        let mut failures = failures.into_iter();
        move |request| {
            tries.fetch_add(1, Ordering::SeqCst);
            assert!(request.metadata().get("grpc-timeout").is_some());
            std::future::ready(match failures.next() {
                Some(status) => Err(status),
                None => Ok(tonic::Response::new(request.into_inner())),
            })
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_the_same_request() {
        let tries = Arc::new(AtomicUsize::new(0));
        let failures = vec![
            Status::unavailable("connection refused"),
            Status::deadline_exceeded("slow"),
            Status::from_error(Box::new(std::io::Error::other("connection reset"))),
            Status::from_error(Box::new(tonic::TimeoutExpired(()))),
            // What a server whose share of the deadline ran out answers.
            Status::cancelled("Timeout expired"),
        ];
        let answer = call_with(
            &quick(5_000),
            "LogEpoch 3",
            &"epoch 3".to_string(),
            flaky(failures, tries.clone()),
        )
        .await
        .expect("succeeds on the sixth try");
        assert_eq!(answer, "epoch 3");
        assert_eq!(tries.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn answers_of_the_server_are_not_retried() {
        for status in [
            Status::already_exists("epoch 1 of run 7 already exists"),
            Status::invalid_argument("run_id"),
            Status::unknown("sent by the server"),
            Status::internal("sent by the server"),
            Status::cancelled("sent by the server"),
        ] {
            let code = status.code();
            let tries = Arc::new(AtomicUsize::new(0));
            let err = call_with(
                &quick(5_000),
                "LogEpoch 1",
                &String::new(),
                flaky(vec![status], tries.clone()),
            )
            .await
            .expect_err("fails");
            assert_eq!(err.code(), code);
            assert_eq!(tries.load(Ordering::SeqCst), 1, "{code:?}");
        }
    }

    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent() {
        let tries = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let err = call_with(
            &quick(100),
            "LogRunEnd",
            &String::new(),
            flaky(vec![Status::unavailable("down"); 1_000], tries.clone()),
        )
        .await
        .expect_err("gives up");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(started.elapsed() < Duration::from_secs(2));
        // 5, 10, 20, 20, 20 ms … within 100 ms: a handful of tries, not one, not hundreds.
        let tries = tries.load(Ordering::SeqCst);
        assert!((3..=10).contains(&tries), "{tries} tries");

        let none = Arc::new(AtomicUsize::new(0));
        call_with(
            &quick(0),
            "LogRunEnd",
            &String::new(),
            flaky(vec![Status::unavailable("down")], none.clone()),
        )
        .await
        .expect_err("no retries with no budget");
        assert_eq!(none.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_call_without_an_answer_is_cut_at_its_deadline_and_retried() {
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let answer = call_with(
            &quick(5_000),
            "GetArtifact",
            &"found".to_string(),
            move |request: tonic::Request<String>| {
                let hang = counted.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    Ok(tonic::Response::new(request.into_inner()))
                }
            },
        )
        .await
        .expect("the second try answers");
        assert_eq!(answer, "found");
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_budget_is_a_number_of_seconds_else_five_minutes() {
        let budget = |value| RetryPolicy::with_budget(value).budget;
        assert_eq!(budget(None), Duration::from_secs(300));
        assert_eq!(budget(Some("20")), Duration::from_secs(20));
        assert_eq!(budget(Some(" 0.5 ")), Duration::from_millis(500));
        assert_eq!(budget(Some("0")), Duration::ZERO);
        for bad in ["", "soon", "-1", "inf", "NaN"] {
            assert_eq!(budget(Some(bad)), Duration::from_secs(300), "{bad:?}");
        }
        assert_eq!(RetryPolicy::default().call_timeout, CALL_TIMEOUT);
    }
}
