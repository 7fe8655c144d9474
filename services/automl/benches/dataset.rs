//! data-management under load, against a running server (started by `scripts/bench.sh dataset`):
//! ingest throughput of generated TEXT_INTENT files as a ratio to a plain PUT of the same bytes
//! to the same S3 endpoint, the server's peak RSS during ingest and snapshot build, the time
//! from PrepareTrainingDataset to READY, and p50/p99 of GetDatasetSummary and
//! FetchTrainingDataset.
//!
//! Usage: `cargo bench -p automl --bench dataset -- --addr HOST:PORT --s3 http://HOST:PORT
//!        --pid SERVER_PID [--megabytes 10,100] [--calls 2000]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use automl_common::config::S3Config;
use automl_common::s3::ObjectStore;
use automl_proto::data_management as pb;
use automl_proto::data_management::data_management_service_client::DataManagementServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

struct Args {
    addr: String,
    s3: String,
    pid: u32,
    megabytes: Vec<usize>,
    calls: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: "127.0.0.1:6000".into(),
        s3: "http://127.0.0.1:9000".into(),
        pid: 0,
        megabytes: vec![10, 100],
        calls: 2000,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--addr" => args.addr = iter.next().context("--addr needs a value")?,
            "--s3" => args.s3 = iter.next().context("--s3 needs a value")?,
            "--pid" => args.pid = iter.next().context("--pid needs a value")?.parse()?,
            "--calls" => args.calls = iter.next().context("--calls needs a value")?.parse()?,
            "--megabytes" => {
                args.megabytes = iter
                    .next()
                    .context("--megabytes needs a value")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            _ => {}
        }
    }
    Ok(args)
}

/// Resident set size of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the server's RSS every 5 ms while alive; returns the peak on stop.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let (stop_flag, peak_value) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                peak_value.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// ~`megabytes` MB of TEXT_INTENT rows over 150 intents.
fn generate(megabytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(megabytes * 1024 * 1024 + 1024);
    let mut row = 0usize;
    while out.len() < megabytes * 1024 * 1024 {
        row += 1;
        out.extend_from_slice(
            format!(
                "could you please tell me about item {row} and, if possible, the next one,intent_{}\n",
                row % 150
            )
            .replace(", if possible,", " if possible")
            .as_bytes(),
        );
    }
    out
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1_048_576.0 / elapsed.as_secs_f64()
}

async fn latencies<F, Fut>(calls: usize, mut call: F) -> anyhow::Result<Histogram<u64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..calls {
        let started = Instant::now();
        call().await?;
        histogram.record(started.elapsed().as_micros() as u64)?;
    }
    Ok(histogram)
}

async fn run_size(
    args: &Args,
    client: &mut DataManagementServiceClient<Channel>,
    objects: &ObjectStore,
    megabytes: usize,
) -> anyhow::Result<()> {
    let body = generate(megabytes);
    let bytes = body.len();
    let bucket = objects.datasets_bucket.clone();
    let key = format!("bench/input-{megabytes}mb-{}.csv", std::process::id());

    // The copy is made before the clock starts: the PUT after the ingest sends `body` itself.
    let copy = body.clone();
    let started = Instant::now();
    objects.put_bytes(&bucket, &key, copy).await?;
    let put_before = started.elapsed();

    let sampler = RssSampler::start(args.pid);
    let started = Instant::now();
    let created = client
        .create_dataset(pb::CreateDatasetRequest {
            name: format!("bench-{megabytes}mb"),
            dataset_type: pb::DatasetType::TextIntent.into(),
            bucket: bucket.clone(),
            path: key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let ingest_time = started.elapsed();
    let ingest_rss = sampler.finish();
    // The PUT again after the ingest: the ceiling is the mean of the two, so a change in the
    // machine's load during the ingest weighs on both sides.
    let started = Instant::now();
    objects
        .put_bytes(&bucket, &format!("{key}.again"), body)
        .await?;
    let put_after = started.elapsed();
    let put_time = (put_before + put_after) / 2;

    let sampler = RssSampler::start(args.pid);
    let started = Instant::now();
    let version = client
        .prepare_training_dataset(pb::DatasetQuery {
            dataset_id: created.dataset_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let query = pb::VersionQuery {
        dataset_id: created.dataset_id.clone(),
        version_hash: version.version_hash.clone(),
    };
    loop {
        let snapshot = client
            .fetch_training_dataset(query.clone())
            .await?
            .into_inner();
        match snapshot.state() {
            pb::SnapshotState::Running => tokio::time::sleep(Duration::from_millis(2)).await,
            pb::SnapshotState::Ready => break,
            pb::SnapshotState::Failed => anyhow::bail!("snapshot failed: {}", snapshot.message),
        }
    }
    let build_time = started.elapsed();
    let build_rss = sampler.finish();

    let put_rate = mib_per_s(bytes, put_time);
    let ingest_rate = mib_per_s(bytes, ingest_time);
    println!(
        "{megabytes:>4} MB input: plain PUT {put_rate:.1} MiB/s ({:.1} before, {:.1} after), ingest {ingest_rate:.1} MiB/s \
         (ratio {:.2}), ingest peak RSS {ingest_rss:.1} MiB; prepare→READY {:.2} s, build peak RSS {build_rss:.1} MiB",
        mib_per_s(bytes, put_before),
        mib_per_s(bytes, put_after),
        ingest_rate / put_rate,
        build_time.as_secs_f64(),
    );

    let pointer = pb::DatasetPointer {
        dataset_id: created.dataset_id.clone(),
    };
    let summary = latencies(args.calls, || {
        let mut client = client.clone();
        let pointer = pointer.clone();
        async move {
            client.get_dataset_summary(pointer).await?;
            Ok(())
        }
    })
    .await?;
    let fetch = latencies(args.calls, || {
        let mut client = client.clone();
        let query = query.clone();
        async move {
            client.fetch_training_dataset(query).await?;
            Ok(())
        }
    })
    .await?;
    for (name, histogram) in [
        ("GetDatasetSummary", summary),
        ("FetchTrainingDataset", fetch),
    ] {
        println!(
            "     {name}: p50 {:.3} ms, p99 {:.3} ms over {} calls",
            histogram.value_at_quantile(0.5) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
            histogram.len()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    anyhow::ensure!(args.pid != 0, "--pid of the server is required");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut client = DataManagementServiceClient::new(channel);
    let objects = ObjectStore::new(&S3Config::default(), &args.s3);
    println!(
        "data-management ingest and snapshot build; server idle RSS {:.1} MiB",
        rss_kib(args.pid) as f64 / 1024.0
    );
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load().trim());
    for megabytes in args.megabytes.clone() {
        run_size(&args, &mut client, &objects, megabytes).await?;
    }
    println!("load average after: {}", load().trim());
    Ok(())
}
