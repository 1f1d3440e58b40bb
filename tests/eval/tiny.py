"""The shared tiny-model builders of tests/conftest.py, importable from the eval tests
whatever pytest's import mode (loaded by path under a fixed module name)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "kedit_tests_root_conftest"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).resolve().parents[1] / "conftest.py")
    sys.modules[_NAME] = _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
_root = sys.modules[_NAME]

build_tiny_model = _root.build_tiny_model
TRAINING_TEXT = _root._TRAINING_TEXT
