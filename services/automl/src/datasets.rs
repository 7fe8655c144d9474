//! `automl dataset create|commit|list|show|prepare|delete`: data-management from the shell.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::Conn;
use anyhow::Context;
use automl_proto::data_management as pb;
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use tokio::io::AsyncReadExt;

use crate::client::connect;

/// Size of each streamed upload chunk.
const CHUNK: usize = 1024 * 1024;

/// `automl dataset …`
#[derive(Debug, clap::Subcommand)]
pub enum DatasetCommand {
    /// Upload a file and create a dataset from it (commit 1).
    Create {
        /// Dataset name.
        #[arg(long)]
        name: String,
        /// TEXT_INTENT (utterance,label CSV) or GENERIC (any file).
        #[arg(long = "type", default_value = "TEXT_INTENT")]
        dataset_type: String,
        /// The data to upload.
        #[arg(long)]
        file: PathBuf,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// A tag `key=value` of commit 1 (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<pb::Tag>,
    },
    /// Upload a file and add it to a dataset as its next commit.
    Commit {
        /// The dataset id.
        #[arg(long)]
        dataset: String,
        /// The data to upload.
        #[arg(long)]
        file: PathBuf,
        /// Commit message.
        #[arg(long, default_value = "")]
        message: String,
        /// A tag `key=value` (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<pb::Tag>,
    },
    /// List datasets.
    List,
    /// Print a dataset and its commits as JSON.
    Show {
        /// The dataset id.
        dataset: String,
    },
    /// Build a training snapshot of commits 1..C carrying every tag.
    Prepare {
        /// The dataset id.
        #[arg(long)]
        dataset: String,
        /// Last commit to include (default: the latest).
        #[arg(long, default_value = "")]
        commit: String,
        /// Only commits carrying this tag `key=value` (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<pb::Tag>,
        /// Wait until the snapshot is READY (or FAILED) and print it.
        #[arg(long)]
        wait: bool,
    },
    /// Delete a dataset with its commits, snapshots and objects.
    Delete {
        /// The dataset id.
        dataset: String,
    },
}

fn parse_tag(text: &str) -> Result<pb::Tag, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("tag `{text}` must be key=value"))?;
    Ok(pb::Tag {
        tag_key: key.to_string(),
        tag_value: value.to_string(),
    })
}

fn dataset_type(name: &str) -> anyhow::Result<i32> {
    pb::DatasetType::from_str_name(&name.to_ascii_uppercase())
        .map(i32::from)
        .with_context(|| format!("unknown dataset type `{name}` (TEXT_INTENT or GENERIC)"))
}

/// `automl dataset …`
pub async fn run(server: &str, command: DatasetCommand) -> anyhow::Result<()> {
    let mut client = DataManagementServiceClient::new(connect(server).await?);
    match command {
        DatasetCommand::Create {
            name,
            dataset_type: kind,
            file,
            description,
            tags,
        } => {
            let dataset_type = dataset_type(&kind)?;
            let uploaded = upload(&mut client, &file).await?;
            let summary = client
                .create_dataset(pb::CreateDatasetRequest {
                    name,
                    description,
                    dataset_type,
                    bucket: uploaded.bucket,
                    path: uploaded.path,
                    tags,
                })
                .await?
                .into_inner();
            print_summary(&summary);
        }
        DatasetCommand::Commit {
            dataset,
            file,
            message,
            tags,
        } => {
            let uploaded = upload(&mut client, &file).await?;
            let summary = client
                .update_dataset(pb::CreateCommitRequest {
                    dataset_id: dataset,
                    commit_message: message,
                    bucket: uploaded.bucket,
                    path: uploaded.path,
                    tags,
                })
                .await?
                .into_inner();
            print_summary(&summary);
        }
        DatasetCommand::List => list(&mut client).await?,
        DatasetCommand::Show { dataset } => {
            let summary = client
                .get_dataset_summary(pb::DatasetPointer {
                    dataset_id: dataset,
                })
                .await?
                .into_inner();
            println!("{}", serde_json::to_string_pretty(&summary_json(&summary))?);
        }
        DatasetCommand::Prepare {
            dataset,
            commit,
            tags,
            wait,
        } => prepare(&mut client, dataset, commit, tags, wait).await?,
        DatasetCommand::Delete { dataset } => {
            client
                .delete_dataset(pb::DatasetPointer {
                    dataset_id: dataset.clone(),
                })
                .await?;
            println!("dataset {dataset} deleted");
        }
    }
    Ok(())
}

/// Streams `file` through UploadData, showing progress on stderr.
async fn upload(
    client: &mut DataManagementServiceClient<Conn>,
    file: &Path,
) -> anyhow::Result<pb::FileInfo> {
    let mut reader = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let total = reader.metadata().await?.len();
    let label = file.display().to_string();
    let (sender, receiver) = tokio::sync::mpsc::channel::<pb::UploadDataRequest>(4);
    let producer = tokio::spawn(async move {
        let mut sent: u64 = 0;
        let mut first = true;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let read = reader.read(&mut chunk).await?;
            if read == 0 && !first {
                break;
            }
            chunk.truncate(read);
            sent += read as u64;
            let message = pb::UploadDataRequest {
                bucket: String::new(),
                path: String::new(),
                chunk,
            };
            if sender.send(message).await.is_err() {
                break;
            }
            first = false;
            progress(&label, sent, total);
            if read == 0 {
                break;
            }
        }
        eprintln!();
        Ok::<_, std::io::Error>(())
    });
    let response = client
        .upload_data(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await;
    producer.await??;
    Ok(response?.into_inner())
}

fn progress(label: &str, sent: u64, total: u64) {
    let percent = (sent * 100).checked_div(total).unwrap_or(100);
    eprint!(
        "\ruploading {label}: {:.1} / {:.1} MiB ({percent}%)",
        sent as f64 / 1_048_576.0,
        total as f64 / 1_048_576.0
    );
    let _ = std::io::stderr().flush();
}

async fn list(client: &mut DataManagementServiceClient<Conn>) -> anyhow::Result<()> {
    let mut stream = client
        .list_datasets(pb::ListQueryOptions { limit: 0, index: 0 })
        .await?
        .into_inner();
    println!(
        "{:<8} {:<24} {:<12} {:<8} LAST UPDATED",
        "ID", "NAME", "TYPE", "COMMITS"
    );
    while let Some(pointer) = stream.message().await? {
        let summary = client.get_dataset_summary(pointer).await?.into_inner();
        println!(
            "{:<8} {:<24} {:<12} {:<8} {}",
            summary.dataset_id,
            summary.name,
            summary.dataset_type().as_str_name(),
            summary.commits.len(),
            summary.last_updated_at
        );
    }
    Ok(())
}

async fn prepare(
    client: &mut DataManagementServiceClient<Conn>,
    dataset: String,
    commit: String,
    tags: Vec<pb::Tag>,
    wait: bool,
) -> anyhow::Result<()> {
    let version = client
        .prepare_training_dataset(pb::DatasetQuery {
            dataset_id: dataset.clone(),
            commit_id: commit,
            tags,
        })
        .await?
        .into_inner();
    let commits: Vec<&str> = version
        .commits
        .iter()
        .map(|c| c.commit_id.as_str())
        .collect();
    println!(
        "dataset {} version {} (commits {})",
        version.dataset_id,
        version.version_hash,
        commits.join(", ")
    );
    if !wait {
        return Ok(());
    }
    let mut delay = Duration::from_millis(100);
    loop {
        let snapshot = client
            .fetch_training_dataset(pb::VersionQuery {
                dataset_id: dataset.clone(),
                version_hash: version.version_hash.clone(),
            })
            .await?
            .into_inner();
        match snapshot.state() {
            pb::SnapshotState::Running => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            pb::SnapshotState::Ready => {
                let mut statistics: Vec<String> = snapshot
                    .statistics
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                statistics.sort();
                println!(
                    "READY {} sha256 {}",
                    statistics.join(" "),
                    snapshot.content_digest
                );
                for part in &snapshot.parts {
                    println!("  {}/{}", part.bucket, part.path);
                }
                return Ok(());
            }
            pb::SnapshotState::Failed => anyhow::bail!("snapshot FAILED: {}", snapshot.message),
        }
    }
}

fn print_summary(summary: &pb::DatasetSummary) {
    match serde_json::to_string_pretty(&summary_json(summary)) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("cannot print the summary: {err}"),
    }
}

fn summary_json(summary: &pb::DatasetSummary) -> serde_json::Value {
    serde_json::json!({
        "datasetId": summary.dataset_id,
        "name": summary.name,
        "description": summary.description,
        "datasetType": summary.dataset_type().as_str_name(),
        "lastUpdatedAt": summary.last_updated_at,
        "commits": summary.commits.iter().map(|commit| serde_json::json!({
            "commitId": commit.commit_id,
            "createdAt": commit.created_at,
            "commitMessage": commit.commit_message,
            "tags": commit.tags.iter().map(|t| format!("{}={}", t.tag_key, t.tag_value)).collect::<Vec<_>>(),
            "path": commit.path,
            "statistics": commit.statistics,
            "contentDigest": commit.content_digest,
        })).collect::<Vec<_>>(),
    })
}
