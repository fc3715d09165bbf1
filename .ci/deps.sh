#!/usr/bin/env bash
# Install the Debian packages embstore needs.  Idempotent: does nothing
# when everything is present.
#   .ci/deps.sh          build and test: compilers, libraries, fuzzing runtime,
#                        pkg-config (the install test builds against embstore.pc),
#                        an SVG-to-PNG converter for bench-storage plots, numpy and
#                        pytest for the Python package's tests (python/tests),
#                        OpenMPI (mpicc, mpirun) for training across processes (docs/scale.md)
#   .ci/deps.sh bench    also the peers `make bench` measures against
#                        (PyTorch, faiss, hnswlib, numpy, scikit-learn; g++ and
#                        cmake to build xLearn and libffm from ../shared/peers)
set -euo pipefail
PKGS="build-essential clang libclang-rt-14-dev libxxhash-dev libopenblas-dev liblapacke-dev zlib1g-dev
      libmicrohttpd-dev libcjson-dev librsvg2-bin pkg-config python3-numpy python3-pytest openmpi-bin libopenmpi-dev"
if [ "${1:-}" = bench ]; then
    PKGS="$PKGS python3-numpy python3-torch libfaiss-dev python3-faiss libhnswlib-dev bc python3-sklearn g++ cmake wrk"
fi
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
