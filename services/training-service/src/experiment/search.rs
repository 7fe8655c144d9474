//! Choosing trial parameters (grid, random, TPE) and stopping weak trials (the median rule).
//!
//! Every choice is a pure function of the experiment's spec, the trial number and, for TPE,
//! the finished trials: a driver that restarts, or a second replica, chooses the same
//! parameters for the same trial.
//!
//! - **grid**: the cartesian product of each parameter's points (categorical values; a range's
//!   `grid_points` points, evenly spaced, in log space for `log`; every value of an int range
//!   with fewer), enumerated with the last parameter changing fastest.
//! - **random**: each parameter drawn uniformly (log-uniformly for `log`) from a ChaCha8
//!   stream keyed by (seed, trial number).
//! - **TPE** (Bergstra et al., 2011): the first trials (a third of `max_trials`, 3 to 10) are
//!   random; after that the finished trials are split into the best quarter (at least one)
//!   and the rest (early-stopped trials always count among the rest), each parameter gets a
//!   Parzen density per group (a Gaussian per observation, in log space for `log`, with a wide
//!   prior component; smoothed counts for categorical values), 24 candidates are drawn from
//!   the good density and the one with the largest ratio good/rest is chosen.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{Direction, ExperimentSpec, SearchAlgorithm, SearchParameter, SpaceKind};

/// Candidates TPE draws per trial.
const TPE_CANDIDATES: usize = 24;
/// Share of finished trials TPE models as good.
const TPE_GAMMA: f64 = 0.25;

/// A finished trial as the search learns from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Its chosen values.
    pub parameters: BTreeMap<String, String>,
    /// Its objective; `None` for a trial stopped early (always among the worse).
    pub objective: Option<f64>,
}

/// A double as trials receive it: four significant digits.
pub fn format_double(value: f64) -> String {
    let rounded: f64 = format!("{value:.3e}").parse().unwrap_or(value);
    format!("{rounded}")
}

/// The values of a parameter a trial may receive at the ends of its range (every value of a
/// categorical one), formatted as trials receive them.
pub fn extremes(parameter: &SearchParameter) -> Vec<String> {
    match parameter.kind {
        SpaceKind::Categorical => parameter.values.clone(),
        SpaceKind::Int => vec![
            format!("{}", parameter.min as i64),
            format!("{}", parameter.max as i64),
        ],
        SpaceKind::Double => vec![format_double(parameter.min), format_double(parameter.max)],
    }
}

/// A parameter's grid points.
pub fn grid_values(parameter: &SearchParameter) -> Vec<String> {
    let points = parameter.grid_points.max(1) as usize;
    let (min, max) = (parameter.min, parameter.max);
    let mut values: Vec<String> = match parameter.kind {
        SpaceKind::Categorical => return parameter.values.clone(),
        SpaceKind::Int if (max - min + 1.0) as usize <= points => {
            (min as i64..=max as i64).map(|v| v.to_string()).collect()
        }
        kind => (0..points)
            .map(|i| {
                let share = if points == 1 {
                    0.0
                } else {
                    i as f64 / (points - 1) as f64
                };
                let value = if parameter.log {
                    (min.ln() + share * (max.ln() - min.ln())).exp()
                } else {
                    min + share * (max - min)
                };
                match kind {
                    SpaceKind::Int => format!("{}", value.round().clamp(min, max) as i64),
                    _ => format_double(value),
                }
            })
            .collect(),
    };
    values.dedup();
    values
}

/// Points of the grid over `space` (saturating).
pub fn grid_size(space: &[SearchParameter]) -> u64 {
    space
        .iter()
        .map(|parameter| grid_values(parameter).len() as u64)
        .fold(1u64, u64::saturating_mul)
}

/// The grid point of trial `number` (1-based): last parameter fastest.
pub fn grid_point(space: &[SearchParameter], number: u64) -> BTreeMap<String, String> {
    let mut index = number.saturating_sub(1);
    let mut point = BTreeMap::new();
    for parameter in space.iter().rev() {
        let values = grid_values(parameter);
        let size = values.len().max(1) as u64;
        point.insert(
            parameter.name.clone(),
            values[(index % size) as usize].clone(),
        );
        index /= size;
    }
    point
}

/// The random stream of trial `number` of an experiment with `seed`.
fn stream(seed: u64, number: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(number);
    rng
}

/// One uniform draw of `parameter`.
fn draw(parameter: &SearchParameter, rng: &mut ChaCha8Rng) -> String {
    let (min, max) = (parameter.min, parameter.max);
    match parameter.kind {
        SpaceKind::Categorical => {
            parameter.values[rng.random_range(0..parameter.values.len())].clone()
        }
        SpaceKind::Int if parameter.log => {
            let value = rng.random_range(min.ln()..=(max + 1.0).ln()).exp().floor();
            format!("{}", value.clamp(min, max) as i64)
        }
        SpaceKind::Int => format!("{}", rng.random_range(min as i64..=max as i64)),
        SpaceKind::Double if parameter.log => {
            format_double(rng.random_range(min.ln()..=max.ln()).exp().clamp(min, max))
        }
        SpaceKind::Double => format_double(rng.random_range(min..=max)),
    }
}

/// Random search's point for trial `number` (1-based).
pub fn random_point(space: &[SearchParameter], seed: u64, number: u64) -> BTreeMap<String, String> {
    let mut rng = stream(seed, number);
    space
        .iter()
        .map(|parameter| (parameter.name.clone(), draw(parameter, &mut rng)))
        .collect()
}

/// Trials TPE draws at random before it models the finished ones.
pub fn tpe_startup(max_trials: u32) -> usize {
    (max_trials as usize / 3).clamp(3, 10)
}

/// The parameters of trial `number` (1-based), given the finished trials.
pub fn suggest(
    spec: &ExperimentSpec,
    number: u64,
    finished: &[Observation],
) -> BTreeMap<String, String> {
    match spec.search {
        SearchAlgorithm::Grid => grid_point(&spec.search_space, number),
        SearchAlgorithm::Random => random_point(&spec.search_space, spec.seed, number),
        SearchAlgorithm::Tpe => {
            if finished.len() < tpe_startup(spec.max_trials) {
                random_point(&spec.search_space, spec.seed, number)
            } else {
                tpe_point(
                    &spec.search_space,
                    spec.seed,
                    number,
                    finished,
                    spec.objective.direction,
                )
            }
        }
    }
}

/// A parameter's position in TPE's working space: log for `log` ranges.
fn to_work(parameter: &SearchParameter, value: f64) -> f64 {
    if parameter.log { value.ln() } else { value }
}

fn work_bounds(parameter: &SearchParameter) -> (f64, f64) {
    (
        to_work(parameter, parameter.min),
        to_work(parameter, parameter.max),
    )
}

/// A Parzen density over one numeric parameter: a Gaussian per observation and a wide prior.
struct Parzen {
    low: f64,
    high: f64,
    /// (mean, sigma) per component; the prior is the last.
    components: Vec<(f64, f64)>,
}

impl Parzen {
    fn new(parameter: &SearchParameter, observed: &[f64]) -> Self {
        let (low, high) = work_bounds(parameter);
        let span = (high - low).max(1e-12);
        let mut sorted: Vec<f64> = observed.iter().map(|v| v.clamp(low, high)).collect();
        sorted.sort_by(f64::total_cmp);
        let floor = span / (1.0 + sorted.len() as f64).min(100.0);
        let mut components: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .map(|(i, &mean)| {
                let left = if i == 0 { low } else { sorted[i - 1] };
                let right = if i + 1 == sorted.len() {
                    high
                } else {
                    sorted[i + 1]
                };
                let sigma = (mean - left).max(right - mean).clamp(floor, span);
                (mean, sigma)
            })
            .collect();
        components.push(((low + high) / 2.0, span));
        Self {
            low,
            high,
            components,
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        let (mean, sigma) = self.components[rng.random_range(0..self.components.len())];
        let Ok(normal) = Normal::new(mean, sigma) else {
            return mean.clamp(self.low, self.high);
        };
        for _ in 0..64 {
            let value = normal.sample(rng);
            if (self.low..=self.high).contains(&value) {
                return value;
            }
        }
        mean.clamp(self.low, self.high)
    }

    /// Log density of the mixture truncated to the range.
    fn log_density(&self, value: f64) -> f64 {
        let weight = 1.0 / self.components.len() as f64;
        let density: f64 = self
            .components
            .iter()
            .map(|&(mean, sigma)| {
                let mass =
                    normal_cdf((self.high - mean) / sigma) - normal_cdf((self.low - mean) / sigma);
                let z = (value - mean) / sigma;
                weight * (-0.5 * z * z).exp()
                    / (sigma * (2.0 * std::f64::consts::PI).sqrt() * mass.max(1e-12))
            })
            .sum();
        density.max(1e-300).ln()
    }
}

/// The standard normal distribution function (Abramowitz and Stegun 7.1.26, error < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Smoothed frequencies of categorical values.
fn categorical_weights(parameter: &SearchParameter, observed: &[&str]) -> Vec<f64> {
    let total = observed.len() as f64 + parameter.values.len() as f64;
    parameter
        .values
        .iter()
        .map(|value| (observed.iter().filter(|o| **o == value).count() as f64 + 1.0) / total)
        .collect()
}

/// TPE's point for trial `number`, learning from `finished`.
pub fn tpe_point(
    space: &[SearchParameter],
    seed: u64,
    number: u64,
    finished: &[Observation],
    direction: Direction,
) -> BTreeMap<String, String> {
    let mut ranked: Vec<&Observation> = finished.iter().collect();
    ranked.sort_by(|a, b| match (a.objective, b.objective) {
        (Some(x), Some(y)) if direction.better(x, y) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) if direction.better(y, x) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    });
    let scored = ranked.iter().filter(|o| o.objective.is_some()).count();
    let good_count = ((ranked.len() as f64 * TPE_GAMMA).ceil() as usize)
        .max(1)
        .min(scored.max(1));
    let (good, bad) = ranked.split_at(good_count.min(ranked.len()));
    let mut rng = stream(seed, number);
    let mut candidates: Vec<(BTreeMap<String, String>, f64)> = (0..TPE_CANDIDATES)
        .map(|_| (BTreeMap::new(), 0.0))
        .collect();
    for parameter in space {
        let values_of = |group: &[&Observation]| -> Vec<String> {
            group
                .iter()
                .filter_map(|o| o.parameters.get(&parameter.name).cloned())
                .collect()
        };
        let (good_values, bad_values) = (values_of(good), values_of(bad));
        match parameter.kind {
            SpaceKind::Categorical => {
                let good_refs: Vec<&str> = good_values.iter().map(String::as_str).collect();
                let bad_refs: Vec<&str> = bad_values.iter().map(String::as_str).collect();
                let l = categorical_weights(parameter, &good_refs);
                let g = categorical_weights(parameter, &bad_refs);
                for (point, score) in &mut candidates {
                    let mut pick = rng.random::<f64>();
                    let mut index = l.len() - 1;
                    for (i, weight) in l.iter().enumerate() {
                        if pick < *weight {
                            index = i;
                            break;
                        }
                        pick -= weight;
                    }
                    point.insert(parameter.name.clone(), parameter.values[index].clone());
                    *score += l[index].ln() - g[index].ln();
                }
            }
            SpaceKind::Int | SpaceKind::Double => {
                let work = |values: &[String]| -> Vec<f64> {
                    values
                        .iter()
                        .filter_map(|v| v.parse::<f64>().ok())
                        .filter(|v| !parameter.log || *v > 0.0)
                        .map(|v| to_work(parameter, v))
                        .collect()
                };
                let l = Parzen::new(parameter, &work(&good_values));
                let g = Parzen::new(parameter, &work(&bad_values));
                for (point, score) in &mut candidates {
                    let position = l.sample(&mut rng);
                    let value = if parameter.log {
                        position.exp()
                    } else {
                        position
                    };
                    let (text, position) = if parameter.kind == SpaceKind::Int {
                        let whole = value.round().clamp(parameter.min, parameter.max);
                        (format!("{}", whole as i64), to_work(parameter, whole))
                    } else {
                        let text = format_double(value.clamp(parameter.min, parameter.max));
                        let rounded = text.parse::<f64>().unwrap_or(value);
                        (text, to_work(parameter, rounded))
                    };
                    point.insert(parameter.name.clone(), text);
                    *score += l.log_density(position) - g.log_density(position);
                }
            }
        }
    }
    candidates
        .into_iter()
        .fold(
            None,
            |best: Option<(BTreeMap<String, String>, f64)>, next| match best {
                Some(current) if current.1 >= next.1 => Some(current),
                _ => Some(next),
            },
        )
        .map(|(point, _)| point)
        .unwrap_or_default()
}

/// The median stopping rule (Katib's `medianstop`): the first epoch S among `epochs` (1-based,
/// from `start_step` on) at which `curve`'s best value by S is worse than the median of the
/// completed trials' running averages at S (the mean of their first S values, or of all they
/// have when fewer), once at least `min_trials` trials completed.
pub fn median_stop(
    curve: &[f64],
    epochs: std::ops::RangeInclusive<usize>,
    completed: &[&[f64]],
    direction: Direction,
    min_trials: usize,
    start_step: usize,
) -> Option<usize> {
    let completed: Vec<&[f64]> = completed
        .iter()
        .copied()
        .filter(|c| !c.is_empty())
        .collect();
    if completed.len() < min_trials.max(1) {
        return None;
    }
    let first = (*epochs.start()).max(start_step).max(1);
    let last = (*epochs.end()).min(curve.len());
    for step in first..=last {
        let best = direction.best(&curve[..step])?;
        let mut averages: Vec<f64> = completed
            .iter()
            .map(|values| {
                let seen = &values[..step.min(values.len())];
                seen.iter().sum::<f64>() / seen.len() as f64
            })
            .collect();
        averages.sort_by(f64::total_cmp);
        let middle = averages.len() / 2;
        let median = if averages.len() % 2 == 1 {
            averages[middle]
        } else {
            (averages[middle - 1] + averages[middle]) / 2.0
        };
        if direction.better(median, best) {
            return Some(step);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(name: &str, min: f64, max: f64) -> SearchParameter {
        SearchParameter {
            name: name.into(),
            kind: SpaceKind::Int,
            min,
            max,
            grid_points: 3,
            ..SearchParameter::default()
        }
    }

    fn log_double(name: &str, min: f64, max: f64) -> SearchParameter {
        SearchParameter {
            name: name.into(),
            kind: SpaceKind::Double,
            min,
            max,
            log: true,
            grid_points: 3,
            ..SearchParameter::default()
        }
    }

    fn categorical(name: &str, values: &[&str]) -> SearchParameter {
        SearchParameter {
            name: name.into(),
            kind: SpaceKind::Categorical,
            values: values.iter().map(|v| v.to_string()).collect(),
            ..SearchParameter::default()
        }
    }

    #[test]
    fn the_grid_is_every_combination_last_parameter_fastest() {
        let space = vec![categorical("A", &["x", "y"]), int("B", 1.0, 2.0)];
        assert_eq!(grid_size(&space), 4);
        let points: Vec<String> = (1..=4)
            .map(|n| {
                let p = grid_point(&space, n);
                format!("{}{}", p["A"], p["B"])
            })
            .collect();
        assert_eq!(points, ["x1", "x2", "y1", "y2"]);
        assert_eq!(
            grid_values(&log_double("LR", 0.001, 0.1)),
            ["0.001", "0.01", "0.1"]
        );
        assert_eq!(grid_values(&int("N", 64.0, 512.0)), ["64", "288", "512"]);
    }

    #[test]
    fn random_points_depend_only_on_seed_and_number_and_stay_in_range() {
        let space = vec![
            log_double("LR", 0.0005, 0.05),
            SearchParameter {
                log: true,
                ..int("FC_SIZE", 64.0, 512.0)
            },
            categorical("OPTIMIZER", &["sgd", "adamw"]),
        ];
        for number in 1..200 {
            let point = random_point(&space, 7, number);
            assert_eq!(point, random_point(&space, 7, number));
            let lr: f64 = point["LR"].parse().expect("LR");
            assert!((0.0005..=0.05).contains(&lr), "{lr}");
            let fc: i64 = point["FC_SIZE"].parse().expect("FC_SIZE");
            assert!((64..=512).contains(&fc), "{fc}");
        }
        assert_ne!(random_point(&space, 7, 1), random_point(&space, 8, 1));
        assert_ne!(random_point(&space, 7, 1), random_point(&space, 7, 2));
    }

    #[test]
    fn tpe_moves_towards_the_better_region() {
        // The objective is best near X = 0.8; after random trials TPE's suggestions should
        // sit closer to it than uniform draws do on average.
        let space = vec![SearchParameter {
            name: "X".into(),
            kind: SpaceKind::Double,
            min: 0.0,
            max: 1.0,
            ..SearchParameter::default()
        }];
        let objective = |x: f64| -(x - 0.8).powi(2);
        let mut finished = Vec::new();
        for number in 1..=8 {
            let point = random_point(&space, 3, number);
            let x: f64 = point["X"].parse().expect("x");
            finished.push(Observation {
                parameters: point,
                objective: Some(objective(x)),
            });
        }
        let mut distance = 0.0;
        for number in 9..=28 {
            let point = tpe_point(&space, 3, number, &finished, Direction::Maximize);
            let x: f64 = point["X"].parse().expect("x");
            assert!((0.0..=1.0).contains(&x));
            distance += (x - 0.8).abs();
            finished.push(Observation {
                parameters: point,
                objective: Some(objective(x)),
            });
        }
        // Uniform draws on [0, 1] are on average 0.34 away from 0.8.
        assert!(distance / 20.0 < 0.2, "mean distance {}", distance / 20.0);
    }

    #[test]
    fn the_median_rule_stops_weak_trials_from_the_start_step() {
        let completed: Vec<Vec<f64>> = [0.5, 0.6, 0.7]
            .iter()
            .map(|q| (1..=8).map(|e| q * e as f64 / 10.0).collect())
            .collect();
        let refs: Vec<&[f64]> = completed.iter().map(Vec::as_slice).collect();
        let weak: Vec<f64> = (1..=8).map(|e| 0.2 * e as f64 / 10.0).collect();
        let strong: Vec<f64> = (1..=8).map(|e| 0.9 * e as f64 / 10.0).collect();
        let max = Direction::Maximize;
        assert_eq!(median_stop(&weak, 1..=8, &refs, max, 3, 4), Some(4));
        assert_eq!(median_stop(&weak[..3], 1..=3, &refs, max, 3, 4), None);
        assert_eq!(median_stop(&strong, 1..=8, &refs, max, 3, 4), None);
        assert_eq!(median_stop(&weak, 1..=8, &refs[..2], max, 3, 4), None);
        // Only the epochs not yet judged are judged.
        assert_eq!(median_stop(&weak, 6..=8, &refs, max, 3, 4), Some(6));
        let losses: Vec<f64> = weak.iter().map(|v| 1.0 - v).collect();
        let completed_losses: Vec<Vec<f64>> = completed
            .iter()
            .map(|c| c.iter().map(|v| 1.0 - v).collect())
            .collect();
        let refs: Vec<&[f64]> = completed_losses.iter().map(Vec::as_slice).collect();
        assert_eq!(
            median_stop(&losses, 1..=8, &refs, Direction::Minimize, 3, 4),
            Some(4)
        );
    }

    #[test]
    fn doubles_keep_four_significant_digits() {
        assert_eq!(format_double(0.000_523_456), "0.0005235");
        assert_eq!(format_double(0.05), "0.05");
        assert_eq!(format_double(123.456), "123.5");
    }
}
