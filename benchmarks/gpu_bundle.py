"""What a GPU run needs, packed for a machine that reaches nothing outside it, in parts that each fit one transfer.

The GPU machine gets the repository's working tree and nothing beside it, at most ~64 MiB a call,
and has no package index: the SmolLM2 GGUF (98 MB), the data files of benchmarks/lifelong.py,
the tokenizer, and any wheels it lacks travel as one checked archive cut into parts.

    python -m benchmarks.gpu_bundle pack --wheels .whl            # → .bundle/part1/, .bundle/part2/, …
    python -m benchmarks.gpu_bundle unpack --bundle .bundle --to /tmp/kb

`pack` writes each part as a folder of chunks plus MANIFEST.json (the archive's sha256 and the chunk
order). Send one part per call, as an ignored folder the call carries: the parts sent earlier stay on
a warm machine, so the call that brings the last one unpacks them all. `unpack` refuses a bundle with
a chunk missing or changed, extracts to --to, installs nothing, and prints the paths to pass on:
the model (model.gguf), the data folder (data/, the shared data layout), the tokenizer (tokenizer/),
the wheels (wheels/, for `pip install --no-index --target`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import tarfile
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]

# What benchmarks/lifelong.py reads (`lifelong` and `llama-timing`), relative to the shared data folder.
DATA_FILES = (
    "counterfact_extra/counterfact-train.json",
    "counterfact_extra/counterfact-edit.json",
    "counterfact_extra/counterfact-val.json",
    "corpus/wikitext103_train_excerpt.tokens.txt",
    "corpus/wikitext103_valid.tokens.txt",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
)
MANIFEST = "MANIFEST.json"
MiB = 1 << 20
TRANSFER_MIB = 64  # what one call may carry: the working tree and the part together

cli = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)


def fail(msg: str) -> None:
    # Not app.cli.common.fail: `unpack` runs before the wheels (pydantic, which app.cli needs) are installed.
    typer.echo(f"gpu_bundle: error: {msg}", err=True)
    raise typer.Exit(2)


def archive(gguf: Path, data_dir: Path, tokenizer_dir: Path, wheels: list[Path]) -> bytes:
    """One uncompressed tar: model.gguf, data/ (xz inside: text compresses, the GGUF does not), tokenizer/, wheels/."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for rel in DATA_FILES:
            tar.add(data_dir / rel, arcname=f"data/{rel}")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        # The small members first: the first part alone then holds all but the model (`unpack --partial`).
        for wheel in wheels:
            tar.add(wheel, arcname=f"wheels/{wheel.name}")
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                tar.add(tokenizer_dir / name, arcname=f"tokenizer/{name}")
        info = tarfile.TarInfo("data.tar.xz")
        info.size = data.tell()
        data.seek(0)
        tar.addfile(info, data)
        tar.add(gguf, arcname="model.gguf")
    return out.getvalue()


def write_parts(blob: bytes, out: Path, part_mib: float, chunk_mib: float = 2) -> list[Path]:
    """Cut `blob` into chunks and the chunks into parts of at most part_mib; each part names them all."""
    chunk = int(chunk_mib * MiB)
    chunks = [blob[i : i + chunk] for i in range(0, len(blob), chunk)]
    per_part = max(1, int(part_mib * MiB) // chunk)
    n_parts = math.ceil(len(chunks) / per_part)
    manifest = {
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "parts": n_parts,
        "chunks": [
            {"name": f"chunk{i:03d}", "part": i // per_part + 1, "sha256": hashlib.sha256(c).hexdigest()}
            for i, c in enumerate(chunks)
        ],
    }
    folders = []
    for p in range(1, n_parts + 1):
        folder = out / f"part{p}"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("chunk*"):
            old.unlink()
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
        folders.append(folder)
    for i, c in enumerate(chunks):
        (out / f"part{i // per_part + 1}" / f"chunk{i:03d}").write_bytes(c)
    return folders


def working_tree_mib() -> float | None:
    """What travels besides a part: tracked files and untracked ones git does not ignore."""
    try:
        names = (
            subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file()) / MiB


def read_parts(bundle: Path, partial: bool = False) -> bytes:
    """The archive again from every part under `bundle`, each chunk and the whole checked; with
    `partial`, its beginning: the checked chunks up to the first one that has not arrived."""
    manifests = sorted(bundle.glob(f"part*/{MANIFEST}"))
    if not manifests:
        raise ValueError(f"no part*/{MANIFEST} under {bundle}: send the parts made by `pack` first")
    manifest = json.loads(manifests[0].read_text())
    pieces = []
    for c in manifest["chunks"]:
        path = bundle / f"part{c['part']}" / c["name"]
        if not path.is_file():
            if partial and pieces:
                return b"".join(pieces)
            raise ValueError(f"{path} is missing: part {c['part']} of {manifest['parts']} has not arrived")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != c["sha256"]:
            raise ValueError(f"{path} differs from the one packed: send part {c['part']} again")
        pieces.append(data)
    blob = b"".join(pieces)
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        raise ValueError("the joined archive differs from the one packed: pack again and resend every part")
    return blob


def extract(blob: bytes, to: Path) -> list[str]:
    """Every member wholly inside `blob` (the beginning of the archive, or all of it); their names."""
    to.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
        try:
            for member in tar:
                if member.offset_data + member.size > len(blob):
                    break  # cut by a part that has not arrived
                tar.extract(member, to, filter="data")
                names.append(member.name)
        except tarfile.ReadError:
            pass  # the cut fell inside a header
    if "data.tar.xz" in names:
        with tarfile.open(to / "data.tar.xz", mode="r:xz") as tar:
            tar.extractall(to, filter="data")
        (to / "data.tar.xz").unlink()
    return names


@cli.command()
def pack(
    out: Path = typer.Option(Path(".bundle"), help="folder for part1/, part2/, … (keep it ignored by git)"),
    wheels: Path | None = typer.Option(None, help="a folder of .whl files the GPU machine lacks (pip download …)"),
    model: Path | None = typer.Option(None, help="the .gguf to send (default: SmolLM2-135M-Instruct's)"),
    tokenizer: Path | None = typer.Option(
        None, help="its tokenizer folder (default: the converted model's, in the cache)"
    ),
    data_dir: Path | None = typer.Option(None, help="the shared data folder (default: the configuration's)"),
    part_mib: float = typer.Option(52.0, min=4.0, help="largest part: what one call carries beside the working tree"),
) -> None:
    """Pack the model, the data, the tokenizer and the wheels into parts under --out."""
    from app.editing.model import ModelLoadError, resolve_model_path, smollm2_gguf
    from app.eval.paths import data_dir as shared_data_dir

    try:
        gguf = model or smollm2_gguf()
        tokenizer_dir = tokenizer or resolve_model_path(str(gguf))  # the converted folder holds its tokenizer
    except ModelLoadError as exc:
        fail(str(exc))
    if not Path(gguf).is_file():
        fail(f"--model {gguf} is not a file")
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        fail(f"{tokenizer_dir} holds no tokenizer.json (--tokenizer)")
    data = data_dir or shared_data_dir()
    missing = [rel for rel in DATA_FILES if not (data / rel).is_file()]
    if missing:
        fail(f"{data} lacks {', '.join(missing)} (--data-dir: the shared data folder)")
    wheel_files = sorted(wheels.glob("*.whl")) if wheels else []
    if wheels and not wheel_files:
        fail(f"no .whl in {wheels}")
    blob = archive(Path(gguf), data, Path(tokenizer_dir), wheel_files)
    largest = 0.0
    for folder in write_parts(blob, out, part_mib):
        size = sum(f.stat().st_size for f in folder.iterdir()) / MiB
        largest = max(largest, size)
        typer.echo(f"{folder}: {size:.1f} MiB")
    tree = working_tree_mib()
    if tree is not None and tree + largest > TRANSFER_MIB:
        typer.echo(
            f"warning: the working tree ({tree:.1f} MiB) and the largest part come to more than "
            f"{TRANSFER_MIB} MiB: pack again with --part-mib {max(4, int(TRANSFER_MIB - tree - 2))}",
            err=True,
        )
    typer.echo(
        f"{len(blob) / MiB:.1f} MiB in all ({len(wheel_files)} wheels); send each part with one call, "
        f"then `python -m benchmarks.gpu_bundle unpack --bundle {out} --to /tmp/kb` there"
    )


@cli.command()
def unpack(
    bundle: Path = typer.Option(Path(".bundle"), help="the folder holding the parts that arrived"),
    to: Path = typer.Option(Path("/tmp/kb"), help="where the model, data/, tokenizer/ and wheels/ go"),
    partial: bool = typer.Option(
        False, help="the first part(s) alone: extract what they hold whole (all but the model)"
    ),
) -> None:
    """Check and extract the parts; print where everything is."""
    try:
        blob = read_parts(bundle, partial)
    except ValueError as exc:
        fail(str(exc))
    names = extract(blob, to)
    where = {"model": to / "model.gguf", "data": to / "data", "tokenizer": to / "tokenizer", "wheels": to / "wheels"}
    typer.echo("; ".join(f"{k} {v}" for k, v in where.items() if v.exists()) + f" ({len(names)} members)")
    if "model.gguf" not in names:
        typer.echo("the model is not here yet: send the remaining parts, then unpack again", err=True)


if __name__ == "__main__":
    cli()
