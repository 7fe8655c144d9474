//! The scheduling policy: what one job may ask for, tenant quotas, and the fair order in which
//! tenants with queued jobs are served.
//!
//! - **Ceilings**: cpu, memory and gpus above `[training_service.limits]` are refused at
//!   submission, as is a run time above the ceiling; a job that names none gets the default.
//! - **Fair share**: each pass serves the tenant with the fewest launched and running jobs per
//!   unit of weight; among equals, the one served longest ago (a tenant never served first).
//!   A tenant that submits a hundred jobs thus gets one slot in turn with every other waiting
//!   tenant, not a hundred slots ahead of them.
//! - **Quotas**: a tenant at its running-jobs or GPU quota is skipped; its queued jobs say so.
//! - **Within a tenant**: priority (high, normal, low), then submission order.

use std::cmp::Ordering;

use crate::config::{LimitsConfig, Quota};
use crate::error::TrainingError;
use crate::model::JobSpec;

/// A Kubernetes quantity in its base unit (cores, bytes): `2`, `500m`, `4Gi`, `1.5G`, `1e3`.
pub fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((text, 1.0));
    let plain = number.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let exponent = scale == 1.0
        && number
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if number.is_empty() || !(plain || exponent) || !number.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let value = number.parse::<f64>().ok()? * scale;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// Checks a submission's resources against the ceilings and the tenant's GPU quota, and fills
/// the default run time.
pub fn check_resources(
    spec: &mut JobSpec,
    limits: &LimitsConfig,
    quota: &Quota,
) -> Result<(), TrainingError> {
    let resources = &mut spec.resources;
    for (field, value, ceiling, key) in [
        ("cpu", &resources.cpu, &limits.max_cpu, "max_cpu"),
        (
            "memory",
            &resources.memory,
            &limits.max_memory,
            "max_memory",
        ),
    ] {
        if value.is_empty() {
            continue;
        }
        let Some(asked) = quantity(value) else {
            return Err(TrainingError::InvalidArgument(format!(
                "metadata.resources.{field} `{value}` is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)"
            )));
        };
        if let Some(most) = quantity(ceiling).filter(|_| !ceiling.is_empty())
            && asked > most
        {
            return Err(TrainingError::InvalidArgument(format!(
                "metadata.resources.{field} {value} is above the ceiling of {ceiling} per job (training_service.limits.{key})"
            )));
        }
    }
    if resources.gpus > limits.max_gpus {
        return Err(TrainingError::InvalidArgument(format!(
            "metadata.resources.gpus {} is above the ceiling of {} per job (training_service.limits.max_gpus)",
            resources.gpus, limits.max_gpus
        )));
    }
    if let Some(most) = quota.max_gpus
        && i64::from(resources.gpus) > most
    {
        return Err(TrainingError::InvalidArgument(format!(
            "metadata.resources.gpus {} is above the tenant's quota of {most} GPUs",
            resources.gpus
        )));
    }
    match resources.max_runtime_seconds {
        0 => resources.max_runtime_seconds = limits.default_max_runtime_seconds,
        seconds if seconds < 0 => {
            return Err(TrainingError::InvalidArgument(
                "metadata.resources.max_runtime_seconds must not be negative".into(),
            ));
        }
        seconds if seconds > limits.max_runtime_seconds => {
            return Err(TrainingError::InvalidArgument(format!(
                "metadata.resources.max_runtime_seconds {seconds} is above the ceiling of {} (training_service.limits.max_runtime_seconds)",
                limits.max_runtime_seconds
            )));
        }
        _ => {}
    }
    Ok(())
}

/// What a tenant holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLoad {
    /// Its launched and running jobs.
    pub active: i64,
    /// The GPUs those jobs asked for.
    pub gpus: i64,
    /// The claim sequence number of its latest claimed job, 0 if none ever was.
    pub last_claim: i64,
}

/// Why a tenant's job of `gpus` GPUs waits for the tenant's quota, if it does.
pub fn quota_wait(quota: &Quota, load: &TenantLoad, gpus: i64) -> Option<String> {
    if let Some(most) = quota.max_running_jobs
        && load.active >= most
    {
        return Some(format!(
            "waiting for tenant quota: {} of {most} jobs running",
            load.active
        ));
    }
    if let Some(most) = quota.max_gpus
        && gpus > 0
        && load.gpus + gpus > most
    {
        return Some(format!(
            "waiting for tenant quota: {} of {most} GPUs in use",
            load.gpus
        ));
    }
    None
}

/// Which of two tenants is served first: fewer running jobs per unit of weight, then the one
/// served longest ago, then by name (for a stable order).
pub fn serve_first(a: (&str, &TenantLoad, u32), b: (&str, &TenantLoad, u32)) -> Ordering {
    let (a_name, a_load, a_weight) = a;
    let (b_name, b_load, b_weight) = b;
    // a.active / a.weight against b.active / b.weight, without division.
    (i128::from(a_load.active) * i128::from(b_weight))
        .cmp(&(i128::from(b_load.active) * i128::from(a_weight)))
        .then(a_load.last_claim.cmp(&b_load.last_claim))
        .then(a_name.cmp(b_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("4Gi"), Some(4.0 * 1_073_741_824.0));
        assert_eq!(quantity("1.5G"), Some(1.5e9));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("1E"), Some(1e18));
        for bad in ["", "-1", "two", "4GB", "inf", "NaN", "5e", ".5x", "m"] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
    }

    fn quota(jobs: Option<i64>, gpus: Option<i64>) -> Quota {
        Quota {
            max_running_jobs: jobs,
            max_gpus: gpus,
            weight: 1,
        }
    }

    #[test]
    fn ceilings_refuse_and_the_default_run_time_is_filled() {
        let limits = LimitsConfig::default();
        let spec = |cpu: &str, memory: &str, gpus: i32, runtime: i64| JobSpec {
            resources: Resources {
                cpu: cpu.into(),
                memory: memory.into(),
                gpus,
                max_runtime_seconds: runtime,
            },
            ..JobSpec::default()
        };
        let mut fine = spec("2", "4Gi", 1, 0);
        check_resources(&mut fine, &limits, &quota(None, None)).expect("fine");
        assert_eq!(
            fine.resources.max_runtime_seconds,
            limits.default_max_runtime_seconds
        );
        for (mut bad, named) in [
            (spec("17", "", 0, 0), "limits.max_cpu"),
            (spec("", "65Gi", 0, 0), "limits.max_memory"),
            (spec("", "", 9, 0), "limits.max_gpus"),
            (spec("lots", "", 0, 0), "not a Kubernetes quantity"),
            (spec("", "", 0, 8 * 24 * 3600), "limits.max_runtime_seconds"),
            (spec("", "", 0, -1), "must not be negative"),
            (spec("", "", 3, 0), "quota of 2 GPUs"),
        ] {
            let err = check_resources(&mut bad, &limits, &quota(None, Some(2))).expect_err(named);
            assert!(err.to_string().contains(named), "{err}");
        }
    }

    #[test]
    fn quotas_say_why_a_job_waits() {
        let load = TenantLoad {
            active: 2,
            gpus: 1,
            last_claim: 0,
        };
        assert_eq!(
            quota_wait(&quota(Some(2), None), &load, 0).as_deref(),
            Some("waiting for tenant quota: 2 of 2 jobs running")
        );
        assert_eq!(quota_wait(&quota(Some(3), None), &load, 0), None);
        assert_eq!(
            quota_wait(&quota(None, Some(2)), &load, 2).as_deref(),
            Some("waiting for tenant quota: 1 of 2 GPUs in use")
        );
        assert_eq!(quota_wait(&quota(None, Some(2)), &load, 1), None);
        assert_eq!(quota_wait(&quota(None, Some(2)), &load, 0), None);
    }

    #[test]
    fn the_least_served_tenant_goes_first() {
        let load = |active, last_claim| TenantLoad {
            active,
            gpus: 0,
            last_claim,
        };
        // Fewer running jobs first.
        assert_eq!(
            serve_first(("a", &load(0, 9), 1), ("b", &load(1, 1), 1)),
            Ordering::Less
        );
        // Equal: the one served longest ago (never = 0) first.
        assert_eq!(
            serve_first(("a", &load(0, 5), 1), ("b", &load(0, 0), 1)),
            Ordering::Greater
        );
        // Weight 2 with two running is even with weight 1 with one running.
        assert_eq!(
            serve_first(("a", &load(2, 1), 2), ("b", &load(1, 2), 1)),
            Ordering::Less
        );
    }
}
