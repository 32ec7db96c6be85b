#!/usr/bin/env bash
# Installs modformer's build, test and fixture dependencies from Debian 12's
# packages (as root, or through sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  g++ cmake make pkg-config \
  libopenblas-openmp-dev libdnnl-dev \
  libgtest-dev libgmock-dev nlohmann-json3-dev libcli11-dev zlib1g-dev \
  dict-gcide python3-torch python3-numpy >/dev/null
echo "dependencies installed"
