"""Where the shared evaluation data lives.

The data is never copied into the repository: it is read from `../shared/data`
relative to the repository root, or from `$KEDIT_DATA_DIR` when that is set.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Default file per --dataset name (relative to the data directory).
DEFAULT_FILES = {
    "counterfact": "counterfact/counterfact.json",
    "counterfact-extra": "counterfact_extra/counterfact-train.json",
    "zsre": "zsre/zsre_mem_eval.json",
}
WIKITEXT_VALID = "corpus/wikitext103_valid.tokens.txt"


def data_dir() -> Path:
    """The shared data directory: $KEDIT_DATA_DIR, else ../shared/data next to the repo."""
    env = os.environ.get("KEDIT_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def default_data_path(dataset: str) -> Path:
    try:
        return data_dir() / DEFAULT_FILES[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULT_FILES)}") from None


def wikitext_path() -> Path:
    return data_dir() / WIKITEXT_VALID
