//! Which device the model runs on: CPU by default; with the `cuda` cargo feature the GPU when one
//! is present. `DEVICE=cpu|cuda|auto` overrides: `cuda` without a usable GPU (or without the
//! feature) is an error, never a silent fallback; `auto` falls back to the CPU and says so at
//! info level. training-service sets `DEVICE=cuda` for jobs that ask for GPUs.

use candle_core::Device;

use crate::error::{Error, Result};

/// The device a run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The GPU when built with `cuda` and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first GPU; an error when there is none or the build has no CUDA.
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(Error::parameter(
                "DEVICE",
                format!("{other:?} is not cpu, cuda or auto"),
            )),
        }
    }
}

/// The device for `choice`.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => cuda(),
        DeviceChoice::Auto => Ok(cuda().unwrap_or_else(|err| {
            tracing::info!(%err, "DEVICE=auto: no usable GPU, training on the cpu");
            Device::Cpu
        })),
    }
}

/// Fixes the number of CPU threads candle computes with, once, and returns it.
///
/// candle's CPU matrix product asks for its thread count on every call, and unless
/// `RAYON_NUM_THREADS` is set that means reading and parsing `/proc/cpuinfo` each time: for a
/// small model that costs more than the arithmetic (a prediction does several products). This
/// sets `RAYON_NUM_THREADS` to the count candle would have found (its physical cores), so
/// every later call reads one variable instead. A value already set is kept.
///
/// # Safety
///
/// It writes the process environment, so no other thread may exist yet (reading or writing
/// the environment concurrently is undefined behaviour): call it first thing in `main`, before
/// an async runtime or anything else starts threads.
#[allow(unsafe_code)]
pub unsafe fn fix_cpu_thread_count() -> usize {
    let set = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|value| value.trim().parse::<usize>().ok())
        .filter(|threads| *threads > 0);
    if let Some(threads) = set {
        return threads;
    }
    let threads = candle_core::utils::get_num_threads();
    // SAFETY: the caller guarantees that this process has no other thread yet.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    threads
}

/// A short name for logs and manifests: `cpu` or `cuda:N`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    Device::new_cuda(0).map_err(|err| Error::Device(format!("cuda:0: {err}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    Err(Error::Device(
        "this build has no CUDA support (build with --features cuda)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices_and_cpu_always_works() {
        assert_eq!("CPU".parse::<DeviceChoice>().ok(), Some(DeviceChoice::Cpu));
        assert_eq!("".parse::<DeviceChoice>().ok(), Some(DeviceChoice::Auto));
        assert!("tpu".parse::<DeviceChoice>().is_err());
        let device = select(DeviceChoice::Cpu).expect("cpu");
        assert_eq!(describe(&device), "cpu");
    }
}
