"""What Hydra prints before any callback exists (``--cfg``, ``--info``, ``--help``)
shows a store URI's password as ``***`` (issue 21, known gap (d)): the entry points
run as a user runs them."""

import sys

import pytest
from helpers import run

URI = "tracking.uri=postgresql+psycopg2://me:S3CRET-PW@db.example/mlflow"


@pytest.mark.parametrize(
    "flags",
    [["--cfg", "job"], ["--cfg=all"], ["-c", "hydra"], ["--info", "config"], ["-h"]],
    ids=["cfg-job", "cfg-all", "cfg-hydra", "info-config", "help"],
)
def test_printed_config_hides_the_password(flags, tmp_path):
    result = run([sys.executable, "-m", "pipelines.train", *flags, URI], tmp_path)
    printed = result.stdout + result.stderr
    assert "S3CRET-PW" not in printed
    assert "me:***@db.example" in printed


@pytest.mark.parametrize("module", ["pipelines.grid_search", "pipelines.memorization"])
def test_every_entry_point_hides_it(module, tmp_path):
    result = run([sys.executable, "-m", module, "--cfg", "job", URI], tmp_path)
    assert "S3CRET-PW" not in result.stdout
    assert "me:***@db.example" in result.stdout
