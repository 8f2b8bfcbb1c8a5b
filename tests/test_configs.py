"""Every config the repository ships resolves (options, presets, sweeps, budgets), so a user's first command on one
of them never fails on a typo.  Data checksums (what `sdd-bench validate` adds) are not recomputed here."""
from pathlib import Path

import pytest

from sdd_bench.harness import grid, pipeline
from sdd_bench.harness.config import load_yaml

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_resolves(path, monkeypatch):
    # validate also checks credentials (issue 38): the rubric configs need a key in the environment, not the file
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder-for-the-check")
    data = load_yaml(str(path))
    if grid.is_grid(data):
        cells = grid.expand(grid.grid_from_mapping(data, where=str(path)))
        assert cells
        for spec in cells:
            pipeline.resolve(spec)
    else:
        pipeline.validate_config(data, where=str(path))
