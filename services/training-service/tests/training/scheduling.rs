//! The scheduling policy with the local backend: deadlines, per-job ceilings, fair share
//! between tenants, priorities within a tenant, tenant quotas, and trainer identity after a
//! restart.

use std::collections::BTreeMap;
use std::time::Duration;

use automl_common::testing::{Poll, TRAINING_SERVICE, assert_status, backends};
use automl_proto::training as pb;
use automl_training_service::model::{JobSpec, JobStatus, Priority};
use tonic::Code;

use super::Cluster;

impl Cluster {
    /// A job of the fake trainer that sleeps `sleep` seconds, as `submit` takes it.
    fn spec(&self, sleep: &str, priority: Priority) -> JobSpec {
        JobSpec {
            algorithm: "intent-classification".into(),
            dataset_id: "1".into(),
            name: "fair".into(),
            train_data_version_hash: "hashAg==".into(),
            parameters: BTreeMap::from([
                ("SLEEP".to_string(), sleep.to_string()),
                ("TRACE".to_string(), self.trace.display().to_string()),
            ]),
            output_model_name: "intent".into(),
            priority,
            ..JobSpec::default()
        }
    }

    /// Queues a job for `tenant` (as an authenticated caller of that tenant would).
    async fn submit_as(&self, tenant: &str, sleep: &str, priority: Priority) -> i64 {
        self.service
            .submit(tenant, self.spec(sleep, priority))
            .await
            .expect("submit")
    }

    /// Job ids in the order their trainers started.
    fn start_order(&self) -> Vec<i64> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.strip_prefix("start "))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Waits until every job has ended (any tenant).
    async fn wait_all(&self, jobs: &[(&str, i64)]) {
        let mut poll = Poll::new("every job ends", Duration::from_secs(90));
        for (tenant, job_id) in jobs {
            loop {
                let view = self.service.status(tenant, *job_id).await.expect("status");
                if view.job.status.is_final() {
                    assert_eq!(view.job.status, JobStatus::Succeed, "{:?}", view.job);
                    break;
                }
                poll.tick_with(format!("job {job_id} {:?}", view.job.status))
                    .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_past_its_deadline_fails_and_frees_its_slot() {
    for backend in backends() {
        let mut cluster = Cluster::start(backend, 1).await;
        let stuck = cluster
            .train_with(
                &[("SLEEP", "30")],
                pb::Resources {
                    max_runtime_seconds: 1,
                    ..Default::default()
                },
            )
            .await;
        let next = cluster.train(&[]).await;
        let ended = cluster.wait_final(stuck).await;
        assert_eq!(ended.status(), pb::TrainingStatus::Failure);
        assert_eq!(ended.message, "deadline exceeded after 1 s");
        assert_eq!(
            ended
                .metadata
                .and_then(|m| m.resources)
                .map(|r| r.max_runtime_seconds),
            Some(1)
        );
        let run = cluster
            .metadata
            .get_run_status(automl_proto::metadata_store::GetRunStatusRequest {
                run_id: stuck.to_string(),
            })
            .await
            .expect("run")
            .into_inner()
            .run_info
            .expect("run_info");
        assert!(
            !run.success && run.message.contains("deadline exceeded"),
            "{run:?}"
        );
        // The slot is free: the next job runs.
        let done = cluster.wait_final(next).await;
        assert_eq!(
            done.status(),
            pb::TrainingStatus::Succeed,
            "{}",
            done.message
        );
        // A job that names no run time gets the configured default.
        let defaulted = done.metadata.and_then(|m| m.resources).expect("resources");
        assert_eq!(
            defaulted.max_runtime_seconds,
            cluster.config.limits.default_max_runtime_seconds
        );
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_above_the_ceilings_are_refused() {
    let mut cluster = Cluster::start_with(backends()[0], 1, |config| {
        config.limits.max_gpus = 2;
        config.limits.max_memory = "8Gi".into();
    })
    .await;
    for (resources, named) in [
        (
            pb::Resources {
                gpus: 3,
                ..Default::default()
            },
            "limits.max_gpus",
        ),
        (
            pb::Resources {
                memory: "9Gi".into(),
                ..Default::default()
            },
            "limits.max_memory",
        ),
        (
            pb::Resources {
                cpu: "two".into(),
                ..Default::default()
            },
            "not a Kubernetes quantity",
        ),
        (
            pb::Resources {
                max_runtime_seconds: 30 * 24 * 3600,
                ..Default::default()
            },
            "limits.max_runtime_seconds",
        ),
    ] {
        let mut request = cluster.job(&[]);
        if let Some(metadata) = request.metadata.as_mut() {
            metadata.resources = Some(resources);
        }
        let refused = cluster.client.train(request).await;
        assert_status(refused, Code::InvalidArgument, named);
    }
    let mut request = cluster.job(&[]);
    if let Some(metadata) = request.metadata.as_mut() {
        metadata.priority = 7;
    }
    assert_status(
        cluster.client.train(request).await,
        Code::InvalidArgument,
        "metadata.priority",
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_served_in_turn_and_priorities_order_a_tenants_jobs() {
    for backend in backends() {
        let cluster = Cluster::start(backend, 1).await;
        let mut submitted = Vec::new();
        for _ in 0..10 {
            submitted.push((
                "team-a",
                cluster.submit_as("team-a", "0", Priority::Normal).await,
            ));
        }
        for _ in 0..2 {
            submitted.push((
                "team-b",
                cluster.submit_as("team-b", "0", Priority::Normal).await,
            ));
        }
        cluster.wait_all(&submitted).await;
        let order = cluster.start_order();
        let at = |job: i64| order.iter().position(|j| *j == job).expect("started");
        let (a_third, b_first) = (submitted[2].1, submitted[10].1);
        assert!(
            at(b_first) < at(a_third),
            "team-b's first job started after team-a's third: {order:?}"
        );
        // The caller's position counts its own queued jobs only.
        let blocker = cluster.submit_as("team-a", "3", Priority::Normal).await;
        let mut poll = Poll::new("the blocker runs", Duration::from_secs(30));
        while cluster
            .service
            .status("team-a", blocker)
            .await
            .expect("status")
            .job
            .status
            != JobStatus::Running
        {
            poll.tick().await;
        }
        let normal = [
            cluster.submit_as("team-a", "0", Priority::Normal).await,
            cluster.submit_as("team-a", "0", Priority::Normal).await,
        ];
        let other = cluster.submit_as("team-b", "0", Priority::Low).await;
        let urgent = cluster.submit_as("team-a", "0", Priority::High).await;
        let view = cluster
            .service
            .status("team-a", normal[1])
            .await
            .expect("status");
        // Ahead of it: the other normal job and the high one, not team-b's.
        assert_eq!(view.job.status, JobStatus::Queuing, "{view:?}");
        assert_eq!(view.position, 2, "{view:?}");
        let view = cluster
            .service
            .status("team-b", other)
            .await
            .expect("status");
        assert_eq!(view.position, 0, "{view:?}");
        cluster
            .wait_all(&[
                ("team-a", blocker),
                ("team-a", normal[0]),
                ("team-a", normal[1]),
                ("team-a", urgent),
                ("team-b", other),
            ])
            .await;
        let order = cluster.start_order();
        let at = |job: i64| order.iter().position(|j| *j == job).expect("started");
        assert!(
            at(urgent) < at(normal[0]) && at(urgent) < at(normal[1]),
            "the high-priority job started after a normal one: {order:?}"
        );
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_quota_waits_while_another_runs() {
    for backend in backends() {
        let cluster = Cluster::start_with(backend, 2, |config| {
            config.quotas.max_running_jobs = Some(1);
        })
        .await;
        let first = cluster.submit_as("team-a", "6", Priority::Normal).await;
        let second = cluster.submit_as("team-a", "0", Priority::Normal).await;
        let other = cluster.submit_as("team-b", "0", Priority::Normal).await;
        // team-b's job runs to the end while team-a's second waits for its quota.
        cluster.wait_all(&[("team-b", other)]).await;
        let waiting = cluster
            .service
            .status("team-a", second)
            .await
            .expect("status");
        assert_eq!(waiting.job.status, JobStatus::Queuing, "{waiting:?}");
        assert_eq!(
            waiting.job.message,
            "waiting for tenant quota: 1 of 1 jobs running"
        );
        cluster
            .wait_all(&[("team-a", first), ("team-a", second)])
            .await;
        cluster.stop().await;
    }
}

/// After a restart, a stored trainer identity whose pid now belongs to another process is
/// neither signalled nor taken for the trainer: the job is settled, the process lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_is_neither_signalled_nor_taken_for_the_trainer() {
    let mut cluster = Cluster::start(backends()[0], 1).await;
    let job_id = cluster.train(&[("SLEEP", "20")]).await;
    cluster
        .wait_status(job_id, pb::TrainingStatus::Running)
        .await;
    let stored: String = sqlx::Row::get(
        &sqlx::query("SELECT backend_ref FROM jobs WHERE job_id = $1")
            .bind(i64::from(job_id))
            .fetch_one(&cluster.services.database(TRAINING_SERVICE).pool)
            .await
            .expect("row"),
        "backend_ref",
    );
    let (trainer_pid, start) = stored.split_once(':').expect("pid:start");
    // An unrelated process now holds a pid the store names, with the trainer's start time.
    let mut unrelated = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    sqlx::query("UPDATE jobs SET backend_ref = $1 WHERE job_id = $2")
        .bind(format!("{}:{start}", unrelated.id()))
        .bind(i64::from(job_id))
        .execute(&cluster.services.database(TRAINING_SERVICE).pool)
        .await
        .expect("update");
    cluster.restart_training_stopped(|| {}).await;
    let ended = cluster.wait_final(job_id).await;
    assert_eq!(ended.status(), pb::TrainingStatus::Failure);
    assert!(
        ended
            .message
            .contains("ended while training-service was down"),
        "{}",
        ended.message
    );
    assert!(
        unrelated.try_wait().expect("wait").is_none(),
        "the unrelated process was signalled"
    );
    unrelated.kill().expect("kill");
    let _ = unrelated.wait();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", trainer_pid])
        .status();
    cluster.stop().await;
}

/// The built-in trainer's parameters are declared by ListAlgorithms and checked at submission,
/// as the trainer reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_trainers_parameters_are_declared_and_checked_at_submission() {
    let mut cluster = Cluster::start_with(backends()[0], 1, |config| {
        // The built-in trainer (no command of its own).
        for algorithm in config.algorithms.values_mut() {
            algorithm.command.clear();
        }
    })
    .await;
    for (parameters, named) in [
        (
            vec![("EPOCHS", "-5")],
            "invalid parameter EPOCHS: -5 is not a whole number in 0..=100000",
        ),
        (vec![("LR", "fast")], "invalid parameter LR"),
        (vec![("OPTIMIZER", "adam")], "invalid parameter OPTIMIZER"),
        (vec![("DEVICE", "tpu")], "invalid parameter DEVICE"),
    ] {
        let refused = cluster.client.train(cluster.job(&parameters)).await;
        assert_status(refused, Code::InvalidArgument, named);
    }
    let (jobs, _) = cluster
        .service
        .list("default", &[], &[], 0, 0)
        .await
        .expect("list");
    assert!(jobs.is_empty(), "a refused job was queued");
    // ListAlgorithms declares what the trainer reads.
    let algorithms = cluster.algorithms().await;
    let bag = algorithms
        .algorithms
        .iter()
        .find(|a| a.name == "intent-classification")
        .expect("registered");
    let epochs = bag
        .parameters
        .iter()
        .find(|p| p.name == "EPOCHS")
        .expect("EPOCHS declared");
    assert_eq!(epochs.r#type(), pb::ParameterType::ParameterInt);
    assert_eq!((epochs.min, epochs.max), (0.0, 100_000.0));
    assert_eq!(epochs.default_value, "20");
    let optimizer = bag
        .parameters
        .iter()
        .find(|p| p.name == "OPTIMIZER")
        .expect("OPTIMIZER declared");
    assert_eq!(optimizer.r#type(), pb::ParameterType::ParameterCategorical);
    assert_eq!(optimizer.values, ["adamw", "sgd"]);
    let lr = bag.parameters.iter().find(|p| p.name == "LR").expect("LR");
    assert!(lr.min_exclusive && lr.max.is_infinite());
    cluster.stop().await;
}
