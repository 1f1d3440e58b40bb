"""Run checkpoints on disk: editor state as safetensors + JSON (never pickle), plus progress.

Layout of DIR/checkpoint/:
  editor.safetensors  every tensor of `editor.state_dict()`, under a path-like key
  editor.json         the rest of the state, with {"__tensor__": key} where a tensor was
  progress.json       the runner's progress (batches done, timings, norms, scores so far)

A checkpoint is written to DIR/checkpoint.tmp and then renamed into place, so an
interruption while writing leaves the previous checkpoint intact.

DIR/trail/ is the small resume point written after every batch: each batch's target vectors
z* (trail/batch<b>.safetensors, written once) and the runner's progress (trail/progress.json,
replaced last). A run resumed from it writes its batches again from their z* (keys and solves,
no optimisation), so it costs a tenth of the edits and is a few MB for thousands of facts,
small enough to carry a long CPU run from one machine to the next. With settings.reedit_passes a
batch's facts were written more than once; the trail keeps each fact's last z*, and the rewrite
writes that (with its own passes), which comes close to the run's weights but not to their bits.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoint"
TRAIL_DIR = "trail"
FINAL_DIR = "final"  # the editor state at the end of a finished run, for `kedit eval --after`


def flatten_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, JSON scalars) into a JSON
    skeleton and a flat {key: tensor} map. Dict keys may be str, int, float, bool or None."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            key = path or "root"
            tensors[key] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(x, dict):
            items = []
            for k, v in x.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise TypeError(f"state key {k!r} at {path or 'root'} is not a JSON scalar")
                items.append([k, walk(v, f"{path}.{k}" if path else str(k))])
            return {"__dict__": items}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, (str, int, float, bool)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} at {path or 'root'} (tensors and JSON values only)")

    return walk(obj, ""), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        raise ValueError(f"unknown entry in a state skeleton: {sorted(skeleton)}")
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(out_dir: Path | str, editor_state: Any, progress: dict, name: str = CHECKPOINT_DIR) -> Path:
    out_dir = Path(out_dir)
    final, tmp, old = out_dir / name, out_dir / f"{name}.tmp", out_dir / f"{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skeleton, tensors = flatten_state(editor_state)
    save_file(tensors, str(tmp / "editor.safetensors"))
    (tmp / "editor.json").write_text(json.dumps(skeleton))
    (tmp / "progress.json").write_text(json.dumps(progress))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: Path | str, name: str = CHECKPOINT_DIR) -> tuple[Any, dict]:
    """(editor state, progress) of the last checkpoint in `out_dir` (or of its final state)."""
    out_dir = Path(out_dir)
    ckpt = out_dir / name
    if not ckpt.exists() and (out_dir / f"{name}.old").exists():
        ckpt = out_dir / f"{name}.old"  # interrupted between the two renames
    if not (ckpt / "progress.json").exists():
        raise FileNotFoundError(
            f"{out_dir} has no checkpoint to resume from; start the run with --checkpoint-every K so it writes one"
        )
    tensors = load_file(str(ckpt / "editor.safetensors"))
    state = unflatten_state(json.loads((ckpt / "editor.json").read_text()), tensors)
    return state, json.loads((ckpt / "progress.json").read_text())


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_trail(out_dir: Path | str, batch: int, z_star: torch.Tensor, progress: dict, settings: dict) -> None:
    """Add batch `batch`'s z* (n, d) to DIR/trail/, then record the progress that includes it.
    `settings` (the editor's, as JSON) are kept beside them: z* only mean something under them."""
    trail = Path(out_dir) / TRAIL_DIR
    trail.mkdir(parents=True, exist_ok=True)
    if not (trail / "settings.json").exists():
        _write_atomically(trail / "settings.json", lambda p: p.write_text(json.dumps(settings)))
    z = {"z_star": z_star.detach().to("cpu", torch.float32).contiguous()}
    _write_atomically(trail / f"batch{batch}.safetensors", lambda p: save_file(z, str(p)))
    _write_atomically(trail / "progress.json", lambda p: p.write_text(json.dumps(progress)))


def load_trail(out_dir: Path | str) -> tuple[list[torch.Tensor], dict, dict | None] | None:
    """(z* of every batch done, progress, settings) from DIR/trail/, or None if there is none."""
    trail = Path(out_dir) / TRAIL_DIR
    if not (trail / "progress.json").exists():
        return None
    progress = json.loads((trail / "progress.json").read_text())
    z_stars = []
    for b in range(progress["batches_done"]):
        path = trail / f"batch{b}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the trail in {trail} is incomplete")
        z_stars.append(load_file(str(path))["z_star"])
    settings = trail / "settings.json"
    return z_stars, progress, json.loads(settings.read_text()) if settings.exists() else None


def checkpoint_batches(out_dir: Path | str, name: str = CHECKPOINT_DIR) -> int:
    """Batches done at the full checkpoint `name` in `out_dir` (0 when there is none)."""
    for ckpt in (Path(out_dir) / name, Path(out_dir) / f"{name}.old"):
        if (ckpt / "progress.json").exists():
            return json.loads((ckpt / "progress.json").read_text())["batches_done"]
    return 0
