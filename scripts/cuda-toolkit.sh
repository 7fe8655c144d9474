#!/usr/bin/env bash
# A CUDA 13.4 toolkit assembled from NVIDIA's PyPI wheels, so that `--features cuda` compiles
# on a machine without a system CUDA install (and without a GPU). Prints the environment to
# export:
#
#   eval "$(scripts/cuda-toolkit.sh)"
#   cargo build --release -p automl-text-classification --features cuda
#
# - The CUDA 13 wheels carry nvcc (12.x wheels carry only ptxas); cudarc accepts nvcc up to
#   13.4, hence the pin.
# - libcuda belongs to the driver and ships in no wheel: a link-time stub is generated whose
#   every entry point returns CUDA_ERROR_STUB_LIBRARY (34). On a GPU machine the driver's own
#   libcuda.so.1 is what the program loads at run time; the stub only satisfies the linker.
# - candle's kernels are compiled by nvcc at build time for CUDA_COMPUTE_CAP (default 90,
#   Hopper; set it for other GPUs).
# About 650 MB of wheels, 1.2 GB installed, under ${AUTOML_CACHE_DIR:-~/.cache/automl}/cuda.
set -euo pipefail
base=${AUTOML_CACHE_DIR:-$HOME/.cache/automl}/cuda
root=$base/toolkit
if [ ! -x "$root/bin/nvcc" ]; then
  mkdir -p "$base"
  python3 -m venv "$base/venv" >&2
  "$base/venv/bin/pip" install --quiet --disable-pip-version-check \
    "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.4.3" >&2
  wheels=$("$base/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
  rm -rf "$root"
  mkdir -p "$root/lib64/stubs"
  for dir in bin include nvvm; do ln -s "$wheels/$dir" "$root/$dir"; done
  ln -s lib64 "$root/lib"
  for lib in "$wheels"/lib/*; do
    name=${lib##*/}
    ln -s "$lib" "$root/lib64/$name"
    if [[ $name == *.so.* ]]; then ln -sf "$lib" "$root/lib64/${name%%.so.*}.so"; fi
  done
  stubs=$root/lib64/stubs
  # Every driver entry point cuda.h names (and cuProfilerInitialize, which cudarc binds).
  { grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$wheels/include/cuda.h"; echo cuProfilerInitialize; } \
    | sort -u | grep -vE '^cuGetError(String|Name)$' >"$stubs/symbols.txt"
  {
    echo 'int cuGetErrorString(int e, const char **s) { if (s) *s = "CUDA_ERROR_STUB_LIBRARY (no driver)"; return 0; }'
    echo 'int cuGetErrorName(int e, const char **s) { if (s) *s = "CUDA_ERROR_STUB_LIBRARY"; return 0; }'
    sed -E 's/.*/int &(void) { return 34; }/' "$stubs/symbols.txt"
  } >"$stubs/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/stub.c"
  ln -sf libcuda.so "$stubs/libcuda.so.1"
fi
echo "export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root CUDA_TOOLKIT_ROOT_DIR=$root PATH=$root/bin:\$PATH LIBRARY_PATH=$root/lib64:$root/lib64/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH} CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
