//! The web console in a real browser (Debian's headless Chromium through chromedriver),
//! against `automl serve all` with real trainings: the runs table and a run's charts, live
//! epochs and log lines of a training in progress, the comparison of two runs, and the predict
//! box. Tenancy and the cross-site checks are in `auth.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use automl_common::testing::{TestEnv, grpcurl};

use crate::browser::Browser;
use crate::support::{Automl, clinc_data, grpcurl_json, process_env, require_trainer};

const WAIT: Duration = Duration::from_secs(60);

/// A trainer of its own that trains slowly enough to be watched: `EPOCHS` epochs (default 6),
/// one each `EPOCH_SLEEP` seconds (default 1), logging `loss` and `accuracy` and a log line
/// per epoch.
fn slow_trainer(dir: &Path) -> PathBuf {
    let path = dir.join("slow-trainer.sh");
    let script = format!(
        r#"#!/bin/sh
call() {{ {grpcurl} -plaintext -d "$1" "$METADATA_STORE_SERVER" "metadata_store.MetadataStoreService/$2" >/dev/null; }}
call "{{\"run_id\":\"$JOB_ID\",\"run_name\":\"slow\"}}" LogRunStart
e=1
while [ "$e" -le "${{EPOCHS:-6}}" ]; do
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  loss=$(awk "BEGIN {{ print 1 / $e }}")
  acc=$(awk "BEGIN {{ print 1 - 1 / ($e + 1) }}")
  call "{{\"epoch_info\":{{\"run_id\":\"$JOB_ID\",\"epoch_id\":\"$e\",\"start_time\":\"$now\",\"end_time\":\"$now\",\"metrics\":{{\"loss\":\"$loss\",\"accuracy\":\"$acc\"}}}}}}" LogEpoch
  echo "slow trainer: epoch $e loss $loss"
  sleep "${{EPOCH_SLEEP:-1}}"
  e=$((e + 1))
done
call "{{\"run_id\":\"$JOB_ID\",\"success\":true,\"message\":\"done\"}}" LogRunEnd
"#,
        grpcurl = grpcurl().display()
    );
    std::fs::write(&path, script).expect("write the trainer");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the trainer executable");
    path
}

fn train(training: &str, name: &str, algorithm: &str, parameters: &str) -> i64 {
    let job = grpcurl_json(
        training,
        "training.TrainingService/Train",
        &format!(
            r#"{{"metadata":{{"algorithm":"{algorithm}","dataset_id":"1","name":"{name}","train_data_version_hash":"hashAg==","output_model_name":"intent","parameters":{parameters}}}}}"#
        ),
    );
    job["jobId"].as_i64().expect("job id")
}

fn wait_for_job(training: &str, job_id: i64, wanted: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let status = grpcurl_json(
            training,
            "training.TrainingService/GetTrainingStatus",
            &format!(r#"{{"job_id":{job_id}}}"#),
        );
        let state = status["status"].as_str().unwrap_or("queuing").to_string();
        if wanted.contains(&state.as_str()) {
            return state;
        }
        assert!(
            !matches!(state.as_str(), "failure" | "canceled"),
            "job {job_id} ended: {status}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "job {job_id} never {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Number of points the chart of `metric` holds (the page keeps it in `data-points`).
async fn points(browser: &Browser, metric: &str) -> i64 {
    let value = browser
        .eval(&format!(
            "const c = document.querySelector('.chart[data-metric=\"{metric}\"]'); return c ? Number(c.dataset.points) : -1;"
        ))
        .await;
    value.as_i64().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_runs_live_training_comparison_and_predictions() {
    require_trainer();
    let env = TestEnv::new(automl_common::db::Backend::Sqlite)
        .await
        .expect("env");
    env.objects
        .put_bytes(
            &env.objects.datasets_bucket,
            "upload/part2.csv",
            clinc_data("clinc-intents-part2.csv"),
        )
        .await
        .expect("upload");
    let trainer = slow_trainer(env.path());
    let mut vars = process_env(&env, &env.path().join("automl"));
    vars.push((
        "AUTOML__TRAINING_SERVICE__ALGORITHMS__SLOW__COMMAND",
        trainer.display().to_string(),
    ));
    let automl = Automl::spawn(env.path(), &vars);
    let web = format!("http://{}", automl.addr("web"));
    let dm = automl.addr("data-management");
    let training = automl.addr("training-service");
    let metadata = automl.addr("metadata-store");
    let prediction = automl.addr("prediction-service");
    grpcurl_json(
        &dm,
        "data_management.DataManagementService/CreateDataset",
        r#"{"name":"clinc","dataset_type":"TEXT_INTENT","bucket":"mini-automl-dm","path":"upload/part2.csv"}"#,
    );
    grpcurl_json(
        &dm,
        "data_management.DataManagementService/PrepareTrainingDataset",
        r#"{"dataset_id":"1"}"#,
    );

    // Two real trainings that differ in LR.
    let first = train(
        &training,
        "first",
        "intent-classification",
        r#"{"LR":"4","EPOCHS":"5"}"#,
    );
    wait_for_job(&training, first, &["succeed"]);
    let second = train(
        &training,
        "second",
        "intent-classification",
        r#"{"LR":"2","EPOCHS":"5"}"#,
    );
    wait_for_job(&training, second, &["succeed"]);
    let run = grpcurl_json(
        &metadata,
        "metadata_store.MetadataStoreService/GetRunStatus",
        &format!(r#"{{"run_id":"{first}"}}"#),
    );
    let epochs = run["runInfo"]["epochs"].as_object().expect("epochs").len() as i64;
    assert_eq!(epochs, 5);

    let browser = Browser::start().await;

    // The runs table lists both runs, with their parameters and metrics.
    browser.goto(&format!("{web}/runs")).await;
    browser
        .wait_for_css(&format!("tr.run[data-run=\"{first}\"]"), WAIT)
        .await;
    let row = browser
        .text(&format!("tr.run[data-run=\"{second}\"]"))
        .await;
    assert!(row.contains("LR=2") && row.contains("EPOCHS=5"), "{row}");
    assert!(browser.count("th a[data-sort=\"best:val_accuracy\"]").await == 1);
    // Sorted by best validation accuracy, descending: the order metadata-store gives.
    browser.click("th a[data-sort=\"best:val_accuracy\"]").await;
    browser
        .wait_for_js("location.search.includes('sort=best%3Aval_accuracy')", WAIT)
        .await;
    browser
        .wait_for_css(&format!("tr.run[data-run=\"{first}\"]"), WAIT)
        .await;

    // The run page: one chart point per recorded epoch for each metric.
    browser.goto(&format!("{web}/runs/{first}")).await;
    browser
        .wait_for_css(".chart[data-metric=\"loss\"]", WAIT)
        .await;
    for metric in ["loss", "accuracy", "val_accuracy"] {
        assert_eq!(points(&browser, metric).await, epochs, "{metric}");
    }
    let lineage = browser.text("dl.lineage").await;
    assert!(
        lineage.contains("hashAg==") && lineage.contains("automl-train"),
        "{lineage}"
    );

    // Compare: the curves of both runs overlaid; LR differs, EPOCHS does not.
    browser
        .goto(&format!("{web}/compare?run={first}&run={second}"))
        .await;
    browser
        .wait_for_css(".chart[data-metric=\"loss\"]", WAIT)
        .await;
    assert_eq!(points(&browser, "loss").await, 2 * epochs);
    assert_eq!(browser.count("tr.differs[data-param=\"LR\"]").await, 1);
    assert_eq!(browser.count("tr.differs[data-param=\"EPOCHS\"]").await, 0);
    assert_eq!(browser.count("tr[data-param=\"EPOCHS\"]").await, 1);

    // The predict box answers what Predict answers.
    let sentence = "will it rain in london tomorrow";
    let expected = grpcurl_json(
        &prediction,
        "prediction.PredictionService/Predict",
        &format!(r#"{{"runId":"{first}","document":"{sentence}"}}"#),
    );
    let label = expected["label"].as_str().expect("label").to_string();
    browser.goto(&format!("{web}/models")).await;
    browser.wait_for_css("#predict-run", WAIT).await;
    browser
        .eval(&format!(
            "document.getElementById('predict-run').value = '{first}'; return true;"
        ))
        .await;
    browser.fill("#predict-document", sentence).await;
    browser.click("#predict-button").await;
    let shown = browser
        .wait_for_text("#predict-result .predict-label", &label, WAIT)
        .await;
    assert_eq!(shown.trim(), label);
    assert!(browser.count("#predict-result .predict-top li").await >= 1);
    // Having predicted, the model shows as loaded.
    browser.goto(&format!("{web}/models")).await;
    browser
        .wait_for_text("#loaded-models", &first.to_string(), WAIT)
        .await;

    // A training in progress: its run page gains points and its job page log lines, live.
    let slow = train(
        &training,
        "slow",
        "slow",
        r#"{"EPOCHS":"12","EPOCH_SLEEP":"1"}"#,
    );
    wait_for_job(&training, slow, &["running"]);
    browser.goto(&format!("{web}/jobs/{slow}")).await;
    browser
        .wait_for_text("#job-log", "slow trainer: epoch 2", WAIT)
        .await;
    browser.wait_for_text("#job-status", "running", WAIT).await;
    browser
        .wait_for_text("#job-log", "slow trainer: epoch 4", WAIT)
        .await;
    browser.goto(&format!("{web}/runs/{slow}")).await;
    browser
        .wait_for_css(".chart[data-metric=\"loss\"]", WAIT)
        .await;
    let before = points(&browser, "loss").await;
    assert!((1..12).contains(&before), "{before} points at first");
    browser
        .wait_for_js(
            &format!("Number(document.querySelector('.chart[data-metric=\"loss\"]').dataset.points) > {before}"),
            WAIT,
        )
        .await;
    browser
        .wait_for_js(
            "Number(document.querySelector('.chart[data-metric=\"loss\"]').dataset.points) === 12",
            WAIT,
        )
        .await;
    browser.wait_for_text("#run-state", "succeeded", WAIT).await;

    // Cancel from the job page.
    let doomed = train(
        &training,
        "doomed",
        "slow",
        r#"{"EPOCHS":"60","EPOCH_SLEEP":"1"}"#,
    );
    wait_for_job(&training, doomed, &["running"]);
    browser.goto(&format!("{web}/jobs/{doomed}")).await;
    browser.wait_for_text("#job-status", "running", WAIT).await;
    browser.click("#cancel-form button").await;
    browser.wait_for_text("#job-status", "canceled", WAIT).await;
    assert_eq!(browser.count("#cancel-form").await, 0);
    assert_eq!(wait_for_job(&training, doomed, &["canceled"]), "canceled");

    // An experiment: its trials, the objective of each, the best one marked.
    grpcurl_json(
        &training,
        "training.TrainingService/CreateExperiment",
        r#"{"spec":{"dataset_id":"1","train_data_version_hash":"hashAg==","algorithm":"intent-classification","parameters":{"EPOCHS":"3"},"objective":{"metric":"val_accuracy"},"search_space":[{"name":"LR","type":"PARAMETER_DOUBLE","min":1,"max":4,"grid_points":2}],"search_algorithm":"SEARCH_GRID","parallel_trials":2}}"#,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let experiment = grpcurl_json(
            &training,
            "training.TrainingService/GetExperiment",
            r#"{"experiment_id":1}"#,
        );
        if experiment["status"] == "EXPERIMENT_SUCCEEDED" {
            break;
        }
        assert!(
            experiment["status"].is_null() && std::time::Instant::now() < deadline,
            "{experiment}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    browser.goto(&format!("{web}/experiments")).await;
    browser
        .wait_for_text("tr[data-experiment=\"1\"]", "succeeded", WAIT)
        .await;
    browser.goto(&format!("{web}/experiments/1")).await;
    browser
        .wait_for_css(".chart[data-metric=\"val_accuracy\"]", WAIT)
        .await;
    assert_eq!(browser.count("#trials tbody tr").await, 2);
    assert_eq!(browser.count("#trials tr.best").await, 1);
    assert_eq!(points(&browser, "val_accuracy").await, 2);

    // The other pages render with what exists.
    browser.goto(&format!("{web}/datasets/1")).await;
    browser
        .wait_for_text("#snapshot-table", "hashAg==", WAIT)
        .await;
    browser.goto(&format!("{web}/jobs")).await;
    browser
        .wait_for_css(&format!("#all-jobs tr.job[data-job=\"{slow}\"]"), WAIT)
        .await;
    // A phone-width screen gets the same page without horizontal overflow of the page itself.
    browser.set_window_size(390, 844).await;
    browser.goto(&format!("{web}/runs/{first}")).await;
    browser
        .wait_for_css(".chart[data-metric=\"loss\"]", WAIT)
        .await;
    // Wide tables scroll inside their own box; the page itself does not scroll sideways.
    let fits = browser
        .eval("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
        .await;
    if fits != serde_json::json!(true) {
        let wide = browser
            .eval(
                "return Array.from(document.querySelectorAll('body *'))\
                   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)\
                   .map(e => e.tagName + '.' + e.className + '#' + e.id).slice(0, 10);",
            )
            .await;
        panic!("the run page is wider than a phone: {wide}");
    }
    browser.close().await;
}

/// `automl health` (the image's HEALTHCHECK) answers for a process serving the console alone:
/// SERVING while it runs, a failure once it is gone. `serve web` opens no object store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_a_console_serving_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let web = Automl::spawn_serving(
        Path::new(env!("CARGO_BIN_EXE_automl")),
        "web",
        &["web"],
        dir.path(),
        &[],
        std::process::Stdio::inherit(),
    );
    let port = web
        .addr("web")
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let health = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_automl"))
            .arg("health")
            .current_dir(dir.path())
            .env("AUTOML__WEB__PORT", &port)
            // Nothing listens on the services' ports: they are skipped.
            .env("AUTOML__DATA_MANAGEMENT__PORT", "1")
            .env("AUTOML__METADATA_STORE__PORT", "1")
            .env("AUTOML__PREDICTION_SERVICE__PORT", "1")
            .env("AUTOML__TRAINING_SERVICE__PORT", "1")
            .output()
            .expect("automl health runs")
    };
    let output = tokio::task::block_in_place(health);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("web") && stdout.contains("SERVING"),
        "{stdout}"
    );
    assert!(
        !dir.path().join("automl-data").exists(),
        "the console alone keeps no data directory"
    );
    web.terminate();
    let output = tokio::task::block_in_place(health);
    assert!(!output.status.success());
}
