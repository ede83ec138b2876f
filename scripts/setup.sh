#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test amad. Idempotent: each step
# checks first. `--web` also installs the page's build tools (trunk, wasm-bindgen-cli); `--browser`
# adds what the page's tests need (Debian's chromium, playwright-core from npm); `--python` makes
# .venv with the PyTorch package (python/) and its dependencies, for its tests.
set -euo pipefail
cd "$(dirname "$0")/.."

want_web=0
want_browser=0
want_python=0
for a in "$@"; do
  case "$a" in
    --web) want_web=1 ;;
    --browser) want_web=1; want_browser=1 ;;
    --python) want_python=1 ;;
  esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A Vulkan driver: Mesa lavapipe runs the WGSL kernels on the CPU where there is no GPU.
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "setup: installing mesa-vulkan-drivers (Vulkan on the CPU: lavapipe)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi

# python3 runs the experiment scripts' reports (tests/distill_hub.rs runs one end to end).
if ! command -v python3 >/dev/null 2>&1; then
  echo "setup: installing python3"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 >/dev/null
fi

if ! rustup component list --installed | grep -q '^clippy'; then
  rustup component add clippy rustfmt
fi

if ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
  echo "setup: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if [ "$want_web" = 1 ]; then
  # trunk 0.21.14: 0.22 needs a newer rustc than this toolchain.
  if ! command -v trunk >/dev/null 2>&1; then
    echo "setup: installing trunk 0.21.14 (about 9 minutes on 2 cores)"
    cargo install --locked trunk@0.21.14
  fi
  # wasm-bindgen-cli must equal the wasm-bindgen in Cargo.lock; no --locked (with it the install fails on a crate version the registry lacks).
  wb=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
  if ! wasm-bindgen --version 2>/dev/null | grep -q " $wb\$"; then
    echo "setup: installing wasm-bindgen-cli $wb"
    cargo install wasm-bindgen-cli@"$wb"
  fi
fi

if [ "$want_browser" = 1 ]; then
  # Debian's chromium (its WebGPU runs on SwiftShader without a GPU) and playwright-core, which
  # drives it without downloading a browser of its own.
  if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing chromium (for the page's tests)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
  fi
  if ! command -v node >/dev/null 2>&1; then
    echo "setup: installing nodejs and npm"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
  fi
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    (cd tests/browser && npm ci --no-audit --no-fund --silent)
  fi
fi

if [ "$want_python" = 1 ]; then
  # The PyTorch package installed editable (its tests run the working tree's code) into .venv,
  # with torch, transformers and safetensors from PyPI: a few GB, a few minutes, once.
  if ! python3 -c "import ensurepip" >/dev/null 2>&1; then
    echo "setup: installing python3-venv"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
  fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if ! .venv/bin/python -c "import amad_torch, torch, transformers, safetensors" >/dev/null 2>&1; then
    echo "setup: installing the PyTorch package and its dependencies into .venv (torch is a few GB)"
    .venv/bin/pip install -q --disable-pip-version-check -e ./python
  fi
fi
