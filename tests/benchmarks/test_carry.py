"""Carrying a long run to the next machine (benchmarks/levers.py --carry, used by `benchmarks.lifelong carried` too):
the small part of a run folder is kept in the carry folder while the run goes on, a run is taken up
from there when the carry is further along, and a finished run leaves its summary, not its trail."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks import levers

ROOT = Path(__file__).resolve().parents[2]


def _cut_run(folder: Path, batches: int) -> None:
    (folder / "trail").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"records": 4}))
    for b in range(batches):
        (folder / "trail" / f"batch{b}.safetensors").write_bytes(b"z" * (b + 1))
    (folder / "trail" / "progress.json").write_text(json.dumps({"batches_done": batches}))
    (folder / "checkpoint").mkdir()  # the editor's checkpoint stays behind: too big to carry
    (folder / "checkpoint" / "editor.safetensors").write_bytes(b"big")


# Stands in for `kedit eval --resume`: it must find the carried trail in its folder, adds a batch, then finishes.
RESUME = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    run = Path(sys.argv[1])
    progress = json.loads((run / "trail" / "progress.json").read_text())
    if progress["batches_done"] != 2 or not (run / "trail" / "batch1.safetensors").exists():
        sys.exit(3)
    (run / "trail" / "batch2.safetensors").write_bytes(b"zzz")
    (run / "trail" / "progress.json").write_text(json.dumps({"batches_done": 3}))
    (run / "summary.json").write_text(json.dumps({"edits": 4}))
""")


def test_a_cut_run_is_carried_taken_up_and_finished(tmp_path):
    first, carry = tmp_path / "machine1" / "lever-4", tmp_path / "repo" / "runs"
    _cut_run(first, batches=2)
    levers.sync_run(first, carry / first.name)
    saved = carry / first.name
    assert sorted(p.name for p in (saved / "trail").iterdir()) == [
        "batch0.safetensors",
        "batch1.safetensors",
        "progress.json",
    ]
    assert (saved / "run.json").exists() and not (saved / "checkpoint").exists()
    assert levers.batches_done(saved) == 2

    # The next machine has no run folder: the carried run is copied back before the command is built.
    second = tmp_path / "machine2" / "lever-4"
    rc = levers.run_carried(
        lambda: [sys.executable, "-c", RESUME, str(second)], second, tmp_path / "lever.log", tmp_path, carry
    )
    assert rc == 0, (tmp_path / "lever.log").read_text()
    assert json.loads((saved / "summary.json").read_text()) == {"edits": 4}
    assert not (saved / "trail").exists(), "a finished run is carried by its summary alone"
    assert levers.batches_done(saved) == float("inf")

    # Finished: nothing runs again.
    assert (
        levers.run_carried(
            lambda: [sys.executable, "-c", "raise SystemExit(9)"], second, tmp_path / "lever.log", tmp_path, carry
        )
        == 0
    )


def test_the_further_copy_wins(tmp_path):
    """A local run further along than the carry is not overwritten by the older carried copy."""
    local, carry = tmp_path / "work" / "lever-4", tmp_path / "runs"
    _cut_run(local, batches=3)
    _cut_run(carry / local.name, batches=1)
    rc = levers.run_carried(
        lambda: [sys.executable, "-c", "raise SystemExit(0)"], local, tmp_path / "log", tmp_path, carry
    )
    assert rc == 0
    assert levers.batches_done(local) == 3 and levers.batches_done(carry / local.name) == 3


def test_git_keeps_what_the_carry_folder_holds():
    """The carry is only as good as what a commit saves: the trail's batch files must not be ignored."""
    for path in (
        "benchmarks/results/runs/some-run/trail/batch0.safetensors",
        "benchmarks/results/runs/some-run/trail/progress.json",
        "benchmarks/results/runs/some-run/run.json",
    ):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
        assert not ignored, f"{path} is ignored by git: a carried run would lose it"
