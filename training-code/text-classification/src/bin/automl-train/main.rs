//! `automl-train`: the training program (see [`automl_text_classification::program`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    // SAFETY: first thing in main; no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        automl_text_classification::device::fix_cpu_thread_count();
    }
    automl_text_classification::program::main_with(std::env::args_os())
}
