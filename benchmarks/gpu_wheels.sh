#!/usr/bin/env bash
# Wheels that the lent GPU machine lacks, for benchmarks/gpu_session.sh.
#
# That machine runs Python 3.12 (x86_64, manylinux) with numpy, scipy, scikit-learn,
# pandas, matplotlib, torch, CuPy, pytest and a few more, but without Hydra, MLflow and
# their dependencies, and it has no network. This script resolves the project's
# pipeline requirements for that Python here, drops what the machine already has
# (PRESENT below), and downloads the rest into .gpu-wheels/ (git-ignored), which the
# device tool carries over (its limit is 64 MiB; the script refuses to exceed 60).
#
# Run from the repository root:  bash benchmarks/gpu_wheels.sh
set -euo pipefail

DEST=${DEST:-.gpu-wheels}
PIP=${PIP:-.venv/bin/pip}
# Pinned as pyproject.toml pins them (mlflow <3.18, hydra-core 1.3, omegaconf <2.4);
# the exact versions are those the dev venv runs.
REQUIREMENTS=(
    "mlflow==3.17.2" "hydra-core==1.3.8" "omegaconf==2.3.1"
    "hydra-joblib-launcher==1.2.0" "skops==0.16.0" "array-api-strict==2.6.1"
)
# On the GPU machine already (its image), with the packages they need. typing-extensions
# and protobuf are there too, but their versions are unknown and pydantic-core and
# opentelemetry-proto need recent ones: they come along (small, backward compatible).
PRESENT="numpy scipy scikit-learn pandas matplotlib contourpy cycler fonttools kiwisolver
pyparsing pillow packaging pyarrow torch cupy joblib threadpoolctl filelock cloudpickle
click jinja2 markupsafe requests urllib3 certifi idna charset-normalizer pyyaml
psutil pytest pytest-xdist rich six python-dateutil fsspec wrapt pygments narwhals"
PLATFORM=(--python-version 3.12 --platform manylinux2014_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
    --only-binary=:all:)

rm -rf "$DEST" && mkdir -p "$DEST"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) exists only as an sdist: build
# its (pure-Python) wheel here.
"$PIP" wheel -q --no-deps "antlr4-python3-runtime==4.9.3" -w "$DEST"

report=$(mktemp)
"$PIP" install -q --dry-run --ignore-installed --report "$report" "${PLATFORM[@]}" \
    --find-links "$DEST" --target "$(mktemp -d)" "${REQUIREMENTS[@]}"
missing=$(python3 - "$report" "$PRESENT" <<'EOF'
import json, re, sys

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

present = {key(name) for name in sys.argv[2].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if key(name) not in present and key(name) != "antlr4-python3-runtime":
        print(f"{name}=={version}")
EOF
)
# shellcheck disable=SC2086 # one requirement per word
"$PIP" download -q --no-deps "${PLATFORM[@]}" -d "$DEST" $missing
(cd "$DEST" && ls -- *.whl) > "$DEST/wheels.txt"
echo "$(wc -l < "$DEST/wheels.txt") wheels in $DEST: $(du -sh "$DEST" | cut -f1)"
size_kib=$(du -sk "$DEST" | cut -f1)
if (( size_kib > 60 * 1024 )); then
    echo "error: $DEST is over 60 MiB; the device tool carries at most 64 MiB" >&2
    exit 1
fi
