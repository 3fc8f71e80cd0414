"""The README's snippets, collected from the README itself and run.

- ``python`` blocks run verbatim, each in a fresh interpreter, in an empty directory
  away from the store, a store like the project's after its quickstart (a short 3b1b
  run, with its model) named by ``MLFLOW_TRACKING_URI``; no snippet may leave a file
  there (a relative store URI would leave an empty ``mlruns/mlflow.db``).
- Each pipeline command of a ``bash`` block (``python -m pipelines.*``, also after an
  install prefix ``... && .venv/bin/python -m ...``) is composed by Hydra as written,
  in process (a sweep: its first job): every group, preset and key it names must exist,
  and every interpolation resolve. Running them all for real would take hours (the
  full memorization sweep alone is one).
- The test command is in ``.ci/run`` verbatim, so CI runs what the README says.
"""

import os
import re
import shlex
import sys

import pytest
from helpers import ROOT, run
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from pipelines import config_dir

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
PYTHON_SNIPPETS = [code for lang, code in BLOCKS if lang == "python"]


def _pipeline_commands():
    """Each ``python -m pipelines.<task> args`` of the bash blocks, as an argv tail."""
    commands = []
    for lang, code in BLOCKS:
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            command = line.split("&&")[-1]
            words = shlex.split(command, comments=True)
            if len(words) > 2 and words[0].endswith("python") and words[1] == "-m":
                if words[2].startswith("pipelines."):
                    commands.append(words[2:])
    return commands


COMMANDS = _pipeline_commands()


@pytest.fixture(scope="module")
def project_store(tmp_path_factory, mnist):  # noqa: ARG001 - the snippets need MNIST
    """The environment of a user whose store (``MLFLOW_TRACKING_URI``, absolute) holds
    a finished 3b1b run."""
    cwd = tmp_path_factory.mktemp("project")
    uri = f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    quick = ["experiment=3b1b", "data.n_train=2000", "model.max_iter=2"]
    run([sys.executable, "-m", "pipelines.train", *quick], cwd, env)
    return env


def test_the_readme_has_snippets_to_test():
    assert len(PYTHON_SNIPPETS) >= 2 and len(COMMANDS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize(
    "code", PYTHON_SNIPPETS, ids=[f"python{i}" for i in range(len(PYTHON_SNIPPETS))]
)
def test_python_snippet_runs_verbatim_from_any_directory(code, project_store, tmp_path):
    run([sys.executable, "-c", code], tmp_path, project_store)
    assert list(tmp_path.iterdir()) == []  # no stray store


def _first_job(override):
    """``key=a,b`` (a sweep) -> ``key=a``, commas inside brackets kept."""
    key, _, value = override.partition("=")
    depth = 0
    for i, char in enumerate(value):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            return f"{key}={value[:i]}"
    return override


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_pipeline_command_composes(argv):
    """Hydra composes the command's config (a sweep: its first job) and resolves it."""
    task, *overrides = argv
    if "--cfg" in overrides:  # a Hydra flag and its value, not overrides
        at = overrides.index("--cfg")
        overrides = overrides[:at] + overrides[at + 2 :]
    if "-m" in overrides:
        overrides = [_first_job(o) for o in overrides if o != "-m"]
    config_name = task.removeprefix("pipelines.")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the job's config
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    resolved = OmegaConf.to_container(job, resolve=True)
    assert resolved["model"]["_target_"] == "skmlp.SGDMLPClassifier"
    assert resolved["task_name"] == config_name


def test_ci_runs_the_readme_test_command():
    (command,) = [
        code.strip()
        for lang, code in BLOCKS
        if lang == "bash" and "pytest" in code and code.startswith("python3 -m venv")
    ]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci


def test_ci_runs_the_slow_tests_too():
    """The quick suite skips the slow tests; the README's second command runs them,
    and so does CI, after the first."""
    (command,) = [
        code.strip()
        for lang, code in BLOCKS
        if lang == "bash" and "pytest" in code and "-m slow" in code
    ]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci
    quick = [i for i, line in enumerate(ci) if line.endswith("-m pytest -n 2")]
    assert quick and quick[0] < ci.index(command)


def test_ci_installs_what_optional_tests_need():
    """Outside CI the torch tests may skip; CI must run them: ``.ci/run`` installs the
    torch extra into the venv of the README's test command, before that command."""
    ci = (ROOT / ".ci" / "run").read_text()
    installs = re.findall(r"^[^#\n]*pip install[^\n]*$", ci, flags=re.MULTILINE)
    torch = [i for i, line in enumerate(installs) if '-e ".[torch]"' in line]
    tests = [i for i, line in enumerate(installs) if "pytest" in line]
    assert torch and tests and torch[0] < tests[-1], installs
