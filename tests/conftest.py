import pytest


@pytest.fixture
def tmp_bundle(tmp_path):
    return tmp_path / "bundle"


@pytest.fixture(scope="session")
def fd_cli():
    """The fd command line, in process: ``fd_cli("emit-logits", model, proxy, "--out", out)``
    returns the CliRunner result (tests/helpers.py ``fd``)."""
    from .helpers import fd

    return fd
