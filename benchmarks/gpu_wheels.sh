#!/usr/bin/env bash
# Fetch benchmarks/gpu_wheels.txt's wheels for the GPU machine (CPython 3.12, manylinux x86-64)
# into .whl/ (git-ignored), and print their total size: with the tracked tree it must stay under
# the device call's 64 MiB. Needs pip and a package index; nothing is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
grep -v '^\s*#' benchmarks/gpu_wheels.txt | grep -v '^\s*$' | \
  xargs python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl
ls -l .whl
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "wheels: $((wheels / 1024)) KiB; tracked tree: $((tracked / 1024)) KiB; together $(((wheels + tracked) / 1048576)) MiB of 64"
