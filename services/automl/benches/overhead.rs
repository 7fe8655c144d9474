//! The throughput cost of metrics and tracing: Predict and LogEpoch against pairs of servers
//! started by `scripts/bench.sh overhead`, in each pair one with telemetry on (the default) and
//! one with `telemetry.instrument = false` and `metrics_enabled = false`, in alternating rounds
//! (on/off, off/on, …) so that load from elsewhere on the machine hits both alike. With more
//! than one pair, round r loads pair r mod pairs: a process that happens to run faster or
//! slower than its twin for the whole run (where its threads and memory landed) then weighs
//! less in the result.
//!
//! Besides calls per second, each row gives the servers' own CPU time per call (the time the
//! server's threads spent on a CPU over the round, from /proc/PID/task/*/schedstat, when
//! `--pids` names them):
//! on a machine whose cores the load generator shares, that is the steadier measure of what
//! the instrumentation costs.
//!
//! Usage: `cargo bench -p automl --bench overhead -- --predict ON,OFF[,ON,OFF…] --run RUN_ID
//!        --documents FILE.csv [--metadata ON,OFF[,ON,OFF…]]
//!        [--pids PREDICT_ON,PREDICT_OFF[,…],METADATA_ON,METADATA_OFF[,…]]
//!        [--seconds 3] [--rounds 4] [--callers 1,16,64]` (addresses; without `--metadata`,
//!        Predict only)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use automl_proto::metadata_store as ms;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use automl_proto::prediction as pb;
use automl_proto::prediction::prediction_service_client::PredictionServiceClient;
use tonic::transport::Channel;

struct Args {
    /// prediction-service addresses in pairs, instrumented first.
    predict: Vec<String>,
    /// metadata-store addresses in pairs, instrumented first.
    metadata: Vec<String>,
    run: String,
    documents: String,
    seconds: f64,
    rounds: usize,
    callers: Vec<usize>,
    /// Server process ids in the order of the addresses: prediction-services, then
    /// metadata-stores.
    pids: Vec<u32>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        predict: Vec::new(),
        metadata: Vec::new(),
        run: "1".into(),
        documents: String::new(),
        seconds: 3.0,
        rounds: 4,
        callers: vec![1, 16, 64],
        pids: Vec::new(),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--predict" => args.predict = value()?.split(',').map(str::to_string).collect(),
            "--metadata" => args.metadata = value()?.split(',').map(str::to_string).collect(),
            "--run" => args.run = value()?,
            "--pids" => {
                args.pids = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--documents" => args.documents = value()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--callers" => {
                args.callers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            // `cargo bench` passes `--bench`; ignore flags meant for the harness.
            _ => {}
        }
    }
    anyhow::ensure!(
        !args.predict.is_empty()
            && args.predict.len().is_multiple_of(2)
            && args.metadata.len().is_multiple_of(2),
        "--predict and --metadata each need pairs ON_ADDR,OFF_ADDR (--metadata may be left out)"
    );
    Ok(args)
}

/// Utterances of a raw `utterance,label` CSV.
fn documents(path: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let docs: Vec<String> = text
        .lines()
        .filter_map(|line| line.rsplit_once(',').map(|(u, _)| u.trim_matches('"')))
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!docs.is_empty(), "{path} has no rows");
    Ok(docs)
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// One server under load: what each caller sends.
#[derive(Clone)]
enum Target {
    /// Predict for `run`, cycling through the documents.
    Predict {
        client: PredictionServiceClient<Channel>,
        run: String,
        docs: Arc<Vec<String>>,
    },
    /// LogEpoch with three metrics, epoch `n` of `run`.
    LogEpoch {
        client: MetadataStoreServiceClient<Channel>,
        run: String,
    },
}

impl Target {
    async fn call(&mut self, n: u64) -> anyhow::Result<()> {
        match self {
            Target::Predict { client, run, docs } => {
                let document = docs[n as usize % docs.len()].clone();
                client
                    .predict(pb::PredictRequest {
                        run_id: run.clone(),
                        document,
                    })
                    .await?;
            }
            Target::LogEpoch { client, run } => {
                client.log_epoch(epoch(run, n)).await?;
            }
        }
        Ok(())
    }

    /// A fresh run for LogEpoch, so every round writes new rows.
    async fn with_new_run(&self, run: String) -> anyhow::Result<Target> {
        let Target::LogEpoch { client, .. } = self else {
            return Ok(self.clone());
        };
        let mut client = client.clone();
        client
            .log_run_start(ms::LogRunStartRequest {
                run_id: run.clone(),
                run_name: "overhead".into(),
                ..Default::default()
            })
            .await?;
        Ok(Target::LogEpoch { client, run })
    }
}

fn epoch(run_id: &str, epoch_id: u64) -> ms::LogEpochRequest {
    ms::LogEpochRequest {
        epoch_info: Some(ms::EpochInfo {
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

/// `callers` tasks calling `target` back to back for `duration`; (calls, seconds).
async fn load(target: &Target, callers: usize, duration: Duration) -> anyhow::Result<(u64, f64)> {
    let next = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (mut target, next) = (target.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < deadline {
                target.call(next.fetch_add(1, Ordering::Relaxed)).await?;
                calls += 1;
            }
            Ok::<_, anyhow::Error>(calls)
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await??;
    }
    Ok((calls, started.elapsed().as_secs_f64()))
}

/// CPU seconds a process has used so far, every thread: the nanoseconds on a CPU that
/// /proc/PID/task/TID/schedstat reports (finer than the clock ticks of /proc/PID/stat).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", pid?)).ok()?;
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(nanos as f64 / 1e9)
}

/// Calls, seconds and server CPU seconds summed over the rounds, for one side (no CPU total
/// once a round could not read it).
#[derive(Clone, Copy)]
struct Side {
    calls: u64,
    seconds: f64,
    cpu: Option<f64>,
}

impl Default for Side {
    fn default() -> Self {
        Self {
            calls: 0,
            seconds: 0.0,
            cpu: Some(0.0),
        }
    }
}

/// Both sides: the instrumented server and the other.
#[derive(Default)]
struct Totals {
    on: Side,
    off: Side,
}

impl Totals {
    fn add(&mut self, instrumented: bool, (calls, seconds): (u64, f64), cpu: Option<f64>) {
        let side = if instrumented {
            &mut self.on
        } else {
            &mut self.off
        };
        side.calls += calls;
        side.seconds += seconds;
        side.cpu = side.cpu.zip(cpu).map(|(total, more)| total + more);
    }

    fn rates(&self) -> (f64, f64) {
        (
            self.on.calls as f64 / self.on.seconds,
            self.off.calls as f64 / self.off.seconds,
        )
    }

    /// Server CPU microseconds per call, on and off.
    fn cpu_per_call(&self) -> Option<(f64, f64)> {
        let per_call = |side: &Side| Some(side.cpu? * 1e6 / side.calls.max(1) as f64);
        Some((per_call(&self.on)?, per_call(&self.off)?))
    }
}

/// One instrumented server and its uninstrumented twin, with their process ids.
struct Pair {
    targets: [Target; 2],
    pids: [Option<u32>; 2],
}

/// `addrs` (on, off, on, off, …) as pairs, with the process ids in the same order, if given.
async fn connect_pairs<F, Fut>(
    addrs: &[String],
    pids: &[u32],
    connect: F,
) -> anyhow::Result<Vec<Pair>>
where
    F: Fn(&str) -> Fut,
    Fut: Future<Output = anyhow::Result<Target>>,
{
    let pid = |i: usize| pids.get(i).copied();
    let mut pairs = Vec::new();
    for (i, pair) in addrs.chunks(2).enumerate() {
        pairs.push(Pair {
            targets: [connect(&pair[0]).await?, connect(&pair[1]).await?],
            pids: [pid(2 * i), pid(2 * i + 1)],
        });
    }
    Ok(pairs)
}

/// Alternates on and off over `rounds` rounds at each level, round r on pair r mod pairs, and
/// prints one row per level.
async fn compare(name: &str, pairs: &[Pair], args: &Args, tag: &str) -> anyhow::Result<()> {
    for target in pairs.iter().flat_map(|pair| &pair.targets) {
        load(
            &target.with_new_run(format!("warm-{tag}")).await?,
            4,
            Duration::from_secs(1),
        )
        .await?;
    }
    let duration = Duration::from_secs_f64(args.seconds);
    for callers in &args.callers {
        let mut totals = Totals::default();
        let mut ratios = Vec::new();
        for round in 0..args.rounds {
            let Pair { targets, pids } = &pairs[round % pairs.len()];
            // Each pair: on, off in its even turns; off, on in its odd ones.
            let turn = round / pairs.len();
            let mut rates = [0.0; 2];
            for side in [turn % 2, 1 - turn % 2] {
                let run = format!("{tag}-{callers}-{round}-{side}");
                let target = targets[side].with_new_run(run).await?;
                let before = cpu_seconds(pids[side]);
                let done = load(&target, *callers, duration).await?;
                let used = cpu_seconds(pids[side]).zip(before).map(|(a, b)| a - b);
                rates[side] = done.0 as f64 / done.1;
                totals.add(side == 0, done, used);
            }
            ratios.push(rates[0] / rates[1]);
        }
        let (on, off) = totals.rates();
        // The median of the rounds' on/off ratios: a round that a checkpoint or another
        // process disturbed moves it less than it moves the totals.
        ratios.sort_by(f64::total_cmp);
        let median = match ratios.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => ratios[n / 2],
            n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
        };
        let cpu = totals.cpu_per_call().map_or_else(
            || format!("{:>10} {:>10} {:>9}", "-", "-", "-"),
            |(on, off)| format!("{on:>10.1} {off:>10.1} {:>8.1}%", (on / off - 1.0) * 100.0),
        );
        println!(
            "{:<10} {:>8} {:>14.0} {:>14.0} {:>8.3} {:>8.1}% {:>8.1}% {cpu}",
            name,
            callers,
            on,
            off,
            on / off,
            (1.0 - on / off) * 100.0,
            (1.0 - median) * 100.0
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let docs = Arc::new(documents(&args.documents)?);
    let tag = std::process::id().to_string();
    let predict = |addr: &str| {
        let (addr, run, docs) = (addr.to_string(), args.run.clone(), docs.clone());
        async move {
            let client = PredictionServiceClient::new(channel(&addr).await?);
            anyhow::Ok(Target::Predict { client, run, docs })
        }
    };
    let log_epoch = |addr: &str| {
        let addr = addr.to_string();
        async move {
            let client = MetadataStoreServiceClient::new(channel(&addr).await?);
            anyhow::Ok(Target::LogEpoch {
                client,
                run: String::new(),
            })
        }
    };
    println!(
        "{} rounds of {} s per level and side, alternating, over {} Predict and {} LogEpoch \
         pairs; cost = 1 - on/off of the totals, median = 1 - the median of the rounds' on/off",
        args.rounds,
        args.seconds,
        args.predict.len() / 2,
        args.metadata.len() / 2
    );
    println!(
        "{:<10} {:>8} {:>14} {:>14} {:>8} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "rpc",
        "callers",
        "on calls/s",
        "off calls/s",
        "on/off",
        "cost",
        "median",
        "on µs CPU",
        "off µs CPU",
        "CPU cost"
    );
    let pairs = connect_pairs(&args.predict, &args.pids, predict).await?;
    compare("Predict", &pairs, &args, &tag).await?;
    if args.metadata.is_empty() {
        return Ok(());
    }
    let pids = args.pids.get(args.predict.len()..).unwrap_or_default();
    let pairs = connect_pairs(&args.metadata, pids, log_epoch).await?;
    compare("LogEpoch", &pairs, &args, &tag).await?;
    Ok(())
}
