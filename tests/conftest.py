import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest -n N, one CPU thread per worker (and per process a test starts): workers
    # whose OpenMP threads each want every core slow one another down several times over.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    # xdist starts its workers with COLUMNS=80 and LINES=24, which fd's console takes for a
    # width the user chose; the tests expect what a pipe gets
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tmp_bundle(tmp_path):
    return tmp_path / "bundle"


@pytest.fixture(scope="session")
def fd_cli():
    """The fd command line, in process: ``fd_cli("emit-logits", model, proxy, "--out", out)``
    returns the CliRunner result (tests/helpers.py ``fd``)."""
    from .helpers import fd

    return fd


#: the test files that take longest, started first so that under ``pytest -n 2 --dist
#: loadfile`` no worker is left with a long file at the end while the other idles
LONGEST_FIRST = ("test_examples.py", "test_seq2seq.py", "test_token.py", "test_flower.py",
                 "test_scaling.py", "test_dp.py", "test_baselines.py", "test_output.py",
                 "test_resume.py", "test_evidence.py", "test_token_federation.py",
                 "test_embedding.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable otherwise
