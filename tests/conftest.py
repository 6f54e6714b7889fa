"""Shared test fixtures: a private build cache for the session, the golden-file fixture."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Every build of the session (and of the processes it starts) goes to one fresh cache, so
# the suite neither reads nor fills the user's own.
if "CONVC_TEST_KEEP_CACHE" not in os.environ:
    os.environ["CONVC_CACHE_DIR"] = tempfile.mkdtemp(prefix="convc-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CONVC_CACHE_DIR"], ignore_errors=True)

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite the golden files from the current output")


@pytest.fixture
def golden(request):
    """``golden(name, text)``: compare ``text`` with ``tests/golden/<name>`` (or rewrite it)."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update or not path.exists():
            if not update:
                pytest.fail(f"golden file {path} is missing; run pytest --update-golden")
            path.write_text(text)
            return
        assert text == path.read_text(), (
            f"{name} differs from its golden file; review the change and run "
            f"pytest --update-golden")

    return check


@pytest.fixture
def unremembered(monkeypatch):
    """For a test that patches convc's own constants or functions: its lowerings are neither
    read from the cache nor kept there (`convc.memo` keys on the sources, not on a patch)."""
    import convc
    from convc import memo

    monkeypatch.setattr(memo, "lowered", convc.lower)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory of its own, and nothing remembered in this process."""
    from convc import build

    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    build._forget_loaded()
    yield tmp_path / "cache"
    build._forget_loaded()
