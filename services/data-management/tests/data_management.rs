//! data-management through real gRPC on 127.0.0.1:0, with objects in the embedded S3 endpoint,
//! on SQLite and (when AUTOML_TEST_POSTGRES_URL is set) Postgres.

use std::time::Duration;

use automl_common::testing::{
    DATA_MANAGEMENT, Poll, TestCluster, TestEnv, assert_status, backends,
};
use automl_data_management::DataManagementConfig;
use automl_proto::data_management as pb;
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = DataManagementServiceClient<Channel>;

/// data-management in `cluster`, with its defaults; its client.
async fn start(cluster: &TestCluster) -> Client {
    start_with(cluster, &DataManagementConfig::default()).await
}

/// data-management in `cluster`, configured by `config`; its client.
async fn start_with(cluster: &TestCluster, config: &DataManagementConfig) -> Client {
    cluster
        .start(DATA_MANAGEMENT, |ctx| async move {
            automl_data_management::start(&ctx.common, config, ctx.objects, ctx.shutdown).await
        })
        .await;
    cluster.data_client().await
}

/// `rows` lines over `labels` intents, some with commas and quotes.
fn intent_csv(rows: usize, labels: usize, seed: usize) -> String {
    let mut out = String::new();
    for row in 0..rows {
        let label = (row * 7 + seed) % labels;
        if row % 5 == 0 {
            out.push_str(&format!(
                "\"please, book \"\"trip\"\" {row}\",intent_{label}\n"
            ));
        } else {
            out.push_str(&format!(
                "utterance number {row} seed {seed},intent_{label}\n"
            ));
        }
    }
    out
}

async fn put(env: &TestEnv, key: &str, body: impl Into<Vec<u8>>) {
    env.objects
        .put_bytes(&env.objects.datasets_bucket, key, body.into())
        .await
        .expect("upload");
}

fn tag(key: &str, value: &str) -> pb::Tag {
    pb::Tag {
        tag_key: key.into(),
        tag_value: value.into(),
    }
}

fn create_request(path: &str, tags: Vec<pb::Tag>) -> pb::CreateDatasetRequest {
    pb::CreateDatasetRequest {
        name: "intents".into(),
        description: "test data".into(),
        dataset_type: pb::DatasetType::TextIntent.into(),
        bucket: String::new(),
        path: path.into(),
        tags,
    }
}

fn commit_request(dataset_id: &str, path: &str, tags: Vec<pb::Tag>) -> pb::CreateCommitRequest {
    pb::CreateCommitRequest {
        dataset_id: dataset_id.into(),
        commit_message: "more data".into(),
        bucket: String::new(),
        path: path.into(),
        tags,
    }
}

async fn wait_ready(client: &mut Client, dataset_id: &str, hash: &str) -> pb::VersionedSnapshot {
    let mut poll = Poll::new("snapshot leaves RUNNING", Duration::from_secs(60));
    loop {
        let snapshot = client
            .fetch_training_dataset(pb::VersionQuery {
                dataset_id: dataset_id.into(),
                version_hash: hash.into(),
            })
            .await
            .expect("fetch")
            .into_inner();
        if snapshot.state() != pb::SnapshotState::Running {
            return snapshot;
        }
        poll.tick().await;
    }
}

async fn read(env: &TestEnv, key: &str) -> Vec<u8> {
    env.objects
        .get_bytes(&env.objects.datasets_bucket, key)
        .await
        .expect("object")
}

#[tokio::test]
async fn commits_snapshots_and_first_appearance_label_ids() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        put(
            env,
            "upload/a.csv",
            "book a flight,travel\nplay music,music\n",
        )
        .await;
        put(
            env,
            "upload/b.csv",
            "what's the weather,weather\nfly me to rome,travel\n",
        )
        .await;
        put(env, "upload/c.csv", "\"hello, there\",greeting;smalltalk\n").await;

        let created = client
            .create_dataset(create_request("upload/a.csv", vec![tag("category", "aaa")]))
            .await
            .expect("create")
            .into_inner();
        assert_eq!(created.dataset_id, "1");
        assert_eq!(created.commits.len(), 1);
        let first = &created.commits[0];
        assert_eq!(first.commit_id, "1");
        assert_eq!(first.commit_message, "Initial commit");
        assert_eq!(first.statistics["numExamples"], "2");
        assert_eq!(first.statistics["numLabels"], "2");
        assert_eq!(first.content_digest.len(), 64);
        assert_eq!(first.path, "dataset/1/commit/1");
        assert_eq!(
            String::from_utf8(read(env, "dataset/1/commit/1/examples.csv").await).expect("utf8"),
            "\"book a flight\",\"1\"\n\"play music\",\"2\"\n"
        );

        client
            .update_dataset(commit_request(
                "1",
                "upload/b.csv",
                vec![tag("category", "aaa")],
            ))
            .await
            .expect("commit 2");
        let summary = client
            .update_dataset(commit_request(
                "1",
                "upload/c.csv",
                vec![tag("category", "bbb")],
            ))
            .await
            .expect("commit 3")
            .into_inner();
        let ids: Vec<_> = summary
            .commits
            .iter()
            .map(|c| c.commit_id.as_str())
            .collect();
        assert_eq!(ids, ["1", "2", "3"]);

        let all = client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "1".into(),
                ..Default::default()
            })
            .await
            .expect("prepare")
            .into_inner();
        assert_eq!(all.version_hash, "hashDg==");
        assert_eq!(all.commits.len(), 3);
        let tagged = client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "1".into(),
                commit_id: String::new(),
                tags: vec![tag("category", "aaa")],
            })
            .await
            .expect("prepare tagged")
            .into_inner();
        assert_eq!(tagged.version_hash, "hashBg==");
        let upto = client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "1".into(),
                commit_id: "1".into(),
                tags: vec![],
            })
            .await
            .expect("prepare upto 1")
            .into_inner();
        assert_eq!(upto.version_hash, "hashAg==");

        let snapshot = wait_ready(client, "1", "hashDg==").await;
        assert_eq!(
            snapshot.state(),
            pb::SnapshotState::Ready,
            "{}",
            snapshot.message
        );
        let names: Vec<_> = snapshot.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["examples.csv", "labels.csv"]);
        let root = snapshot.root.as_ref().expect("root");
        assert_eq!(root.path, "versionedDatasets/1/hashDg==");
        assert_eq!(root.name, "root", "as MiniAutoML names it");
        assert_eq!(snapshot.statistics["numExamples"], "5");
        assert_eq!(snapshot.statistics["numLabels"], "5");
        // Label ids follow first appearance across the selected commits, in commit order.
        assert_eq!(
            String::from_utf8(read(env, "versionedDatasets/1/hashDg==/labels.csv").await)
                .expect("utf8"),
            "\"1\",\"travel\"\n\"2\",\"music\"\n\"3\",\"weather\"\n\"4\",\"greeting\"\n\"5\",\"smalltalk\"\n"
        );
        assert_eq!(
            String::from_utf8(read(env, "versionedDatasets/1/hashDg==/examples.csv").await)
                .expect("utf8"),
            "\"book a flight\",\"1\"\n\"play music\",\"2\"\n\"what's the weather\",\"3\"\n\
             \"fly me to rome\",\"1\"\n\"hello, there\",\"4;5\"\n"
        );
        let tagged = wait_ready(client, "1", "hashBg==").await;
        assert_eq!(tagged.statistics["numExamples"], "4");
        cluster.stop().await;
    }
}

#[tokio::test]
async fn snapshots_are_deterministic_across_restarts_and_datasets() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let data = intent_csv(3000, 40, 1);
        put(env, "upload/big.csv", data.clone()).await;
        put(env, "upload/more.csv", intent_csv(1000, 60, 2)).await;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        client
            .create_dataset(create_request("upload/big.csv", vec![]))
            .await
            .expect("create");
        client
            .update_dataset(commit_request("1", "upload/more.csv", vec![]))
            .await
            .expect("commit");
        client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "1".into(),
                ..Default::default()
            })
            .await
            .expect("prepare");
        let first = wait_ready(client, "1", "hashBg==").await;
        assert_eq!(first.statistics["numExamples"], "4000");
        assert_eq!(first.statistics["numLabels"], "60");
        let examples = read(env, "versionedDatasets/1/hashBg==/examples.csv").await;
        cluster.stop_service(DATA_MANAGEMENT).await;

        // After a restart: the same answer, and the same selection built anew for another
        // dataset with the same data gives byte-identical files.
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        let again = wait_ready(client, "1", "hashBg==").await;
        assert_eq!(again.content_digest, first.content_digest);
        client
            .create_dataset(create_request("upload/big.csv", vec![]))
            .await
            .expect("create 2");
        client
            .update_dataset(commit_request("2", "upload/more.csv", vec![]))
            .await
            .expect("commit");
        client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "2".into(),
                ..Default::default()
            })
            .await
            .expect("prepare 2");
        let second = wait_ready(client, "2", "hashBg==").await;
        assert_eq!(second.content_digest, first.content_digest);
        assert_eq!(
            read(env, "versionedDatasets/2/hashBg==/examples.csv").await,
            examples
        );
        cluster.stop().await;
    }
}

/// Creates a dataset from `body` and expects INVALID_ARGUMENT mentioning `needle`, with
/// nothing committed.
async fn expect_rejected(env: &TestEnv, client: &mut Client, body: Vec<u8>, needle: &str) {
    put(env, "upload/bad.csv", body).await;
    assert_status(
        client
            .create_dataset(create_request("upload/bad.csv", vec![]))
            .await,
        Code::InvalidArgument,
        needle,
    );
    let mut listed = client
        .list_datasets(pb::ListQueryOptions { limit: 0, index: 0 })
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.message().await.expect("stream").is_none(),
        "nothing committed"
    );
    let leftovers = env
        .objects
        .list(&env.objects.datasets_bucket, "dataset/")
        .await
        .expect("list objects");
    assert!(leftovers.is_empty(), "no objects left: {leftovers:?}");
}

/// Each bad file on every backend: INVALID_ARGUMENT naming the line, nothing committed.
async fn rejected_everywhere(body: Vec<u8>, needle: &str) {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        expect_rejected(env, &mut dm, body.clone(), needle).await;
        cluster.stop().await;
    }
}

#[tokio::test]
async fn an_empty_file_is_rejected() {
    rejected_everywhere(Vec::new(), "is empty").await;
}

#[tokio::test]
async fn a_header_like_first_line_with_one_column_is_rejected() {
    rejected_everywhere(
        b"utterance\nhello,greeting\n".to_vec(),
        "line 1: expected 2 columns",
    )
    .await;
}

#[tokio::test]
async fn a_row_with_one_column_is_rejected() {
    rejected_everywhere(
        b"hi,greeting\nno label here\n".to_vec(),
        "line 2: expected 2 columns",
    )
    .await;
}

#[tokio::test]
async fn an_empty_label_is_rejected() {
    rejected_everywhere(b"hi,greeting\nbye,\n".to_vec(), "line 2: empty label").await;
}

#[tokio::test]
async fn invalid_utf8_is_rejected() {
    rejected_everywhere(
        b"hi,greeting\n\xff\xfe,x\n".to_vec(),
        "line 2: invalid UTF-8",
    )
    .await;
}

#[tokio::test]
async fn a_10_mb_single_line_is_rejected() {
    let mut huge = b"hi,greeting\n".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    huge.extend_from_slice(b",label\nok,fine\n");
    rejected_everywhere(huge, "line 2: longer than").await;
}

#[tokio::test]
async fn unknown_things_are_not_found_and_bad_fields_invalid() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        assert_status(
            client
                .create_dataset(create_request("upload/missing.csv", vec![]))
                .await,
            Code::NotFound,
            "upload/missing.csv",
        );
        put(env, "upload/a.csv", "book a flight,travel\n").await;
        assert_status(
            client
                .update_dataset(commit_request("9", "upload/a.csv", vec![]))
                .await,
            Code::NotFound,
            "dataset 9 not found",
        );
        assert_status(
            client
                .get_dataset_summary(pb::DatasetPointer {
                    dataset_id: "9".into(),
                })
                .await,
            Code::NotFound,
            "dataset 9",
        );
        // The failed create above used up an id; datasets get the next one.
        let id = client
            .create_dataset(create_request("upload/a.csv", vec![]))
            .await
            .expect("create")
            .into_inner()
            .dataset_id;
        assert_status(
            client
                .prepare_training_dataset(pb::DatasetQuery {
                    dataset_id: id.clone(),
                    commit_id: "7".into(),
                    tags: vec![],
                })
                .await,
            Code::NotFound,
            "commit 7",
        );
        assert_status(
            client
                .fetch_training_dataset(pb::VersionQuery {
                    dataset_id: id.clone(),
                    version_hash: "hashQQ==".into(),
                })
                .await,
            Code::NotFound,
            "hashQQ==",
        );
        assert_status(
            client
                .list_datasets(pb::ListQueryOptions {
                    limit: -1,
                    index: 0,
                })
                .await,
            Code::InvalidArgument,
            "limit",
        );
        assert_status(
            client
                .get_dataset_summary(pb::DatasetPointer {
                    dataset_id: "abc".into(),
                })
                .await,
            Code::InvalidArgument,
            "dataset_id",
        );
        let mut bad_type = create_request("upload/a.csv", vec![]);
        bad_type.dataset_type = 7;
        assert_status(
            client.create_dataset(bad_type).await,
            Code::InvalidArgument,
            "dataset_type",
        );
        let mut no_name = create_request("upload/a.csv", vec![]);
        no_name.name.clear();
        assert_status(
            client.create_dataset(no_name).await,
            Code::InvalidArgument,
            "name",
        );
        assert_status(
            client
                .create_dataset(create_request("../etc/passwd", vec![]))
                .await,
            Code::InvalidArgument,
            "path",
        );
        assert_status(
            client
                .prepare_training_dataset(pb::DatasetQuery {
                    dataset_id: id.clone(),
                    commit_id: String::new(),
                    tags: vec![tag("category", "none")],
                })
                .await,
            Code::FailedPrecondition,
            "no commit",
        );
        cluster.stop().await;
    }
}

#[tokio::test]
async fn concurrent_updates_all_land_with_their_own_ids() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let dm = start(&cluster).await;
        put(env, "upload/a.csv", "book a flight,travel\n").await;
        dm.clone()
            .create_dataset(create_request("upload/a.csv", vec![]))
            .await
            .expect("create");
        let mut calls = Vec::new();
        for n in 0..16 {
            let mut client = dm.clone();
            let env_objects = env.objects.clone();
            calls.push(tokio::spawn(async move {
                let key = format!("upload/part-{n}.csv");
                env_objects
                    .put_bytes(
                        &env_objects.datasets_bucket,
                        &key,
                        format!("row {n},label_{n}\n").into_bytes(),
                    )
                    .await
                    .expect("upload");
                client
                    .update_dataset(commit_request("1", &key, vec![]))
                    .await
            }));
        }
        for call in calls {
            call.await.expect("task").expect("update lands");
        }
        let summary = dm
            .clone()
            .get_dataset_summary(pb::DatasetPointer {
                dataset_id: "1".into(),
            })
            .await
            .expect("summary")
            .into_inner();
        let ids: Vec<i64> = summary
            .commits
            .iter()
            .map(|c| c.commit_id.parse().expect("numeric"))
            .collect();
        assert_eq!(ids, (1..=17).collect::<Vec<_>>());
        cluster.stop().await;
    }
}

#[tokio::test]
async fn failed_snapshots_say_why_and_can_be_prepared_again() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        put(env, "upload/a.csv", "book a flight,travel\n").await;
        client
            .create_dataset(create_request("upload/a.csv", vec![]))
            .await
            .expect("create");
        let examples = read(env, "dataset/1/commit/1/examples.csv").await;
        env.objects
            .delete_prefix(&env.objects.datasets_bucket, "dataset/1/commit/1/examples")
            .await
            .expect("delete behind the service's back");
        let query = pb::DatasetQuery {
            dataset_id: "1".into(),
            ..Default::default()
        };
        client
            .prepare_training_dataset(query.clone())
            .await
            .expect("prepare");
        let failed = wait_ready(client, "1", "hashAg==").await;
        assert_eq!(failed.state(), pb::SnapshotState::Failed);
        assert!(
            failed.message.contains("build failed"),
            "{}",
            failed.message
        );

        put(env, "dataset/1/commit/1/examples.csv", examples).await;
        client
            .prepare_training_dataset(query)
            .await
            .expect("prepare again");
        let ready = wait_ready(client, "1", "hashAg==").await;
        assert_eq!(ready.state(), pb::SnapshotState::Ready, "{}", ready.message);
        assert!(ready.message.is_empty());
        cluster.stop().await;
    }
}

#[tokio::test]
async fn generic_datasets_copy_folders() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        put(env, "images/cats/1.jpg", vec![1u8; 100]).await;
        put(env, "images/cats/2.jpg", vec![2u8; 50]).await;
        put(env, "images/dogs/1.jpg", vec![3u8; 10]).await;
        let mut request = create_request("images", vec![]);
        request.dataset_type = pb::DatasetType::Generic.into();
        let created = client
            .create_dataset(request)
            .await
            .expect("create")
            .into_inner();
        let commit = &created.commits[0];
        assert_eq!(commit.statistics["numFiles"], "3");
        assert_eq!(commit.statistics["numBytes"], "160");
        assert_eq!(
            read(env, "dataset/1/commit/1/cats/2.jpg").await,
            vec![2u8; 50]
        );
        client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "1".into(),
                ..Default::default()
            })
            .await
            .expect("prepare");
        let snapshot = wait_ready(client, "1", "hashAg==").await;
        let names: Vec<_> = snapshot.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["1/cats/1.jpg", "1/cats/2.jpg", "1/dogs/1.jpg"]);
        cluster.stop().await;
    }
}

#[tokio::test]
async fn delete_removes_rows_and_objects() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        put(env, "upload/a.csv", "book a flight,travel\n").await;
        client
            .create_dataset(create_request("upload/a.csv", vec![]))
            .await
            .expect("create");
        client
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: "1".into(),
                ..Default::default()
            })
            .await
            .expect("prepare");
        wait_ready(client, "1", "hashAg==").await;
        client
            .delete_dataset(pb::DatasetPointer {
                dataset_id: "1".into(),
            })
            .await
            .expect("delete");
        assert_status(
            client
                .get_dataset_summary(pb::DatasetPointer {
                    dataset_id: "1".into(),
                })
                .await,
            Code::NotFound,
            "dataset 1",
        );
        for prefix in ["dataset/1/", "versionedDatasets/1/"] {
            let left = env
                .objects
                .list(&env.objects.datasets_bucket, prefix)
                .await
                .expect("list");
            assert!(left.is_empty(), "{prefix}: {left:?}");
        }
        assert_status(
            client
                .delete_dataset(pb::DatasetPointer {
                    dataset_id: "1".into(),
                })
                .await,
            Code::NotFound,
            "dataset 1",
        );
        cluster.stop().await;
    }
}

#[tokio::test]
async fn list_datasets_pages_in_id_order() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        put(env, "upload/a.csv", "book a flight,travel\n").await;
        for _ in 0..5 {
            client
                .create_dataset(create_request("upload/a.csv", vec![]))
                .await
                .expect("create");
        }
        let mut page = client
            .list_datasets(pb::ListQueryOptions { limit: 2, index: 1 })
            .await
            .expect("list")
            .into_inner();
        let mut ids = Vec::new();
        while let Some(pointer) = page.message().await.expect("stream") {
            ids.push(pointer.dataset_id);
        }
        assert_eq!(ids, ["2", "3"]);
        cluster.stop().await;
    }
}

async fn upload(
    client: &mut Client,
    messages: Vec<pb::UploadDataRequest>,
) -> Result<pb::FileInfo, tonic::Status> {
    client
        .upload_data(futures::stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn upload_data_streams_into_the_datasets_bucket() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        // 20 MiB in 1 MiB chunks: a multipart upload.
        let chunk = intent_csv(20_000, 10, 3).into_bytes();
        let mut body = Vec::new();
        let mut messages = vec![pb::UploadDataRequest {
            bucket: String::new(),
            path: "upload/streamed.csv".into(),
            chunk: Vec::new(),
        }];
        while body.len() < 20 * 1024 * 1024 {
            body.extend_from_slice(&chunk);
            messages.push(pb::UploadDataRequest {
                chunk: chunk.clone(),
                ..Default::default()
            });
        }
        let file = upload(client, messages).await.expect("upload");
        assert_eq!(file.path, "upload/streamed.csv");
        assert_eq!(file.bucket, env.objects.datasets_bucket);
        assert_eq!(read(env, "upload/streamed.csv").await, body);
        let created = client
            .create_dataset(create_request(&file.path, vec![]))
            .await
            .expect("create from upload")
            .into_inner();
        let rows = body.iter().filter(|b| **b == b'\n').count();
        assert_eq!(
            created.commits[0].statistics["numExamples"],
            rows.to_string()
        );

        let generated = upload(
            client,
            vec![pb::UploadDataRequest {
                chunk: b"hi,greeting\n".to_vec(),
                ..Default::default()
            }],
        )
        .await
        .expect("upload without a path");
        assert!(generated.path.starts_with("upload/"), "{}", generated.path);

        for (bucket, path, needle) in [
            ("", "../outside.csv", "path"),
            ("", "/absolute.csv", "path"),
            ("", "dataset/1/commit/1/examples.csv", "path"),
            ("mini-automl-models", "x.csv", "bucket"),
        ] {
            assert_status(
                upload(
                    client,
                    vec![pb::UploadDataRequest {
                        bucket: bucket.into(),
                        path: path.into(),
                        chunk: b"x".to_vec(),
                    }],
                )
                .await,
                Code::InvalidArgument,
                needle,
            );
        }
        assert!(
            env.objects
                .list(&env.objects.models_bucket, "")
                .await
                .expect("list")
                .is_empty()
        );
        assert_status(upload(client, vec![]).await, Code::InvalidArgument, "empty");
        cluster.stop().await;
    }
}

/// `rows` lines, row `n` labelled `label_<n mod labels>`.
fn labelled_csv(rows: usize, labels: usize) -> String {
    (0..rows)
        .map(|row| format!("utterance {row},label_{}\n", row % labels))
        .collect()
}

#[tokio::test]
async fn a_commit_may_hold_max_labels_distinct_labels_and_not_one_more() {
    let config = DataManagementConfig {
        max_labels: 50,
        ..DataManagementConfig::default()
    };
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start_with(&cluster, &config).await;
        let client = &mut dm;
        put(env, "upload/at-limit.csv", labelled_csv(200, 50)).await;
        put(env, "upload/over-limit.csv", labelled_csv(200, 51)).await;
        let created = client
            .create_dataset(create_request("upload/at-limit.csv", vec![]))
            .await
            .expect("50 labels are accepted")
            .into_inner();
        assert_eq!(created.commits[0].statistics["numLabels"], "50");
        assert_eq!(created.commits[0].statistics["numExamples"], "200");

        let refused = "more than 50 distinct labels in one commit (data_management.max_labels): \
                       line 51 brings label number 51";
        assert_status(
            client
                .update_dataset(commit_request("1", "upload/over-limit.csv", vec![]))
                .await,
            Code::InvalidArgument,
            refused,
        );
        let summary = client
            .get_dataset_summary(pb::DatasetPointer {
                dataset_id: "1".into(),
            })
            .await
            .expect("summary")
            .into_inner();
        assert_eq!(
            summary.commits.len(),
            1,
            "the refused commit is not visible"
        );
        assert_status(
            client
                .create_dataset(create_request("upload/over-limit.csv", vec![]))
                .await,
            Code::InvalidArgument,
            refused,
        );
        let mut listed = client
            .list_datasets(pb::ListQueryOptions { limit: 0, index: 0 })
            .await
            .expect("list")
            .into_inner();
        let mut ids = Vec::new();
        while let Some(pointer) = listed.message().await.expect("stream") {
            ids.push(pointer.dataset_id);
        }
        assert_eq!(ids, ["1"], "the refused dataset is not visible");
        // A bad line is named as bad even when one of its labels would be one too many, and
        // the bad lines after it are still named.
        let mut bad = labelled_csv(50, 50);
        bad.push_str("one more,label_50;;x\nand,\n");
        put(env, "upload/bad-over-limit.csv", bad).await;
        assert_status(
            client
                .update_dataset(commit_request("1", "upload/bad-over-limit.csv", vec![]))
                .await,
            Code::InvalidArgument,
            "line 51: empty label; line 52: empty label",
        );
        let objects = env
            .objects
            .list(&env.objects.datasets_bucket, "dataset/")
            .await
            .expect("list objects");
        let keys: Vec<_> = objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dataset/1/commit/1/examples.csv",
                "dataset/1/commit/1/labels.csv"
            ],
            "no objects of the refused ingests are left"
        );
        cluster.stop().await;
    }
}

#[tokio::test]
async fn an_upload_with_a_million_distinct_labels_is_refused() {
    const ROWS: usize = 1_000_000;
    const ROWS_PER_CHUNK: usize = 20_000;
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        // About 24 MB, generated chunk by chunk as the upload stream asks for it.
        let first = pb::UploadDataRequest {
            bucket: String::new(),
            path: "upload/million-labels.csv".into(),
            chunk: Vec::new(),
        };
        let chunks = (0..ROWS / ROWS_PER_CHUNK).map(|chunk| {
            let rows = chunk * ROWS_PER_CHUNK..(chunk + 1) * ROWS_PER_CHUNK;
            pb::UploadDataRequest {
                chunk: rows
                    .map(|row| format!("utterance {row},label_{row}\n"))
                    .collect::<String>()
                    .into_bytes(),
                ..Default::default()
            }
        });
        let file = client
            .upload_data(futures::stream::iter(std::iter::once(first).chain(chunks)))
            .await
            .expect("upload")
            .into_inner();
        assert_eq!(file.path, "upload/million-labels.csv");

        assert_status(
            client
                .create_dataset(create_request(&file.path, vec![]))
                .await,
            Code::InvalidArgument,
            "more than 10000 distinct labels in one commit (data_management.max_labels): \
             line 10001 brings label number 10001",
        );
        let mut listed = client
            .list_datasets(pb::ListQueryOptions { limit: 0, index: 0 })
            .await
            .expect("list")
            .into_inner();
        assert!(
            listed.message().await.expect("stream").is_none(),
            "nothing committed"
        );
        let leftovers = env
            .objects
            .list(&env.objects.datasets_bucket, "dataset/")
            .await
            .expect("list objects");
        assert!(leftovers.is_empty(), "no objects left: {leftovers:?}");
        cluster.stop().await;
    }
}

async fn snapshots_of(
    client: &mut Client,
    dataset_id: &str,
) -> Result<Vec<pb::VersionedSnapshot>, tonic::Status> {
    Ok(client
        .list_training_snapshots(pb::DatasetPointer {
            dataset_id: dataset_id.into(),
        })
        .await?
        .into_inner()
        .snapshots)
}

#[tokio::test]
async fn list_training_snapshots_newest_first_with_state_and_digest() {
    for backend in backends() {
        let cluster = TestCluster::new(backend).await;
        let env = &cluster.env;
        let mut dm = start(&cluster).await;
        let client = &mut dm;
        put(
            env,
            "upload/a.csv",
            "book a flight,travel\nplay music,music\n",
        )
        .await;
        put(env, "upload/b.csv", "what's the weather,weather\n").await;
        client
            .create_dataset(create_request("upload/a.csv", vec![]))
            .await
            .expect("create");
        assert!(
            snapshots_of(client, "1")
                .await
                .expect("none yet")
                .is_empty()
        );
        client
            .update_dataset(commit_request(
                "1",
                "upload/b.csv",
                vec![tag("part", "two")],
            ))
            .await
            .expect("commit 2");
        let query = |commit_id: &str, tags: Vec<pb::Tag>| pb::DatasetQuery {
            dataset_id: "1".into(),
            commit_id: commit_id.into(),
            tags,
        };
        for (commit_id, hash) in [("", "hashBg=="), ("1", "hashAg==")] {
            client
                .prepare_training_dataset(query(commit_id, vec![]))
                .await
                .expect("prepare");
            wait_ready(client, "1", hash).await;
            // Creation times are in milliseconds: keep them apart.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A third snapshot, of commit 2 alone, fails: its files are gone.
        env.objects
            .delete_prefix(&env.objects.datasets_bucket, "dataset/1/commit/2/")
            .await
            .expect("delete behind the service's back");
        client
            .prepare_training_dataset(query("", vec![tag("part", "two")]))
            .await
            .expect("prepare commit 2");
        let failed = wait_ready(client, "1", "hashBA==").await;
        assert_eq!(failed.state(), pb::SnapshotState::Failed);

        let listed = snapshots_of(client, "1").await.expect("list");
        let hashes: Vec<_> = listed.iter().map(|s| s.version_hash.as_str()).collect();
        assert_eq!(hashes, ["hashBA==", "hashAg==", "hashBg=="]);
        let states: Vec<_> = listed.iter().map(pb::VersionedSnapshot::state).collect();
        assert_eq!(
            states,
            [
                pb::SnapshotState::Failed,
                pb::SnapshotState::Ready,
                pb::SnapshotState::Ready
            ]
        );
        assert_eq!(listed[0].message, failed.message);
        assert!(listed[0].content_digest.is_empty());
        for (snapshot, examples) in listed[1..].iter().zip(["2", "3"]) {
            let fetched = wait_ready(client, "1", &snapshot.version_hash).await;
            assert_eq!(snapshot.dataset_id, "1");
            assert!(snapshot.message.is_empty());
            assert!(snapshot.parts.is_empty(), "no parts in the listing");
            assert_eq!(snapshot.statistics["numExamples"], examples);
            assert_eq!(snapshot.statistics, fetched.statistics);
            assert_eq!(snapshot.content_digest.len(), 64);
            assert_eq!(snapshot.content_digest, fetched.content_digest);
        }

        assert_status(
            snapshots_of(client, "42").await,
            Code::NotFound,
            "dataset 42",
        );
        assert_status(
            snapshots_of(client, "abc").await,
            Code::InvalidArgument,
            "dataset_id",
        );
        client
            .delete_dataset(pb::DatasetPointer {
                dataset_id: "1".into(),
            })
            .await
            .expect("delete");
        assert_status(snapshots_of(client, "1").await, Code::NotFound, "dataset 1");
        cluster.stop().await;
    }
}

#[tokio::test]
async fn list_training_snapshots_of_another_tenant_is_not_found() {
    use automl_common::auth::{AuthConfig, Authenticator, Credentials, Scope};

    for backend in backends() {
        let mut with_auth = TestEnv::new(backend).await.expect("test environment");
        with_auth.common.auth = AuthConfig {
            enabled: true,
            internal_secret: "secret-of-the-snapshots-test".into(),
            ..AuthConfig::default()
        };
        let cluster = TestCluster::on(with_auth);
        let env = &cluster.env;
        let auth =
            Authenticator::from_config(&env.common.auth, &env.common.data_dir).expect("auth");
        start(&cluster).await;
        let channel = cluster.channel(DATA_MANAGEMENT).await;
        let as_tenant = |tenant: &str| {
            let token = auth.mint(tenant, "test", Scope::Tenant, Duration::from_secs(600));
            DataManagementServiceClient::with_interceptor(
                channel.clone(),
                Credentials::bearer(&token).expect("credentials"),
            )
        };
        let mut team_a = as_tenant("team-a");
        let mut team_b = as_tenant("team-b");
        put(env, "team-a/upload/a.csv", "book a flight,travel\n").await;
        let created = team_a
            .create_dataset(create_request("team-a/upload/a.csv", vec![]))
            .await
            .expect("create")
            .into_inner();
        team_a
            .prepare_training_dataset(pb::DatasetQuery {
                dataset_id: created.dataset_id.clone(),
                ..Default::default()
            })
            .await
            .expect("prepare");
        let mine = team_a
            .list_training_snapshots(pb::DatasetPointer {
                dataset_id: created.dataset_id.clone(),
            })
            .await
            .expect("list as team-a")
            .into_inner();
        assert_eq!(mine.snapshots.len(), 1);
        assert_eq!(mine.snapshots[0].version_hash, "hashAg==");
        // Let the build finish before the server stops.
        let mut poll = Poll::new("snapshot leaves RUNNING", Duration::from_secs(60));
        loop {
            let snapshot = team_a
                .fetch_training_dataset(pb::VersionQuery {
                    dataset_id: created.dataset_id.clone(),
                    version_hash: "hashAg==".into(),
                })
                .await
                .expect("fetch")
                .into_inner();
            if snapshot.state() != pb::SnapshotState::Running {
                break;
            }
            poll.tick().await;
        }
        assert_status(
            team_b
                .list_training_snapshots(pb::DatasetPointer {
                    dataset_id: created.dataset_id.clone(),
                })
                .await,
            Code::NotFound,
            &format!("dataset {}", created.dataset_id),
        );
        cluster.stop().await;
    }
}
