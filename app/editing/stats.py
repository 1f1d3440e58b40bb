"""Key statistics C₀ = E[k kᵀ] of each edited down-projection's input, over generic text.

One forward pass serves every edited layer and stops at the highest of them. Results
are cached on disk (safetensors), keyed by the model's weights, the layer, the corpus
files and the token budget; writes go to a temp file and are renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from app.editing.batching import forward_until
from app.editing.model import LoadedModel, default_cache_dir
from app.editing.settings import EditSettings
from app.editing.types import EditError

SEQ_LEN = 256
_WIKITEXT_FIXES = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")]


def shared_data_dir() -> Path:
    """The shared data folder (corpus and evaluation files): $KEDIT_DATA_DIR, else
    ../shared/data next to the repository."""
    env = os.environ.get("KEDIT_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def default_corpus() -> Path:
    """$KEDIT_CORPUS, else corpus/ in the shared data folder."""
    env = os.environ.get("KEDIT_CORPUS")
    return Path(env) if env else shared_data_dir() / "corpus"


def corpus_files(corpus: Path) -> list[Path]:
    corpus = Path(corpus)
    if corpus.is_file():
        return [corpus]
    files = sorted(corpus.glob("*.txt")) if corpus.is_dir() else []
    if not files:
        raise EditError(f"no .txt files at {str(corpus)!r}: give a text file or a folder of .txt files (--corpus)")
    return files


def _paragraphs(files: list[Path]):
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line or re.fullmatch(r"=+ .* =+", line):  # WikiText headings
                    continue
                for a, b in _WIKITEXT_FIXES:
                    line = line.replace(a, b)
                yield line


def token_windows(tok, files: list[Path], budget: int, seq_len: int = SEQ_LEN) -> list[list[int]]:
    """Pack paragraphs (files in name order) into windows of seq_len tokens until the budget is met."""
    windows, current, total = [], [], 0
    for text in _paragraphs(files):
        current.extend(tok(text + "\n", add_special_tokens=False)["input_ids"])
        while len(current) >= seq_len and total < budget:
            windows.append(current[:seq_len])
            current = current[seq_len:]
            total += seq_len
        if total >= budget:
            break
    if total < budget and current:
        windows.append(current[: budget - total])
    return windows


@torch.no_grad()
def collect_key_stats(
    lm: LoadedModel, layers: list[int], corpus: Path, tokens: int, batch_size: int = 8, progress: bool = True
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (f×f, float32) for each layer, from one pass over `tokens` tokens of the corpus."""
    windows = token_windows(lm.tokenizer, corpus_files(corpus), tokens)
    sums = {l: None for l in layers}
    count = 0
    stop_layer = max(layers)

    def key_hook(layer):
        def hook(module, args):
            k = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[layer] = (k.T @ k).double() if sums[layer] is None else sums[layer] + (k.T @ k).double()
        return hook

    hooks = [lm.adapter.edited_module(lm.model, l).register_forward_pre_hook(key_hook(l)) for l in layers]
    bar = tqdm(total=sum(len(w) for w in windows), unit="tok", desc="key statistics", disable=not progress)
    try:
        # Equal-length windows need no padding (only the last one may be shorter: it runs alone).
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            for group in ([batch] if len({len(w) for w in batch}) == 1 else [[w] for w in batch]):
                ids = torch.tensor(group, device=lm.device)
                forward_until(lm.adapter.block(lm.model, stop_layer), lambda: lm.model.base_model(input_ids=ids, use_cache=False))
                count += ids.numel()
                bar.update(ids.numel())
    finally:
        for h in hooks:
            h.remove()
        bar.close()
    if count == 0:
        raise EditError("the corpus produced no tokens")
    return {l: (s / count).float() for l, s in sums.items()}


def _cache_path(lm: LoadedModel, layer: int, files: list[Path], tokens: int, cache_dir: Path) -> Path:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return cache_dir / "stats" / lm.fingerprint() / f"layer{layer}-{h.hexdigest()[:12]}-{tokens}tok.safetensors"


def load_key_stats(
    lm: LoadedModel,
    settings: EditSettings,
    corpus: Path | str | None = None,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    layers: list[int] | None = None,
) -> dict[int, torch.Tensor]:
    """C₀ for every edited layer, from the disk cache where present, else computed (one pass for all missing)."""
    corpus = Path(corpus) if corpus else default_corpus()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    files = corpus_files(corpus)
    layers = list(layers if layers is not None else settings.layers)
    lm.check_layers(layers)
    paths = {l: _cache_path(lm, l, files, settings.stats_tokens, cache_dir) for l in layers}
    stats = {l: load_file(p)["c0"] for l, p in paths.items() if p.exists()}
    missing = [l for l in layers if l not in stats]
    if missing:
        fresh = collect_key_stats(lm, missing, corpus, settings.stats_tokens, progress=progress)
        for l, c0 in fresh.items():
            paths[l].parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=paths[l].parent, suffix=".tmp")
            os.close(fd)
            save_file({"c0": c0.contiguous()}, tmp, metadata={"layer": str(l), "tokens": str(settings.stats_tokens)})
            os.replace(tmp, paths[l])
        stats.update(fresh)
    return {l: stats[l].to(lm.device) for l in layers}
