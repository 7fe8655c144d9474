//! Experiments: a hyperparameter search whose trials are ordinary training jobs.
//!
//! An experiment names what every trial trains (dataset version, algorithm, fixed
//! parameters), an [`Objective`] read from the trials' epoch metrics, a search space checked
//! against the parameters the algorithm declares, a [`SearchAlgorithm`] ([`search`]) and a
//! budget. The driver (in the service) queues trials, reads their epochs, stops weak ones by
//! the median rule and ends the experiment with its best trial.

pub mod search;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ParameterConfig, ParameterKind};
use crate::error::TrainingError;
use crate::model::{JobStatus, MAX_TEXT, Priority, Resources, check_parameter_key};

/// Most trials an experiment may run.
pub const MAX_TRIALS: u32 = 1000;
/// Most trials an experiment may run at once.
pub const MAX_PARALLEL: u32 = 64;
/// Most searched parameters.
pub const MAX_SEARCHED: usize = 32;
/// Most values of a categorical parameter, and most grid points of a range.
pub const MAX_VALUES: usize = 100;
/// Trials an experiment runs when it names no budget (grid search runs its grid).
pub const DEFAULT_MAX_TRIALS: u32 = 10;
/// Failed trials that fail an experiment that names no limit.
pub const DEFAULT_MAX_FAILED: u32 = 3;
/// Grid points of a range that names none.
pub const DEFAULT_GRID_POINTS: u32 = 3;
/// Median stop: succeeded trials needed before any trial is stopped (Katib's default).
pub const DEFAULT_MIN_TRIALS: u32 = 3;
/// Median stop: the first epoch a trial may be stopped at (Katib's default).
pub const DEFAULT_START_STEP: u32 = 4;

/// Whether a larger objective is better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Larger is better (accuracy).
    #[default]
    Maximize,
    /// Smaller is better (loss).
    Minimize,
}

impl Direction {
    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Maximize => a > b,
            Direction::Minimize => a < b,
        }
    }

    /// The best of `values`.
    pub fn best(self, values: &[f64]) -> Option<f64> {
        values
            .iter()
            .copied()
            .reduce(|a, b| if self.better(b, a) { b } else { a })
    }

    /// Whether `value` reaches `goal`.
    pub fn reaches(self, value: f64, goal: f64) -> bool {
        match self {
            Direction::Maximize => value >= goal,
            Direction::Minimize => value <= goal,
        }
    }
}

/// What a trial is judged by.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// An epoch metric of the trainer (`val_accuracy`).
    pub metric: String,
    /// Maximize or minimize.
    pub direction: Direction,
    /// Ends the experiment once a succeeded trial reaches it.
    pub goal: Option<f64>,
}

/// The kind of a searched parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceKind {
    /// Whole numbers from `min` to `max`.
    #[default]
    Int,
    /// Real numbers from `min` to `max`.
    Double,
    /// One of `values`.
    Categorical,
}

/// One searched parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchParameter {
    /// The trainer parameter.
    pub name: String,
    /// Its kind.
    pub kind: SpaceKind,
    /// Lower bound (`Int`, `Double`), included.
    pub min: f64,
    /// Upper bound (`Int`, `Double`), included.
    pub max: f64,
    /// Sampled on a log scale.
    pub log: bool,
    /// The values of a `Categorical` parameter.
    pub values: Vec<String>,
    /// Grid search: points of a range (filled in at creation).
    pub grid_points: u32,
}

/// How trial parameters are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchAlgorithm {
    /// Independent uniform draws.
    #[default]
    Random,
    /// Every combination of grid points, in order.
    Grid,
    /// Tree-structured Parzen Estimator.
    Tpe,
}

/// When weak trials are stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// The median rule is on.
    pub median: bool,
    /// Succeeded trials needed before any is stopped.
    pub min_trials_required: u32,
    /// First epoch a trial may be stopped at.
    pub start_step: u32,
}

/// An experiment as created, defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSpec {
    /// Its name.
    pub name: String,
    /// Dataset of every trial.
    pub dataset_id: String,
    /// Snapshot of every trial.
    pub train_data_version_hash: String,
    /// Algorithm of every trial.
    pub algorithm: String,
    /// Fixed parameters of every trial.
    pub parameters: BTreeMap<String, String>,
    /// Model name of the trials' artifacts.
    pub output_model_name: String,
    /// Resources of every trial.
    pub resources: Resources,
    /// Priority of every trial.
    pub priority: Priority,
    /// What trials are judged by.
    pub objective: Objective,
    /// The searched parameters.
    pub search_space: Vec<SearchParameter>,
    /// How trials' parameters are chosen.
    pub search: SearchAlgorithm,
    /// Seed of the random choices.
    pub seed: u64,
    /// Trials in all.
    pub max_trials: u32,
    /// Trials at once.
    pub parallel_trials: u32,
    /// Failed trials that fail the experiment.
    pub max_failed_trials: u32,
    /// When weak trials are stopped.
    pub early_stopping: EarlyStopping,
}

/// The state of an experiment, numbered as the contract's `ExperimentStatus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ExperimentStatus {
    /// Trials are being run.
    #[default]
    Running,
    /// Its trials have ended (or the goal was reached) and one succeeded.
    Succeeded,
    /// Too many trials failed, or none succeeded.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl ExperimentStatus {
    /// The contract's number, also stored in SQL.
    pub fn number(self) -> i64 {
        match self {
            ExperimentStatus::Running => 0,
            ExperimentStatus::Succeeded => 1,
            ExperimentStatus::Failed => 2,
            ExperimentStatus::Stopped => 3,
        }
    }

    /// From the stored number.
    pub fn from_number(number: i64) -> Result<Self, TrainingError> {
        Ok(match number {
            0 => ExperimentStatus::Running,
            1 => ExperimentStatus::Succeeded,
            2 => ExperimentStatus::Failed,
            3 => ExperimentStatus::Stopped,
            other => return Err(TrainingError::Corrupt(format!("experiment status {other}"))),
        })
    }
}

/// A stored experiment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Experiment {
    /// Its id.
    pub experiment_id: i64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its state.
    pub status: ExperimentStatus,
    /// Why it is in that state.
    pub message: String,
    /// What it searches.
    pub spec: ExperimentSpec,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

/// A stored trial with its job's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trial {
    /// 1, 2, ... within the experiment.
    pub number: i64,
    /// Its training job, also its run id.
    pub job_id: i64,
    /// The values the search chose.
    pub parameters: BTreeMap<String, String>,
    /// The objective at each epoch read so far.
    pub curve: Vec<f64>,
    /// The job has ended and its curve was read after.
    pub settled: bool,
    /// The epoch the median rule stopped it at (0: not stopped).
    pub early_stopped_epoch: i64,
    /// Its job's state.
    pub status: JobStatus,
    /// Its job's message.
    pub message: String,
    /// A cancel of its job was asked for.
    pub canceling: bool,
}

impl Trial {
    /// Its objective: the value at its last epoch.
    pub fn objective(&self) -> Option<f64> {
        self.curve.last().copied()
    }

    /// Ended, read, and fit to be the best: it succeeded and reported the objective.
    pub fn completed(&self) -> bool {
        self.settled && self.status == JobStatus::Succeed && !self.curve.is_empty()
    }

    /// Ended, read, and counted as a failure: its job failed, or it succeeded without ever
    /// reporting the objective.
    pub fn failed(&self) -> bool {
        self.settled
            && (self.status == JobStatus::Failure
                || (self.status == JobStatus::Succeed && self.curve.is_empty()))
    }
}

/// An experiment with its trials, as clients see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExperimentView {
    /// The experiment.
    pub experiment: Experiment,
    /// Its trials in order.
    pub trials: Vec<Trial>,
}

impl ExperimentView {
    /// The completed trial with the best objective (the first of equals).
    pub fn best(&self) -> Option<&Trial> {
        let direction = self.experiment.spec.objective.direction;
        self.trials.iter().filter(|trial| trial.completed()).fold(
            None,
            |best: Option<&Trial>, trial| match best {
                Some(current)
                    if !direction.better(
                        trial.objective().unwrap_or(f64::NAN),
                        current.objective().unwrap_or(f64::NAN),
                    ) =>
                {
                    Some(current)
                }
                _ => Some(trial),
            },
        )
    }

    /// Whether nothing more will change: the experiment and every trial have ended.
    pub fn is_final(&self) -> bool {
        self.experiment.status != ExperimentStatus::Running
            && self.trials.iter().all(|trial| trial.status.is_final())
    }
}

/// Checks a new experiment against the parameters its algorithm declares (`declared`, empty
/// for an algorithm with a trainer of its own) and the trainer's own check of a parameter
/// set (`check`), and fills in its defaults. Errors name the contract's fields.
pub fn check_experiment(
    spec: &mut ExperimentSpec,
    declared: &[ParameterConfig],
    check: impl Fn(&BTreeMap<String, String>) -> Result<(), String>,
) -> Result<(), TrainingError> {
    let invalid = |message: String| Err(TrainingError::InvalidArgument(message));
    let objective = &spec.objective;
    if objective.metric.is_empty() {
        return invalid(
            "spec.objective.metric is required (an epoch metric such as val_accuracy)".into(),
        );
    }
    if objective.metric.len() > 128 {
        return invalid("spec.objective.metric is longer than 128 bytes".into());
    }
    if objective.goal.is_some_and(|goal| !goal.is_finite()) {
        return invalid("spec.objective.goal must be a finite number".into());
    }
    if spec.search_space.is_empty() {
        return invalid("spec.search_space is required: at least one parameter to search".into());
    }
    if spec.search_space.len() > MAX_SEARCHED {
        return invalid(format!(
            "spec.search_space has more than {MAX_SEARCHED} parameters"
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for parameter in &spec.search_space {
        let name = &parameter.name;
        check_parameter_key(name, "spec.search_space")?;
        if !seen.insert(name.clone()) {
            return invalid(format!("spec.search_space names {name} twice"));
        }
        if spec.parameters.contains_key(name) {
            return invalid(format!(
                "spec.search_space: {name} is also a fixed parameter (spec.parameters)"
            ));
        }
        check_space(parameter, declared, &spec.algorithm)?;
        // The trainer's own check of the range's ends (or every value), with the fixed
        // parameters, as a trial would be checked at submission.
        for value in search::extremes(parameter) {
            let mut parameters = spec.parameters.clone();
            parameters.insert(name.clone(), value.clone());
            if let Err(err) = check(&parameters) {
                return invalid(format!("spec.search_space[{name}] = {value}: {err}"));
            }
        }
    }
    for parameter in &mut spec.search_space {
        if parameter.grid_points == 0 {
            parameter.grid_points = DEFAULT_GRID_POINTS;
        }
    }
    let grid = search::grid_size(&spec.search_space);
    spec.max_trials = match (spec.search, spec.max_trials) {
        (SearchAlgorithm::Grid, 0) => grid.min(u64::from(MAX_TRIALS)) as u32,
        (SearchAlgorithm::Grid, asked) => u64::from(asked).min(grid) as u32,
        (_, 0) => DEFAULT_MAX_TRIALS,
        (_, asked) => asked,
    };
    if spec.max_trials > MAX_TRIALS {
        return invalid(format!("spec.max_trials must be at most {MAX_TRIALS}"));
    }
    if spec.parallel_trials > MAX_PARALLEL {
        return invalid(format!(
            "spec.parallel_trials must be at most {MAX_PARALLEL}"
        ));
    }
    spec.parallel_trials = spec.parallel_trials.max(1).min(spec.max_trials.max(1));
    if spec.max_failed_trials == 0 {
        spec.max_failed_trials = DEFAULT_MAX_FAILED;
    }
    let stopping = &mut spec.early_stopping;
    if stopping.min_trials_required == 0 {
        stopping.min_trials_required = DEFAULT_MIN_TRIALS;
    }
    if stopping.start_step == 0 {
        stopping.start_step = DEFAULT_START_STEP;
    }
    if spec.seed == 0 {
        spec.seed = uuid::Uuid::new_v4().as_u64_pair().0.max(1);
    }
    Ok(())
}

/// Checks one searched parameter's own shape and, when the algorithm declares parameters, its
/// kind and bounds against the declaration.
fn check_space(
    parameter: &SearchParameter,
    declared: &[ParameterConfig],
    algorithm: &str,
) -> Result<(), TrainingError> {
    let name = &parameter.name;
    let field = format!("spec.search_space[{name}]");
    let invalid = |message: String| Err(TrainingError::InvalidArgument(message));
    match parameter.kind {
        SpaceKind::Categorical => {
            if parameter.values.is_empty() || parameter.values.len() > MAX_VALUES {
                return invalid(format!(
                    "{field}: a categorical parameter needs 1 to {MAX_VALUES} values"
                ));
            }
            let unique: std::collections::BTreeSet<&String> = parameter.values.iter().collect();
            if unique.len() != parameter.values.len() {
                return invalid(format!("{field}: values repeat"));
            }
            if parameter
                .values
                .iter()
                .any(|value| value.len() > MAX_TEXT || value.contains('\0'))
            {
                return invalid(format!("{field}: a value is too long or contains NUL"));
            }
        }
        SpaceKind::Int | SpaceKind::Double => {
            let (min, max) = (parameter.min, parameter.max);
            if !min.is_finite() || !max.is_finite() || min > max {
                return invalid(format!(
                    "{field}: min ({min}) and max ({max}) must be numbers with min <= max"
                ));
            }
            if parameter.kind == SpaceKind::Int && (min.fract() != 0.0 || max.fract() != 0.0) {
                return invalid(format!("{field}: an int range needs whole min and max"));
            }
            if parameter.log && min <= 0.0 {
                return invalid(format!("{field}: a log range needs min > 0"));
            }
            if parameter.grid_points as usize > MAX_VALUES {
                return invalid(format!("{field}: grid_points must be at most {MAX_VALUES}"));
            }
        }
    }
    if declared.is_empty() {
        return Ok(());
    }
    let Some(declaration) = declared.iter().find(|d| &d.name == name) else {
        let known: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        return invalid(format!(
            "{field}: {name} is not a parameter of {algorithm} (its parameters: {})",
            known.join(", ")
        ));
    };
    let fits = match (parameter.kind, declaration.kind) {
        (SpaceKind::Categorical, _)
        | (SpaceKind::Int, ParameterKind::Int | ParameterKind::Double)
        | (SpaceKind::Double, ParameterKind::Double) => true,
        (SpaceKind::Double, _) | (SpaceKind::Int, ParameterKind::Categorical) => false,
    };
    if !fits {
        let kind = match declaration.kind {
            ParameterKind::Int => "int",
            ParameterKind::Double => "double",
            ParameterKind::Categorical => "categorical",
        };
        return invalid(format!(
            "{field}: {name} is {kind} for {algorithm}; search it as {kind}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(_: &BTreeMap<String, String>) -> Result<(), String> {
        Ok(())
    }

    fn spec() -> ExperimentSpec {
        ExperimentSpec {
            algorithm: "intent-classification".into(),
            objective: Objective {
                metric: "val_accuracy".into(),
                ..Objective::default()
            },
            search_space: vec![SearchParameter {
                name: "LR".into(),
                kind: SpaceKind::Double,
                min: 0.001,
                max: 0.1,
                log: true,
                ..SearchParameter::default()
            }],
            ..ExperimentSpec::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let mut spec = spec();
        check_experiment(&mut spec, &[], accept).expect("valid");
        assert_eq!(spec.max_trials, DEFAULT_MAX_TRIALS);
        assert_eq!(spec.parallel_trials, 1);
        assert_eq!(spec.max_failed_trials, DEFAULT_MAX_FAILED);
        assert_eq!(spec.early_stopping.min_trials_required, 3);
        assert_eq!(spec.early_stopping.start_step, 4);
        assert_ne!(spec.seed, 0);
        let mut grid = self::spec();
        grid.search = SearchAlgorithm::Grid;
        grid.max_trials = 50;
        check_experiment(&mut grid, &[], accept).expect("valid");
        assert_eq!(grid.max_trials, 3, "never more than the grid");
    }

    #[test]
    fn the_search_space_is_checked_against_the_declarations() {
        let declared: Vec<ParameterConfig> =
            automl_text_classification::declare::parameters("intent-classification")
                .iter()
                .map(ParameterConfig::of_builtin)
                .collect();
        let declared = declared.as_slice();
        let check = |parameters: &BTreeMap<String, String>| {
            let parameters = parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            automl_text_classification::program::check_parameters(
                "intent-classification",
                &parameters,
            )
            .map_err(|err| err.to_string())
        };
        let mut fine = spec();
        check_experiment(&mut fine, declared, check).expect("LR is declared");

        let mut unknown = spec();
        unknown.search_space[0].name = "LEARNING_RATE".into();
        let err = check_experiment(&mut unknown, declared, check).expect_err("unknown");
        assert!(err.to_string().contains("not a parameter"), "{err}");

        let mut out_of_range = spec();
        out_of_range.search_space[0].min = -1.0;
        out_of_range.search_space[0].log = false;
        let err = check_experiment(&mut out_of_range, declared, check).expect_err("negative");
        assert!(err.to_string().contains("LR"), "{err}");

        let mut wrong_kind = spec();
        wrong_kind.search_space[0] = SearchParameter {
            name: "EPOCHS".into(),
            kind: SpaceKind::Double,
            min: 1.0,
            max: 3.0,
            ..SearchParameter::default()
        };
        let err = check_experiment(&mut wrong_kind, declared, check).expect_err("kind");
        assert!(err.to_string().contains("search it as int"), "{err}");

        let mut bad_value = spec();
        bad_value.search_space[0] = SearchParameter {
            name: "OPTIMIZER".into(),
            kind: SpaceKind::Categorical,
            values: vec!["adamw".into(), "rmsprop".into()],
            ..SearchParameter::default()
        };
        let err = check_experiment(&mut bad_value, declared, check).expect_err("value");
        assert!(err.to_string().contains("rmsprop"), "{err}");

        let mut fixed_too = spec();
        fixed_too.parameters.insert("LR".into(), "0.1".into());
        assert!(check_experiment(&mut fixed_too, declared, check).is_err());

        let mut no_metric = spec();
        no_metric.objective.metric.clear();
        let err = check_experiment(&mut no_metric, declared, check).expect_err("metric");
        assert!(err.to_string().contains("spec.objective.metric"), "{err}");
    }
}
