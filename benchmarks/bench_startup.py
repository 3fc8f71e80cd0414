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
4. ``cost`` (run alone: ``bench_startup.py cost [rounds]``): issue 20's per-job cost on
   ``data=digits``, each in a fresh process, in turns: the import floor (a fresh Python
   importing the libraries a run needs, ``FLOOR``), a single run's fixed cost (its wall
   minus its ``fit_seconds``: training and per-epoch evaluation), and for a sweep of 8
   jobs (basic launcher, then ``hydra/launcher=parallel``) the time from the command's
   start to its first job's run and each job's cost beyond its training (the sweep's
   wall after the first job started, times its workers, less the jobs' ``fit_seconds``,
   per job). Targets: first job at most 1 s after the floor, a job's cost at most
   0.5 s, a single run's fixed cost at most the floor + 1.5 s. ``cost 3 DIR`` measures
   the code of the checkout ``DIR`` too (``git archive REV | tar -x -C DIR``), in turns.
   CPU seconds are printed too (steadier on a loaded machine): a sweep's, less the
   floor's, per job (its fit included). ``BENCH_LAUNCHERS=basic`` skips the parallel one.

Run:  SKMLP_MNIST_DIR=../shared/data/mnist python benchmarks/bench_startup.py [args...]
(extra arguments are Hydra overrides, e.g. ``tracking.log_model=false``).
"""

import time

START = time.perf_counter()
START_CPU = time.process_time()

import functools  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
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
    from pipelines import figures, members, run, training

    # Everything a run imports, whether the entry point imports it at the top or lazily.
    TIMES["imports"] = (time.perf_counter() - START, time.process_time() - START_CPU)
    timed(pipelines.data, "load_data", "data")
    timed(run, "resolve_run", "run resolved")  # device, networks, store, experiment
    timed(members, "set_up", "MLflow set-up")  # each member's run
    timed(members, "fit_members", "fit")
    fit = members.fit_members  # the timed one
    timed(training, "evaluate", "final evaluation")
    timed(figures, "draw", "figures")
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


# What a run imports that is not the project's own code: its libraries.
FLOOR = (
    "import numpy, scipy, sklearn, pandas, hydra, omegaconf, mlflow, mlflow.sklearn, "
    "mlflow.store.tracking.sqlalchemy_store, matplotlib.figure, "
    "matplotlib.backends.backend_agg, skmlp, skmlp.plots"
)
DIGITS = ["-m", "pipelines.train", "data=digits"]
SWEEP = [
    "--multirun",
    "model.learning_rate_init=" + ",".join(f"0.0{i}" for i in range(1, 9)),
]
LAUNCHERS = {"basic": [], "parallel": ["hydra/launcher=parallel"]}
# Workers forked by multiprocessing's fork server (pipelines.warm) are its children,
# not the command's: the CPU seconds of a parallel sweep leave them out.
UNCOUNTED = " (without workers forked by a fork server)"


def _timed_process(args, env=None, cwd=None):
    """Run ``python args``; return its wall seconds, the wall clock at its start and
    the CPU seconds of it and the processes it waited for (steadier than wall
    seconds on a loaded machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_clock, start = time.time(), time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, check=True, capture_output=True
    )
    wall = time.perf_counter() - start
    TIMES["stdout"], TIMES["end"] = result.stdout, time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    TIMES["cpu"] = cpu
    return wall, start_clock


def _digits(extra, workers=1, pythonpath=None):
    """Run ``pipelines.train data=digits`` + ``extra`` in a fresh store (with
    ``pythonpath`` first on the path: another checkout's code); return its wall,
    the seconds to its first job's run, and each job's cost beyond its fit."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        _create_store(uri)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        wall, start = _timed_process([*DIGITS[:2], *extra, *DIGITS[2:]], env, tmp)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("skmlp")
        runs = client.search_runs([experiment.experiment_id])
        jobs = [r for r in runs if "fit_seconds" in r.data.metrics]
    fit = sum(r.data.metrics["fit_seconds"] for r in jobs)
    first = min(r.info.start_time for r in jobs) / 1000 - start
    per_job = ((wall - first) * workers - fit) / len(jobs)
    return wall, first, fit, per_job


def cost(rounds, base=None):
    """Issue 20's figures on ``data=digits``: the import floor, a single run's fixed
    cost, each sweep's first-job delay and per-job cost; ``rounds`` times, in turns.
    With ``base`` (a checkout of another revision), its code is measured too, in
    turns with this one's, in the same rounds."""
    codes = {"this": None, **({"base": os.path.abspath(base)} if base else {})}
    launchers = os.environ.get("BENCH_LAUNCHERS", ",".join(LAUNCHERS)).split(",")
    names = ("floor", "single", *launchers)
    rows = {code: {n: [] for n in names} for code in codes}
    for round_ in range(rounds):
        order = list(codes.items())[:: -1 if round_ % 2 else 1]
        for code, pythonpath in order:
            _cost_round(rows[code], pythonpath)
        for code in codes:
            print(f"[{code}] " + _cost_line(rows[code]), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def _cost_round(rows, pythonpath):
    wall, _ = _timed_process(["-c", FLOOR + "; import time; print(time.time())"])
    exit_ = TIMES["end"] - float(TIMES["stdout"])  # from its imports' end to its end
    rows["floor"].append((wall, TIMES["cpu"], exit_))
    wall, _, fit, _ = _digits([], pythonpath=pythonpath)
    rows["single"].append((wall, wall - fit, TIMES["cpu"]))
    for name in rows:
        if name in LAUNCHERS:
            workers = 2 if LAUNCHERS[name] else 1  # launcher/parallel.yaml's n_jobs
            extra = [*SWEEP, *LAUNCHERS[name]]
            wall, first, _, per_job = _digits(extra, workers, pythonpath)
            rows[name].append((wall, first, per_job, TIMES["cpu"]))


def _cost_line(rows):
    """The medians of the rounds so far."""

    def median(name, index):
        return statistics.median(row[index] for row in rows[name])

    floor, floor_cpu = median("floor", 0), median("floor", 1)
    lines = [
        f"{len(rows['floor'])} rounds, medians: import floor {floor:.2f} s "
        f"({floor_cpu:.2f} s CPU; its exit after the imports {median('floor', 2):.2f} s)"
        f"; single run {median('single', 0):.2f} s wall, "
        f"fixed cost {median('single', 1):.2f} s (floor + "
        f"{median('single', 1) - floor:.2f} s), {median('single', 2):.2f} s CPU "
        f"(floor + {median('single', 2) - floor_cpu:.2f} s)"
    ]
    for name in (name for name in rows if name in LAUNCHERS):
        first = median(name, 1)
        lines.append(
            f"  sweep of 8, {name}: {median(name, 0):.2f} s wall, first job at "
            f"{first:.2f} s (floor + {first - floor:.2f} s), "
            f"{median(name, 2):.2f} s per job beyond its fit; CPU: "
            f"{(median(name, 3) - floor_cpu) / 8:.2f} s per job beyond the floor"
            + (UNCOUNTED if name == "parallel" else "")
        )
    return "\n".join(lines)


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
    if args and args[0] == "cost":
        return cost(int(args[1]) if len(args) > 1 else 3, *args[2:3])
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
