//! `automl experiment create|watch|list|show|stop`: hyperparameter search in training-service.

use std::collections::HashMap;
use std::io::Write;

use automl_proto::training as pb;
use automl_proto::training::training_service_client::TrainingServiceClient;

use crate::client::{Conn, connect};
use crate::training::{ResourceArgs, parse_param};

/// `automl experiment …`
#[derive(Debug, clap::Subcommand)]
pub enum ExperimentCommand {
    /// Start a hyperparameter search; with --watch, follow it to the end.
    Create(Box<CreateArgs>),
    /// Follow an experiment: a line per trial each time it changes, then the result and the
    /// best trial; fails unless the experiment succeeds.
    Watch {
        /// The experiment id.
        experiment_id: i32,
    },
    /// List experiments, oldest first.
    List {
        /// Only experiments in this state (repeatable).
        #[arg(long = "status", value_enum)]
        statuses: Vec<StatusArg>,
    },
    /// Print an experiment: its spec, every trial and the best one.
    Show {
        /// The experiment id.
        experiment_id: i32,
    },
    /// Stop a running experiment and cancel its unfinished trials.
    Stop {
        /// The experiment id.
        experiment_id: i32,
    },
}

/// `automl experiment create`
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Dataset id.
    #[arg(long)]
    dataset: String,
    /// Snapshot version hash (from `automl dataset prepare`).
    #[arg(long)]
    version: String,
    /// The epoch metric a trial is judged by (its value at the trial's last epoch), e.g.
    /// val_accuracy or loss.
    #[arg(long)]
    objective: String,
    /// Lower objective is better (default: higher is better).
    #[arg(long)]
    minimize: bool,
    /// End the experiment as soon as a trial that succeeded reaches this objective.
    #[arg(long)]
    goal: Option<f64>,
    /// A searched parameter (repeatable): NAME=int:MIN..MAX, NAME=double:MIN..MAX,
    /// NAME=log:MIN..MAX (double, log scale), NAME=logint:MIN..MAX (int, log scale) or
    /// NAME=cat:A,B,C; e.g. LR=log:0.0005..0.05, FC_SIZE=int:64..512, OPTIMIZER=cat:sgd,adamw.
    #[arg(long = "search", value_name = "NAME=KIND:VALUES", required = true, value_parser = parse_search)]
    search_space: Vec<pb::SearchParameter>,
    /// Algorithm, a key of the training-service registry; default: the one training-service
    /// names (`automl jobs algorithms`).
    #[arg(long)]
    algorithm: Option<String>,
    /// Experiment name.
    #[arg(long, default_value = "")]
    name: String,
    /// Name of the trials' model artifacts; empty: the experiment name, else `model`.
    #[arg(long, default_value = "")]
    model_name: String,
    /// A fixed trainer parameter `KEY=VALUE` of every trial (repeatable), e.g. EPOCHS=10.
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// How trial parameters are chosen.
    #[arg(long, value_enum, default_value_t = SearchArg::Random)]
    search_algorithm: SearchArg,
    /// Seed of the random choices (the same seed gives the same random trials); 0: one drawn
    /// by training-service and printed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Trials to run in all, failed ones included; 0: 10, or every grid point for grid search.
    #[arg(long, default_value_t = 0)]
    max_trials: i32,
    /// Trials queued or running at once; 0: 1.
    #[arg(long, default_value_t = 0)]
    parallel: i32,
    /// Fail the experiment once this many trials have failed; 0: 3.
    #[arg(long, default_value_t = 0)]
    max_failed: i32,
    /// Cancel a running trial whose best objective so far is worse than the median of the
    /// succeeded trials' at the same epoch.
    #[arg(long)]
    median_stop: bool,
    /// Median stop: trials that must have succeeded before any is stopped; default: 3.
    #[arg(long, requires = "median_stop")]
    median_min_trials: Option<i32>,
    /// Median stop: the first epoch at which a trial may be stopped; default: 4.
    #[arg(long, requires = "median_stop")]
    median_start_epoch: Option<i32>,
    /// Grid search: points of every int or double range (evenly spaced, or evenly in log
    /// space); 0: 3, or every value of an int range with fewer.
    #[arg(long, default_value_t = 0)]
    grid_points: i32,
    /// What each trial's trainer is given, and the trials' priority.
    #[command(flatten)]
    resources: ResourceArgs,
    /// Follow the experiment: a line per trial each time it changes, then the best trial.
    #[arg(long)]
    watch: bool,
}

/// How an experiment chooses its trials' parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SearchArg {
    /// Independent uniform draws (log-uniform for log ranges).
    Random,
    /// Every combination of the parameters' grid points, in order.
    Grid,
    /// Tree-structured Parzen Estimator: random first, then guided by the finished trials.
    Tpe,
}

impl SearchArg {
    fn contract(self) -> pb::SearchAlgorithm {
        match self {
            SearchArg::Random => pb::SearchAlgorithm::SearchRandom,
            SearchArg::Grid => pb::SearchAlgorithm::SearchGrid,
            SearchArg::Tpe => pb::SearchAlgorithm::SearchTpe,
        }
    }
}

/// An experiment's state, as `--status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusArg {
    /// Still running trials.
    Running,
    /// Its trials have ended (or the goal was reached) and one succeeded.
    Succeeded,
    /// Too many trials failed, or none succeeded.
    Failed,
    /// Stopped with `automl experiment stop`.
    Stopped,
}

impl StatusArg {
    fn contract(self) -> pb::ExperimentStatus {
        match self {
            StatusArg::Running => pb::ExperimentStatus::ExperimentRunning,
            StatusArg::Succeeded => pb::ExperimentStatus::ExperimentSucceeded,
            StatusArg::Failed => pb::ExperimentStatus::ExperimentFailed,
            StatusArg::Stopped => pb::ExperimentStatus::ExperimentStopped,
        }
    }
}

/// The forms `--search` takes, for its errors.
const SEARCH_FORMS: &str = "NAME=int:MIN..MAX, NAME=double:MIN..MAX, NAME=log:MIN..MAX \
    (double, log scale), NAME=logint:MIN..MAX (int, log scale) or NAME=cat:A,B,C";

/// `LR=log:0.0005..0.05`, `FC_SIZE=int:64..512`, `OPTIMIZER=cat:sgd,adamw`, … → a searched
/// parameter (grid points left to the server's default).
fn parse_search(text: &str) -> Result<pb::SearchParameter, String> {
    let invalid = |why: String| format!("--search `{text}`: {why}; expected {SEARCH_FORMS}");
    let Some((name, rest)) = text.split_once('=').filter(|(name, _)| !name.is_empty()) else {
        return Err(invalid("no NAME=".into()));
    };
    let Some((kind, values)) = rest.split_once(':') else {
        return Err(invalid("no KIND: after the name".into()));
    };
    let range = || {
        values
            .split_once("..")
            .map(|(min, max)| (min.trim(), max.trim()))
            .ok_or_else(|| invalid(format!("`{values}` is not MIN..MAX")))
    };
    let mut parameter = pb::SearchParameter {
        name: name.to_string(),
        ..Default::default()
    };
    match kind {
        "int" | "logint" => {
            let (min, max) = range()?;
            let whole = |value: &str| {
                value
                    .parse::<i64>()
                    .map_err(|_| invalid(format!("`{value}` is not a whole number")))
            };
            parameter.set_type(pb::ParameterType::ParameterInt);
            parameter.min = whole(min)? as f64;
            parameter.max = whole(max)? as f64;
        }
        "double" | "log" => {
            let (min, max) = range()?;
            let number = |value: &str| {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|number| number.is_finite())
                    .ok_or_else(|| invalid(format!("`{value}` is not a number")))
            };
            parameter.set_type(pb::ParameterType::ParameterDouble);
            parameter.min = number(min)?;
            parameter.max = number(max)?;
        }
        "cat" => {
            let values: Vec<String> = values.split(',').map(str::to_string).collect();
            if values.iter().any(String::is_empty) {
                return Err(invalid("an empty value".into()));
            }
            parameter.set_type(pb::ParameterType::ParameterCategorical);
            parameter.values = values;
            return Ok(parameter);
        }
        other => return Err(invalid(format!("unknown kind `{other}`"))),
    }
    if parameter.min > parameter.max {
        return Err(invalid("MIN is greater than MAX".into()));
    }
    parameter.log = kind.starts_with("log");
    if parameter.log && parameter.min <= 0.0 {
        return Err(invalid("a log range needs MIN > 0".into()));
    }
    Ok(parameter)
}

/// A searched parameter as `--search` takes it: `LR=log:0.0005..0.05`.
fn search_text(parameter: &pb::SearchParameter) -> String {
    let name = &parameter.name;
    match parameter.r#type() {
        pb::ParameterType::ParameterCategorical => {
            format!("{name}=cat:{}", parameter.values.join(","))
        }
        pb::ParameterType::ParameterInt => {
            let kind = if parameter.log { "logint" } else { "int" };
            format!(
                "{name}={kind}:{}..{}",
                parameter.min as i64, parameter.max as i64
            )
        }
        pb::ParameterType::ParameterDouble => {
            let kind = if parameter.log { "log" } else { "double" };
            format!("{name}={kind}:{}..{}", parameter.min, parameter.max)
        }
    }
}

/// `running`, `succeeded`, `failed`, `stopped`.
fn status_name(status: pb::ExperimentStatus) -> &'static str {
    match status {
        pb::ExperimentStatus::ExperimentRunning => "running",
        pb::ExperimentStatus::ExperimentSucceeded => "succeeded",
        pb::ExperimentStatus::ExperimentFailed => "failed",
        pb::ExperimentStatus::ExperimentStopped => "stopped",
    }
}

fn search_name(search: pb::SearchAlgorithm) -> &'static str {
    match search {
        pb::SearchAlgorithm::SearchRandom => "random",
        pb::SearchAlgorithm::SearchGrid => "grid",
        pb::SearchAlgorithm::SearchTpe => "TPE",
    }
}

/// A seed as `--seed` takes it: the contract's int64 carries its 64 bits.
fn seed_text(seed: i64) -> String {
    (seed as u64).to_string()
}

/// About how wide a double of the range `value` bounds is with the four significant digits
/// trials get (`0.0005123`, `12.34`, `1234`).
fn double_width(value: f64) -> usize {
    let magnitude = value.abs();
    if magnitude == 0.0 || !magnitude.is_finite() {
        return 8;
    }
    let sign = usize::from(value < 0.0);
    let exponent = magnitude.log10().floor() as i64;
    let digits = if exponent < 0 {
        // `0.` and the zeros after the point, then the digits.
        2 + (-exponent - 1) as usize + 4
    } else {
        (exponent as usize + 1).max(5)
    };
    sign + digits
}

/// `0.9312`, or `-` before the first epoch.
fn objective_text(objective: Option<f64>) -> String {
    objective.map_or_else(|| "-".to_string(), |value| format!("{value:.4}"))
}

/// `status: message`, or the status alone.
fn with_message(status: &str, message: &str) -> String {
    if message.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {message}")
    }
}

/// Whether a trial has ended.
fn trial_ended(trial: &pb::Trial) -> bool {
    matches!(
        trial.status(),
        pb::TrainingStatus::Succeed | pb::TrainingStatus::Failure | pb::TrainingStatus::Canceled
    )
}

/// `running`, `succeed`, `canceled (early stopped at epoch 4)`, `failure (…)`.
fn trial_state(trial: &pb::Trial) -> String {
    let status = trial.status().as_str_name();
    match trial.status() {
        pb::TrainingStatus::Failure | pb::TrainingStatus::Canceled if !trial.message.is_empty() => {
            format!("{status} ({})", trial.message)
        }
        _ => status.to_string(),
    }
}

/// The searched parameters a trial got, in the spec's order: `LR=0.003 FC_SIZE=256`.
fn trial_parameters(names: &[String], trial: &pb::Trial) -> String {
    names
        .iter()
        .filter_map(|name| {
            trial
                .parameters
                .get(name)
                .map(|value| format!("{name}={value}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The trial table of one experiment: a header, then a line per trial.
struct TrialTable {
    /// The searched parameters, in the spec's order.
    names: Vec<String>,
    parameters_width: usize,
    metric: String,
}

impl TrialTable {
    fn of(spec: &pb::ExperimentSpec) -> Self {
        let names = spec.search_space.iter().map(|p| p.name.clone()).collect();
        // What a value of each parameter probably takes (doubles come with four significant
        // digits), so that most rows line up.
        let parameters_width = spec
            .search_space
            .iter()
            .map(|parameter| {
                let value = match parameter.r#type() {
                    pb::ParameterType::ParameterCategorical => {
                        parameter.values.iter().map(String::len).max().unwrap_or(0)
                    }
                    pb::ParameterType::ParameterInt => (parameter.min as i64)
                        .to_string()
                        .len()
                        .max((parameter.max as i64).to_string().len()),
                    pb::ParameterType::ParameterDouble => {
                        double_width(parameter.min).max(double_width(parameter.max))
                    }
                };
                parameter.name.len() + 1 + value + 1
            })
            .sum::<usize>()
            .max("PARAMETERS".len() + 1)
            - 1;
        let metric = spec
            .objective
            .as_ref()
            .map(|objective| objective.metric.clone())
            .unwrap_or_default();
        TrialTable {
            names,
            parameters_width,
            metric,
        }
    }

    fn header(&self) -> String {
        let width = self.parameters_width;
        let objective = self.metric.to_uppercase();
        let objective_width = objective.len().max(9);
        format!(
            "{:<6} {:<6} {:<width$} {:<6} {:<objective_width$} STATE",
            "TRIAL", "JOB", "PARAMETERS", "EPOCHS", objective
        )
    }

    fn row(&self, trial: &pb::Trial) -> String {
        let width = self.parameters_width;
        let objective_width = self.metric.len().max(9);
        format!(
            "{:<6} {:<6} {:<width$} {:<6} {:<objective_width$} {}",
            trial.trial_number,
            trial.job_id,
            trial_parameters(&self.names, trial),
            trial.epochs,
            objective_text(trial.objective),
            trial_state(trial)
        )
    }
}

/// The run id of a trial (Predict's `--run`): its job id when the server leaves it empty.
fn run_of(trial: &pb::Trial) -> String {
    if trial.run_id.is_empty() {
        trial.job_id.to_string()
    } else {
        trial.run_id.clone()
    }
}

/// `best: trial 7 (run 42) LR=0.003 FC_SIZE=256 val_accuracy 0.9312`
fn best_line(experiment: &pb::Experiment, best: &pb::Trial) -> String {
    let spec = experiment.spec.clone().unwrap_or_default();
    let table = TrialTable::of(&spec);
    let parameters = trial_parameters(&table.names, best);
    let parameters = if parameters.is_empty() {
        String::new()
    } else {
        format!(" {parameters}")
    };
    format!(
        "best: trial {} (run {}){parameters} {} {}",
        best.trial_number,
        run_of(best),
        table.metric,
        objective_text(best.objective)
    )
}

/// Prints the best trial and how to ask its model, if there is one.
fn print_best(experiment: &pb::Experiment) {
    match &experiment.best_trial {
        Some(best) => {
            println!("{}", best_line(experiment, best));
            println!("  automl predict --run {} \"TEXT\"", run_of(best));
        }
        None => println!("best: none yet (no trial has succeeded)"),
    }
}

/// `automl experiment …`
pub async fn run(server: &str, command: ExperimentCommand) -> anyhow::Result<()> {
    let mut client = TrainingServiceClient::new(connect(server).await?);
    match command {
        ExperimentCommand::Create(args) => create(&mut client, *args).await?,
        ExperimentCommand::Watch { experiment_id } => watch(&mut client, experiment_id).await?,
        ExperimentCommand::List { statuses } => {
            let listed = client
                .list_experiments(pb::ListExperimentsRequest {
                    statuses: statuses
                        .into_iter()
                        .map(|status| status.contract().into())
                        .collect(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!(
                "{:<6} {:<20} {:<10} {:<9} {:<10} MESSAGE",
                "ID", "NAME", "STATUS", "TRIALS", "BEST"
            );
            for experiment in listed.experiments {
                let spec = experiment.spec.clone().unwrap_or_default();
                let ended = experiment.trials.iter().filter(|t| trial_ended(t)).count();
                let best = experiment
                    .best_trial
                    .as_ref()
                    .and_then(|best| best.objective);
                println!(
                    "{:<6} {:<20} {:<10} {:<9} {:<10} {}",
                    experiment.experiment_id,
                    spec.name,
                    status_name(experiment.status()),
                    format!("{ended}/{}", spec.max_trials),
                    objective_text(best),
                    experiment.message
                );
            }
        }
        ExperimentCommand::Show { experiment_id } => {
            let experiment = client
                .get_experiment(pb::GetExperimentRequest { experiment_id })
                .await?
                .into_inner();
            show(&experiment);
        }
        ExperimentCommand::Stop { experiment_id } => {
            let experiment = client
                .stop_experiment(pb::GetExperimentRequest { experiment_id })
                .await?
                .into_inner();
            println!(
                "experiment {} {}",
                experiment.experiment_id,
                with_message(status_name(experiment.status()), &experiment.message)
            );
        }
    }
    Ok(())
}

/// `automl experiment create`: creates the experiment; with `--watch`, follows it to the end
/// and fails unless it succeeds.
async fn create(client: &mut TrainingServiceClient<Conn>, args: CreateArgs) -> anyhow::Result<()> {
    let named_algorithm = args.algorithm.is_some();
    let search_space = args
        .search_space
        .into_iter()
        .map(|mut parameter| {
            if parameter.r#type() != pb::ParameterType::ParameterCategorical {
                parameter.grid_points = args.grid_points;
            }
            parameter
        })
        .collect();
    let objective_type = if args.minimize {
        pb::ObjectiveType::ObjectiveMinimize
    } else {
        pb::ObjectiveType::ObjectiveMaximize
    };
    let early_stopping = if args.median_stop {
        pb::EarlyStopping {
            rule: pb::EarlyStoppingRule::EarlyStoppingMedian.into(),
            min_trials_required: args.median_min_trials.unwrap_or(0),
            start_step: args.median_start_epoch.unwrap_or(0),
        }
    } else {
        pb::EarlyStopping::default()
    };
    let (resources, priority) = args.resources.contract();
    let experiment = client
        .create_experiment(pb::CreateExperimentRequest {
            spec: Some(pb::ExperimentSpec {
                name: args.name,
                dataset_id: args.dataset,
                train_data_version_hash: args.version,
                algorithm: args.algorithm.unwrap_or_default(),
                parameters: args.params.into_iter().collect(),
                output_model_name: args.model_name,
                resources: Some(resources),
                priority,
                objective: Some(pb::Objective {
                    metric: args.objective,
                    r#type: objective_type.into(),
                    goal: args.goal,
                }),
                search_space,
                search_algorithm: args.search_algorithm.contract().into(),
                // The seed's bits, as the contract carries them.
                seed: args.seed as i64,
                max_trials: args.max_trials,
                parallel_trials: args.parallel,
                max_failed_trials: args.max_failed,
                early_stopping: Some(early_stopping),
            }),
        })
        .await?
        .into_inner();
    let spec = experiment.spec.clone().unwrap_or_default();
    if !named_algorithm {
        eprintln!("algorithm: {}", spec.algorithm);
    }
    println!(
        "experiment {} created: {} search, seed {}, {} trials, {} at a time",
        experiment.experiment_id,
        search_name(spec.search_algorithm()),
        seed_text(spec.seed),
        spec.max_trials,
        spec.parallel_trials
    );
    if !args.watch {
        return Ok(());
    }
    watch(client, experiment.experiment_id).await
}

/// What a printed trial line showed: a trial is printed again once this changes.
#[derive(Debug, PartialEq)]
struct Shown {
    status: pb::TrainingStatus,
    epochs: i32,
    objective: Option<u64>,
    state: String,
}

impl Shown {
    fn of(trial: &pb::Trial) -> Self {
        Shown {
            status: trial.status(),
            epochs: trial.epochs,
            objective: trial.objective.map(f64::to_bits),
            state: trial_state(trial),
        }
    }
}

/// Follows an experiment: the trial table's header once, then on every update a line per
/// trial whose state, epochs or objective changed; at the end, the result and the best trial.
/// Fails unless the experiment succeeds.
async fn watch(client: &mut TrainingServiceClient<Conn>, experiment_id: i32) -> anyhow::Result<()> {
    let mut updates = client
        .watch_experiment(pb::GetExperimentRequest { experiment_id })
        .await?
        .into_inner();
    let mut table: Option<TrialTable> = None;
    let mut shown: HashMap<i32, Shown> = HashMap::new();
    let mut last = None;
    while let Some(experiment) = updates.message().await? {
        let table = table.get_or_insert_with(|| {
            let table = TrialTable::of(&experiment.spec.clone().unwrap_or_default());
            println!("{}", table.header());
            table
        });
        for trial in &experiment.trials {
            let now = Shown::of(trial);
            if shown.get(&trial.trial_number) != Some(&now) {
                println!("{}", table.row(trial));
                shown.insert(trial.trial_number, now);
            }
        }
        let _ = std::io::stdout().flush();
        last = Some(experiment);
    }
    let last =
        last.ok_or_else(|| anyhow::anyhow!("the experiment stream ended without an update"))?;
    let status = status_name(last.status());
    println!(
        "experiment {experiment_id} {}",
        with_message(status, &last.message)
    );
    print_best(&last);
    anyhow::ensure!(
        last.status() == pb::ExperimentStatus::ExperimentSucceeded,
        "experiment {experiment_id} ended {status}"
    );
    Ok(())
}

/// `automl experiment show`: the spec, every trial and the best one.
fn show(experiment: &pb::Experiment) {
    let spec = experiment.spec.clone().unwrap_or_default();
    let label = |name: &str| format!("{name}:");
    let ended = experiment.trials.iter().filter(|t| trial_ended(t)).count();
    let name = if spec.name.is_empty() {
        String::new()
    } else {
        format!(" ({})", spec.name)
    };
    println!(
        "experiment {}{name} {}",
        experiment.experiment_id,
        with_message(status_name(experiment.status()), &experiment.message)
    );
    println!(
        "{:<16} {}, updated {}",
        label("created"),
        experiment.created_at,
        experiment.updated_at
    );
    println!(
        "{:<16} {} version {}",
        label("dataset"),
        spec.dataset_id,
        spec.train_data_version_hash
    );
    println!("{:<16} {}", label("algorithm"), spec.algorithm);
    println!("{:<16} {}", label("model name"), spec.output_model_name);
    let mut fixed: Vec<String> = spec
        .parameters
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    fixed.sort();
    let fixed = if fixed.is_empty() {
        "none".to_string()
    } else {
        fixed.join(" ")
    };
    println!("{:<16} {fixed}", label("fixed"));
    let objective = spec.objective.clone().unwrap_or_default();
    let direction = match objective.r#type() {
        pb::ObjectiveType::ObjectiveMaximize => "maximize",
        pb::ObjectiveType::ObjectiveMinimize => "minimize",
    };
    let goal = objective
        .goal
        .map(|goal| format!(", goal {goal}"))
        .unwrap_or_default();
    println!(
        "{:<16} {direction} {}{goal}",
        label("objective"),
        objective.metric
    );
    let search = spec.search_algorithm();
    println!("{}", label("search space"));
    for parameter in &spec.search_space {
        let points = if search == pb::SearchAlgorithm::SearchGrid
            && parameter.r#type() != pb::ParameterType::ParameterCategorical
        {
            format!(" ({} grid points)", parameter.grid_points)
        } else {
            String::new()
        };
        println!("  {}{points}", search_text(parameter));
    }
    println!(
        "{:<16} {}, seed {}",
        label("search"),
        search_name(search),
        seed_text(spec.seed)
    );
    println!(
        "{:<16} {} trials ({ended} ended), {} at a time, fails after {} failed",
        label("budget"),
        spec.max_trials,
        spec.parallel_trials,
        spec.max_failed_trials
    );
    let stopping = spec.early_stopping.unwrap_or_default();
    let stopping = match stopping.rule() {
        pb::EarlyStoppingRule::EarlyStoppingNone => "none".to_string(),
        pb::EarlyStoppingRule::EarlyStoppingMedian => format!(
            "median, from epoch {}, once {} trials have succeeded",
            stopping.start_step, stopping.min_trials_required
        ),
    };
    println!("{:<16} {stopping}", label("early stopping"));
    let resources = spec.resources.clone().unwrap_or_default();
    let mut each = Vec::new();
    if !resources.cpu.is_empty() {
        each.push(format!("cpu {}", resources.cpu));
    }
    if !resources.memory.is_empty() {
        each.push(format!("memory {}", resources.memory));
    }
    if resources.gpus > 0 {
        each.push(format!("gpus {}", resources.gpus));
    }
    if resources.max_runtime_seconds > 0 {
        each.push(format!("max runtime {} s", resources.max_runtime_seconds));
    }
    let priority = match spec.priority() {
        pb::JobPriority::PriorityLow => "low",
        pb::JobPriority::PriorityNormal => "normal",
        pb::JobPriority::PriorityHigh => "high",
    };
    each.push(format!("priority {priority}"));
    println!("{:<16} {}", label("each trial"), each.join(", "));
    println!();
    let table = TrialTable::of(&spec);
    println!("{}", table.header());
    for trial in &experiment.trials {
        println!("{}", table.row(trial));
    }
    println!();
    print_best(experiment);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn searched(text: &str) -> pb::SearchParameter {
        parse_search(text).expect("a valid --search")
    }

    #[test]
    fn parses_int_and_double_ranges() {
        let size = searched("FC_SIZE=int:64..512");
        assert_eq!(size.name, "FC_SIZE");
        assert_eq!(size.r#type(), pb::ParameterType::ParameterInt);
        assert_eq!((size.min, size.max, size.log), (64.0, 512.0, false));

        let dropout = searched("X=double:0..1");
        assert_eq!(dropout.r#type(), pb::ParameterType::ParameterDouble);
        assert_eq!((dropout.min, dropout.max, dropout.log), (0.0, 1.0, false));

        let shift = searched("S=double:-0.5..1.5e0");
        assert_eq!((shift.min, shift.max), (-0.5, 1.5));
        assert_eq!(searched("N=int:-3..-1").min, -3.0);
    }

    #[test]
    fn parses_log_ranges() {
        let lr = searched("LR=log:0.0005..0.05");
        assert_eq!(lr.r#type(), pb::ParameterType::ParameterDouble);
        assert_eq!((lr.min, lr.max, lr.log), (0.0005, 0.05, true));

        let small = searched("LR=log:5e-4..5e-2");
        assert_eq!((small.min, small.max), (0.0005, 0.05));

        let n = searched("N=logint:8..512");
        assert_eq!(n.r#type(), pb::ParameterType::ParameterInt);
        assert_eq!((n.min, n.max, n.log), (8.0, 512.0, true));
    }

    #[test]
    fn parses_categorical_values() {
        let optimizer = searched("OPTIMIZER=cat:sgd,adamw");
        assert_eq!(optimizer.r#type(), pb::ParameterType::ParameterCategorical);
        assert_eq!(optimizer.values, vec!["sgd", "adamw"]);
        assert_eq!(searched("ONE=cat:only").values, vec!["only"]);
        // Only the first `=` and `:` separate: values may hold either.
        assert_eq!(searched("K=cat:a=b,c:d").values, vec!["a=b", "c:d"]);
    }

    #[test]
    fn refuses_malformed_searches_naming_the_flag_and_forms() {
        for text in [
            "",
            "LR",
            "=int:1..2",
            "LR=0.1..0.2",
            "LR=float:0.1..0.2",
            "N=int:1-5",
            "N=int:1..",
            "N=int:..5",
            "N=int:1.5..4",
            "N=int:x..4",
            "X=double:0..nan",
            "X=double:0..inf",
            "X=double:1..0",
            "N=int:9..3",
            "LR=log:0..1",
            "LR=log:-1..1",
            "N=logint:0..8",
            "K=cat:",
            "K=cat:a,,b",
            "K=cat:a,",
        ] {
            let err = parse_search(text).expect_err(text);
            assert!(err.starts_with(&format!("--search `{text}`: ")), "{err}");
            assert!(
                err.contains("NAME=int:MIN..MAX")
                    && err.contains("NAME=double:MIN..MAX")
                    && err.contains("NAME=log:MIN..MAX")
                    && err.contains("NAME=logint:MIN..MAX")
                    && err.contains("NAME=cat:A,B,C"),
                "{err}"
            );
        }
        assert!(
            parse_search("LR=float:0.1..0.2")
                .expect_err("unknown kind")
                .contains("unknown kind `float`")
        );
    }

    #[test]
    fn search_text_reads_back_as_the_same_search() {
        for text in [
            "LR=log:0.0005..0.05",
            "FC_SIZE=int:64..512",
            "N=logint:8..512",
            "X=double:0..1",
            "OPTIMIZER=cat:sgd,adamw",
        ] {
            let parameter = searched(text);
            assert_eq!(search_text(&parameter), text);
            assert_eq!(searched(&search_text(&parameter)), parameter);
        }
    }

    fn trial(number: i32, status: pb::TrainingStatus, message: &str) -> pb::Trial {
        let mut trial = pb::Trial {
            trial_number: number,
            job_id: 40 + number,
            run_id: (40 + number).to_string(),
            parameters: [
                ("LR".to_string(), "0.003".to_string()),
                ("FC_SIZE".to_string(), "256".to_string()),
            ]
            .into(),
            message: message.to_string(),
            epochs: 4,
            objective: Some(0.93124),
            ..Default::default()
        };
        trial.set_status(status);
        trial
    }

    fn experiment() -> pb::Experiment {
        pb::Experiment {
            experiment_id: 3,
            spec: Some(pb::ExperimentSpec {
                objective: Some(pb::Objective {
                    metric: "val_accuracy".into(),
                    ..Default::default()
                }),
                search_space: vec![
                    searched("LR=log:0.0005..0.05"),
                    searched("FC_SIZE=int:64..512"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn trial_rows_show_parameters_in_spec_order_and_why_a_trial_ended() {
        let table = TrialTable::of(&experiment().spec.unwrap_or_default());
        let row = table.row(&trial(
            2,
            pb::TrainingStatus::Canceled,
            "early stopped at epoch 4",
        ));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "2",
                "42",
                "LR=0.003",
                "FC_SIZE=256",
                "4",
                "0.9312",
                "canceled",
                "(early",
                "stopped",
                "at",
                "epoch",
                "4)"
            ]
        );
        let header = table.header();
        assert!(header.starts_with("TRIAL"), "{header}");
        assert!(header.contains("VAL_ACCURACY"), "{header}");
        // The state column starts at the same place in the header and the rows.
        assert_eq!(header.find("STATE"), row.find("canceled"));
        let mut running = trial(1, pb::TrainingStatus::Running, "position 1");
        running.objective = None;
        let row = table.row(&running);
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[4..], ["4", "-", "running"]);
    }

    #[test]
    fn double_widths_fit_four_significant_digits() {
        assert_eq!(double_width(0.0005), "0.0005123".len());
        assert_eq!(double_width(0.05), "0.05123".len());
        assert_eq!(double_width(1.0), "1.234".len());
        assert_eq!(double_width(12.0), "12.34".len());
        assert_eq!(double_width(12345.0), "12345".len());
        assert_eq!(double_width(-0.5), "-0.5123".len());
        assert_eq!(double_width(0.0), 8);
    }

    #[test]
    fn seeds_print_as_their_unsigned_bits() {
        assert_eq!(seed_text(1234), "1234");
        assert_eq!(seed_text(-1), u64::MAX.to_string());
    }

    #[test]
    fn best_line_names_trial_run_parameters_and_objective() {
        let experiment = experiment();
        let best = trial(7, pb::TrainingStatus::Succeed, "");
        assert_eq!(
            best_line(&experiment, &best),
            "best: trial 7 (run 47) LR=0.003 FC_SIZE=256 val_accuracy 0.9312"
        );
    }

    #[test]
    fn a_trial_is_shown_again_only_when_its_line_would_change() {
        let first = trial(1, pb::TrainingStatus::Running, "");
        let mut same = first.clone();
        same.message = "still running".into();
        assert_eq!(Shown::of(&first), Shown::of(&same));
        let mut later = first.clone();
        later.epochs += 1;
        assert_ne!(Shown::of(&first), Shown::of(&later));
        let mut better = first.clone();
        better.objective = Some(0.95);
        assert_ne!(Shown::of(&first), Shown::of(&better));
        let stopped = trial(1, pb::TrainingStatus::Canceled, "early stopped at epoch 4");
        assert_ne!(Shown::of(&first), Shown::of(&stopped));
    }
}
