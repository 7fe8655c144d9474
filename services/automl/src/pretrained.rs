//! `automl pretrained import|show`: pretrained models (the sentence encoder) in the models
//! bucket, through the object store of the server configuration.

use std::path::{Path, PathBuf};

use anyhow::Context;
use automl_common::config::CommonConfig;
use automl_common::s3::ObjectStore;
use automl_text_classification::pretrained::{self, ENCODER_NAME, FILES};

use crate::ServerOptions;

/// `automl pretrained …`
#[derive(Debug, clap::Subcommand)]
pub enum PretrainedCommand {
    /// Upload a pretrained model's files into the models bucket and make them the current
    /// version, which algorithms that need the model then train on.
    Import {
        /// The directory holding config.json, model.safetensors and tokenizer.json; default:
        /// $AUTOML_ENCODER_DIR, else ${AUTOML_CACHE_DIR:-~/.cache/automl}/pretrained/<name>,
        /// where scripts/fetch-encoder.sh installs the encoder.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The model's name.
        #[arg(long, default_value = ENCODER_NAME)]
        name: String,
        /// The server configuration, for its object store.
        #[command(flatten)]
        options: ServerOptions,
    },
    /// Print the current version of a pretrained model.
    Show {
        /// The model's name.
        #[arg(long, default_value = ENCODER_NAME)]
        name: String,
        /// The server configuration, for its object store.
        #[command(flatten)]
        options: ServerOptions,
    },
}

/// Runs a `automl pretrained` command against the object store of the server configuration.
pub async fn run(command: PretrainedCommand) -> anyhow::Result<()> {
    match command {
        PretrainedCommand::Import { dir, name, options } => {
            let dir = dir.unwrap_or_else(|| default_dir(&name, &|key| std::env::var(key).ok()));
            check_files(&dir)?;
            import(&object_store(&options)?, &name, &dir).await
        }
        PretrainedCommand::Show { name, options } => show(&object_store(&options)?, &name).await,
    }
}

/// The object store `automl serve` with these options uses.
fn object_store(options: &ServerOptions) -> anyhow::Result<ObjectStore> {
    let common = options.load(None)?.common();
    Ok(ObjectStore::new(&common.s3, &endpoint(&common)?))
}

/// The configured S3 endpoint, or the embedded one that `automl serve` starts on
/// `s3.embedded_bind` when none is configured.
fn endpoint(common: &CommonConfig) -> anyhow::Result<String> {
    if !common.s3.endpoint.is_empty() {
        return Ok(common.s3.endpoint.clone());
    }
    let bind = &common.s3.embedded_bind;
    let (host, port) = bind
        .rsplit_once(':')
        .with_context(|| format!("s3.embedded_bind `{bind}` is not host:port"))?;
    anyhow::ensure!(
        port != "0",
        "s3.embedded_bind `{bind}` picks a free port at start; set s3.endpoint (or \
         AUTOML__S3__EMBEDDED_BIND) to the address `automl serve` announced"
    );
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        other => other,
    };
    Ok(format!("http://{host}:{port}"))
}

/// `$AUTOML_ENCODER_DIR`, else `${AUTOML_CACHE_DIR:-~/.cache/automl}/pretrained/<name>`.
fn default_dir(name: &str, var: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let set = |key: &str| var(key).filter(|value| !value.is_empty());
    if let Some(dir) = set("AUTOML_ENCODER_DIR") {
        return PathBuf::from(dir);
    }
    let cache = set("AUTOML_CACHE_DIR").map_or_else(
        || {
            PathBuf::from(set("HOME").unwrap_or_else(|| ".".into()))
                .join(".cache")
                .join("automl")
        },
        PathBuf::from,
    );
    cache.join("pretrained").join(name)
}

/// Fails, saying how to get them, when a file of the model is missing.
fn check_files(dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&str> = FILES
        .iter()
        .copied()
        .filter(|file| !dir.join(file).is_file())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} has no {}: run scripts/fetch-encoder.sh to install all-MiniLM-L6-v2 there, or \
         pass --dir with a directory holding {}",
        dir.display(),
        missing.join(", "),
        FILES.join(", ")
    );
    Ok(())
}

async fn import(objects: &ObjectStore, name: &str, dir: &Path) -> anyhow::Result<()> {
    let bucket = &objects.models_bucket;
    objects.ensure_buckets().await.with_context(|| {
        format!(
            "object store at {} (is `automl serve` running?)",
            objects.endpoint
        )
    })?;
    println!("importing {} into {bucket} as {name}", dir.display());
    let mut on_file = |file: &str, bytes: u64| println!("  {file}: {bytes} bytes uploaded");
    let imported = pretrained::import(objects, bucket, name, dir, &mut on_file)
        .await
        .with_context(|| format!("importing {}", dir.display()))?;
    println!("imported {}", imported.id());
    println!("prefix: {}/{}", imported.bucket, imported.prefix);
    Ok(())
}

async fn show(objects: &ObjectStore, name: &str) -> anyhow::Result<()> {
    let bucket = &objects.models_bucket;
    let current = pretrained::current(objects, bucket, name)
        .await
        .with_context(|| {
            format!(
                "reading {name} from the object store at {}",
                objects.endpoint
            )
        })?;
    let Some(current) = current else {
        println!("{name} is not imported: run `automl pretrained import`");
        return Ok(());
    };
    println!("{}", current.id());
    println!("prefix: {}/{}", current.bucket, current.prefix);
    println!("imported at: {}", current.imported_at);
    for (file, sha256) in &current.files {
        println!("  {file}: sha256 {sha256}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_follows_the_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            }
        };
        let home = vars(&[("HOME", "/home/u")]);
        assert_eq!(
            default_dir(ENCODER_NAME, &home),
            PathBuf::from("/home/u/.cache/automl/pretrained/all-minilm-l6-v2")
        );
        let cache = vars(&[("HOME", "/home/u"), ("AUTOML_CACHE_DIR", "/c")]);
        assert_eq!(
            default_dir(ENCODER_NAME, &cache),
            PathBuf::from("/c/pretrained/all-minilm-l6-v2")
        );
        let explicit = vars(&[("AUTOML_CACHE_DIR", "/c"), ("AUTOML_ENCODER_DIR", "/e")]);
        assert_eq!(default_dir(ENCODER_NAME, &explicit), PathBuf::from("/e"));
    }

    #[test]
    fn without_an_endpoint_the_embedded_one_is_used() {
        let mut common = CommonConfig::default();
        assert_eq!(endpoint(&common).expect("default"), "http://127.0.0.1:9000");
        common.s3.embedded_bind = "0.0.0.0:9100".into();
        assert_eq!(
            endpoint(&common).expect("wildcard"),
            "http://127.0.0.1:9100"
        );
        common.s3.embedded_bind = "127.0.0.1:0".into();
        assert!(endpoint(&common).is_err());
        common.s3.endpoint = "http://minio:9000".into();
        assert_eq!(endpoint(&common).expect("configured"), "http://minio:9000");
    }

    #[test]
    fn missing_files_say_how_to_get_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), "{}").expect("write");
        let err = check_files(dir.path()).expect_err("missing");
        let text = err.to_string();
        assert!(text.contains("model.safetensors, tokenizer.json"), "{text}");
        assert!(text.contains("scripts/fetch-encoder.sh"), "{text}");
    }
}
