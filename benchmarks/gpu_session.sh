#!/usr/bin/env bash
# One prepared session on a lent GPU machine (run once, from the repository root).
#
# Before:  bash benchmarks/gpu_wheels.sh      (here: fills .gpu-wheels/, ~40 MiB)
# Then, through the device tool:  bash benchmarks/gpu_session.sh
#   carrying .gpu-wheels, with the MNIST files at shared/data/mnist (or SKMLP_MNIST_DIR).
#
# Steps, each with its own timeout, all inside a 7-minute budget; a failed step does not
# stop the next. Logs and results go to $OUT (default: ./gpu-session-out); the summary
# is printed last.
#   1 nvidia-smi   2 install the carried wheels into /tmp/extra   3 tests/test_gpu.py
#   4 the suite's array-API / torch / CuPy / device tests   5 benchmarks/bench_gpu.py
#   6 python -m pipelines.memorization device=cuda (quick)   7 its summary from MLflow
# (STEPS picks and orders them; BENCH_ARGS, MEMORIZATION_ARGS add options.)
set -uo pipefail

OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-415}
START=$(date +%s)
STORE=/tmp/skmlp-gpu
export PYTHONPATH=$PWD:/tmp/extra${PYTHONPATH:+:$PYTHONPATH}
export SCIPY_ARRAY_API=1 PYTHONUNBUFFERED=1
export SKMLP_MNIST_DIR=${SKMLP_MNIST_DIR:-$PWD/shared/data/mnist}
export SKMLP_CACHE_DIR=/tmp/skmlp-cache
export MLFLOW_TRACKING_URI=sqlite:///$STORE/mlflow.db
# Overridable for a dry run without a GPU (DEVICE=torch:cpu BENCH_ARGS="--device cpu ...").
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:---epochs 4 --shuffled-seconds 30}
MEMORIZATION_ARGS=${MEMORIZATION_ARGS:-}
SUMMARY=()

# seconds this step may take: at most CAP, leaving RESERVE seconds for the later steps
allowance() {
    local left=$((BUDGET_S - ($(date +%s) - START) - $2))
    echo $((left < $1 ? left : $1))
}

# step NAME CAP RESERVE COMMAND...: run with a timeout, log to $OUT/NAME.log, show its tail
step() {
    local name=$1 limit rc begin
    limit=$(allowance "$2" "$3")
    shift 3
    declare -F "$1" >/dev/null && set -- bash -c "$1" # a function of this script
    if ((limit < 5)); then
        SUMMARY+=("$(printf '%-14s %-22s' "$name" "SKIPPED (no time left)")")
        return
    fi
    echo "=== $name (timeout ${limit}s): $*"
    begin=$(date +%s)
    timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
    local status="ok"
    ((rc == 124 || rc == 137)) && status="TIMEOUT after ${limit}s"
    ((rc != 0 && rc != 124 && rc != 137)) && status="FAILED (exit $rc)"
    SUMMARY+=("$(printf '%-14s %-22s %4ss' "$name" "$status" $(($(date +%s) - begin)))")
}

install() {
    python -m pip install -q --no-index --no-deps --target /tmp/extra .gpu-wheels/*.whl &&
        python -c "import mlflow, hydra, omegaconf, skops, array_api_strict, sklearn
import pipelines.device, skmlp
print('mlflow', mlflow.__version__, '| hydra', hydra.__version__, '| sklearn',
      sklearn.__version__)
print('device=auto ->', pipelines.device.resolve_device('auto'))"
}

gpu_tests() {
    if [[ ! -f tests/test_gpu.py ]]; then
        echo "tests/test_gpu.py is absent: nothing to run"
        return 0
    fi
    python -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider
}

array_api_tests() {
    local files=()
    for f in tests/test_classifier.py tests/test_estimator_checks.py tests/test_steps.py \
        tests/test_device.py; do
        [[ -f $f ]] && files+=("$f")
    done
    # sklearn's check_array_api_input runs on torch CUDA and CuPy where they exist;
    # test_device.py runs the train pipeline end to end with device=cuda and cupy.
    python -m pytest "${files[@]}" -q -rs -p no:cacheprovider -n 4 \
        -m "slow or not slow" -k "array_api or cupy or cuda or end_to_end"
}

memorization() {
    # shellcheck disable=SC2086 # extra overrides, one per word
    python -m pipelines.memorization "device=$DEVICE" "hydra.run.dir=$OUT/memorization" \
        $MEMORIZATION_ARGS
}

memorization_summary() {
    python - <<'EOF'
import pandas as pd
from mlflow.tracking import MlflowClient
from pipelines.memorization_summary import collect

client = MlflowClient()
experiment = client.get_experiment_by_name("memorization")
parents = [
    run for run in client.search_runs([experiment.experiment_id])
    if "mlflow.parentRunId" not in run.data.tags
]
children = client.search_runs(
    [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
)
print(f"parent {parents[0].info.status}; {len(children)} children:",
      {k: int(v) for k, v in pd.Series([c.info.status for c in children]).value_counts().items()},
      "| devices:", sorted({c.data.tags.get("skmlp.device") for c in children}))
table, _ = collect(client, parents[0].info.run_id)
pd.set_option("display.width", 200)
print(table.drop(columns="run_id").to_string(index=False))
EOF
}

bench_gpu() {
    # shellcheck disable=SC2086 # options, one per word
    python benchmarks/bench_gpu.py $BENCH_ARGS
}

export -f install gpu_tests array_api_tests bench_gpu memorization memorization_summary
export DEVICE MEMORIZATION_ARGS BENCH_ARGS OUT
rm -rf "$STORE" && mkdir -p "$STORE"
# "NAME CAP RESERVE" per step, in order; STEPS overrides it (e.g. the full memorization
# sweep first, with a larger cap: STEPS="nvidia-smi 15 500 install 75 420 ...").
STEPS=${STEPS:-"nvidia-smi 15 400 install 75 340 test_gpu 90 260 array_api 90 200
bench_gpu 150 120 memorization 180 30 summary 30 0"}
declare -A COMMAND=(
    [nvidia-smi]=nvidia-smi [install]=install [test_gpu]=gpu_tests
    [array_api]=array_api_tests [bench_gpu]=bench_gpu [memorization]=memorization
    [summary]=memorization_summary
)
read -r -a fields <<<"$(echo "$STEPS" | tr '\n' ' ')"
for ((i = 0; i < ${#fields[@]}; i += 3)); do
    step "${fields[i]}" "${fields[i + 1]}" "${fields[i + 2]}" "${COMMAND[${fields[i]}]}"
done
cp "$STORE/mlflow.db" "$OUT/" 2>/dev/null

echo
echo "=== summary ($(($(date +%s) - START)) s in all; logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}"
