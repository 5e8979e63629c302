"""``predict --shard K/N`` and ``evaluate --shard K/N`` + ``--merge``: a Slurm array's tasks split
the cases deterministically, and their outputs together are the unsharded run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from braintseg.cli import cli
from braintseg.errors import ConfigError
from braintseg.sources.synthetic import write_case
from braintseg.training.distribute import parse_shard, shard_items
from test_predict import SHAPE, make_run

CASES = ["Brats18_A_1", "Brats18_B_1", "Brats18_C_1"]


@pytest.fixture(scope="module")
def three_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shard_cases")
    for i, case in enumerate(CASES):
        write_case(root, case, SHAPE, seed=10 + i, convention="brats2018")
    return root


def test_shards_are_disjoint_and_cover_everything() -> None:
    items = list(range(11))
    shards = [shard_items(items, (k, 4)) for k in range(4)]
    assert sorted(sum(shards, [])) == items
    assert shards[1] == [1, 5, 9] and shard_items(items, None) == items
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) is None
    for bad in ("5/5", "-1/2", "1", "a/b", "1/0", "1/2/3"):
        with pytest.raises(ConfigError, match="--shard must be K/N"):
            parse_shard(bad)


def test_sharded_predict_and_evaluate_equal_the_unsharded_run(three_cases, tmp_path) -> None:
    run = make_run(tmp_path / "run", "axial")
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    invoke("predict", "-m", str(run), "-i", str(three_cases), "-o", str(tmp_path / "whole"))
    for k in range(2):  # two array tasks writing into one folder
        invoke("predict", "-m", str(run), "-i", str(three_cases), "-o", str(tmp_path / "parts"),
               "--shard", f"{k}/2")
    whole = {p.name: p.read_bytes() for p in (tmp_path / "whole").glob("*.nii.gz")}
    parts = {p.name: p.read_bytes() for p in (tmp_path / "parts").glob("*.nii.gz")}
    assert sorted(whole) == [f"{c}.nii.gz" for c in CASES]
    assert parts == whole  # byte for byte
    assert (tmp_path / "parts" / "predictions.shard-0-of-2.csv").read_text().count("\n") == 3
    assert (tmp_path / "parts" / "predictions.shard-1-of-2.csv").read_text().count("\n") == 2

    invoke("evaluate", "-p", str(tmp_path / "whole"), "-t", str(three_cases))
    for k in range(3):  # more shards than cases would be fine too; 3 tasks of one case each
        invoke("evaluate", "-p", str(tmp_path / "parts"), "-t", str(three_cases),
               "--shard", f"{k}/3")
    assert not (tmp_path / "parts" / "metrics.csv").exists()
    invoke("evaluate", "-p", str(tmp_path / "parts"), "-t", str(three_cases), "--merge")
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "parts" / "metrics.json").read_text())
    assert a["cases"] == b["cases"] and a["summary"] == b["summary"]
    assert ((tmp_path / "whole" / "metrics.csv").read_text()
            == (tmp_path / "parts" / "metrics.csv").read_text())

    (tmp_path / "parts" / "metrics.shard-1-of-3.json").unlink()
    result = runner.invoke(cli, ["evaluate", "-p", str(tmp_path / "parts"), "-t",
                                 str(three_cases), "--merge"])
    assert result.exit_code == 1 and "incomplete or mixed" in result.output
