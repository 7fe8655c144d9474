//! training-service scheduling against `automl serve all` (set up by `scripts/bench.sh
//! schedule`) with a trivial trainer that only records when it started: the time from Train to
//! the trainer's start when the snapshot is READY, and jobs per second through the queue with
//! 1,000 queued jobs. With `--tenants FILE` (lines `tenant token dataset-id`, authentication
//! on) the fairness run instead: each tenant in turn submits `--jobs-per-tenant` jobs (the
//! first tenant's all before the second's first: FIFO's worst case) of a trainer that sleeps
//! `--trainer-sleep` seconds (so the queue backs up), and the bench reports jobs per second and
//! each tenant's median wait from Train to its trainer's start, beside what a FIFO queue with
//! the same time per job would give.
//!
//! Usage: `cargo bench -p automl --bench schedule -- --addr HOST:PORT --trace FILE
//!        [--latency-jobs 50] [--queue-jobs 1000] [--tenants FILE --jobs-per-tenant 20 --trainer-sleep 0.05]`

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use automl_proto::training as pb;
use automl_proto::training::training_service_client::TrainingServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Start times (ns) the trivial trainer recorded, by job id.
fn starts(trace: &str) -> HashMap<i32, u128> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (job, at) = line.split_once(' ')?;
            Some((job.parse().ok()?, at.trim().parse().ok()?))
        })
        .collect()
}

/// The fairness run: tenants submit in turn, all jobs queued before most start.
async fn fairness(
    channel: Channel,
    trace: &str,
    tenants_file: &str,
    per_tenant: usize,
    sleep: String,
) -> anyhow::Result<()> {
    // `tenant token dataset-id` per line.
    let tenants: Vec<(String, String, String)> = std::fs::read_to_string(tenants_file)?
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (tenant, token, dataset) = (fields.next()?, fields.next()?, fields.next()?);
            Some((tenant.to_string(), token.to_string(), dataset.to_string()))
        })
        .collect();
    anyhow::ensure!(!tenants.is_empty(), "{tenants_file} names no tenant");
    let mut submitted: Vec<(usize, i32, u128)> = Vec::new();
    let started = Instant::now();
    for (index, (_, token, dataset)) in tenants.iter().enumerate() {
        let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
        let mut client = TrainingServiceClient::with_interceptor(
            channel.clone(),
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", value.clone());
                Ok(r)
            },
        );
        for _ in 0..per_tenant {
            let sent = now_ns();
            let mut request = request(trace);
            if let Some(metadata) = request.metadata.as_mut() {
                metadata.dataset_id = dataset.clone();
                // Long enough that the queue backs up while the tenants submit.
                metadata.parameters.insert("SLEEP".into(), sleep.clone());
            }
            let job = client.train(request).await?.into_inner().job_id;
            submitted.push((index, job, sent));
        }
    }
    let total = submitted.len();
    let deadline = Instant::now() + Duration::from_secs(600);
    let starts = loop {
        let starts = starts(trace);
        if submitted.iter().all(|(_, job, _)| starts.contains_key(job)) {
            break starts;
        }
        anyhow::ensure!(Instant::now() < deadline, "jobs never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    // The same jobs in a FIFO queue with the same mean time per job, for comparison: each job
    // starts when the one submitted before it has had its turn (or when it is submitted).
    let first_start = starts.values().min().copied().unwrap_or_default();
    let last_start = starts.values().max().copied().unwrap_or_default();
    let per_job = last_start.saturating_sub(first_start) / (total.max(2) as u128 - 1);
    let mut fifo_waits: Vec<Vec<f64>> = vec![Vec::new(); tenants.len()];
    let mut free_at = 0u128;
    for (tenant, _, sent) in &submitted {
        let start = free_at.max(*sent);
        fifo_waits[*tenant].push(start.saturating_sub(*sent) as f64 / 1e9);
        free_at = start + per_job;
    }
    let median = |waits: &mut Vec<f64>| {
        waits.sort_by(f64::total_cmp);
        waits[waits.len() / 2]
    };
    let fifo: Vec<f64> = fifo_waits.iter_mut().map(median).collect();
    let mut medians = Vec::new();
    for index in 0..tenants.len() {
        let mut waits: Vec<f64> = submitted
            .iter()
            .filter(|(tenant, _, _)| *tenant == index)
            .map(|(_, job, sent)| starts[job].saturating_sub(*sent) as f64 / 1e9)
            .collect();
        waits.sort_by(f64::total_cmp);
        medians.push(waits[waits.len() / 2]);
    }
    let (first, last) = (medians[0], medians[medians.len() - 1]);
    let (fifo_first, fifo_last) = (fifo[0], fifo[fifo.len() - 1]);
    let mut sorted = medians.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "fairness: {} tenants × {per_tenant} jobs submitted tenant after tenant (limit 1, a trainer sleeping {sleep} s): \
         {total} jobs in {:.1} s, {:.1} jobs/s",
        tenants.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  median wait per tenant: min {:.2} s, median {:.2} s, max {:.2} s (max/min {:.2}); \
         first tenant to submit {first:.2} s, last {last:.2} s",
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted[sorted.len() - 1] / sorted[0].max(1e-9)
    );
    println!(
        "  a FIFO queue with the same {:.1} ms per job would give the first tenant {fifo_first:.2} s \
         and the last {fifo_last:.2} s (max/min {:.1})",
        per_job as f64 / 1e6,
        fifo_last / fifo_first.max(1e-9)
    );
    Ok(())
}

fn request(trace: &str) -> pb::TrainRequest {
    pb::TrainRequest {
        metadata: Some(pb::TrainingJobMetadata {
            algorithm: "trivial".into(),
            dataset_id: "1".into(),
            name: "bench".into(),
            train_data_version_hash: "hashAg==".into(),
            parameters: HashMap::from([("TRACE".to_string(), trace.to_string())]),
            output_model_name: "bench".into(),
            ..Default::default()
        }),
    }
}

/// Jobs in `status`: how many, and the first of them.
async fn jobs_in(
    client: &mut TrainingServiceClient<Channel>,
    status: pb::TrainingStatus,
) -> anyhow::Result<pb::ListTrainingJobsResponse> {
    Ok(client
        .list_training_jobs(pb::ListTrainingJobsRequest {
            limit: 1,
            index: 0,
            statuses: vec![status.into()],
            ..Default::default()
        })
        .await?
        .into_inner())
}

async fn succeeded(client: &mut TrainingServiceClient<Channel>) -> anyhow::Result<i32> {
    Ok(jobs_in(client, pb::TrainingStatus::Succeed).await?.total)
}

/// Fails naming the first failed job, if any: the queue's jobs would never all succeed.
async fn none_failed(client: &mut TrainingServiceClient<Channel>) -> anyhow::Result<()> {
    let failed = jobs_in(client, pb::TrainingStatus::Failure).await?;
    if let Some(job) = failed.jobs.first() {
        anyhow::bail!(
            "{} job(s) failed; job {}: {}",
            failed.total,
            job.job_id,
            job.message
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut addr = String::from("127.0.0.1:6003");
    let mut trace = String::new();
    let (mut latency_jobs, mut queue_jobs) = (50usize, 1000usize);
    let (mut tenants, mut per_tenant) = (String::new(), 20usize);
    let mut sleep = String::from("0.05");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().context("--addr needs a value")?,
            "--trace" => trace = args.next().context("--trace needs a value")?,
            "--latency-jobs" => latency_jobs = args.next().context("value")?.parse()?,
            "--queue-jobs" => queue_jobs = args.next().context("value")?.parse()?,
            "--tenants" => tenants = args.next().context("--tenants needs a value")?,
            "--jobs-per-tenant" => per_tenant = args.next().context("value")?.parse()?,
            "--trainer-sleep" => sleep = args.next().context("value")?,
            _ => {}
        }
    }
    anyhow::ensure!(!trace.is_empty(), "--trace FILE is required");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    if !tenants.is_empty() {
        return fairness(channel, &trace, &tenants, per_tenant, sleep).await;
    }
    let mut client = TrainingServiceClient::new(channel);

    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..latency_jobs {
        let sent = now_ns();
        let job = client.train(request(&trace)).await?.into_inner().job_id;
        let deadline = Instant::now() + Duration::from_secs(30);
        let started = loop {
            if let Some(at) = starts(&trace).get(&job) {
                break *at;
            }
            anyhow::ensure!(Instant::now() < deadline, "job {job} never started");
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        histogram.record(u64::try_from(started.saturating_sub(sent) / 1000)?)?;
        loop {
            let status = client
                .get_training_status(pb::GetTrainingStatusRequest { job_id: job })
                .await?
                .into_inner();
            if status.status() == pb::TrainingStatus::Succeed {
                break;
            }
            anyhow::ensure!(
                status.status() != pb::TrainingStatus::Failure,
                "{}",
                status.message
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    println!(
        "Train → trainer start (snapshot READY, queue empty), {} jobs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        histogram.len(),
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
    );

    let before = succeeded(&mut client).await?;
    let started = Instant::now();
    for _ in 0..queue_jobs {
        client.train(request(&trace)).await?;
    }
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = succeeded(&mut client).await? - before;
        if usize::try_from(done)? >= queue_jobs {
            break;
        }
        none_failed(&mut client).await?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the queue's jobs never all succeeded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "{queue_jobs} jobs through the queue (limit 1, trivial trainer): {:.1} s, {:.1} jobs/s \
         (submitting took {:.2} s)",
        elapsed.as_secs_f64(),
        queue_jobs as f64 / elapsed.as_secs_f64(),
        submitted.as_secs_f64()
    );
    Ok(())
}
