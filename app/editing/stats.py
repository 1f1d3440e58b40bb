"""Key statistics C₀ = E[k kᵀ] of each edited down-projection's input, over generic text.

The text is a corpus (a text file or a folder of .txt files) when the caller names one, else
text the model generates itself: sequences sampled at temperature 1 from the start token
alone, i.e. from the model's own distribution. That needs no data at all, so the defaults work
on any machine; a corpus of real text (WikiText) gives slightly better statistics (the
comparison is in benchmarks/results/c0-generated-vs-wikitext.md).

One forward pass serves every edited layer and stops at the highest of them. Results (and the
generated sample) are cached on disk (safetensors), keyed by the model's weights, the layer,
the text and the token budget; writes go to a temp file and are renamed into place.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from app.editing.batching import forward_until
from app.editing.model import DEFAULT_CACHE_DIR, LoadedModel
from app.editing.progress import SILENT, Monitor
from app.editing.settings import EditSettings
from app.editing.types import EditError

SEQ_LEN = 256
_WIKITEXT_FIXES = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")]

# Generating a token costs a whole forward pass with the vocabulary projection, about four times
# what C₀ costs per token at the lower edited layers, so the generated sample is smaller than a
# corpus budget: on 2 CPU cores this many tokens take a few minutes for SmolLM2-135M, once.
SAMPLE_TOKENS = 32_768
SAMPLE_SEED = 0
SAMPLE_BATCH = 32


class CorpusError(EditError):
    """A corpus that cannot give any text."""


def corpus_files(corpus: Path | str) -> list[Path]:
    """The text files of a corpus: the file itself, or a folder's .txt files in name order."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise CorpusError(f"the corpus {str(corpus)!r} does not exist")
    files = [corpus] if corpus.is_file() else sorted(corpus.glob("*.txt"))
    if not files:
        raise CorpusError(f"the corpus folder {str(corpus)!r} holds no .txt files")
    if all(f.stat().st_size == 0 for f in files):
        raise CorpusError(f"the corpus {str(corpus)!r} is empty")
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
def sample_windows(
    lm: LoadedModel,
    tokens: int,
    seq_len: int = SEQ_LEN,
    seed: int = SAMPLE_SEED,
    batch_size: int = SAMPLE_BATCH,
    progress: bool = False,
    monitor: Monitor = SILENT,
) -> list[list[int]]:
    """Text the model writes itself, as windows of seq_len token ids (about `tokens` in all).

    Each window is sampled at temperature 1 (no top-k, no top-p) from the start token alone
    (BOS, else EOS), with end-of-sequence suppressed so that every window is full. Seeded:
    the same model gives the same sample. `monitor` hears of every generated token position
    and can stop the sampling between two of them.
    """
    tok = lm.tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise EditError("the tokenizer has neither a BOS nor an EOS token to start sampling from; give a corpus")
    n = math.ceil(tokens / seq_len)
    windows: list[list[int]] = []
    bar = tqdm(total=n * seq_len, unit="tok", desc="sampling text for C₀", disable=not progress)
    monitor.begin(
        "sampling text for C0", f"{n * seq_len:,} tokens the model writes itself", total=n * seq_len, unit="tokens"
    )
    devices = [lm.device] if lm.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for first in range(0, n, batch_size):
                ids = torch.full((min(batch_size, n - first), 1), start, dtype=torch.long, device=lm.device)
                out = lm.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    min_new_tokens=seq_len - 1,
                    max_new_tokens=seq_len - 1,
                    pad_token_id=tok.pad_token_id,
                    stopping_criteria=_watch(monitor, len(windows) * seq_len),
                )
                windows.extend(out.tolist())
                bar.update(out.numel())
    finally:
        bar.close()
    return windows


def _watch(monitor: Monitor, before: int):
    """A stopping criterion that tells the monitor how many tokens the sample holds after every
    generation step and stops the sampling (Cancelled) when asked to; it never ends a sequence."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Watch(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            monitor.check()
            monitor.advance(before + input_ids.numel())
            never = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            return never  # type: ignore[return-value]  # a bool tensor is what BoolTensor names

    return StoppingCriteriaList([Watch()])


@torch.no_grad()
def key_second_moments(
    lm: LoadedModel,
    layers: list[int],
    windows: list[list[int]],
    batch_size: int = 8,
    progress: bool = True,
    monitor: Monitor = SILENT,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (f×f, float32) for each layer, from one pass over the token windows. `monitor`
    hears of every finished chunk and can stop the pass at any edited layer of a chunk."""
    sums: dict[int, torch.Tensor] = {}  # a layer's entry appears with its first keys
    count = 0
    stop_layer = max(layers)

    def key_hook(layer):
        def hook(module, args):
            k = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[layer] = (k.T @ k).double() if layer not in sums else sums[layer] + (k.T @ k).double()

        return hook

    hooks = [lm.adapter.edited_module(lm.model, layer).register_forward_pre_hook(key_hook(layer)) for layer in layers]
    # A stop is honoured before every block, not only between chunks: a chunk of a large model
    # takes seconds on a busy CPU.
    hooks += [
        lm.adapter.block(lm.model, i).register_forward_pre_hook(lambda *_: monitor.check())
        for i in range(stop_layer + 1)
    ]
    total = sum(len(w) for w in windows)
    bar = tqdm(total=total, unit="tok", desc="key statistics", disable=not progress)
    monitor.begin("building C0", f"layers {list(layers)} from {total:,} tokens", total=total, unit="tokens")
    try:
        # Equal-length windows need no padding (only the last one may be shorter: it runs alone).
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            for group in [batch] if len({len(w) for w in batch}) == 1 else [[w] for w in batch]:
                ids = torch.tensor(group, device=lm.device)
                forward_until(
                    lm.adapter.block(lm.model, stop_layer),
                    partial(lm.model.base_model, input_ids=ids, use_cache=False),
                )
                count += ids.numel()
                bar.update(ids.numel())
                monitor.advance(count)
    finally:
        for h in hooks:
            h.remove()
        bar.close()
    if count == 0:
        raise CorpusError("the corpus produced no tokens")
    return {layer: (sums[layer] / count).float() for layer in layers}


def collect_key_stats(
    lm: LoadedModel,
    layers: list[int],
    corpus: Path | str | None,
    tokens: int,
    batch_size: int = 8,
    progress: bool = True,
    monitor: Monitor = SILENT,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] for each layer over `tokens` tokens of the corpus (None: of text the model
    generates, at most SAMPLE_TOKENS), computed afresh."""
    if corpus is None:
        windows = sample_windows(lm, min(tokens, SAMPLE_TOKENS), progress=progress, monitor=monitor)
    else:
        windows = token_windows(lm.tokenizer, corpus_files(corpus), tokens)
    return key_second_moments(lm, layers, windows, batch_size, progress, monitor)


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write next to `path` and rename into place: concurrent first runs never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def _cached_sample(lm: LoadedModel, tokens: int, folder: Path, progress: bool, monitor: Monitor) -> list[list[int]]:
    """The generated sample, drawn once per model and budget and kept beside its statistics, so
    that statistics of layers asked for later come from the same text."""
    path = folder / f"sample-seed{SAMPLE_SEED}-{tokens}tok.safetensors"
    if path.exists():
        return load_file(path)["ids"].tolist()
    windows = sample_windows(lm, tokens, progress=progress, monitor=monitor)
    _save(path, {"ids": torch.tensor(windows, dtype=torch.long)}, {"seed": str(SAMPLE_SEED), "tokens": str(tokens)})
    return windows


def load_key_stats(
    lm: LoadedModel,
    settings: EditSettings,
    corpus: Path | str | None = None,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    progress: bool = True,
    layers: list[int] | None = None,
    monitor: Monitor = SILENT,
) -> dict[int, torch.Tensor]:
    """C₀ for every edited layer, from the disk cache where present, else computed (one pass for
    all missing). `corpus=None`: over text the model generates (sampled once, cached too).
    `monitor` hears how far sampling and the pass got, and can stop them (Cancelled)."""
    folder = Path(cache_dir or DEFAULT_CACHE_DIR) / "stats" / lm.fingerprint()
    layers = list(layers if layers is not None else settings.layers)
    lm.check_layers(layers)
    if corpus is None:
        tokens = min(settings.stats_tokens, SAMPLE_TOKENS)
        text_key = f"sample{SAMPLE_SEED}"
    else:
        files = corpus_files(corpus)
        tokens = settings.stats_tokens
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        text_key = h.hexdigest()[:12]
    paths = {layer: folder / f"layer{layer}-{text_key}-{tokens}tok.safetensors" for layer in layers}
    stats = {layer: load_file(p)["c0"] for layer, p in paths.items() if p.exists()}
    missing = [layer for layer in layers if layer not in stats]
    if missing:
        if corpus is None:
            windows = _cached_sample(lm, tokens, folder, progress, monitor)
        else:
            windows = token_windows(lm.tokenizer, files, tokens)
        fresh = key_second_moments(lm, missing, windows, progress=progress, monitor=monitor)
        for layer, c0 in fresh.items():
            _save(paths[layer], {"c0": c0.contiguous()}, {"layer": str(layer), "tokens": str(tokens)})
        stats.update(fresh)
    return {layer: stats[layer].to(lm.device) for layer in layers}
