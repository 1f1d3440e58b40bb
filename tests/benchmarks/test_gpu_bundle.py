"""benchmarks/gpu_bundle.py: what travels to an offline GPU machine comes back out whole, or is refused.

Fake files stand in for the model, data and wheels: the script packs bytes, it never reads them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu_bundle import DATA_FILES, archive, extract, read_parts, write_parts
from benchmarks.procs import run_module


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_module("benchmarks.gpu_bundle", *args, timeout=120)


def _inputs(tmp: Path) -> dict[str, Path]:
    gguf = tmp / "m.gguf"
    gguf.write_bytes(os.urandom(3 << 20))  # incompressible, as a quantised model is
    for i, rel in enumerate(DATA_FILES):
        (tmp / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "data" / rel).write_text(f"file {i}\n" * 1000)
    (tmp / "tok").mkdir()
    (tmp / "tok" / "tokenizer.json").write_text("{}")
    (tmp / "whl").mkdir()
    (tmp / "whl" / "pkg-1.0-py3-none-any.whl").write_bytes(b"PK wheel")
    return {"gguf": gguf, "data": tmp / "data", "tok": tmp / "tok", "whl": tmp / "whl"}


def _pack(tmp_path: Path, src: dict, *extra: str) -> subprocess.CompletedProcess:
    """`pack` of _inputs' files into tmp_path/b."""
    args = ["--out", str(tmp_path / "b"), "--model", str(src["gguf"]), "--tokenizer", str(src["tok"])]
    return _run("pack", *args, "--data-dir", str(src["data"]), *extra)


def test_pack_then_unpack_gives_back_every_file(tmp_path):
    src = _inputs(tmp_path)
    res = _pack(tmp_path, src, "--wheels", str(src["whl"]))
    assert res.returncode == 0, res.stderr
    assert "1 wheels" in res.stdout and (tmp_path / "b" / "part1" / "MANIFEST.json").is_file()

    res = _run("unpack", "--bundle", str(tmp_path / "b"), "--to", str(tmp_path / "kb"))
    assert res.returncode == 0, res.stderr
    kb = tmp_path / "kb"
    assert (kb / "model.gguf").read_bytes() == src["gguf"].read_bytes()
    for rel in DATA_FILES:
        assert (kb / "data" / rel).read_text() == (src["data"] / rel).read_text()
    assert (kb / "tokenizer" / "tokenizer.json").read_text() == "{}"
    assert (kb / "wheels" / "pkg-1.0-py3-none-any.whl").read_bytes() == b"PK wheel"


def test_parts_stay_under_their_size_and_a_missing_or_changed_chunk_is_named(tmp_path):
    blob = os.urandom(100_000)
    folders = write_parts(blob, tmp_path, part_mib=0.05, chunk_mib=0.01)
    assert len(folders) == 2
    for folder in folders:
        assert sum(f.stat().st_size for f in folder.glob("chunk*")) <= 0.05 * (1 << 20)
    assert read_parts(tmp_path) == blob

    last = sorted((tmp_path / "part2").glob("chunk*"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="send part 2 again"):
        read_parts(tmp_path)
    last.unlink()
    with pytest.raises(ValueError, match="part 2 of 2 has not arrived"):
        read_parts(tmp_path)


def test_the_first_part_alone_holds_all_but_the_model(tmp_path):
    """So that the first call can already install the wheels and time the 8B-shaped model."""
    src = _inputs(tmp_path)
    blob = archive(src["gguf"], src["data"], src["tok"], sorted(src["whl"].glob("*.whl")))
    write_parts(blob, tmp_path / "b", part_mib=1, chunk_mib=0.25)
    for later in (tmp_path / "b").glob("part*"):
        if later.name != "part1":
            for f in later.glob("chunk*"):
                f.unlink()
    names = extract(read_parts(tmp_path / "b", partial=True), tmp_path / "kb")
    assert "model.gguf" not in names and not (tmp_path / "kb" / "model.gguf").exists()
    assert (tmp_path / "kb" / "data" / DATA_FILES[0]).read_text() == (src["data"] / DATA_FILES[0]).read_text()
    assert (tmp_path / "kb" / "wheels" / "pkg-1.0-py3-none-any.whl").exists()
    assert (tmp_path / "kb" / "tokenizer" / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="has not arrived"):
        read_parts(tmp_path / "b")


def test_pack_names_what_is_missing(tmp_path):
    src = _inputs(tmp_path)
    (src["data"] / DATA_FILES[1]).unlink()
    res = _pack(tmp_path, src)
    assert res.returncode == 2 and DATA_FILES[1] in res.stderr and "Traceback" not in res.stderr
    res = _run("unpack", "--bundle", str(tmp_path / "nothing"), "--to", str(tmp_path / "kb"))
    assert res.returncode == 2 and "send the parts made by `pack` first" in res.stderr
