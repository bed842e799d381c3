#!/usr/bin/env bash
# Installs the Debian packages graft needs to build and test, when they are missing.
# Uses sudo when not run as root.  Safe to run again: it installs nothing that is there.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config   # compiler and build system
  libopenblas-dev                    # CBLAS (GEMM)
  libjansson-dev                     # JSON (safetensors headers, metadata)
  libcurl4-openssl-dev libssl-dev    # downloads, SHA-256/MD5 checks
  libarchive-dev                     # zip checkpoints (torch.save), dataset archives
  libpng-dev libjpeg62-turbo-dev zlib1g-dev  # image decoding, gzip
  libcmocka-dev                      # unit tests
  dataset-fashion-mnist              # graft demo's data (/usr/share/datasets/fashion-mnist)
)
if [ "${1:-}" = "--tests" ]; then
  PACKAGES+=(chromium)               # tests/cli/test_report.sh renders the demo's report
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
