//! LogEpoch load against a running metadata-store (started by `scripts/bench.sh metadata`):
//! throughput and p50/p99 latency with 1, 16 and 64 concurrent callers sharing one channel,
//! and the wall time of 1,000 LogEpoch calls made one after another by one client.
//!
//! Usage: `cargo bench -p automl --bench metadata -- --addr 127.0.0.1:6002 [--label sqlite]
//!        [--seconds 5] [--callers 1,16,64]`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

struct Args {
    addr: String,
    label: String,
    seconds: u64,
    callers: Vec<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: "127.0.0.1:6002".into(),
        label: "metadata-store".into(),
        seconds: 5,
        callers: vec![1, 16, 64],
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--addr" => args.addr = iter.next().context("--addr needs a value")?,
            "--label" => args.label = iter.next().context("--label needs a value")?,
            "--seconds" => {
                args.seconds = iter.next().context("--seconds needs a value")?.parse()?
            }
            "--callers" => {
                args.callers = iter
                    .next()
                    .context("--callers needs a value")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            // `cargo bench` passes `--bench`; ignore flags meant for the harness.
            _ => {}
        }
    }
    Ok(args)
}

fn epoch(run_id: &str, epoch_id: u64) -> pb::LogEpochRequest {
    pb::LogEpochRequest {
        epoch_info: Some(pb::EpochInfo {
            start_time: "2021-08-01T01:00:00Z".into(),
            end_time: "2021-08-01T01:30:00Z".into(),
            run_id: run_id.into(),
            epoch_id: epoch_id.to_string(),
            metrics: HashMap::from([
                ("loss".to_string(), "0.4321".to_string()),
                ("accuracy".to_string(), "0.8765".to_string()),
                ("val_accuracy".to_string(), "0.8612".to_string()),
            ]),
        }),
    }
}

async fn start_run(
    client: &mut MetadataStoreServiceClient<Channel>,
    run_id: &str,
) -> anyhow::Result<()> {
    client
        .log_run_start(pb::LogRunStartRequest {
            run_id: run_id.into(),
            run_name: "bench".into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn load(
    channel: Channel,
    run_id: String,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    let next_epoch = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let mut client = MetadataStoreServiceClient::new(channel.clone());
        let next_epoch = Arc::clone(&next_epoch);
        let run_id = run_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            while Instant::now() < deadline {
                let id = next_epoch.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                client.log_epoch(epoch(&run_id, id)).await?;
                histogram.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(histogram)
        }));
    }
    let mut merged = Histogram::<u64>::new(3)?;
    for task in tasks {
        merged.add(task.await??)?;
    }
    Ok((merged.len(), started.elapsed(), merged))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut client = MetadataStoreServiceClient::new(channel.clone());
    let tag = std::process::id();

    // Warm-up: connections, statement caches.
    let warm = format!("warm-{tag}");
    start_run(&mut client, &warm).await?;
    load(channel.clone(), warm, 4, Duration::from_millis(500)).await?;

    println!(
        "backend={} LogEpoch on one channel, {} s per level",
        args.label, args.seconds
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>10}",
        "callers", "calls", "calls/s", "p50 ms", "p99 ms"
    );
    for callers in &args.callers {
        let run_id = format!("load-{tag}-{callers}");
        start_run(&mut client, &run_id).await?;
        let (calls, elapsed, histogram) = load(
            channel.clone(),
            run_id,
            *callers,
            Duration::from_secs(args.seconds),
        )
        .await?;
        println!(
            "{:>8} {:>10} {:>12.0} {:>10.3} {:>10.3}",
            callers,
            calls,
            calls as f64 / elapsed.as_secs_f64(),
            histogram.value_at_quantile(0.5) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
        );
    }

    let run_id = format!("sequential-{tag}");
    start_run(&mut client, &run_id).await?;
    let started = Instant::now();
    for id in 1..=1000 {
        client.log_epoch(epoch(&run_id, id)).await?;
    }
    let wall = started.elapsed();
    println!(
        "backend={} 1000 sequential LogEpoch calls: {:.3} s wall ({:.0} calls/s)",
        args.label,
        wall.as_secs_f64(),
        1000.0 / wall.as_secs_f64()
    );
    Ok(())
}
