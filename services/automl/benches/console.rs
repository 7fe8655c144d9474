//! The web console's server time against `automl serve all` on SQLite (set up by
//! `scripts/bench.sh console`): metadata-store is filled through its gRPC API with `--runs`
//! (10,000) runs of 3 epochs each (loss, accuracy, val_accuracy) and one run of `--epochs`
//! (1,000) epochs, then pages are requested over loopback, one at a time and from `--callers`
//! concurrent callers, after a warm-up: the runs table (first page, sorted by best
//! val_accuracy, a deep page of that order), the 1,000-epoch run's page and a small run's page.
//! In the same run, as baselines: GET /healthz (the HTTP stack alone) and the gRPC calls behind
//! the pages (ListRuns as the table makes it: 50 rows, without epochs, the same order; and
//! GetRunStatus of the large run), so that the console's own share shows. Every page is checked
//! before it is timed (200, the table's 50 rows in the order ListRuns gives, the run page's
//! epochs JSON complete), and every timed answer is checked again cheaply: a wrong page fails
//! the bench. Prints a Markdown table: requests, p50, p99 and max per case and level, with the
//! 1-minute load average before and after each.
//!
//! Usage: `cargo bench -p automl --bench console -- --web HOST:PORT --metadata HOST:PORT
//!        [--runs 10000] [--epochs 1000] [--seconds 2] [--callers 1,4] [--seed-concurrency 32]`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use automl_proto::metadata_store as pb;
use automl_proto::metadata_store::metadata_store_service_client::MetadataStoreServiceClient;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;

/// The console's page size (`web.page_size`, default 50).
const PAGE_SIZE: i32 = 50;
/// The acceptance goal for a page's p99.
const GOAL_MS: f64 = 50.0;
/// The sort of the sorted runs-table cases.
const SORT: &str = "best:val_accuracy";
/// The deep page of the sorted table (0-based, as the console's `page` parameter).
const DEEP_PAGE: i32 = 100;

struct Args {
    web: String,
    metadata: String,
    runs: u64,
    epochs: u64,
    seconds: f64,
    callers: Vec<usize>,
    seed_concurrency: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        web: "127.0.0.1:8080".into(),
        metadata: "127.0.0.1:6002".into(),
        runs: 10_000,
        epochs: 1_000,
        seconds: 2.0,
        callers: vec![1, 4],
        seed_concurrency: 32,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--web" => args.web = value()?,
            "--metadata" => args.metadata = value()?,
            "--runs" => args.runs = value()?.parse()?,
            "--epochs" => args.epochs = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--callers" => {
                args.callers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--seed-concurrency" => args.seed_concurrency = value()?.parse()?,
            // `cargo bench` passes `--bench`; ignore flags meant for the harness.
            _ => {}
        }
    }
    ensure!(
        args.runs >= 5_050,
        "--runs must reach the deep page (5,050 runs at least)"
    );
    Ok(args)
}

/// A deterministic number in [0, 1) for `seed` (splitmix64).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn epoch(run_id: &str, epoch: u64, of: u64, seed: u64) -> pb::LogEpochRequest {
    let progress = epoch as f64 / of as f64;
    let base = 0.5 + 0.3 * unit(seed);
    let noise = 0.02 * unit(seed.wrapping_mul(1_000_003).wrapping_add(epoch));
    pb::LogEpochRequest {
        epoch_info: Some(pb::EpochInfo {
            start_time: "2021-08-01T01:00:00Z".into(),
            end_time: "2021-08-01T01:30:00Z".into(),
            run_id: run_id.into(),
            epoch_id: epoch.to_string(),
            metrics: HashMap::from([
                ("loss".to_string(), format!("{:.4}", 1.5 - progress + noise)),
                (
                    "accuracy".to_string(),
                    format!("{:.4}", base + 0.15 * progress + noise),
                ),
                (
                    "val_accuracy".to_string(),
                    format!("{:.4}", base + 0.12 * progress - noise),
                ),
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
            start_time: "2021-08-01T01:00:00Z".into(),
            run_id: run_id.into(),
            run_name: "bench".into(),
            tracing: Some(pb::TracingInformation {
                dataset_id: "1".into(),
                version_hash: "v".into(),
                ..Default::default()
            }),
        })
        .await
        .with_context(|| format!("LogRunStart {run_id}"))?;
    Ok(())
}

async fn end_run(
    client: &mut MetadataStoreServiceClient<Channel>,
    run_id: &str,
) -> anyhow::Result<()> {
    client
        .log_run_end(pb::LogRunEndRequest {
            run_id: run_id.into(),
            end_time: "2021-08-01T02:30:00Z".into(),
            success: true,
            message: String::new(),
        })
        .await
        .with_context(|| format!("LogRunEnd {run_id}"))?;
    Ok(())
}

/// One small run: start, 3 epochs, end.
async fn seed_run(mut client: MetadataStoreServiceClient<Channel>, id: u64) -> anyhow::Result<()> {
    let run_id = id.to_string();
    start_run(&mut client, &run_id).await?;
    for e in 1..=3 {
        client
            .log_epoch(epoch(&run_id, e, 3, id))
            .await
            .with_context(|| format!("LogEpoch {run_id}/{e}"))?;
    }
    end_run(&mut client, &run_id).await
}

async fn seed(args: &Args, channel: &Channel) -> anyhow::Result<String> {
    let client = MetadataStoreServiceClient::new(channel.clone());
    let started = Instant::now();
    let done = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(1..=args.runs)
        .map(|id| {
            let client = client.clone();
            let done = &done;
            async move {
                seed_run(client, id).await?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(2_000) {
                    eprintln!(
                        "  {n} runs logged ({:.0} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(args.seed_concurrency)
        .try_collect::<()>()
        .await?;
    let small = started.elapsed();

    let large = (args.runs + 1).to_string();
    let mut one = client.clone();
    start_run(&mut one, &large).await?;
    let epochs = args.epochs;
    let large_seed = args.runs + 1;
    futures::stream::iter(1..=epochs)
        .map(|e| {
            let mut client = client.clone();
            let request = epoch(&large, e, epochs, large_seed);
            async move {
                client
                    .log_epoch(request)
                    .await
                    .with_context(|| format!("LogEpoch {e}"))
            }
        })
        .buffer_unordered(args.seed_concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    end_run(&mut one, &large).await?;
    println!(
        "setup: {} runs × 3 epochs ({} gRPC calls) in {:.1} s, {} concurrent; run {large} with {} epochs in {:.1} s",
        args.runs,
        args.runs * 5,
        small.as_secs_f64(),
        args.seed_concurrency,
        epochs,
        (started.elapsed() - small).as_secs_f64()
    );
    Ok(large)
}

fn load_1m() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

type Http = Client<HttpConnector, Empty<Bytes>>;

/// What a timed answer must look like (established by the full check before timing).
#[derive(Clone, Debug)]
enum Expect {
    /// `ok`
    Healthz,
    /// A runs table with this many rows.
    Rows(usize),
    /// A run page whose `run-data` JSON has exactly this many bytes.
    RunData(usize),
    /// ListRuns with this many runs.
    ListRuns(usize),
    /// GetRunStatus with this many epochs.
    Epochs(usize),
}

#[derive(Clone, Debug)]
enum Call {
    Get(String),
    ListRuns(pb::ListRunsRequest),
    GetRun(String),
}

#[derive(Clone)]
struct Case {
    name: String,
    call: Call,
    expect: Expect,
    /// Whether the case is a console page (the goal applies).
    page: bool,
}

#[derive(Clone)]
struct Target {
    http: Http,
    web: String,
    cookie: String,
    grpc: MetadataStoreServiceClient<Channel>,
}

impl Target {
    async fn get(&self, path: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let request = hyper::Request::get(format!("http://{}{path}", self.web))
            .header(hyper::header::ACCEPT, "text/html")
            .header(hyper::header::COOKIE, &self.cookie)
            .body(Empty::new())?;
        let response = self
            .http
            .request(request)
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The run ids of a runs table, in order.
fn table_ids(html: &str) -> Vec<String> {
    html.split("data-run=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_string))
        .collect()
}

/// The text of `<script id="run-data" …>…</script>`.
fn run_data(html: &str) -> Option<&str> {
    let start = html.find("id=\"run-data\"")?;
    let open = start + html[start..].find('>')? + 1;
    let close = open + html[open..].find("</script>")?;
    Some(&html[open..close])
}

/// One call, checked cheaply against what the full check established.
async fn call(target: &mut Target, case: &Case) -> anyhow::Result<()> {
    match &case.call {
        Call::Get(path) => {
            let (status, body) = target.get(path).await?;
            ensure!(status == 200, "GET {path}: {status}");
            let html = std::str::from_utf8(&body).context("not UTF-8")?;
            match case.expect {
                Expect::Healthz => ensure!(html == "ok", "GET {path}: {html:?}"),
                Expect::Rows(rows) => {
                    let got = count(html, "data-run=\"");
                    ensure!(got == rows, "GET {path}: {got} rows, not {rows}");
                }
                Expect::RunData(len) => {
                    let got = run_data(html).map(str::len);
                    ensure!(
                        got == Some(len),
                        "GET {path}: run data of {got:?} bytes, not {len}"
                    );
                }
                _ => bail!("{}: an HTTP case expects a page", case.name),
            }
        }
        Call::ListRuns(request) => {
            let answer = target.grpc.list_runs(request.clone()).await?.into_inner();
            let Expect::ListRuns(rows) = case.expect else {
                bail!("{}: expects runs", case.name)
            };
            ensure!(
                answer.runs.len() == rows,
                "ListRuns: {} runs",
                answer.runs.len()
            );
        }
        Call::GetRun(run_id) => {
            let run = target
                .grpc
                .get_run_status(pb::GetRunStatusRequest {
                    run_id: run_id.clone(),
                })
                .await?
                .into_inner()
                .run_info
                .context("no run_info")?;
            let Expect::Epochs(epochs) = case.expect else {
                bail!("{}: expects epochs", case.name)
            };
            ensure!(
                run.epochs.len() == epochs,
                "GetRunStatus: {} epochs",
                run.epochs.len()
            );
        }
    }
    Ok(())
}

fn list_request(order_by: &str, descending: bool, page: i32) -> pb::ListRunsRequest {
    pb::ListRunsRequest {
        limit: PAGE_SIZE,
        index: page * PAGE_SIZE,
        order_by: order_by.into(),
        descending,
        without_epochs: true,
        ..Default::default()
    }
}

/// The full check of a runs-table page: 200, 50 rows, the same runs in the same order as the
/// ListRuns call behind it.
async fn check_table(
    target: &mut Target,
    path: &str,
    request: &pb::ListRunsRequest,
) -> anyhow::Result<()> {
    let (status, body) = target.get(path).await?;
    let html = std::str::from_utf8(&body)?;
    ensure!(status == 200, "GET {path}: {status}: {html}");
    let ids = table_ids(html);
    let want: Vec<String> = target
        .grpc
        .list_runs(request.clone())
        .await?
        .into_inner()
        .runs
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    ensure!(
        want.len() == PAGE_SIZE as usize,
        "ListRuns for {path} gave {} runs",
        want.len()
    );
    ensure!(
        ids == want,
        "GET {path}: rows {:?}… differ from ListRuns {:?}…",
        &ids[..ids.len().min(5)],
        &want[..5]
    );
    ensure!(
        html.contains("val_accuracy (best)"),
        "GET {path}: no metric columns"
    );
    Ok(())
}

/// The full check of a run page: 200, the `run-data` JSON with every epoch in order, each
/// with its three metrics. Returns the JSON's length.
async fn check_run(target: &mut Target, run_id: &str, epochs: usize) -> anyhow::Result<usize> {
    let path = format!("/runs/{run_id}");
    let (status, body) = target.get(&path).await?;
    let html = std::str::from_utf8(&body)?;
    ensure!(status == 200, "GET {path}: {status}: {html}");
    let data = run_data(html).with_context(|| format!("GET {path}: no run-data"))?;
    let value: serde_json::Value =
        serde_json::from_str(data).with_context(|| format!("GET {path}: run-data"))?;
    ensure!(
        value["run_id"] == run_id,
        "GET {path}: run_id {}",
        value["run_id"]
    );
    let list = value["epochs"]
        .as_array()
        .with_context(|| format!("GET {path}: no epochs array"))?;
    ensure!(
        list.len() == epochs,
        "GET {path}: {} epochs, not {epochs}",
        list.len()
    );
    for (index, epoch) in list.iter().enumerate() {
        let id = (index + 1).to_string();
        ensure!(
            epoch["epoch"] == id.as_str(),
            "GET {path}: epoch {index} is {}",
            epoch["epoch"]
        );
        let metrics = epoch["metrics"].as_object().context("no metrics")?;
        ensure!(
            metrics.len() == 3 && metrics.values().all(serde_json::Value::is_f64),
            "GET {path}: epoch {id} metrics {metrics:?}"
        );
    }
    Ok(data.len())
}

/// `callers` concurrent callers for `duration`; latencies in µs.
async fn load(
    target: &Target,
    case: &Case,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let mut target = target.clone();
        let case = case.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            while Instant::now() < deadline {
                let sent = Instant::now();
                call(&mut target, &case)
                    .await
                    .with_context(|| case.name.clone())?;
                histogram.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(histogram)
        }));
    }
    let mut merged = Histogram::<u64>::new(3)?;
    for task in tasks {
        merged.add(task.await??)?;
    }
    Ok(merged)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.metadata))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.metadata))?;
    // Large enough for the 1,000-epoch run.
    let grpc = MetadataStoreServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);

    let large = seed(&args, &channel).await?;
    let small = (args.runs / 2).to_string();
    let total = grpc
        .clone()
        .list_runs(pb::ListRunsRequest {
            limit: 1,
            without_epochs: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .total;
    ensure!(
        total as u64 == args.runs + 1,
        "metadata-store holds {total} runs, not {}",
        args.runs + 1
    );

    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut target = Target {
        http,
        web: args.web.clone(),
        cookie: String::new(),
        grpc,
    };
    // A browser's session: the anonymous cookie the first page sets, sent back after.
    let first = hyper::Request::get(format!("http://{}/runs", args.web))
        .header(hyper::header::ACCEPT, "text/html")
        .body(Empty::new())?;
    let response = target.http.request(first).await.context("GET /runs")?;
    ensure!(response.status() == 200, "GET /runs: {}", response.status());
    target.cookie = response
        .headers()
        .get(hyper::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("GET /runs set no session cookie")?
        .to_string();
    response.into_body().collect().await?;

    // The full checks; nothing is timed before they pass.
    let (status, body) = target.get("/healthz").await?;
    ensure!(
        status == 200 && &body[..] == b"ok",
        "GET /healthz: {status}"
    );
    let first_page = list_request("", false, 0);
    let sorted = list_request(SORT, true, 0);
    let deep = list_request(SORT, true, DEEP_PAGE);
    let sorted_path = format!("/runs?sort={SORT}&desc=1");
    let deep_path = format!("/runs?sort={SORT}&desc=1&page={DEEP_PAGE}");
    check_table(&mut target, "/runs", &first_page).await?;
    check_table(&mut target, &sorted_path, &sorted).await?;
    check_table(&mut target, &deep_path, &deep).await?;
    let large_len = check_run(&mut target, &large, args.epochs as usize).await?;
    let small_len = check_run(&mut target, &small, 3).await?;
    println!(
        "checked: /runs, the sorted and deep pages (50 rows each, ListRuns' order), run {large}'s \
         page ({} epochs, run-data {large_len} bytes), run {small}'s page (3 epochs)",
        args.epochs
    );

    let rows = PAGE_SIZE as usize;
    let epochs = args.epochs as usize;
    let case = |name: String, call: Call, expect: Expect, page: bool| Case {
        name,
        call,
        expect,
        page,
    };
    let cases = vec![
        case(
            "GET /healthz".into(),
            Call::Get("/healthz".into()),
            Expect::Healthz,
            false,
        ),
        case(
            "gRPC ListRuns (50, start order)".into(),
            Call::ListRuns(first_page),
            Expect::ListRuns(rows),
            false,
        ),
        case(
            "GET /runs".into(),
            Call::Get("/runs".into()),
            Expect::Rows(rows),
            true,
        ),
        case(
            format!("gRPC ListRuns (50, {SORT} desc)"),
            Call::ListRuns(sorted),
            Expect::ListRuns(rows),
            false,
        ),
        case(
            format!("GET {sorted_path}"),
            Call::Get(sorted_path.clone()),
            Expect::Rows(rows),
            true,
        ),
        case(
            format!(
                "gRPC ListRuns (50, {SORT} desc, index {})",
                DEEP_PAGE * PAGE_SIZE
            ),
            Call::ListRuns(deep),
            Expect::ListRuns(rows),
            false,
        ),
        case(
            format!("GET {deep_path}"),
            Call::Get(deep_path.clone()),
            Expect::Rows(rows),
            true,
        ),
        case(
            format!("gRPC GetRunStatus {large} ({epochs} epochs)"),
            Call::GetRun(large.clone()),
            Expect::Epochs(epochs),
            false,
        ),
        case(
            format!("GET /runs/{large} ({epochs} epochs)"),
            Call::Get(format!("/runs/{large}")),
            Expect::RunData(large_len),
            true,
        ),
        case(
            format!("GET /runs/{small} (3 epochs)"),
            Call::Get(format!("/runs/{small}")),
            Expect::RunData(small_len),
            true,
        ),
    ];

    let duration = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    println!();
    println!(
        "Console server time over loopback: {} runs in metadata-store (SQLite), {:.1} s per case \
         and level after a 0.5 s warm-up; latencies in ms; load = 1-minute load average",
        args.runs + 1,
        args.seconds
    );
    println!();
    println!("| case | callers | requests | p50 | p99 | max | load before | load after |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|");
    let mut p50s: HashMap<(String, usize), f64> = HashMap::new();
    let mut missed = Vec::new();
    for case in &cases {
        load(&target, case, 2, Duration::from_millis(500)).await?;
        for &callers in &args.callers {
            let before = load_1m();
            let histogram = load(&target, case, callers, duration).await?;
            let after = load_1m();
            let (p50, p99, max) = (
                ms(histogram.value_at_quantile(0.5)),
                ms(histogram.value_at_quantile(0.99)),
                ms(histogram.max()),
            );
            println!(
                "| {} | {callers} | {} | {p50:.2} | {p99:.2} | {max:.2} | {before} | {after} |",
                case.name,
                histogram.len()
            );
            p50s.insert((case.name.clone(), callers), p50);
            if case.page && p99 >= GOAL_MS {
                missed.push(format!(
                    "{} at {callers} caller(s): p99 {p99:.1} ms",
                    case.name
                ));
            }
        }
    }
    println!();
    let share = |page: &Case, behind: &Case| {
        args.callers
            .iter()
            .map(|&callers| {
                let page_p50 = p50s[&(page.name.clone(), callers)];
                let grpc_p50 = p50s[&(behind.name.clone(), callers)];
                format!(
                    "{callers} caller(s) {:.2} ms ({page_p50:.2} − {grpc_p50:.2})",
                    page_p50 - grpc_p50
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (page, behind) in [(2, 1), (4, 3), (6, 5), (8, 7)] {
        println!(
            "console's share, p50 of `{}` less `{}`: {}",
            cases[page].name,
            cases[behind].name,
            share(&cases[page], &cases[behind])
        );
    }
    if missed.is_empty() {
        println!("goal: every page's p99 under {GOAL_MS} ms");
    } else {
        println!(
            "goal: p99 under {GOAL_MS} ms missed by {}",
            missed.join("; ")
        );
    }
    println!(
        "measured in {:.1} s after setup",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
