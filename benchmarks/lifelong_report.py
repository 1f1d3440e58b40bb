"""Table and plot of lifelong runs from the <method>.json files benchmarks/lifelong_gpu.py publishes.

    python benchmarks/lifelong_report.py OUT/encore.json OUT/memit.json --out benchmarks/results/lifelong-gpu

Writes DIR/table.md (one row per checkpoint and method: ES/PS/NS beside the unedited
model's on the same facts, perplexity, generation entropy, norm growth of every layer,
seconds per edit) and DIR/lifelong.png (scores, perplexity, entropy and the largest layer's
norm growth against the number of edits, the methods overlaid). Works on finished runs
and on runs cut short by a deadline alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _progress(doc: dict) -> dict:
    """The runner's progress (checkpoints, batches, norms, baseline) of a finished or partial run."""
    return doc["summary"] if doc.get("finished") else doc["progress"]


def _growth_at(norms: dict, edits: int) -> dict[str, float]:
    return {
        layer: next(r["growth"] for r in rows if r["edits"] == edits)
        for layer, rows in sorted(norms.items(), key=lambda x: int(x[0]))
    }


def rows_of(doc: dict) -> list[dict]:
    p = _progress(doc)
    out = []
    points = list(p["checkpoints"])
    if doc.get("finished"):
        s = doc["summary"]
        points.append(
            {
                "edits": s["edits"],
                "batches": len(s["batches"]),
                "scores": {k: s[k] for k in ("es", "ps", "ns")},
                "baseline": s["baseline"],
                "health": s["health"],
                "scored": s["edits"],
            }
        )
    for c in points:
        n_batches = c.get("batches", len(p["batches"]))
        done = [b for b in p["batches"] if b["batch"] < n_batches]
        spe = sum(b["seconds"] for b in done) / max(1, sum(b["edits"] for b in done))
        out.append(
            {
                "method": doc["method"],
                "edits": c["edits"],
                "scored": c.get("scored"),
                **c["scores"],
                "ns_unedited": c["baseline"]["ns"],
                "ppl": (c.get("health") or {}).get("perplexity"),
                "entropy": (c.get("health") or {}).get("gen_entropy"),
                "growth": _growth_at(p["norms"], c["edits"]),
                "s_per_edit": spe,
            }
        )
    return out


def main(
    files: list[Path] = typer.Argument(..., help="<method>.json files from lifelong_gpu.py"),
    out: Path = typer.Option(..., help="folder for table.md and lifelong.png"),
) -> None:
    docs = [json.loads(f.read_text()) for f in files]
    out.mkdir(parents=True, exist_ok=True)
    base = _progress(docs[0])["baseline"]
    lines = [
        f"Unedited SmolLM2: perplexity {base['perplexity']:.2f}, generation entropy {base['gen_entropy']:.1f}. "
        "ES/PS/NS on a fixed sample of the facts edited so far; NS (unedited) on the same facts.",
        "",
        "| method | edits | ES | PS | NS | NS unedited | NS kept | perplexity | entropy "
        "| ‖W−W₀‖/‖W₀‖ per layer (%) | s/edit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    all_rows = {d["method"]: rows_of(d) for d in docs}
    for method, rows in all_rows.items():
        for r in rows:
            growth = " / ".join(f"{100 * g:.0f}" for g in r["growth"].values())
            lines.append(
                f"| {method} | {r['edits']} | {r['es']:.1f} | {r['ps']:.1f} | {r['ns']:.1f} | {r['ns_unedited']:.1f} "
                f"| {100 * r['ns'] / r['ns_unedited']:.0f} % | {r['ppl']:.2f} | {r['entropy']:.1f} | {growth} "
                f"| {r['s_per_edit']:.3f} |"
            )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for method, rows in all_rows.items():
        x = [r["edits"] for r in rows]
        for key, style in (("es", "-"), ("ps", "--"), ("ns", ":")):
            axes[0].plot(x, [r[key] for r in rows], style, marker="o", label=f"{method} {key.upper()}")
        axes[1].plot(x, [r["ppl"] for r in rows], marker="o", label=method)
        axes[2].plot(x, [r["entropy"] for r in rows], marker="o", label=method)
        axes[3].plot(x, [100 * max(r["growth"].values()) for r in rows], marker="o", label=method)
    axes[1].axhline(base["perplexity"], color="grey", lw=0.8, label="unedited")
    axes[1].set_yscale("log")
    axes[2].axhline(base["gen_entropy"], color="grey", lw=0.8, label="unedited")
    axes[3].axhline(50, color="red", lw=0.8, label="service alarm (50 %)")
    for ax, title in zip(
        axes,
        ("scores (sampled edited facts)", "WikiText perplexity (log)", "generation entropy", "largest ‖W−W₀‖/‖W₀‖ (%)"),
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel("sequential edits")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "lifelong.png", dpi=90)
    print(f"wrote {out / 'table.md'} and {out / 'lifelong.png'}")


if __name__ == "__main__":
    typer.run(main)
