//! data-management through the `automl` process: the MiniAutoML demo with grpcurl, and crashes
//! (`kill -9`) during an ingest and during a snapshot build.

use std::time::Duration;

use automl_common::testing::{Poll, TestEnv, backends};
use automl_proto::data_management as pb;
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use tonic::transport::Channel;

use crate::support::{Automl, clinc_data, grpcurl_json, process_env};

/// Splits CSV bytes into two halves at a line boundary.
fn halves(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lines: Vec<&[u8]> = data.split_inclusive(|b| *b == b'\n').collect();
    let middle = lines.len() / 2;
    (lines[..middle].concat(), lines[middle..].concat())
}

const SERVICE: &str = "data_management.DataManagementService";

fn call(addr: &str, method: &str, body: &str) -> serde_json::Value {
    grpcurl_json(addr, &format!("{SERVICE}/{method}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miniautoml_data_management_demo_with_grpcurl() {
    let part1 = clinc_data("clinc-intents-part1.csv");
    let (part2a, part2b) = halves(&clinc_data("clinc-intents-part2.csv"));
    let mut digests = Vec::new();
    for backend in backends() {
        let env = TestEnv::new(backend).await.expect("env");
        let bucket = env.objects.datasets_bucket.clone();
        for (key, body) in [
            ("upload/clinc-part1.csv", &part1),
            ("upload/clinc-part2-a.csv", &part2a),
            ("upload/clinc-part2-b.csv", &part2b),
        ] {
            env.objects
                .put_bytes(&bucket, key, body.clone())
                .await
                .expect("upload");
        }
        let automl = Automl::spawn(env.path(), &process_env(&env, &env.path().join("automl")));
        let addr = automl.addr("data-management");

        let created = call(
            &addr,
            "CreateDataset",
            &format!(
                r#"{{"name":"clinc","description":"intents","dataset_type":"TEXT_INTENT","bucket":"{bucket}","path":"upload/clinc-part1.csv","tags":[{{"tag_key":"category","tag_value":"aaa"}}]}}"#
            ),
        );
        assert_eq!(created["datasetId"], "1");
        assert_eq!(created["commits"][0]["commitId"], "1");
        assert_eq!(created["commits"][0]["statistics"]["numExamples"], "5500");
        for (path, value, commit) in [
            ("upload/clinc-part2-a.csv", "aaa", "2"),
            ("upload/clinc-part2-b.csv", "bbb", "3"),
        ] {
            let updated = call(
                &addr,
                "UpdateDataset",
                &format!(
                    r#"{{"dataset_id":"1","commit_message":"more","bucket":"{bucket}","path":"{path}","tags":[{{"tag_key":"category","tag_value":"{value}"}}]}}"#
                ),
            );
            let commits = updated["commits"].as_array().expect("commits");
            assert_eq!(commits.last().expect("commit")["commitId"], commit);
        }

        let all = call(&addr, "PrepareTrainingDataset", r#"{"dataset_id":"1"}"#);
        assert_eq!(all["versionHash"], "hashDg==");
        let tagged = call(
            &addr,
            "PrepareTrainingDataset",
            r#"{"dataset_id":"1","tags":[{"tag_key":"category","tag_value":"aaa"}]}"#,
        );
        assert_eq!(tagged["versionHash"], "hashBg==");

        let mut poll = Poll::new("snapshot leaves RUNNING", Duration::from_secs(120))
            .every(Duration::from_millis(100));
        let snapshot = loop {
            let fetched = call(
                &addr,
                "FetchTrainingDataset",
                r#"{"dataset_id":"1","version_hash":"hashDg=="}"#,
            );
            // grpcurl omits the default enum value, RUNNING.
            if fetched.get("state").is_some() {
                break fetched;
            }
            poll.tick().await;
        };
        assert_eq!(snapshot["state"], "READY", "{snapshot}");
        let names: Vec<_> = snapshot["parts"]
            .as_array()
            .expect("parts")
            .iter()
            .map(|p| p["name"].as_str().expect("name").to_string())
            .collect();
        assert_eq!(names, ["examples.csv", "labels.csv"]);
        assert_eq!(snapshot["root"]["path"], "versionedDatasets/1/hashDg==");
        assert_eq!(snapshot["statistics"]["numExamples"], "13100");
        assert_eq!(snapshot["statistics"]["numLabels"], "151");
        digests.push(
            snapshot["contentDigest"]
                .as_str()
                .expect("digest")
                .to_string(),
        );
        automl.terminate();
    }
    // The same selection gives the same bytes on every backend.
    assert!(
        digests.windows(2).all(|pair| pair[0] == pair[1]),
        "{digests:?}"
    );
}

/// Writes a ~`megabytes` MB TEXT_INTENT file to `key`, streaming.
async fn put_large(env: &TestEnv, key: &str, megabytes: usize) {
    let mut writer = env.objects.writer(&env.objects.datasets_bucket, key);
    let mut row = 0usize;
    let mut chunk = String::new();
    while (writer.written() as usize) < megabytes * 1024 * 1024 {
        chunk.clear();
        for _ in 0..10_000 {
            row += 1;
            chunk.push_str(&format!(
                "generated utterance number {row} about things,intent_{}\n",
                row % 97
            ));
        }
        writer.write(chunk.as_bytes()).await.expect("write");
    }
    writer.finish().await.expect("finish");
}

async fn commit_ids(client: &mut DataManagementServiceClient<Channel>) -> Vec<String> {
    client
        .get_dataset_summary(pb::DatasetPointer {
            dataset_id: "1".into(),
        })
        .await
        .expect("summary")
        .into_inner()
        .commits
        .into_iter()
        .map(|c| c.commit_id)
        .collect()
}

fn commit(path: &str) -> pb::CreateCommitRequest {
    pb::CreateCommitRequest {
        dataset_id: "1".into(),
        commit_message: "more".into(),
        bucket: String::new(),
        path: path.into(),
        tags: vec![],
    }
}

/// Parts of multipart uploads the process has stored: ingests and snapshot builds write their
/// examples in parts.
const UPLOADED_PARTS: &str = "automl_s3_request_duration_seconds_count{operation=\"upload_part\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_and_snapshot_build_leaves_nothing_half_done() {
    for backend in backends() {
        let env = TestEnv::new(backend).await.expect("env");
        env.objects
            .put_bytes(
                &env.objects.datasets_bucket,
                "upload/small.csv",
                b"hello,greeting\n".to_vec(),
            )
            .await
            .expect("upload");
        put_large(&env, "upload/large.csv", 40).await;
        let data_dir = env.path().join("automl");
        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let mut client = automl.data_client().await;
        client
            .create_dataset(pb::CreateDatasetRequest {
                name: "crash".into(),
                dataset_type: pb::DatasetType::TextIntent.into(),
                path: "upload/small.csv".into(),
                ..Default::default()
            })
            .await
            .expect("create");

        // Crash in the middle of a large ingest.
        let mut background = client.clone();
        let ingest =
            tokio::spawn(
                async move { background.update_dataset(commit("upload/large.csv")).await },
            );
        // Once a part of the commit's examples is stored, and more are to come.
        automl.wait_for_metric_above(UPLOADED_PARTS, 0.0).await;
        automl.kill9();
        assert!(
            ingest.await.expect("task").is_err(),
            "the crashed ingest was not acknowledged"
        );

        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let mut client = automl.data_client().await;
        assert_eq!(
            commit_ids(&mut client).await,
            ["1"],
            "no partial commit is visible"
        );
        let after = client
            .update_dataset(commit("upload/small.csv"))
            .await
            .expect("the next update works")
            .into_inner();
        assert_eq!(after.commits.len(), 2);
        client
            .update_dataset(commit("upload/large.csv"))
            .await
            .expect("large ingest completes");

        // Crash in the middle of a snapshot build.
        let parts_before = automl.metric(UPLOADED_PARTS).await;
        let prepared = client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "1".into(),
                ..Default::default()
            })
            .await
            .expect("prepare")
            .into_inner();
        // Once the build has stored a part of the snapshot's examples.
        automl
            .wait_for_metric_above(UPLOADED_PARTS, parts_before)
            .await;
        automl.kill9();

        let automl = Automl::spawn(env.path(), &process_env(&env, &data_dir));
        let mut client = automl.data_client().await;
        let query = pb::VersionQuery {
            dataset_id: "1".into(),
            version_hash: prepared.version_hash.clone(),
        };
        let mut poll =
            Poll::new("the build ends", Duration::from_secs(180)).every(Duration::from_millis(100));
        let snapshot = loop {
            let snapshot = client
                .fetch_training_dataset(query.clone())
                .await
                .expect("fetch")
                .into_inner();
            if snapshot.state() != pb::SnapshotState::Running {
                break snapshot;
            }
            poll.tick().await;
        };
        if snapshot.state() == pb::SnapshotState::Failed {
            assert!(!snapshot.message.is_empty(), "a failure says why");
            client
                .prepare_training_dataset(pb::DatasetQuery {
                    dataset_id: "1".into(),
                    ..Default::default()
                })
                .await
                .expect("prepare again");
        } else {
            assert!(
                snapshot.statistics["numExamples"]
                    .parse::<u64>()
                    .expect("count")
                    > 100_000
            );
        }
        automl.terminate();
    }
}

fn automl_cli(args: &[&str]) -> (bool, String, String) {
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_automl"))
            .args(args)
            .output()
    })
    .expect("automl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataset_commands_upload_commit_and_prepare() {
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    let automl = Automl::spawn(env.path(), &process_env(&env, &env.path().join("automl")));
    let server = automl.addr("data-management");
    let first = env.path().join("first.csv");
    let second = env.path().join("second.csv");
    std::fs::write(&first, "book a flight,travel\n\"hello, you\",greeting\n").expect("write");
    std::fs::write(&second, "play a song,music\n").expect("write");

    let (ok, stdout, stderr) = automl_cli(&[
        "dataset",
        "--server",
        &server,
        "create",
        "--name",
        "demo",
        "--type",
        "TEXT_INTENT",
        "--file",
        first.to_str().expect("path"),
        "--tag",
        "category=aaa",
    ]);
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("json summary");
    assert_eq!(summary["datasetId"], "1");
    assert_eq!(summary["commits"][0]["statistics"]["numExamples"], "2");
    assert!(stderr.contains("uploading"), "progress is shown: {stderr}");

    let (ok, stdout, stderr) = automl_cli(&[
        "dataset",
        "--server",
        &server,
        "commit",
        "--dataset",
        "1",
        "--file",
        second.to_str().expect("path"),
        "--message",
        "songs",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"commitId\": \"2\""), "{stdout}");

    let (ok, stdout, stderr) = automl_cli(&[
        "dataset",
        "--server",
        &server,
        "prepare",
        "--dataset",
        "1",
        "--wait",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("hashBg=="), "{stdout}");
    assert!(stdout.contains("READY"), "{stdout}");
    assert!(stdout.contains("numExamples=3"), "{stdout}");

    let (ok, stdout, _) = automl_cli(&["dataset", "--server", &server, "list"]);
    assert!(ok);
    assert!(stdout.contains("demo"), "{stdout}");
    let (ok, _, stderr) = automl_cli(&[
        "dataset",
        "--server",
        &server,
        "commit",
        "--dataset",
        "7",
        "--file",
        second.to_str().expect("path"),
    ]);
    assert!(!ok);
    assert!(stderr.contains("dataset 7 not found"), "{stderr}");
    automl.terminate();
}
