#!/usr/bin/env bash
# Install minkseg and everything it needs into .venv/ at the repository root.
#
# One path for the README's commands, CI and users:
#   1. Debian packages (BLAS for MinkowskiEngine, the libraries open3d loads);
#   2. .venv/ (with the system site-packages when the machine already has a torch,
#      e.g. a CUDA build on a GPU box; otherwise torch==$MINKSEG_TORCH, CPU build);
#   3. MinkowskiEngine 0.5.4 built from its PyPI sdist against *that* torch,
#      CUDA when torch has CUDA (patched for CUDA 12/13, see scripts/minkowski_patches/),
#      and the built wheel cached in $MINKSEG_WHEEL_CACHE so the next install takes seconds;
#   4. minkseg itself (editable) with its test extras;
#   5. a self-check: one sparse convolution forward and backward.
#
# Environment knobs (all optional):
#   MINKSEG_VENV         venv folder                        (default: <repo>/.venv)
#   MINKSEG_WHEEL_CACHE  where built wheels and the sdist live (default: <repo>/.cache/wheels)
#   MINKSEG_TORCH        torch requirement when none exists   (default: torch==2.13.0)
#   MINKSEG_ME_SDIST     path to MinkowskiEngine-0.5.4.tar.gz for offline machines
#   MINKSEG_SKIP_APT=1   do not touch Debian packages
#   MINKSEG_NO_BROWSER=1 skip Debian's chromium (headless browser of the viewer tests; ~20 s to install)
#   MINKSEG_NO_DEPS=1    install minkseg without its PyPI dependencies (offline machines)
#   MINKSEG_REBUILD=1    rebuild MinkowskiEngine even if a cached wheel exists
#   MINKSEG_BLAS         openblas | blas | mkl | atlas (default: openblas if found, else blas)
#   MAX_JOBS             parallel compile jobs for the MinkowskiEngine build
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MINKSEG_VENV:-$REPO/.venv}"
CACHE="${MINKSEG_WHEEL_CACHE:-$REPO/.cache/wheels}"
TORCH_REQ="${MINKSEG_TORCH:-torch==2.13.0}"
ME_VERSION=0.5.4
ME_SDIST_URL="https://files.pythonhosted.org/packages/21/5c/c543c4bc5fbe73ac3e38465b3da4f24a61f7a4ac5baec867e582e94aa551/MinkowskiEngine-0.5.4.tar.gz"
ME_SDIST_SHA256="b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94"

log() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
t0=$(date +%s)

# ---------------------------------------------------------------- 1. Debian packages
APT_PACKAGES=(libopenblas-dev libusb-1.0-0 libgl1 libgomp1 mesa-vulkan-drivers ninja-build)
# chromium: the tests of `minkseg view` and of the HTML reports render them in a real headless
# browser (WebGL 2 through SwiftShader); always installed, since CI runs those tests
if [[ "${MINKSEG_NO_BROWSER:-0}" != 1 ]]; then APT_PACKAGES+=(chromium); fi
if [[ "${MINKSEG_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# ---------------------------------------------------------------- 2. venv + torch
PY_BASE="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  if "$PY_BASE" -c "import torch" >/dev/null 2>&1; then
    # Reuse the machine's torch (e.g. a CUDA build): the venv sees the base interpreter's
    # site-packages, and a .pth adds them too when that interpreter is itself a venv.
    log "creating $VENV on top of the machine's torch ($("$PY_BASE" -c 'import torch;print(torch.__version__)'))"
    "$PY_BASE" -m venv --system-site-packages "$VENV"
    "$PY_BASE" -c 'import site; print("\n".join(site.getsitepackages()))' \
      > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_minkseg_base_site.pth"
  else
    log "creating $VENV"
    "$PY_BASE" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  log "pip install $TORCH_REQ"
  "${PIP[@]}" "$TORCH_REQ"
fi
# Build requirements of MinkowskiEngine's setup.py (it is built without isolation
# so that it compiles against the torch installed above, never a fresh download).
if [[ "${MINKSEG_NO_DEPS:-0}" != 1 ]]; then
  "${PIP[@]}" "numpy<3" "setuptools<81" wheel ninja
fi

read -r TORCH_VER TORCH_CUDA PY_TAG < <("$PY" - <<'PYEOF'
import sys, torch
cuda = torch.version.cuda
print(torch.__version__.split("+")[0], ("cu" + cuda.replace(".", "")) if cuda else "cpu",
      f"cp{sys.version_info.major}{sys.version_info.minor}")
PYEOF
)
log "torch $TORCH_VER ($TORCH_CUDA), python $PY_TAG"

# ---------------------------------------------------------------- 3. MinkowskiEngine
BUILD_KEY="minkowskiengine-$ME_VERSION-torch$TORCH_VER-$TORCH_CUDA-$PY_TAG-$(uname -m)"
WHEEL_DIR="$CACHE/$BUILD_KEY"
MARKER="$VENV/.minkseg-minkowskiengine"  # which build is installed: a torch change forces a reinstall
if [[ "$(cat "$MARKER" 2>/dev/null)" == "$BUILD_KEY" && "${MINKSEG_REBUILD:-0}" != 1 ]] \
   && "$PY" -c 'import importlib.metadata as m; m.version("MinkowskiEngine")' >/dev/null 2>&1; then
  log "MinkowskiEngine $ME_VERSION already installed"
else
  wheel=$(ls "$WHEEL_DIR"/*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$wheel" || "${MINKSEG_REBUILD:-0}" == 1 ]]; then
    mkdir -p "$CACHE" "$WHEEL_DIR"
    sdist="${MINKSEG_ME_SDIST:-$CACHE/MinkowskiEngine-$ME_VERSION.tar.gz}"
    if [[ ! -f "$sdist" ]]; then
      log "downloading the MinkowskiEngine $ME_VERSION sdist from PyPI"
      curl -fsSL --retry 3 -o "$sdist.part" "$ME_SDIST_URL"
      mv "$sdist.part" "$sdist"
    fi
    echo "$ME_SDIST_SHA256  $sdist" | sha256sum -c --quiet - \
      || { echo "error: $sdist does not match the sha256 of the PyPI sdist" >&2; exit 1; }
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -xzf "$sdist" -C "$build"
    src="$build/MinkowskiEngine-$ME_VERSION"
    # OpenBLAS where present (installed above on Debian); reference BLAS otherwise (offline GPU boxes).
    blas="${MINKSEG_BLAS:-}"
    if [[ -z "$blas" ]]; then
      if ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so'; then blas=openblas
      elif ldconfig -p 2>/dev/null | grep -q 'libblas\.so'; then blas=blas
      else blas=openblas; fi
    fi
    flags=(--blas="$blas")
    if [[ "$TORCH_CUDA" == cpu ]]; then
      flags+=(--cpu_only)
    else
      # CUDA >= 12 (CCCL 2/3 thrust, NVTX3 in the toolkit) needs the source fixes in
      # scripts/minkowski_patches/: plain unified diffs against the sdist, each with a header
      # saying what it fixes and why.
      if [[ "${TORCH_CUDA#cu}" -ge 120 ]]; then
        for p in "$REPO"/scripts/minkowski_patches/*.patch; do
          log "applying $(basename "$p")"
          patch -s -p1 -d "$src" < "$p"
        done
      fi
      flags+=(--force_cuda)
      # CUDA 13 keeps thrust/CUB under include/cccl, which nvcc finds but the host C++
      # compiler (for MinkowskiEngine's .cpp files that include thrust) does not.
      cuda_home=$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")')
      if [[ -n "$cuda_home" && -d "$cuda_home/include/cccl" ]]; then
        export CPLUS_INCLUDE_PATH="$cuda_home/include/cccl${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
      fi
      export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch;c=torch.cuda;print("%d.%d"%c.get_device_capability() if c.is_available() else "8.0;9.0")')}"
    fi
    export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
    log "building MinkowskiEngine $ME_VERSION (${flags[*]}, MAX_JOBS=$MAX_JOBS); a few minutes"
    # torch's cpp_extension needs the stdlib distutils where one exists (Python < 3.12);
    # later Pythons only have setuptools' own.
    distutils=local; "$PY" -c 'import sys; sys.exit(sys.version_info >= (3, 12))' && distutils=stdlib
    (cd "$src" && SETUPTOOLS_USE_DISTUTILS=$distutils "$PY" setup.py -q bdist_wheel "${flags[@]}" -d "$WHEEL_DIR" \
        > "$CACHE/minkowskiengine-build.log" 2>&1) \
      || { tail -n 60 "$CACHE/minkowskiengine-build.log" >&2; echo "error: MinkowskiEngine build failed; full log: $CACHE/minkowskiengine-build.log" >&2; exit 1; }
    wheel=$(ls "$WHEEL_DIR"/*.whl | head -n1)
    log "cached $wheel"
  else
    log "using cached $wheel"
  fi
  "${PIP[@]}" --no-deps --force-reinstall "$wheel"
  echo "$BUILD_KEY" > "$MARKER"
fi

# ---------------------------------------------------------------- 4. minkseg
if [[ "${MINKSEG_NO_DEPS:-0}" == 1 ]]; then  # offline machines (GPU boxes without a registry)
  log "pip install -e $REPO (no dependencies)"
  "${PIP[@]}" --no-deps --no-build-isolation -e "$REPO"
else
  log "pip install -e $REPO[test]"
  "${PIP[@]}" -e "$REPO[test]"
fi

# ---------------------------------------------------------------- 5. self-check
log "self-check: one sparse convolution"
"$VENV/bin/minkseg" check
log "done in $(( $(date +%s) - t0 )) s. Activate with: source ${VENV#$REPO/}/bin/activate"
