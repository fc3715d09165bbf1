#!/usr/bin/env bash
# Install the Debian packages embstore builds, tests and benchmarks with.
# Idempotent: does nothing when everything is present.
set -euo pipefail
PKGS="build-essential clang libclang-rt-14-dev libxxhash-dev libopenblas-dev liblapacke-dev zlib1g-dev
      libmicrohttpd-dev python3-numpy python3-torch libfaiss-dev python3-faiss libhnswlib-dev librsvg2-bin"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
