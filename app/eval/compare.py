"""`kedit eval compare DIR…`: several finished runs in one table and one overlaid plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from app.eval.plots import ANSWER_KEYS, COMPARE_PNG, kind_of, plot_compare
from app.eval.runner import SUMMARY_FILE


def load_summary(run_dir: Path | str) -> dict:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        hint = (
            " (the run was interrupted: continue it with `kedit eval --resume DIR`)"
            if any((Path(run_dir) / d).exists() for d in ("checkpoint", "trail"))
            else ""
        )
        raise FileNotFoundError(
            f"{path} does not exist: is {run_dir} the --out folder of a finished `kedit eval` run?{hint}"
        )
    return json.loads(path.read_text())


def _cell(value, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def compare_rows(summaries: Sequence[dict], labels: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (plain strings, also used by tests)."""
    kinds = {kind_of(s) for s in summaries}
    score_keys = (["es", "ps", "ns", "s", "ge"] if "counterfact" in kinds else []) + (
        ["edit_acc", "paraphrase_acc", "locality_acc", "locality_kept"] if "zsre" in kinds else []
    )
    # The answer metrics (app/eval/answer_scores.py) where any run has them; an older summary shows "–".
    if any("gen_es" in s for s in summaries):
        score_keys += [k for k, _ in ANSWER_KEYS]
    names = {"es": "ES", "ps": "PS", "ns": "NS", "s": "S", "ge": "GE", **dict(ANSWER_KEYS)}
    header = (
        ["run", "method", "edits"]
        + [names.get(k, k) for k in score_keys]
        + ["s/edit", "max growth %", "ppl", "entropy"]
    )
    rows = []
    for s, label in zip(summaries, labels, strict=True):
        growth = [rows_[-1]["growth"] for rows_ in s.get("norms", {}).values() if rows_]
        base_ppl = s.get("baseline", {}).get("perplexity")
        ppl = (s.get("health") or {}).get("perplexity")
        entropy, base_entropy = (s.get("health") or {}).get("gen_entropy"), s.get("baseline", {}).get("gen_entropy")
        row = [label, s.get("settings", {}).get("method", "?"), str(s.get("edits", "?"))]
        for k in score_keys:
            v, b = s.get(k), s.get("baseline", {}).get(k)
            row.append("–" if v is None else f"{v:.1f}" + (f" ({b:.1f})" if b is not None else ""))
        row += [
            _cell(s.get("seconds_per_edit"), "{:.2f}"),
            _cell(100 * max(growth) if growth else None),
            "–" if ppl is None else f"{ppl:.2f}" + (f" ({base_ppl:.2f})" if base_ppl is not None else ""),
            "–"
            if entropy is None
            else f"{entropy:.0f}" + (f" ({base_entropy:.0f})" if base_entropy is not None else ""),
        ]
        rows.append(row)
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compare(
    run_dirs: Sequence[Path | str], out: Path | str | None = None, markdown: Path | str | None = None
) -> tuple[Table, Path]:
    """Build the table and write the overlaid plot (default: compare.png in the first run's parent);
    with `markdown`, also write the table there as markdown (for benchmarks/results/)."""
    if not run_dirs:
        raise ValueError("give at least one run folder")
    summaries = [load_summary(d) for d in run_dirs]
    labels = [Path(d).name or str(d) for d in run_dirs]
    header, rows = compare_rows(summaries, labels)
    table = Table(title="kedit eval: runs compared (unedited model in brackets)")
    for h in header:
        table.add_column(h, justify="left" if h in ("run", "method") else "right")
    for r in rows:
        table.add_row(*r)
    if markdown:
        Path(markdown).write_text("Unedited model in brackets.\n\n" + markdown_table(header, rows))
    out_path = Path(out) if out else Path(run_dirs[0]).resolve().parent / COMPARE_PNG
    plot_compare(summaries, labels, out_path)
    return table, out_path
