//! The Kubernetes backend against the simulated API server: the Job spec, pod phases → job
//! statuses, pod logs, cancel, and re-attaching after a restart.

use std::time::Duration;

use automl_common::db::Backend;
use automl_common::testing::{Poll, backends};
use automl_proto::training as pb;
use automl_training_service::TrainingConfig;
use automl_training_service::config::{
    AlgorithmConfig, BackendKind, KubernetesConfig, TolerationConfig,
};
use serde_json::Value;

use super::Cluster;
use super::kube_api::KubeApi;

async fn cluster(backend: Backend, api: &KubeApi, limit: i64) -> Cluster {
    cluster_with(backend, api, limit, |_| {}).await
}

/// A Kubernetes cluster whose configuration `customize` adjusts further.
async fn cluster_with(
    backend: Backend,
    api: &KubeApi,
    limit: i64,
    customize: impl FnOnce(&mut TrainingConfig),
) -> Cluster {
    let url = api.url();
    Cluster::start_with(backend, limit, move |config| {
        config.backend = BackendKind::Kubernetes;
        config.trainer_minio_server = "minio:9000".into();
        config.kubernetes = KubernetesConfig {
            api_server: url,
            namespace: "ml".into(),
            service_account: "trainer".into(),
            backoff_limit: 2,
            ttl_seconds_after_finished: 600,
            node_selector: [("pool".to_string(), "training".to_string())].into(),
            gpu_node_selector: [("accelerator".to_string(), "nvidia".to_string())].into(),
            tolerations: vec![TolerationConfig {
                key: "dedicated".into(),
                operator: "Equal".into(),
                value: "ml".into(),
                effect: "NoSchedule".into(),
            }],
            ..KubernetesConfig::default()
        };
        for algorithm in config.algorithms.values_mut() {
            *algorithm = AlgorithmConfig {
                command: String::new(),
                image: "registry.example/automl:1.0".into(),
                gpu_image: "registry.example/automl:1.0-cuda".into(),
                ..AlgorithmConfig::default()
            };
        }
        customize(config);
    })
    .await
}

/// Waits until `check` holds for the simulated server.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let mut poll = Poll::new(what, Duration::from_secs(30));
    while !check() {
        poll.tick().await;
    }
}

async fn until_status(cluster: &mut Cluster, job_id: i32, want: pb::TrainingStatus) -> String {
    cluster.wait_status(job_id, want).await.message
}

fn env_of(job: &Value) -> Vec<Value> {
    job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn env_value(job: &Value, name: &str) -> Option<String> {
    env_of(job)
        .into_iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

async fn logs(cluster: &mut Cluster, job_id: i32) -> Vec<String> {
    let mut stream = cluster
        .client
        .get_training_logs(pb::GetTrainingLogsRequest {
            job_id,
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(line) = stream.message().await.expect("line") {
        lines.push(line.text);
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_kubernetes_jobs() {
    for backend in backends() {
        let api = KubeApi::start().await;
        let mut cluster = cluster(backend, &api, 3).await;

        // A GPU job: the Job spec as the contract and the configuration say.
        let first = cluster
            .train_with(
                &[("EPOCHS", "3")],
                pb::Resources {
                    cpu: "2".into(),
                    memory: "4Gi".into(),
                    gpus: 1,
                    ..Default::default()
                },
            )
            .await;
        until("the first Job exists", || {
            api.job("automl-train-1").is_some()
        })
        .await;
        // The job names its Job once the launch has recorded it (after the Job exists and
        // owns its Secret).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut message = until_status(&mut cluster, first, pb::TrainingStatus::Launch).await;
        while !message.contains("automl-train-1") && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            message = until_status(&mut cluster, first, pb::TrainingStatus::Launch).await;
        }
        assert!(message.contains("automl-train-1"), "{message}");
        let job = api.job("automl-train-1").expect("job");
        assert_eq!(job["metadata"]["namespace"], "ml");
        let labels = &job["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "automl-training-service"
        );
        assert_eq!(labels["automl.io/job-id"], "1");
        assert_eq!(labels["automl.io/algorithm"], "intent-classification");
        assert_eq!(job["spec"]["backoffLimit"], 2);
        // The configured default run time, enforced by Kubernetes.
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 86_400);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "trainer");
        assert_eq!(pod["nodeSelector"]["pool"], "training");
        assert_eq!(pod["nodeSelector"]["accelerator"], "nvidia");
        let tolerations = pod["tolerations"].as_array().expect("tolerations");
        assert!(tolerations.iter().any(|t| t["key"] == "dedicated"));
        assert!(tolerations.iter().any(|t| t["key"] == "nvidia.com/gpu"));
        let container = &pod["containers"][0];
        assert_eq!(container["name"], "trainer");
        assert_eq!(container["image"], "registry.example/automl:1.0-cuda");
        assert_eq!(container["command"][0], "automl-train");
        assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(container["resources"]["limits"]["cpu"], "2");
        assert_eq!(container["resources"]["requests"]["memory"], "4Gi");
        for (name, value) in [
            ("JOB_ID", "1"),
            ("ALGORITHM_NAME", "intent-classification"),
            ("TRAINING_DATASET_ID", "1"),
            ("TRAINING_DATASET_VERSION_HASH", "hashAg=="),
            ("MINIO_SERVER", "minio:9000"),
            ("MODEL_NAME", "intent"),
            ("EPOCHS", "3"),
            ("DEVICE", "cuda"),
        ] {
            assert_eq!(env_value(&job, name).as_deref(), Some(value), "{name}");
        }
        assert!(env_value(&job, "TRAINING_DATA_PATH").is_some_and(|p| !p.is_empty()));
        // The id of the Train call, so the trainer's calls can be followed in the logs.
        assert!(env_value(&job, "AUTOML_REQUEST_ID").is_some_and(|id| !id.is_empty()));
        // The built-in algorithm gets presigned URLs of its own objects, no S3 Secret at all.
        for name in ["MINIO_SERVER_ACCESS_KEY", "MINIO_SERVER_SECRET_KEY"] {
            assert!(
                env_of(&job).iter().all(|e| e["name"] != name),
                "{name} in the Job spec"
            );
        }
        assert!(
            !job.to_string().contains("automl-s3"),
            "the S3 Secret is referenced"
        );
        // Its grants reach the pod through the job's own Secret (owned by the Job), never as a
        // plain value of the Job spec.
        let grants = env_of(&job)
            .into_iter()
            .find(|e| e["name"] == "AUTOML_OBJECT_GRANTS")
            .expect("grants");
        assert!(grants["value"].is_null(), "{grants}");
        assert_eq!(
            grants["valueFrom"]["secretKeyRef"]["name"],
            "automl-train-1-token"
        );
        assert_eq!(grants["valueFrom"]["secretKeyRef"]["key"], "grants");
        assert!(!job.to_string().contains("X-Amz-Signature"));
        let job_secret = api
            .secret("automl-train-1-token")
            .expect("the job's Secret");
        assert!(
            job_secret["stringData"]["grants"]
                .as_str()
                .is_some_and(|g| g.contains("X-Amz-Signature")),
            "{job_secret}"
        );
        assert_eq!(
            job_secret["metadata"]["ownerReferences"][0]["name"],
            "automl-train-1"
        );
        // The Secret exists before the Job whose pod references it.
        let requests = api.requests();
        let at = |r: &str| requests.iter().position(|x| x == r);
        assert!(
            at("CREATE Secret automl-train-1-token") < at("CREATE Job automl-train-1")
                && at("CREATE Secret automl-train-1-token").is_some(),
            "{requests:?}"
        );
        let secret = &cluster.services.env.common.s3.secret_key;
        assert!(!job.to_string().contains(secret.as_str()));

        // Pod phases → statuses; the log comes from the pod.
        api.set_pod("automl-train-1", "Running", None, "epoch 1\nepoch 2\n");
        until_status(&mut cluster, first, pb::TrainingStatus::Running).await;
        api.set_pod(
            "automl-train-1",
            "Succeeded",
            Some(0),
            "epoch 1\nepoch 2\nepoch 3\n",
        );
        api.finish_job(
            "automl-train-1",
            true,
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        until_status(&mut cluster, first, pb::TrainingStatus::Succeed).await;
        assert_eq!(
            logs(&mut cluster, first).await,
            ["epoch 1", "epoch 2", "epoch 3"]
        );

        // A CPU job whose trainer exits 1: failure with the exit code and the Job's reason.
        let second = cluster.train(&[]).await;
        until("the second Job exists", || {
            api.job("automl-train-2").is_some()
        })
        .await;
        let job = api.job("automl-train-2").expect("job");
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "registry.example/automl:1.0");
        assert!(container["resources"]["limits"]["nvidia.com/gpu"].is_null());
        assert!(job["spec"]["template"]["spec"]["nodeSelector"]["accelerator"].is_null());
        api.set_pod("automl-train-2", "Running", None, "");
        until_status(&mut cluster, second, pb::TrainingStatus::Running).await;
        assert_eq!(
            container["terminationMessagePolicy"],
            "FallbackToLogsOnError"
        );
        api.set_pod(
            "automl-train-2",
            "Failed",
            Some(1),
            "boom\nautoml-train: error: bad snapshot: no labels\n",
        );
        api.finish_job(
            "automl-train-2",
            false,
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        );
        let message = until_status(&mut cluster, second, pb::TrainingStatus::Failure).await;
        // The exit code, the trainer's own error line (its termination message), the reason.
        assert!(
            message.starts_with("exit code 1: bad snapshot: no labels (BackoffLimitExceeded"),
            "{message}"
        );

        // Cancel deletes the Job and its pods.
        let third = cluster.train(&[]).await;
        until("the third Job exists", || {
            api.job("automl-train-3").is_some()
        })
        .await;
        api.set_pod("automl-train-3", "Running", None, "");
        until_status(&mut cluster, third, pb::TrainingStatus::Running).await;
        let canceled = cluster
            .client
            .cancel_training_job(pb::GetTrainingStatusRequest { job_id: third })
            .await
            .expect("cancel")
            .into_inner();
        assert_eq!(canceled.status(), pb::TrainingStatus::Canceled);
        assert!(api.job("automl-train-3").is_none());
        assert!(!api.pods().iter().any(|p| p.starts_with("automl-train-3")));
        assert!(
            api.requests()
                .contains(&"DELETE Job automl-train-3 Background".to_string())
        );

        // Re-attach: while training-service is down, job 4's Job completes, job 5's is
        // deleted and job 6's goes on running; after the restart 4 and 5 are settled, 6 is
        // followed to its end, and the queued job 7 runs.
        let fourth = cluster.train(&[]).await;
        let fifth = cluster.train(&[]).await;
        let sixth = cluster.train(&[]).await;
        until("jobs 4, 5 and 6 exist", || {
            ["automl-train-4", "automl-train-5", "automl-train-6"]
                .iter()
                .all(|name| api.job(name).is_some())
        })
        .await;
        for (job, name) in [
            (fourth, "automl-train-4"),
            (fifth, "automl-train-5"),
            (sixth, "automl-train-6"),
        ] {
            api.set_pod(name, "Running", None, "");
            until_status(&mut cluster, job, pb::TrainingStatus::Running).await;
        }
        let seventh = cluster.train(&[]).await;
        let queued = cluster.status(seventh).await;
        assert_eq!(queued.status(), pb::TrainingStatus::Queuing);

        cluster
            .restart_training_stopped(|| {
                api.set_pod("automl-train-4", "Succeeded", Some(0), "done\n");
                api.finish_job("automl-train-4", true, "CompletionsReached", "");
                api.delete_job("automl-train-5");
                api.set_pod("automl-train-6", "Running", None, "epoch 1\n");
            })
            .await;
        until_status(&mut cluster, fourth, pb::TrainingStatus::Succeed).await;
        let message = until_status(&mut cluster, fifth, pb::TrainingStatus::Failure).await;
        assert!(message.contains("gone"), "{message}");
        assert_eq!(
            cluster.status(sixth).await.status(),
            pb::TrainingStatus::Running,
            "a Job still running is re-attached, not settled"
        );
        until("the queued job's Job exists", || {
            api.job("automl-train-7").is_some()
        })
        .await;

        // The re-attached job's log is followed live until it ends.
        let mut follow = cluster
            .client
            .get_training_logs(pb::GetTrainingLogsRequest {
                job_id: sixth,
                ..Default::default()
            })
            .await
            .expect("logs")
            .into_inner();
        let first_line = follow.message().await.expect("line").expect("a line");
        assert_eq!(first_line.text, "epoch 1");
        api.append_log("automl-train-6", "epoch 2\n");
        let second_line = follow.message().await.expect("line").expect("a line");
        assert_eq!(second_line.text, "epoch 2");
        api.append_log("automl-train-6", "test accuracy 0.9\n");
        api.set_pod(
            "automl-train-6",
            "Succeeded",
            Some(0),
            "epoch 1\nepoch 2\ntest accuracy 0.9\n",
        );
        api.finish_job("automl-train-6", true, "CompletionsReached", "");
        until_status(&mut cluster, sixth, pb::TrainingStatus::Succeed).await;
        let mut rest = Vec::new();
        while let Some(line) = follow.message().await.expect("line") {
            rest.push(line.text);
        }
        assert_eq!(rest, ["test accuracy 0.9"], "the stream ends with the job");
        for job in ["automl-train-4", "automl-train-6"] {
            assert_eq!(
                api.requests()
                    .iter()
                    .filter(|r| **r == format!("CREATE Job {job}"))
                    .count(),
                1,
                "a re-attached job is not launched again"
            );
        }

        cluster.stop().await;
        api.stop();
    }
}

fn stored_job(job_id: i64, submission: &str) -> automl_training_service::model::Job {
    use automl_training_service::model::{Job, JobSpec, JobStatus};
    Job {
        job_id,
        tenant: "team-a".into(),
        status: JobStatus::Launch,
        message: String::new(),
        spec: JobSpec {
            algorithm: "intent-classification".into(),
            dataset_id: "1".into(),
            train_data_version_hash: "hashAg==".into(),
            output_model_name: "intent".into(),
            submission: submission.into(),
            ..JobSpec::default()
        },
        backend: "kubernetes".into(),
        backend_ref: String::new(),
        ..Job::default()
    }
}

/// The backend on its own: a job's token goes into a Secret the Job owns (never into the Job),
/// and a Job left behind by another database's job of the same id is replaced, not adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_tokens_go_into_owned_secrets_and_stale_jobs_are_replaced() {
    use automl_training_service::kubernetes::{KubernetesBackend, TrainerSpec};
    let api = KubeApi::start().await;
    let backend = KubernetesBackend::connect(&KubernetesConfig {
        api_server: api.url(),
        namespace: "ml".into(),
        ..KubernetesConfig::default()
    })
    .await
    .expect("connect");
    let trainer = TrainerSpec {
        image: "registry.example/automl:1.0".into(),
        command: "automl-train".into(),
        env: vec![
            ("JOB_ID".into(), "7".into()),
            ("AUTOML_TOKEN".into(), "amls.job-token-value".into()),
        ],
    };

    // A Job named automl-train-7 from an earlier database (another submission) is in the way.
    api.put_job(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "automl-train-7",
            "namespace": "ml",
            "uid": "uid-stale",
            "labels": {
                "app.kubernetes.io/managed-by": "automl-training-service",
                "automl.io/job-id": "7",
                "automl.io/submission": "0ld",
            },
        },
        "spec": {"template": {"spec": {"containers": []}}},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }));
    let job = stored_job(7, "n3w");
    let name = backend.launch(&job, &trainer).await.expect("launch");
    assert_eq!(name, "automl-train-7");
    let created = api.job("automl-train-7").expect("job");
    assert_eq!(created["metadata"]["labels"]["automl.io/submission"], "n3w");
    let requests = api.requests();
    let at = |r: &str| {
        requests
            .iter()
            .position(|x| x == r)
            .unwrap_or_else(|| panic!("no {r} in {requests:?}"))
    };
    assert!(
        at("DELETE Job automl-train-7 Background") < at("CREATE Secret automl-train-7-token"),
        "{requests:?}"
    );
    // The Secret exists before the Job whose pod references it.
    assert!(
        at("CREATE Secret automl-train-7-token") < at("CREATE Job automl-train-7"),
        "{requests:?}"
    );
    assert!(backend.exists(&job).await.expect("exists"));
    assert!(
        !backend
            .exists(&stored_job(7, "another"))
            .await
            .expect("exists")
    );

    // The token is in the job's Secret, owned by the Job; the Job refers to it.
    let secret = api.secret("automl-train-7-token").expect("secret");
    assert_eq!(secret["stringData"]["token"], "amls.job-token-value");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Job");
    assert_eq!(owner["uid"], created["metadata"]["uid"]);
    assert!(!created.to_string().contains("job-token-value"));
    let env = env_of(&created);
    let token = env
        .iter()
        .find(|e| e["name"] == "AUTOML_TOKEN")
        .expect("token var");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        "automl-train-7-token"
    );

    // The same submission launched again (a launch interrupted after the create) adopts.
    backend.launch(&job, &trainer).await.expect("adopt");
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| r.starts_with("DELETE Job"))
            .count(),
        1,
        "its own Job is adopted, not replaced"
    );

    // Cancel deletes the Job; its Secret goes with it.
    backend.cancel(7).await.expect("cancel");
    assert!(api.job("automl-train-7").is_none());
    assert!(api.secret("automl-train-7-token").is_none());
    api.stop();
}

/// A canceled job is `canceled` only once its Job is deleted: while the API server refuses the
/// delete the job reads `canceling` and keeps its slot; a retry deletes it and frees the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_holds_until_the_job_is_deleted() {
    let api = KubeApi::start().await;
    let mut cluster = cluster(backends()[0], &api, 1).await;
    let first = cluster.train(&[]).await;
    until("the first Job exists", || {
        api.job("automl-train-1").is_some()
    })
    .await;
    api.set_pod("automl-train-1", "Running", None, "epoch 1\n");
    until_status(&mut cluster, first, pb::TrainingStatus::Running).await;
    let second = cluster.train(&[]).await;
    api.refuse_deletes(3);
    let answer = cluster
        .client
        .cancel_training_job(pb::GetTrainingStatusRequest { job_id: first })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(answer.status(), pb::TrainingStatus::Running);
    assert!(
        answer.message.starts_with("canceling"),
        "{}",
        answer.message
    );
    let refused = |api: &KubeApi| {
        api.requests()
            .iter()
            .filter(|r| *r == "DELETE Job automl-train-1 refused")
            .count()
    };
    until("the delete is retried", || refused(&api) >= 2).await;
    // Not canceled, and the slot stays taken, while the Job exists.
    let status = cluster.status(first).await;
    assert_eq!(status.status(), pb::TrainingStatus::Running);
    assert!(
        status
            .message
            .contains("cannot delete the Kubernetes Job yet"),
        "{}",
        status.message
    );
    assert!(api.job("automl-train-1").is_some());
    assert!(api.job("automl-train-2").is_none());
    assert_eq!(
        cluster.status(second).await.status(),
        pb::TrainingStatus::Queuing
    );
    // A later retry succeeds: canceled, and the next job gets the slot.
    let message = until_status(&mut cluster, first, pb::TrainingStatus::Canceled).await;
    assert_eq!(message, "canceled by request");
    assert_eq!(refused(&api), 3);
    assert!(api.job("automl-train-1").is_none());
    until("the second Job exists", || {
        api.job("automl-train-2").is_some()
    })
    .await;
    cluster.stop().await;
}

/// A pod that stays Pending past the launch timeout fails its job with the scheduler's reason,
/// its Job is deleted and the slot goes to the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_never_starts_fails_its_job_and_frees_the_slot() {
    for backend in backends() {
        let api = KubeApi::start().await;
        let mut cluster = cluster_with(backend, &api, 1, |config| {
            config.limits.launch_timeout_seconds = 2;
        })
        .await;
        let first = cluster.train(&[]).await;
        until("the first Job exists", || {
            api.job("automl-train-1").is_some()
        })
        .await;
        api.unschedulable(
            "automl-train-1",
            "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        );
        let second = cluster
            .train_with(
                &[],
                pb::Resources {
                    max_runtime_seconds: 120,
                    ..Default::default()
                },
            )
            .await;
        let message = until_status(&mut cluster, first, pb::TrainingStatus::Failure).await;
        assert_eq!(
            message,
            "the trainer did not start within 2 s: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        );
        assert!(
            api.job("automl-train-1").is_none(),
            "the Job was not deleted"
        );
        until("the second Job exists", || {
            api.job("automl-train-2").is_some()
        })
        .await;
        let job = api.job("automl-train-2").expect("job");
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 120);
        until_status(&mut cluster, second, pb::TrainingStatus::Launch).await;
        // Kubernetes stops it at its deadline: the job says so.
        api.finish_job(
            "automl-train-2",
            false,
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        );
        let message = until_status(&mut cluster, second, pb::TrainingStatus::Failure).await;
        assert!(
            message.starts_with("deadline exceeded after 120 s"),
            "{message}"
        );
        cluster.stop().await;
    }
}
