//! Experiments with the local backend: grid and random search, the median stopping rule, the
//! goal, StopExperiment, max_failed_trials, tenancy, checks at creation, and a driver that
//! restarts or runs on two replicas. The trainer is a script whose objective per epoch is
//! known: `val_accuracy = Q * epoch / 10`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use automl_common::testing::{Poll, assert_status, backends, grpcurl};
use automl_proto::metadata_store as ms;
use automl_proto::training as pb;
use automl_training_service::config::{AlgorithmConfig, ParameterConfig, ParameterKind};
use automl_training_service::error::TrainingError;
use tonic::Code;

use super::{Cluster, write_executable};

/// The epoch trainer: LogRunStart, then `EPOCHS` epochs (default 3) logging
/// `val_accuracy = Q * epoch / 10` (Q default 0.5) each `EPOCH_SLEEP` seconds; a trial with
/// Q < 0.4 also sleeps `WEAK_SLEEP` seconds after each epoch from the 4th on. Fails with
/// `FAIL_WITH` when set; else LogRunEnd. Starts and ends are appended to `$TRACE`.
fn epoch_trainer(dir: &Path) -> PathBuf {
    let path = dir.join("epoch-trainer.sh");
    let grpcurl = grpcurl();
    let script = format!(
        r#"#!/bin/sh
echo "start $JOB_ID $(date +%s%N)" >> "$TRACE"
call() {{ {grpcurl} -plaintext -d "$1" "$METADATA_STORE_SERVER" "metadata_store.MetadataStoreService/$2" >/dev/null; }}
call "{{\"run_id\":\"$JOB_ID\",\"run_name\":\"$MODEL_NAME\"}}" LogRunStart
q="${{Q:-0.5}}"
e=1
while [ "$e" -le "${{EPOCHS:-3}}" ]; do
  v=$(awk "BEGIN {{ print $q * $e / 10 }}")
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  call "{{\"epoch_info\":{{\"run_id\":\"$JOB_ID\",\"epoch_id\":\"$e\",\"start_time\":\"$now\",\"end_time\":\"$now\",\"metrics\":{{\"val_accuracy\":\"$v\"}}}}}}" LogEpoch
  echo "epoch $e val_accuracy $v"
  sleep "${{EPOCH_SLEEP:-0.05}}"
  if [ "$e" -ge 4 ] && awk "BEGIN {{ exit !($q < 0.4) }}"; then sleep "${{WEAK_SLEEP:-0}}"; fi
  e=$((e + 1))
done
if [ -n "$FAIL_WITH" ]; then
  echo "automl-train: error: $FAIL_WITH" >&2
  exit 1
fi
call "{{\"run_id\":\"$JOB_ID\",\"success\":true,\"message\":\"done\"}}" LogRunEnd
echo "end $JOB_ID $(date +%s%N)" >> "$TRACE"
"#,
        grpcurl = grpcurl.display()
    );
    write_executable(&path, &script);
    path
}

/// A cluster whose `intent-classification` runs the epoch trainer, and whose `builtin`
/// algorithm is the built-in trainer (declared parameters).
async fn cluster(backend: automl_common::db::Backend, max_concurrent_jobs: i64) -> Cluster {
    Cluster::start_with(backend, max_concurrent_jobs, |config| {
        let dir = PathBuf::from(
            config
                .algorithms
                .values()
                .next()
                .map(|a| a.command.clone())
                .unwrap_or_default(),
        );
        let script = epoch_trainer(dir.parent().expect("dir"));
        for algorithm in config.algorithms.values_mut() {
            algorithm.command = script.display().to_string();
        }
        config
            .algorithms
            .insert("builtin".into(), Default::default());
        // A trainer of its own that declares what it reads in the registry.
        let declared = AlgorithmConfig {
            command: script.display().to_string(),
            parameters: vec![
                ParameterConfig {
                    name: "Q".into(),
                    kind: ParameterKind::Double,
                    min: Some(0.0),
                    max: Some(1.0),
                    default: "0.5".into(),
                    help: "how good the model gets".into(),
                    ..ParameterConfig::default()
                },
                ParameterConfig {
                    name: "MODE".into(),
                    kind: ParameterKind::Categorical,
                    values: vec!["fast".into(), "slow".into()],
                    ..ParameterConfig::default()
                },
            ],
            ..AlgorithmConfig::default()
        };
        config.algorithms.insert("declared".into(), declared);
    })
    .await
}

fn categorical(name: &str, values: &[&str]) -> pb::SearchParameter {
    pb::SearchParameter {
        name: name.into(),
        r#type: pb::ParameterType::ParameterCategorical.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

fn range(name: &str, kind: pb::ParameterType, min: f64, max: f64) -> pb::SearchParameter {
    pb::SearchParameter {
        name: name.into(),
        r#type: kind.into(),
        min,
        max,
        ..Default::default()
    }
}

impl Cluster {
    /// An experiment of the epoch trainer maximizing val_accuracy.
    fn experiment(
        &self,
        search: pb::SearchAlgorithm,
        space: Vec<pb::SearchParameter>,
        fixed: &[(&str, &str)],
    ) -> pb::ExperimentSpec {
        let mut parameters: HashMap<String, String> =
            HashMap::from([("TRACE".to_string(), self.trace.display().to_string())]);
        for (key, value) in fixed {
            parameters.insert(key.to_string(), value.to_string());
        }
        pb::ExperimentSpec {
            name: "search".into(),
            dataset_id: "1".into(),
            train_data_version_hash: "hashAg==".into(),
            algorithm: "intent-classification".into(),
            parameters,
            objective: Some(pb::Objective {
                metric: "val_accuracy".into(),
                ..Default::default()
            }),
            search_space: space,
            search_algorithm: search.into(),
            ..Default::default()
        }
    }

    async fn create(&mut self, spec: pb::ExperimentSpec) -> pb::Experiment {
        self.client
            .create_experiment(pb::CreateExperimentRequest { spec: Some(spec) })
            .await
            .expect("create experiment")
            .into_inner()
    }

    async fn get_experiment(&mut self, experiment_id: i32) -> pb::Experiment {
        self.client
            .get_experiment(pb::GetExperimentRequest { experiment_id })
            .await
            .expect("get experiment")
            .into_inner()
    }

    /// Follows WatchExperiment to its end; every update it sent.
    async fn watch_experiment(&mut self, experiment_id: i32) -> Vec<pb::Experiment> {
        let mut stream = self
            .client
            .watch_experiment(pb::GetExperimentRequest { experiment_id })
            .await
            .expect("watch")
            .into_inner();
        let mut updates = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let next = tokio::time::timeout_at(deadline, stream.message())
                .await
                .expect("the experiment never ends");
            match next.expect("stream") {
                Some(update) => updates.push(update),
                None => return updates,
            }
        }
    }

    /// Waits until the experiment and its trials have ended.
    async fn finished(&mut self, experiment_id: i32) -> pb::Experiment {
        let updates = self.watch_experiment(experiment_id).await;
        // A trial is never shown succeeded before its epochs were read.
        for update in &updates {
            for trial in &update.trials {
                assert!(
                    trial.status() != pb::TrainingStatus::Succeed || trial.epochs > 0,
                    "{trial:?}"
                );
            }
        }
        let last = updates.last().cloned().expect("an update");
        assert_ne!(last.status(), pb::ExperimentStatus::ExperimentRunning);
        last
    }

    /// Jobs whose trainer was started more than once, and the most trainers alive at once.
    fn starts_and_overlap(&self) -> (Vec<i32>, usize) {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut starts: BTreeMap<i32, usize> = BTreeMap::new();
        let mut events: Vec<(u128, i32)> = Vec::new();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let id: i32 = parts[1].parse().expect("id");
            let at: u128 = parts[2].parse().expect("ns");
            if parts[0] == "start" {
                *starts.entry(id).or_default() += 1;
                events.push((at, 1));
            } else {
                events.push((at, -1));
            }
        }
        events.sort();
        let (mut alive, mut most) = (0i32, 0i32);
        for (_, change) in events {
            alive += change;
            most = most.max(alive);
        }
        let twice = starts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect();
        (twice, usize::try_from(most).unwrap_or(0))
    }
}

fn parameters_of(trial: &pb::Trial) -> String {
    let mut pairs: Vec<String> = trial
        .parameters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    pairs.join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_runs_every_point_once_within_parallel_trials_and_random_is_reproducible() {
    for backend in backends() {
        let mut cluster = cluster(backend, 4).await;
        let mut spec = cluster.experiment(
            pb::SearchAlgorithm::SearchGrid,
            vec![
                categorical("Q", &["0.3", "0.6"]),
                range("B", pb::ParameterType::ParameterInt, 1.0, 2.0),
            ],
            &[("EPOCH_SLEEP", "0.2")],
        );
        spec.max_trials = 50;
        spec.parallel_trials = 2;
        let created = cluster.create(spec).await;
        let filled = created.spec.clone().expect("spec");
        assert_eq!(filled.max_trials, 4, "never more than the grid");
        assert_ne!(filled.seed, 0, "a seed is drawn and recorded");
        let done = cluster.finished(created.experiment_id).await;
        assert_eq!(
            done.status(),
            pb::ExperimentStatus::ExperimentSucceeded,
            "{done:?}"
        );
        let points: Vec<String> = done.trials.iter().map(parameters_of).collect();
        assert_eq!(points, ["B=1 Q=0.3", "B=2 Q=0.3", "B=1 Q=0.6", "B=2 Q=0.6"]);
        assert!(
            done.trials
                .iter()
                .all(|t| t.status() == pb::TrainingStatus::Succeed && t.epochs == 3)
        );
        let best = done.best_trial.clone().expect("best");
        assert_eq!(best.trial_number, 3, "Q=0.6 first reaches 0.18");
        assert!((best.objective.expect("objective") - 0.18).abs() < 1e-9);
        assert!(done.message.contains("best: trial 3"), "{}", done.message);
        let (twice, most) = cluster.starts_and_overlap();
        assert!(twice.is_empty(), "started twice: {twice:?}");
        assert!(most <= 2, "{most} trials ran at once, parallel_trials is 2");
        // A trial is an ordinary job: its run carries the trial's parameters.
        let job = cluster.status(best.job_id).await;
        let metadata = job.metadata.expect("metadata");
        assert_eq!(metadata.parameters["Q"], "0.6");
        assert_eq!(metadata.name, "search trial 3");

        // Random search with a seed: the same parameters in the same order.
        let random = |seed| {
            let mut spec = cluster.experiment(
                pb::SearchAlgorithm::SearchRandom,
                vec![
                    range("Q", pb::ParameterType::ParameterDouble, 0.1, 0.9),
                    range("B", pb::ParameterType::ParameterInt, 1.0, 50.0),
                    categorical("C", &["a", "b", "c"]),
                ],
                &[("EPOCHS", "1")],
            );
            spec.seed = seed;
            spec.max_trials = 3;
            spec.parallel_trials = 3;
            spec
        };
        let (first, second, other) = (random(42), random(42), random(43));
        let first = cluster.create(first).await.experiment_id;
        let second = cluster.create(second).await.experiment_id;
        let other = cluster.create(other).await.experiment_id;
        let first = cluster.finished(first).await;
        let second = cluster.finished(second).await;
        let other = cluster.finished(other).await;
        let sequence =
            |e: &pb::Experiment| -> Vec<String> { e.trials.iter().map(parameters_of).collect() };
        assert_eq!(sequence(&first).len(), 3);
        assert_eq!(sequence(&first), sequence(&second));
        assert_ne!(sequence(&first), sequence(&other));
        let listed = cluster
            .client
            .list_experiments(pb::ListExperimentsRequest {
                statuses: vec![pb::ExperimentStatus::ExperimentSucceeded.into()],
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.total, 4);
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_median_rule_stops_weak_trials_at_the_start_step_and_never_the_best() {
    for backend in backends() {
        let mut cluster = cluster(backend, 4).await;
        let mut spec = cluster.experiment(
            pb::SearchAlgorithm::SearchGrid,
            vec![categorical("Q", &["0.5", "0.6", "0.7", "0.2", "0.9"])],
            &[("EPOCHS", "8"), ("WEAK_SLEEP", "4")],
        );
        spec.early_stopping = Some(pb::EarlyStopping {
            rule: pb::EarlyStoppingRule::EarlyStoppingMedian.into(),
            ..Default::default()
        });
        let created = cluster.create(spec).await;
        let stopping = created
            .spec
            .as_ref()
            .and_then(|s| s.early_stopping)
            .expect("early stopping");
        assert_eq!((stopping.min_trials_required, stopping.start_step), (3, 4));
        let done = cluster.finished(created.experiment_id).await;
        assert_eq!(
            done.status(),
            pb::ExperimentStatus::ExperimentSucceeded,
            "{done:?}"
        );
        let weak = &done.trials[3];
        assert_eq!(weak.parameters["Q"], "0.2");
        assert_eq!(weak.status(), pb::TrainingStatus::Canceled, "{weak:?}");
        assert_eq!(weak.message, "early stopped at epoch 4");
        assert_eq!(weak.early_stopped_epoch, 4);
        // The stopped trial keeps its epochs.
        let run = cluster
            .metadata
            .get_run_status(ms::GetRunStatusRequest {
                run_id: weak.run_id.clone(),
            })
            .await
            .expect("run")
            .into_inner()
            .run_info
            .expect("run info");
        assert!(run.epochs.len() >= 4, "{} epochs", run.epochs.len());
        assert!(!run.success);
        assert_eq!(run.message, "early stopped at epoch 4");
        for trial in [
            &done.trials[0],
            &done.trials[1],
            &done.trials[2],
            &done.trials[4],
        ] {
            assert_eq!(trial.status(), pb::TrainingStatus::Succeed, "{trial:?}");
            assert_eq!(trial.early_stopped_epoch, 0);
            assert_eq!(trial.epochs, 8);
        }
        let best = done.best_trial.expect("best");
        assert_eq!(best.trial_number, 5);
        let exposed = automl_common::metrics::metrics().render();
        let stopped = exposed
            .lines()
            .find_map(|l| l.strip_prefix("automl_experiment_trials_early_stopped_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("the early-stop counter");
        assert!(stopped >= 1, "{stopped}");
        assert!(!exposed.contains("automl_experiments_total{status=\"succeeded\"} 0\n"));
        assert!((best.objective.expect("objective") - 0.72).abs() < 1e-9);
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_goal_stop_and_max_failed_trials_end_an_experiment() {
    for backend in backends() {
        let mut cluster = cluster(backend, 4).await;
        // The goal: trial 1 reaches 0.72 >= 0.7 while the weak trial 2 is still running.
        let mut spec = cluster.experiment(
            pb::SearchAlgorithm::SearchGrid,
            vec![categorical("Q", &["0.9", "0.1", "0.8"])],
            &[("EPOCHS", "8"), ("WEAK_SLEEP", "10")],
        );
        spec.parallel_trials = 2;
        if let Some(objective) = spec.objective.as_mut() {
            objective.goal = Some(0.7);
        }
        let goal = cluster.create(spec).await.experiment_id;
        let done = cluster.finished(goal).await;
        assert_eq!(
            done.status(),
            pb::ExperimentStatus::ExperimentSucceeded,
            "{done:?}"
        );
        assert!(
            done.message.starts_with("goal reached: trial 1"),
            "{}",
            done.message
        );
        assert_eq!(done.trials.len(), 2, "no trial after the goal");
        assert_eq!(done.trials[1].status(), pb::TrainingStatus::Canceled);
        assert_eq!(done.trials[1].message, "experiment ended (succeeded)");
        assert_eq!(done.best_trial.expect("best").trial_number, 1);

        // StopExperiment.
        let mut spec = cluster.experiment(
            pb::SearchAlgorithm::SearchRandom,
            vec![range("Q", pb::ParameterType::ParameterDouble, 0.1, 0.9)],
            &[("EPOCHS", "50"), ("EPOCH_SLEEP", "1")],
        );
        spec.parallel_trials = 2;
        let running = cluster.create(spec).await.experiment_id;
        let mut poll = Poll::new("two trials training", Duration::from_secs(60))
            .every(Duration::from_millis(50));
        loop {
            let now = cluster.get_experiment(running).await;
            if now.trials.iter().filter(|t| t.epochs > 0).count() == 2 {
                break;
            }
            poll.tick_with(format!("{now:?}")).await;
        }
        let stopped = cluster
            .client
            .stop_experiment(pb::GetExperimentRequest {
                experiment_id: running,
            })
            .await
            .expect("stop")
            .into_inner();
        assert_eq!(stopped.status(), pb::ExperimentStatus::ExperimentStopped);
        assert_eq!(stopped.message, "stopped by request");
        let done = cluster.finished(running).await;
        assert_eq!(done.trials.len(), 2);
        for trial in &done.trials {
            assert_eq!(trial.status(), pb::TrainingStatus::Canceled, "{trial:?}");
            assert_eq!(trial.message, "experiment stopped");
        }
        let again = cluster
            .client
            .stop_experiment(pb::GetExperimentRequest {
                experiment_id: running,
            })
            .await;
        assert_status(again, Code::FailedPrecondition, "already ended");

        // max_failed_trials: every trial fails for its own reason.
        let mut spec = cluster.experiment(
            pb::SearchAlgorithm::SearchRandom,
            vec![range("Q", pb::ParameterType::ParameterDouble, 0.1, 0.9)],
            &[
                ("EPOCHS", "1"),
                ("FAIL_WITH", "invalid parameter Q: too odd"),
            ],
        );
        spec.max_trials = 6;
        spec.max_failed_trials = 2;
        let failing = cluster.create(spec).await.experiment_id;
        let done = cluster.finished(failing).await;
        assert_eq!(
            done.status(),
            pb::ExperimentStatus::ExperimentFailed,
            "{done:?}"
        );
        assert_eq!(done.trials.len(), 2, "{done:?}");
        assert!(done.message.contains("2 trials failed"), "{}", done.message);
        assert!(done.best_trial.is_none());
        for trial in &done.trials {
            assert_eq!(trial.status(), pb::TrainingStatus::Failure);
            assert!(
                trial.message.ends_with("invalid parameter Q: too odd"),
                "{}",
                trial.message
            );
        }
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_are_checked_and_scoped_to_their_tenant() {
    let mut cluster = cluster(backends()[0], 2).await;
    // Checked against the built-in trainer's declarations.
    let builtin = |space: pb::SearchParameter| {
        let mut spec = cluster.experiment(pb::SearchAlgorithm::SearchRandom, vec![space], &[]);
        spec.algorithm = "builtin".into();
        spec.parameters.clear();
        spec
    };
    for (spec, named) in [
        (
            builtin(range(
                "EPOCHS",
                pb::ParameterType::ParameterDouble,
                1.0,
                5.0,
            )),
            "search it as int",
        ),
        (
            builtin(range("EPOCHS", pb::ParameterType::ParameterInt, -5.0, 5.0)),
            "invalid parameter EPOCHS",
        ),
        (
            builtin(range("FOO", pb::ParameterType::ParameterInt, 1.0, 5.0)),
            "FOO is not a parameter of builtin",
        ),
        (
            builtin(categorical("OPTIMIZER", &["adamw", "adam"])),
            "invalid parameter OPTIMIZER",
        ),
        (
            builtin(pb::SearchParameter {
                log: true,
                ..range("LR", pb::ParameterType::ParameterDouble, 0.0, 0.1)
            }),
            "a log range needs min > 0",
        ),
    ] {
        let refused = cluster
            .client
            .create_experiment(pb::CreateExperimentRequest { spec: Some(spec) })
            .await;
        assert_status(refused, Code::InvalidArgument, named);
    }
    // A trainer of its own, checked against what its registry entry declares.
    let declared = |space: pb::SearchParameter| {
        let mut spec = cluster.experiment(pb::SearchAlgorithm::SearchRandom, vec![space], &[]);
        spec.algorithm = "declared".into();
        spec
    };
    for (spec, named) in [
        (
            declared(range("Q", pb::ParameterType::ParameterDouble, 0.5, 2.0)),
            "invalid parameter Q: 2 is not in [0, 1]",
        ),
        (
            declared(categorical("MODE", &["fast", "medium"])),
            "invalid parameter MODE: \"medium\" is not one of fast, slow",
        ),
        (
            declared(range("FOO", pb::ParameterType::ParameterInt, 1.0, 2.0)),
            "FOO is not a parameter of declared",
        ),
    ] {
        let refused = cluster
            .client
            .create_experiment(pb::CreateExperimentRequest { spec: Some(spec) })
            .await;
        assert_status(refused, Code::InvalidArgument, named);
    }
    let mut train = cluster.job(&[("Q", "1.5")]);
    if let Some(metadata) = train.metadata.as_mut() {
        metadata.algorithm = "declared".into();
    }
    let refused = cluster.client.train(train).await;
    assert_status(refused, Code::InvalidArgument, "invalid parameter Q");
    let algorithms = cluster.algorithms().await;
    let listed = algorithms
        .algorithms
        .iter()
        .find(|a| a.name == "declared")
        .expect("registered");
    let q = &listed.parameters[0];
    assert_eq!(
        (
            q.name.as_str(),
            q.r#type(),
            q.min,
            q.max,
            q.default_value.as_str()
        ),
        ("Q", pb::ParameterType::ParameterDouble, 0.0, 1.0, "0.5")
    );
    assert_eq!(listed.parameters[1].values, ["fast", "slow"]);

    let mut no_objective = cluster.experiment(
        pb::SearchAlgorithm::SearchRandom,
        vec![categorical("Q", &["0.1"])],
        &[],
    );
    no_objective.objective = None;
    let refused = cluster
        .client
        .create_experiment(pb::CreateExperimentRequest {
            spec: Some(no_objective),
        })
        .await;
    assert_status(refused, Code::InvalidArgument, "spec.objective.metric");
    let mut no_version = cluster.experiment(
        pb::SearchAlgorithm::SearchRandom,
        vec![categorical("Q", &["0.1"])],
        &[],
    );
    no_version.train_data_version_hash = "nope".into();
    let refused = cluster
        .client
        .create_experiment(pb::CreateExperimentRequest {
            spec: Some(no_version),
        })
        .await;
    assert_status(refused, Code::NotFound, "nope");

    // Tenant B sees nothing of tenant A's experiment.
    let mut spec = cluster.experiment(
        pb::SearchAlgorithm::SearchRandom,
        vec![range("Q", pb::ParameterType::ParameterDouble, 0.1, 0.9)],
        &[("EPOCHS", "30"), ("EPOCH_SLEEP", "1")],
    );
    spec.max_trials = 1;
    let id = cluster.create(spec).await.experiment_id;
    let service = cluster.service.clone();
    let not_found = |result: Result<(), TrainingError>| match result {
        Err(TrainingError::ExperimentNotFound(found)) => assert_eq!(found, i64::from(id)),
        Err(other) => panic!("{other}"),
        Ok(()) => panic!("tenant b reached tenant a's experiment"),
    };
    not_found(
        service
            .experiment_view("b", i64::from(id))
            .await
            .map(|_| ()),
    );
    not_found(
        service
            .stop_experiment("b", i64::from(id))
            .await
            .map(|_| ()),
    );
    not_found(
        service
            .watch_experiment("b", i64::from(id))
            .await
            .map(|_| ()),
    );
    let (listed, total) = service
        .list_experiments("b", &[], 0, 0)
        .await
        .expect("list");
    assert!(listed.is_empty() && total == 0);
    let running = cluster.get_experiment(id).await;
    assert_eq!(running.status(), pb::ExperimentStatus::ExperimentRunning);
    // Its trials are the tenant's jobs: tenant B cannot cancel them either.
    let job_id = running.trials[0].job_id;
    assert!(matches!(
        service.cancel("b", i64::from(job_id)).await,
        Err(TrainingError::JobNotFound(_))
    ));
    // A trial canceled by hand ends canceled; the experiment goes on without it.
    cluster
        .client
        .cancel_training_job(pb::GetTrainingStatusRequest { job_id })
        .await
        .expect("cancel");
    let done = cluster.finished(id).await;
    assert_eq!(
        done.status(),
        pb::ExperimentStatus::ExperimentFailed,
        "{done:?}"
    );
    assert_eq!(done.message, "1 trials ended and none succeeded");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_driver_and_a_second_replica_never_queue_a_trial_twice() {
    for backend in backends() {
        let mut cluster = cluster(backend, 8).await;
        let mut spec = cluster.experiment(
            pb::SearchAlgorithm::SearchRandom,
            vec![range("Q", pb::ParameterType::ParameterDouble, 0.4, 0.9)],
            &[("EPOCHS", "4"), ("EPOCH_SLEEP", "0.3")],
        );
        spec.max_trials = 6;
        spec.parallel_trials = 2;
        let id = cluster.create(spec).await.experiment_id;
        // Stopped while its first trials run; they go on without it.
        let mut poll = Poll::new("a trial's first epoch", Duration::from_secs(60))
            .every(Duration::from_millis(50));
        while cluster
            .get_experiment(id)
            .await
            .trials
            .iter()
            .all(|t| t.epochs == 0)
        {
            poll.tick().await;
        }
        cluster.restart_training_stopped(|| {}).await;
        // And a second replica drives it too.
        cluster.replica().await;
        let done = cluster.finished(id).await;
        assert_eq!(
            done.status(),
            pb::ExperimentStatus::ExperimentSucceeded,
            "{done:?}"
        );
        assert_eq!(done.trials.len(), 6);
        let numbers: Vec<i32> = done.trials.iter().map(|t| t.trial_number).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
        let jobs = cluster
            .client
            .list_training_jobs(pb::ListTrainingJobsRequest::default())
            .await
            .expect("jobs")
            .into_inner();
        assert_eq!(jobs.total, 6, "one job per trial");
        let (twice, most) = cluster.starts_and_overlap();
        assert!(twice.is_empty(), "started twice: {twice:?}");
        assert!(most <= 2, "{most} at once");
        cluster.stop().await;
    }
}
