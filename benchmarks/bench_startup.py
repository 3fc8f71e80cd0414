"""Where the wall time of ``python -m pipelines.train experiment=3b1b`` goes.

Two measurements, each in a fresh process, against a temporary MLflow store:

1. ``breakdown``: the real entry point run in this process, its phases timed by wrapping
   the functions that do them (imports, Hydra, data, MLflow set-up, training, per-epoch
   evaluation, final evaluation, figures, other artifacts, model logging, ending).
   Training is the sum of the epochs' own times, as ``EpochScoring`` measures them;
   per-epoch evaluation is the rest of the fit (scoring and logging after each epoch).
   Each phase is shown in wall and CPU seconds.
2. ``command``: the command itself as a user runs it (a subprocess), its wall time, and
   wall minus training minus per-epoch evaluation (the fixed cost), read back from the
   run's metrics; the fixed cost is also printed as a ratio to the training time.
3. ``overlap`` (run alone: ``bench_startup.py overlap [rounds]``): the data read in a
   thread while the run's library (MLflow, Matplotlib) is imported, as the entry points
   do, against the two one after the other; fresh processes, alternately, in either
   order; the wall seconds from loading to both done, and their ratio.

Run:  SKMLP_MNIST_DIR=../shared/data/mnist python benchmarks/bench_startup.py [args...]
(extra arguments are Hydra overrides, e.g. ``tracking.log_model=false``).
"""

import time

START = time.perf_counter()
START_CPU = time.process_time()

import functools  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

COMMAND = ["-m", "pipelines.train", "experiment=3b1b"]
TIMES = {}


def timed(owner, name, phase):
    """Replace ``owner.name`` by a wrapper adding its run time to ``TIMES[phase]``."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            wall, cpu = TIMES.get(phase, (0.0, 0.0))
            TIMES[phase] = (
                wall + time.perf_counter() - start,
                cpu + time.process_time() - start_cpu,
            )

    setattr(owner, name, wrapper)
    return function


def breakdown(overrides):
    """Run the entry point in this process; print the time of each phase."""
    import mlflow
    import mlflow.sklearn

    import pipelines.data
    import pipelines.train as entry
    from pipelines import members, run, training

    # Everything a run imports, whether the entry point imports it at the top or lazily.
    TIMES["imports"] = (time.perf_counter() - START, time.process_time() - START_CPU)
    timed(pipelines.data, "load_data", "data")
    timed(run, "resolve_run", "run resolved")  # device, networks, store, experiment
    timed(members, "set_up", "MLflow set-up")  # each member's run
    timed(members, "fit_members", "fit")
    fit = members.fit_members  # the timed one
    timed(training, "evaluate", "final evaluation")
    for name in ("plot_learning_curves", "plot_confusion_matrix"):
        timed(training, name, "figures")
    timed(training, "plot_first_layer_weights", "figures")
    timed(mlflow, "log_figure", "figures")
    timed(mlflow.sklearn, "log_model", "model logging")
    timed(training, "log_artifacts", "artifacts")
    timed(mlflow, "end_run", "ending")
    seconds = {}

    def fit_and_count(run_, inputs, fittings):
        result = fit(run_, inputs, fittings)
        epochs = [f.member.estimator.history_["seconds"].sum() for f in fittings]
        seconds["training"] = float(sum(epochs))
        return result

    members.fit_members = fit_and_count
    sys.argv = [entry.__file__, *COMMAND[2:], *overrides]
    main_start = time.perf_counter(), time.process_time()
    try:
        entry.main()
    except SystemExit as exit_:
        if exit_.code:
            raise
    total = time.perf_counter() - START, time.process_time() - START_CPU
    report(total, main_start, seconds["training"])


def report(total, main_start, training_seconds):
    """Wall and CPU seconds per phase. The fixed cost is everything but the fit (the
    epochs and their scoring); its CPU time is about what its wall time is on a quiet
    machine (one thread), so it is the steadier number on a loaded one."""
    wall = {name: value[0] for name, value in TIMES.items()}
    cpu = {name: value[1] for name, value in TIMES.items()}
    for phases, index in ((wall, 0), (cpu, 1)):
        phases["fit: epochs + scoring"] = phases.pop("fit")
        phases["other artifacts"] = phases.pop("artifacts") - phases["figures"]
        phases["other artifacts"] -= phases.get("model logging", 0.0)
        accounted = sum(phases.values()) - phases["imports"]
        since_main = total[index] - (main_start[index] - (START, START_CPU)[index])
        phases["Hydra and the rest"] = since_main - accounted
    fit = "fit: epochs + scoring"
    print(f"{'phase':<24}{'wall s':>9}{'CPU s':>9}")
    for name in wall:
        print(f"{name:<24}{wall[name]:9.2f}{cpu[name]:9.2f}")
    print(f"{'  of which the epochs':<24}{training_seconds:9.2f}")
    fixed = {n: v for n, v in cpu.items() if n != fit}
    fixed_wall = total[0] - wall[fit]
    print(f"{'total':<24}{total[0]:9.2f}{total[1]:9.2f}")
    print(
        f"fixed cost: {fixed_wall:.2f} s wall, {sum(fixed.values()):.2f} s CPU "
        f"({fixed_wall / training_seconds:.2f} x the training's wall time)"
    )


def command(overrides):
    """Run the command as a user does; print wall, training and fixed cost."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        _create_store(uri)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, *COMMAND, *overrides],
            env=env,
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("3b1b")
        (run,) = client.search_runs([experiment.experiment_id])
        run_id, metrics = run.info.run_id, run.data.metrics
        training = sum(m.value for m in client.get_metric_history(run_id, "seconds"))
    # fit_seconds is the whole fit: the epochs plus their evaluation.
    evaluation = metrics["fit_seconds"] - training
    fixed = wall - metrics["fit_seconds"]
    print(
        f"wall {wall:.2f} s, training {training:.2f} s, per-epoch evaluation "
        f"{evaluation:.2f} s, fixed cost {fixed:.2f} s "
        f"({fixed / training:.2f} x training)"
    )


OVERLAP = """
import sys, time
from omegaconf import OmegaConf
import pipelines.data as data
cfg = OmegaConf.create({"loader": {"_target_": "skmlp.datasets.load_mnist"},
                        "n_train": None, "n_test": None, "validation_size": 0})
start = time.perf_counter()
if sys.argv[1] == "thread":
    pending = data.load_data_soon(cfg, 0)
    import pipelines.training
    pending.result()
else:
    data.load_data(cfg, 0)
    import pipelines.training
print(time.perf_counter() - start)
"""


def overlap(rounds):
    """Wall seconds of loading MNIST and importing the run's library, in turns."""
    times = {"thread": [], "in turn": []}
    for round_ in range(rounds):
        order = ["thread", "in turn"][:: 1 if round_ % 2 else -1]
        for how in order:
            result = subprocess.run(
                [sys.executable, "-c", OVERLAP, how],
                check=True,
                capture_output=True,
                text=True,
            )
            times[how].append(float(result.stdout.split()[-1]))
    for how, seconds in times.items():
        print(f"{how:<8} " + " ".join(f"{s:.2f}" for s in seconds))
    mean = {how: sum(seconds) / rounds for how, seconds in times.items()}
    print(
        f"data + imports: {mean['in turn']:.2f} s in turn, {mean['thread']:.2f} s with "
        f"the data in a thread ({mean['in turn'] - mean['thread']:.2f} s saved)"
    )


def _create_store(uri):
    """A store that exists already, as after a user's first run: its one-time
    creation (MLflow's schema migrations) is not part of a run's start-up."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()",
            uri,
        ],
        check=True,
        capture_output=True,
    )


def main():
    args = sys.argv[1:]
    if args and args[0] == "overlap":
        return overlap(int(args[1]) if len(args) > 1 else 6)
    if args and args[0] in ("breakdown", "command"):
        return (breakdown if args[0] == "breakdown" else command)(args[1:])
    for name in ("breakdown", "command"):
        print(f"--- {name}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            uri = f"sqlite:///{tmp}/mlflow.db"
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
            _create_store(uri)
            script = os.path.abspath(__file__)
            subprocess.run([sys.executable, script, name, *args], env=env, cwd=tmp)


if __name__ == "__main__":
    main()
