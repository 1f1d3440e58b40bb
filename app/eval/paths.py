"""Where the evaluation files live inside the shared data folder.

The data is never copied into the repository: the folder is the configuration's `data_dir`
(KEDIT_DATA_DIR; default ../shared/data beside the repository).
"""

from __future__ import annotations

from pathlib import Path

# Default file per --dataset name (relative to the data directory).
DEFAULT_FILES = {
    "counterfact": "counterfact/counterfact.json",
    "counterfact-extra": "counterfact_extra/counterfact-train.json",
    "zsre": "zsre/zsre_mem_eval.json",
}
WIKITEXT_VALID = "corpus/wikitext103_valid.tokens.txt"


def _data_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    from app.config import KeditConfig

    return KeditConfig().data_dir


def data_dir() -> Path:
    """The shared data folder (KEDIT_DATA_DIR; default ../shared/data beside the repository)."""
    return _data_dir(None)


def default_data_path(dataset: str, data_dir: Path | None = None) -> Path:
    try:
        name = DEFAULT_FILES[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULT_FILES)}") from None
    return _data_dir(data_dir) / name


def wikitext_path(data_dir: Path | None = None) -> Path:
    return _data_dir(data_dir) / WIKITEXT_VALID
