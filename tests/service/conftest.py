"""Embedded mode: SQLite + the in-process queue + the worker thread, on a tiny model."""
from __future__ import annotations

from pathlib import Path

import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path

# tests/service/helpers.py under one fixed name, whether or not tests/ is a package.
if "kedit_service_test_helpers" not in _sys.modules:
    _spec = _ilu.spec_from_file_location("kedit_service_test_helpers", _Path(__file__).resolve().parents[1] / "service" / "helpers.py")
    _sys.modules["kedit_service_test_helpers"] = _mod = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from kedit_service_test_helpers import make_tiny_assets, tiny_config


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny-service")
    model_dir, corpus = make_tiny_assets(root)
    return model_dir, corpus, root / "cache"  # one cache: key statistics are computed once


@pytest.fixture
def make_config(tiny_assets, tmp_path):
    model_dir, corpus, cache = tiny_assets

    def make(db: Path | None = None, **over):
        db = db or tmp_path / "kedit.db"
        return tiny_config(model_dir, corpus, cache, database_url=f"sqlite:///{db}", **over)

    return make


@pytest.fixture
def client(make_config):
    with TestClient(create_app(make_config())) as c:
        yield c
