"""Where the shared evaluation data lives.

The data is never copied into the repository: it is read from `../shared/data`
relative to the repository root, or from `$KEDIT_DATA_DIR` when that is set.
"""
from __future__ import annotations

from pathlib import Path

from app.editing.stats import shared_data_dir as data_dir  # one rule for the corpus and the eval files

# Default file per --dataset name (relative to the data directory).
DEFAULT_FILES = {
    "counterfact": "counterfact/counterfact.json",
    "counterfact-extra": "counterfact_extra/counterfact-train.json",
    "zsre": "zsre/zsre_mem_eval.json",
}
WIKITEXT_VALID = "corpus/wikitext103_valid.tokens.txt"


def default_data_path(dataset: str) -> Path:
    try:
        return data_dir() / DEFAULT_FILES[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULT_FILES)}") from None


def wikitext_path() -> Path:
    return data_dir() / WIKITEXT_VALID
