//! A trainer outlives its metadata-store: metadata-store runs as its own `automl serve
//! metadata-store` process, is killed (SIGKILL) in the middle of a training and started again
//! a few seconds later on the same address and database, and the run still ends `succeed` with
//! every epoch recorded once.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use automl_common::testing::{Poll, TestEnv};
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use tonic::transport::Channel;

use crate::support::{
    Automl, clinc_data, grpcurl_json, job_end, lone_automl, process_env, run_grpcurl,
};

const EPOCHS: usize = 12;

/// `automl serve <service>` of `program` with `env`, plus `extra`.
fn serve(
    program: &Path,
    service: &str,
    env: &TestEnv,
    data_dir: &Path,
    extra: &[(&str, String)],
) -> Automl {
    let mut vars = process_env(env, data_dir);
    vars.extend(extra.iter().cloned());
    Automl::spawn_serving(
        program,
        service,
        &[service],
        env.path(),
        &vars,
        Stdio::inherit(),
    )
}

/// The epochs metadata-store has recorded for `run_id`, or `None` while it cannot answer.
async fn recorded_epochs(
    client: &mut MetadataStoreServiceClient<Channel>,
    run_id: &str,
) -> Option<pb::RunInfo> {
    let request = pb::GetRunStatusRequest {
        run_id: run_id.into(),
    };
    match client.get_run_status(request).await {
        Ok(response) => response.into_inner().run_info,
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_metadata_store_killed_and_restarted_mid_training() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    // A lone copy of `automl`: training-service runs `automl trainer`, this build's trainer.
    let program = lone_automl(env.path());
    let data_dir = env.path().join("automl");
    let data = clinc_data("clinc-intents-part1.csv");
    env.objects
        .put_bytes(&env.objects.datasets_bucket, "upload/part1.csv", data)
        .await
        .expect("upload");

    let metadata = serve(&program, "metadata-store", &env, &data_dir, &[]);
    let metadata_addr = metadata.addr("metadata-store");
    let port = metadata_addr.rsplit(':').next().expect("port").to_string();
    let dm = serve(&program, "data-management", &env, &data_dir, &[]);
    let dm_addr = dm.addr("data-management");
    let training = serve(
        &program,
        "training-service",
        &env,
        &data_dir,
        &[
            (
                "AUTOML__TRAINING_SERVICE__METADATA_STORE",
                format!("http://{metadata_addr}"),
            ),
            (
                "AUTOML__TRAINING_SERVICE__DATA_MANAGEMENT",
                format!("http://{dm_addr}"),
            ),
        ],
    );
    let training_addr = training.addr("training-service");

    grpcurl_json(
        &dm_addr,
        "data_management.DataManagementService/CreateDataset",
        r#"{"name":"clinc","dataset_type":"TEXT_INTENT","path":"upload/part1.csv"}"#,
    );
    let version = grpcurl_json(
        &dm_addr,
        "data_management.DataManagementService/PrepareTrainingDataset",
        r#"{"dataset_id":"1"}"#,
    );
    let hash = version["versionHash"].as_str().expect("version hash");
    let submitted = grpcurl_json(
        &training_addr,
        "training.TrainingService/Train",
        &format!(
            r#"{{"metadata":{{"algorithm":"intent-classification","dataset_id":"1","name":"survivor","train_data_version_hash":"{hash}","output_model_name":"intent","parameters":{{"EPOCHS":"{EPOCHS}","METADATA_RETRY_SECONDS":"60"}}}}}}"#
        ),
    );
    let job_id = submitted["jobId"].as_i64().expect("job id");
    let run_id = job_id.to_string();

    // Wait for the second epoch, timing the first to size the outage to the training's pace.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{metadata_addr}"))
        .expect("url")
        .connect_lazy();
    let mut client = MetadataStoreServiceClient::new(channel);
    let mut poll = Poll::new("the run records its first epochs", Duration::from_secs(120));
    let mut first_epoch_at = None;
    let (epochs_before, epoch_seconds) = loop {
        let epochs = recorded_epochs(&mut client, &run_id)
            .await
            .map_or(0, |run| run.epochs.len());
        if epochs >= 1 && first_epoch_at.is_none() {
            first_epoch_at = Some(Instant::now());
        }
        if epochs >= 2 {
            break (
                epochs,
                first_epoch_at.map_or(1.0, |at| at.elapsed().as_secs_f64()),
            );
        }
        poll.tick().await;
    };
    metadata.kill9();
    assert!(
        epochs_before < EPOCHS,
        "killed in the middle of the training"
    );
    let killed_at = Instant::now();
    // Long enough for the trainer to report an epoch into the outage.
    let outage = Duration::from_secs_f64((2.5 * epoch_seconds).clamp(3.0, 15.0));
    tokio::time::sleep(outage).await;
    let restarted = serve(
        &program,
        "metadata-store",
        &env,
        &data_dir,
        &[("AUTOML__METADATA_STORE__PORT", port)],
    );
    assert_eq!(restarted.addr("metadata-store"), metadata_addr);

    let job = format!(r#"{{"job_id":{job_id}}}"#);
    let last = job_end(&training_addr, job_id, Duration::from_secs(120)).await;
    let (_, log, _) = run_grpcurl(&[
        "-plaintext",
        "-d",
        &job,
        &training_addr,
        "training.TrainingService/GetTrainingLogs",
    ]);
    assert_eq!(last["status"], "succeed", "{last}\n{log}");
    assert!(
        log.contains("metadata-store unavailable (") && log.contains("; retrying "),
        "the trainer reports its retries:\n{log}"
    );

    let mut client = restarted.metadata_client().await;
    let run = recorded_epochs(&mut client, &run_id)
        .await
        .expect("the run after the restart");
    assert!(run.success, "{run:?}");
    assert!(run.message.starts_with("test accuracy 0."), "{run:?}");
    let mut ids: Vec<usize> = run
        .epochs
        .keys()
        .map(|id| id.parse().expect("numeric epoch id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=EPOCHS).collect::<Vec<_>>(), "{log}");
    let artifact = client
        .get_artifact(pb::GetArtifactRequest { run_id })
        .await
        .expect("the model was recorded")
        .into_inner();
    assert_eq!(artifact.version, "1");
    for line in log.lines().filter(|line| line.contains("; retrying ")) {
        println!("{}", line.trim());
    }
    println!(
        "killed after {epochs_before} of {EPOCHS} epochs ({epoch_seconds:.2} s each), down {:.1} s, \
         all done {:.1} s after the kill",
        outage.as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );
    training.terminate();
    dm.terminate();
    restarted.terminate();
}
