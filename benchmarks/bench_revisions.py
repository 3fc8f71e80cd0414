"""A benchmark script run at two revisions, alternately, in one run: did speed hold?

Each round runs the script once at the base revision (a ``git worktree`` of it, its own
copy of the script and of skmlp) and once at the working tree, in fresh processes, the
order alternating from round to round. Every ratio the script prints (a number followed
by ``x``: the script's own peer measured in the same process) is collected per line;
the summary gives each line's median ratio at both revisions and their quotient
(working tree / base: 1.00 means no change; the peers cancel the machine's drift).

Run:  SKMLP_MNIST_DIR=../shared/data/mnist python benchmarks/bench_revisions.py \
          --base 89ec202 --rounds 3 -- bench_fit.py --epochs 3
      OMP_NUM_THREADS=1 ... bench_revisions.py --base 89ec202 -- \
          bench_together.py --skip-wide --n-jobs 1 --epochs 5
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
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


def run(tree, script):
    """The script's output, run from ``tree`` with that tree's skmlp first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / script[0]), *script[1:]],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        sys.exit(f"{script[0]} failed at {tree}:\n{result.stdout}{result.stderr}")
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS...")
    args = parser.parse_args()
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
                    for key, value in ratios(run(tree, script)).items():
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
