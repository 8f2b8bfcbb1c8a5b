import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("SDD_BENCH_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _embed_cache(tmp_path_factory):
    """One embedding cache per test session (judges/relevance.py): shared by the tests, never the user's."""
    os.environ["SDD_BENCH_EMBED_CACHE"] = str(tmp_path_factory.mktemp("embeddings"))


@pytest.fixture(scope="session")
def session_store(tmp_path_factory):
    from sdd_bench.harness.store import Store
    return Store(tmp_path_factory.mktemp("runs"))


@pytest.fixture()
def store(tmp_path):
    from sdd_bench.harness.store import Store
    return Store(tmp_path / "runs")


@pytest.fixture(scope="session")
def tiny_ref(session_store):
    from sdd_bench.harness import models
    return models.materialize("tiny", session_store, seed=0)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_ref):
    from sdd_bench.harness import models
    return models.load(tiny_ref, device="cpu")
