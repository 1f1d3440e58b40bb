"""Taking the edited model elsewhere: a plain Hugging Face folder, or only the live deltas.

- `export_folder`: the weights of one version (base + its live deltas, proven against the log's hash)
  saved with `save_pretrained` (safetensors), with the tokenizer and its chat template, so that
  `AutoModelForCausalLM.from_pretrained`, vLLM or TGI load the edited model like any other.
- `export_deltas` / `import_deltas`: only the live batches' factors (U, V and their keys, per layer,
  in the order they were applied), a few MB instead of the whole model. The file names the base
  weights' hash; importing adds the batches to that same base in the same order, the same float32
  operations as a replay, so the result has the same weights hash, which the import checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from app.editing.editor import Editor
from app.editing.types import LayerDelta
from app.service.host import ModelHost

FORMAT = "kedit-deltas/1"
EXPORT_INFO = "kedit-export.json"


class ExportError(ValueError):
    """A file or a base model that does not fit; the message says which and what to do."""


def export_folder(host: ModelHost, out: Path) -> dict:
    """Save the host's current weights as a Hugging Face folder; returns what was written."""
    with host.reading() as version:
        info = {
            "model": host.model_name,
            "version": version,
            "weights_hash": host.weights_hash,
            "base_hash": host.base_hash,
            "layers": host.layers,
            "batches": host.editor.batch_ids,
        }
        save_folder(host.editor.lm, out, info)
    return info


def save_folder(lm, out: Path, info: dict) -> None:
    """The model (safetensors), its config and generation config, the tokenizer with its chat template,
    and kedit-export.json saying which weights these are."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out)  # safetensors: transformers 5 writes nothing else
    lm.tokenizer.save_pretrained(out)
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")


def export_deltas(host: ModelHost, path: Path) -> dict:
    """Write the live batches of the host's version as one safetensors file."""
    editor = host.editor
    assert isinstance(editor, Editor)  # the factors below are the real editor's state
    tensors: dict[str, torch.Tensor] = {}
    host.fill_missing_deltas()  # a start from a weight snapshot loaded no factors of the batches in it
    with host.reading() as version:
        order = editor.batch_ids
        for b in order:
            deltas = editor.live[b]
            assert deltas is not None  # fill_missing_deltas() loaded every batch's factors
            for d in deltas:
                for name in ("u", "v", "keys"):
                    tensors[f"batch{b}.layer{d.layer}.{name}"] = (
                        getattr(d, name).detach().to("cpu", torch.float32).contiguous()
                    )
        meta = {
            "format": FORMAT,
            "model": host.model_name,
            "version": str(version),
            "base_hash": host.base_hash,
            "weights_hash": host.weights_hash,
            "layers": json.dumps(host.layers),
            "batches": json.dumps(order),
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return {**meta, "layers": host.layers, "batches": order}


def read_deltas(path: Path) -> tuple[dict, list[tuple[int, list[LayerDelta]]]]:
    """The file's metadata and its batches in the order they were applied."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT:
                raise ExportError(f"{path} is not a kedit deltas file (written by `kedit export --deltas`)")
            layers, order = json.loads(meta["layers"]), json.loads(meta["batches"])
            batches = [
                (
                    b,
                    [
                        LayerDelta(
                            layer,
                            f.get_tensor(f"batch{b}.layer{layer}.u"),
                            f.get_tensor(f"batch{b}.layer{layer}.v"),
                            f.get_tensor(f"batch{b}.layer{layer}.keys"),
                        )
                        for layer in layers
                    ],
                )
                for b in order
            ]
    except (OSError, KeyError, json.JSONDecodeError, SafetensorError) as e:
        raise ExportError(f"cannot read deltas from {path}: {e}") from None
    return meta, batches


def import_deltas(editor: Editor, path: Path) -> dict:
    """Add a deltas file's batches to an editor holding the same base weights; check the result's hash."""
    meta, batches = read_deltas(path)
    if editor.batch_ids:
        raise ExportError("the model already holds edits; import deltas onto the base weights only")
    if json.loads(meta["layers"]) != editor.layers:
        raise ExportError(
            f"the deltas edit layers {meta['layers']} but this model is set up to edit {editor.layers}: "
            "use the same settings (KEDIT_EDIT_OVERRIDES / KEDIT_PRESET) as the exporting service"
        )
    base = editor.weights_hash()
    if base != meta["base_hash"]:
        raise ExportError(
            f"the deltas were made on base weights {meta['base_hash'][:12]} ({meta.get('model')}) but "
            f"this model hashes to {base[:12]}: load the same base model"
        )
    for b, deltas in batches:
        editor.add_batch(b, deltas)
    got = editor.weights_hash()
    if got != meta["weights_hash"]:
        raise ExportError(f"after importing, the weights hash to {got[:12]}, the file says {meta['weights_hash'][:12]}")
    return meta
