"""PNG plots of one run (scores, norm growth, model health vs number of edits) and of
several runs overlaid (`kedit eval compare`). Matplotlib with the Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCORE_KEYS = {
    "counterfact": [("es", "ES"), ("ps", "PS"), ("ns", "NS"), ("s", "S")],
    "zsre": [("edit_acc", "edit acc"), ("paraphrase_acc", "paraphrase acc"), ("locality_acc", "locality acc")],
}
# What a user reads (app/eval/answer_scores.py): key and short name, for the table and the plots.
ANSWER_KEYS = [
    ("gen_es", "gen ES"),
    ("gen_es_begins", "gen ES begins"),
    ("gen_ps", "gen PS"),
    ("chat_es", "chat ES"),
    ("chat_old", "chat old"),
    ("gen_leak", "leak"),
    ("gen_kept", "kept"),
    ("drift", "drift"),
]
SCORES_PNG, NORMS_PNG, HEALTH_PNG, COMPARE_PNG = "scores.png", "norms.png", "health.png", "compare.png"
ANSWERS_PNG = "answers.png"


def kind_of(summary: dict) -> str:
    return summary.get("run", {}).get("kind") or ("counterfact" if "es" in summary else "zsre")


def _points(points) -> tuple[list[int], list[float]]:
    """The (edits, value) points that have a value: a summary written before a metric existed
    lacks it at some points, and a metric may be absent (None: chat without a chat template)."""
    kept = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def score_curve(summary: dict, key: str) -> tuple[list[int], list[float]]:
    """(edits, score) points: the unedited model at 0, each checkpoint, the end of the run."""
    points = [(0, summary.get("baseline", {}).get(key))]
    points += [(c["edits"], c.get("scores", {}).get(key)) for c in summary.get("checkpoints", [])]
    points.append((summary["edits"], summary.get(key)))
    return _points(points)


def baseline_curve(summary: dict, key: str) -> tuple[list[int], list[float]]:
    """The unedited model on the same facts as each point of `score_curve` (checkpoints
    may score only the facts edited so far, or a sample of them)."""
    base = summary.get("baseline", {}).get(key)
    points = [(0, base)] + [(c["edits"], c.get("baseline", {}).get(key)) for c in summary.get("checkpoints", [])]
    points.append((summary["edits"], base))
    return _points(points)


def health_curve(summary: dict, key: str) -> tuple[list[int], list[float]]:
    if key not in summary.get("baseline", {}) or not summary.get("health"):
        return [], []
    xs, ys = [0], [summary["baseline"][key]]
    for c in summary.get("checkpoints", []):
        if c.get("health"):
            xs.append(c["edits"])
            ys.append(c["health"][key])
    xs.append(summary["edits"])
    ys.append(summary["health"][key])
    return xs, ys


def growth_curves(summary: dict) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer: (edits, 100·‖W−W₀‖F/‖W₀‖F) after every batch, starting at (0, 0)."""
    return {
        layer: ([0] + [r["edits"] for r in rows], [0.0] + [100.0 * r["growth"] for r in rows])
        for layer, rows in sorted(summary.get("norms", {}).items(), key=lambda kv: int(kv[0]))
    }


def _title(summary: dict) -> str:
    run = summary.get("run", {})
    method = summary.get("settings", {}).get("method", "?")
    # Two lines: model names (with their cache suffix) are long enough to run off the axes.
    return (
        f"{method} on {run.get('model', 'model')}\n"
        f"{run.get('dataset', kind_of(summary))}, batches of {run.get('batch_size', '?')}"
    )


def plot_run(summary: dict, out_dir: Path | str) -> list[Path]:
    """Write scores.png, norms.png and (when measured) health.png; returns their paths."""
    out_dir = Path(out_dir)
    written = []
    kind = kind_of(summary)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (key, label) in enumerate(SCORE_KEYS[kind]):
        xs, ys = score_curve(summary, key)
        ax.plot(xs, ys, marker="o", label=label, color=f"C{i}")
        bx, by = baseline_curve(summary, key)
        ax.plot(bx, by, color=f"C{i}", ls=":", lw=1)
    if summary.get("batches"):
        xs = [sum(b["edits"] for b in summary["batches"][: i + 1]) for i in range(len(summary["batches"]))]
        ax.plot(
            xs,
            [b["live_score"] for b in summary["batches"]],
            color="grey",
            lw=0.8,
            alpha=0.6,
            label="newest batch, just after its edit",
        )
    ax.set(xlabel="number of edits", ylabel="score (%)", ylim=(-2, 102), title=_title(summary))
    ax.legend(fontsize=8, title="dotted: unedited model", title_fontsize=8)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / SCORES_PNG))

    answer_keys = [(k, label) for k, label in ANSWER_KEYS if score_curve(summary, k)[0]]
    if answer_keys:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (key, label) in enumerate(answer_keys):
            ax.plot(*score_curve(summary, key), marker="o", label=label, color=f"C{i}")
            ax.plot(*baseline_curve(summary, key), color=f"C{i}", ls=":", lw=1)
        ax.set(xlabel="number of edits", ylabel="share (%)", ylim=(-2, 102), title="greedy answers: " + _title(summary))
        ax.legend(fontsize=8, title="dotted: unedited model", title_fontsize=8)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / ANSWERS_PNG))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for layer, (xs, ys) in growth_curves(summary).items():
        ax.plot(xs, ys, label=f"layer {layer}")
    ax.set(xlabel="number of edits", ylabel="‖W−W₀‖F / ‖W₀‖F (%)", title="norm growth per edited layer")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / NORMS_PNG))

    ppl = health_curve(summary, "perplexity")
    if ppl[0]:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(*ppl, marker="o")
        a1.set(xlabel="number of edits", ylabel="perplexity", title="WikiText-103 valid slice")
        a2.plot(*health_curve(summary, "gen_entropy"), marker="o", color="C1")
        a2.set(xlabel="number of edits", ylabel="n-gram entropy ×100", title="free generation, fixed prompts")
        for a in (a1, a2):
            a.grid(alpha=0.3)
        written.append(_save(fig, out_dir / HEALTH_PNG))
    return written


def plot_compare(summaries: Sequence[dict], labels: Sequence[str], out_path: Path | str) -> Path:
    """One figure, one line per run: each score, perplexity, generation entropy, and the norm growth
    of every edited layer (a panel each) against the number of edits."""
    kinds = {kind_of(s) for s in summaries}
    keys = [k for kind in sorted(kinds) for k in SCORE_KEYS[kind]]
    keys += [(k, label) for k, label in ANSWER_KEYS if any(score_curve(s, k)[0] for s in summaries)]
    layers = sorted({layer for s in summaries for layer in growth_curves(s)}, key=int)
    panels = (
        keys
        + [("perplexity", "WikiText perplexity"), ("gen_entropy", "generation entropy")]
        + [(("growth", layer), f"layer {layer}: ‖W−W₀‖/‖W₀‖ (%)") for layer in layers]
    )
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        for i, (s, name) in enumerate(zip(summaries, labels, strict=True)):
            if isinstance(key, tuple):
                curve = growth_curves(s).get(key[1])
                if curve is None:
                    continue
                xs, ys = curve
            elif key in ("perplexity", "gen_entropy"):
                xs, ys = health_curve(s, key)
            elif key in s:
                xs, ys = score_curve(s, key)
                if not xs:
                    continue
                ax.plot(*baseline_curve(s, key), color=f"C{i}", ls=":", lw=1)
            else:
                continue
            if xs:
                ax.plot(xs, ys, marker=".", color=f"C{i}", label=name)
        ax.set(title=label, xlabel="number of edits")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("dotted: unedited model", fontsize=9)
    return _save(fig, Path(out_path))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
