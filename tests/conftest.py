import pytest


@pytest.fixture
def tmp_bundle(tmp_path):
    return tmp_path / "bundle"
