"""A benchmark script run at two revisions, alternately, in one run: did speed hold?

Each round runs the script once with the base revision's skmlp (a ``git worktree`` of
it) and once with the working tree's, in fresh processes, the order alternating from
round to round. The script is the working tree's for both (the same benchmark, only the
library differs; ``--base-script``: the base revision's own copy, for a script that
uses what the working tree no longer has). Every ratio the script prints (a number followed
by ``x``: the script's own peer measured in the same process) is collected per line;
the summary gives each line's median ratio at both revisions and their quotient
(working tree / base: 1.00 means no change; the peers cancel the machine's drift).

``--in-process`` instead loads both libraries into ONE process (the base revision's
skmlp copied as the package ``skmlp_base``, its imports renamed) and times, alternately,
by this process's CPU time, one 784-16-16-10 ``fit`` and a ``fit_together`` of six
(MNIST 60k, batch 100, as bench_fit.py and bench_together.py): no drift between
processes, so the steadier answer on a shared machine.

Run:  OMP_NUM_THREADS=1 SKMLP_MNIST_DIR=../shared/data/mnist \
      python benchmarks/bench_revisions.py --base 89ec202 --rounds 4 -- \
          bench_fit.py --epochs 3 --repeats 3 --cpu-time
      (and ``-- bench_together.py --skip-wide --n-jobs 1 --epochs 5 --cpu-time``)
      OMP_NUM_THREADS=1 ... bench_revisions.py --base 89ec202 --in-process --rounds 8
"""

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"(\d+\.\d+)x")
NUMBER = re.compile(r"\d+\.\d+")


def ratios(output):
    """``{line with its numbers masked: first ratio on it}`` for each line with one."""
    found = {}
    for line in output.splitlines():
        match = RATIO.search(line)
        if match:
            key = " ".join(NUMBER.sub("#", line).split())
            found[key] = float(match.group(1))
    return found


def run(tree, script, script_tree):
    """The script's output, run from ``tree`` with that tree's skmlp first on the path;
    the script itself is ``script_tree``'s."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, str(script_tree / "benchmarks" / script[0]), *script[1:]],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        sys.exit(f"{script[0]} failed at {tree}:\n{result.stdout}{result.stderr}")
    return result.stdout


def base_package(revision, folder):
    """The base revision's skmlp as the package ``skmlp_base`` under ``folder``."""
    archive = subprocess.run(
        ["git", "archive", revision, "skmlp"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = Path(folder) / "skmlp_base"
    (Path(folder) / "skmlp").rename(package)
    for path in package.glob("*.py"):
        text = re.sub(r"\bskmlp(?=[. ])", "skmlp_base", path.read_text())
        path.write_text(text)
    sys.path.insert(0, str(folder))


def in_process(revision, rounds):
    """Time ``fit`` and ``fit_together`` of both libraries alternately; print them."""
    import numpy as np

    import skmlp
    from skmlp.datasets import load_mnist

    with tempfile.TemporaryDirectory() as folder:
        base_package(revision, folder)
        import skmlp_base

    data = load_mnist()
    X, y = data.X_train, data.y_train
    params = dict(hidden_layer_sizes=(16, 16), batch_size=100, max_iter=2, tol=0.0,
                  n_iter_no_change=10**6, random_state=0)  # fmt: skip
    rates = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05)

    def epoch_seconds(lib, together):
        members = [lib.SGDMLPClassifier(**params, learning_rate_init=r) for r in rates]
        start = time.process_time()
        if together:
            lib.fit_together(members, X, y)
        else:
            members[2].fit(X, y)
        seconds = (time.process_time() - start) / params["max_iter"]
        return seconds / len(members) if together else seconds

    times = {(kind, name): [] for kind in (False, True) for name in ("base", "tree")}
    libraries = [("base", skmlp_base), ("tree", skmlp)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for round_ in range(rounds):
            for name, lib in libraries if round_ % 2 == 0 else libraries[::-1]:
                for together in (False, True):
                    times[together, name].append(epoch_seconds(lib, together))
    print(f"CPU s per epoch (per member, together), {rounds} rounds: {revision} / tree")
    for together, label in (
        (False, "one 784-16-16-10 fit"),
        (True, "fit_together of 6"),
    ):
        base, tree = times[together, "base"], times[together, "tree"]
        paired = float(np.median(np.divide(base, tree)))
        print(
            f"{label:<22} {min(base):.4f} / {min(tree):.4f}: base/tree "
            f"{min(base) / min(tree):.2f}x (median of pairs {paired:.2f}x)"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--base-script",
        action="store_true",
        help="run the base revision's own copy of the script at the base revision",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="both libraries in one process"
    )
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS...")
    args = parser.parse_args()
    if args.in_process:
        return in_process(args.base, args.rounds)
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.base],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            collected = {"base": {}, "tree": {}}
            for round_ in range(args.rounds):
                order = [("base", base), ("tree", ROOT)]
                for name, tree in order if round_ % 2 == 0 else order[::-1]:
                    script_tree = tree if args.base_script else ROOT
                    output = run(tree, script, script_tree)
                    for key, value in ratios(output).items():
                        collected[name].setdefault(key, []).append(value)
                print(f"round {round_ + 1} of {args.rounds} done", flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)],
                cwd=ROOT,
                check=False,
            )
    print(f"\n{' '.join(script)}: median ratio at {args.base} and in the working tree")
    for key, values in collected["tree"].items():
        before = collected["base"].get(key)
        if not before:
            continue
        old, new = statistics.median(before), statistics.median(values)
        print(f"{old:6.2f}x {new:6.2f}x  tree/base {new / old:5.2f}  {key}")


if __name__ == "__main__":
    main()
