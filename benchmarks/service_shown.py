"""Whether edits made through the service show where users read them (issue 24's "through the service").

An embedded `kedit serve` (the default model, preset and settings; a fresh SQLite log) gets N
CounterFact facts in one `POST /edits`, each with its natural question (app/eval/questions.py). The
worker writes them in its own batches and asks each applied fact's prompt and question itself;
once every edit is settled this asks again, greedily, through the OpenAI endpoints, as a client
would, on the last weights: the edit prompt and its paraphrase (`/v1/completions`, 10 tokens), the
question (`/v1/chat/completions`, 24 tokens), and the neighbourhood prompt (does target_new leak?).
The same questions are asked of the unedited model first. The rules are the evaluation's
(app/editing/answers.py).

    .venv/bin/python -m benchmarks.service_shown --records 100 --out benchmarks/results/service-shown-100
    .venv/bin/python -m benchmarks.service_shown --records 8 --no-write        # a quick look
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import typer
from tqdm import tqdm

from app.config import KeditConfig
from app.editing.answers import begins_with, shows
from app.eval.data import CounterFactRecord, load_dataset
from app.eval.questions import chat_question
from benchmarks.load import spawn
from benchmarks.procs import REPO, stop, wait_ready

DATA = KeditConfig().data_dir / "counterfact_extra" / "counterfact-edit.json"
GEN_TOKENS, CHAT_TOKENS = 10, 24  # as the evaluation and the worker's own check
CLIENTS = 8  # concurrent clients asking, batched by the server as a user's clients are


def _complete(c: httpx.Client, model: str, prompt: str) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0}
    return c.post("/v1/completions", json=body).raise_for_status().json()["choices"][0]["text"]


def _chat(c: httpx.Client, model: str, question: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": CHAT_TOKENS,
        "temperature": 0,
    }
    return c.post("/v1/chat/completions", json=body).raise_for_status().json()["choices"][0]["message"]["content"]


def _ask_all(c: httpx.Client, model: str, records: list[CounterFactRecord], desc: str) -> list[dict]:
    """Every record's four questions, CLIENTS at a time (the server batches concurrent requests)."""

    def ask(r: CounterFactRecord) -> dict:
        return {
            "prompt": _complete(c, model, r.rewrite_prompt),
            "paraphrase": _complete(c, model, r.paraphrase_prompts[0]),
            "neighbour": _complete(c, model, r.neighborhood_prompts[0]),
            "chat": _chat(c, model, chat_question(r)[0]),
        }

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(tqdm(pool.map(ask, records), total=len(records), desc=desc, unit="fact"))


def _pct(flags: list[bool]) -> float:
    return round(100.0 * sum(flags) / len(flags), 1) if flags else float("nan")


def _scores(records: list[CounterFactRecord], said: list[dict]) -> dict[str, float]:
    new = [r.target_new for r in records]
    return {
        "prompt": _pct([shows(s["prompt"], t) for s, t in zip(said, new, strict=True)]),
        "prompt_begins": _pct([begins_with(s["prompt"], t) for s, t in zip(said, new, strict=True)]),
        "paraphrase": _pct([shows(s["paraphrase"], t) for s, t in zip(said, new, strict=True)]),
        "chat": _pct([shows(s["chat"], t) for s, t in zip(said, new, strict=True)]),
        "chat_old": _pct([shows(s["chat"], r.target_true) for s, r in zip(said, records, strict=True)]),
        "leak": _pct([shows(s["neighbour"], t) for s, t in zip(said, new, strict=True)]),
    }


def _wait_settled(c: httpx.Client, ids: list[int], timeout: float) -> list[dict]:
    """Every edit applied or failed, and every applied one checked by the worker."""
    deadline = time.monotonic() + timeout
    bar = tqdm(total=len(ids), desc="edits settled", unit="edit")
    while True:
        rows = [c.get(f"/edits/{i}").raise_for_status().json() for i in ids]
        done = [e for e in rows if e["status"] == "failed" or (e["status"] == "applied" and e["checked_version"])]
        bar.update(len(done) - bar.n)
        if len(done) == len(ids):
            bar.close()
            return rows
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(done)} of {len(ids)} edits settled after {timeout:.0f} s")
        time.sleep(5)


def main(
    records: int = typer.Option(100, min=1, help="the first N records of --data"),
    data: Path = typer.Option(DATA, help="a CounterFact file (compact or ROME form)"),
    env: list[str] = typer.Option([], help="KEY=VALUE for the server (repeatable), e.g. KEDIT_BATCH_SIZE=16"),
    timeout: float = typer.Option(4 * 3600, help="seconds to wait for every edit to settle"),
    out: Path = typer.Option(REPO / "benchmarks" / "results" / "service-shown-100", help="folder for the results"),
    no_write: bool = typer.Option(False, "--no-write", help="print only"),
) -> None:
    """Edit N facts through POST /edits, then read what the service answers, as a user would."""
    recs = [r for r in load_dataset(data, limit=records).records if isinstance(r, CounterFactRecord)]
    work = Path(tempfile.mkdtemp(prefix="kedit-service-shown-"))
    proc, url = spawn(None, env, work)
    t0 = time.monotonic()
    try:
        wait_ready(url, [proc], 1800, describe=lambda p: (work / "serve.log").read_text()[-2000:])
        c = httpx.Client(base_url=url, timeout=600)
        model = c.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        before = _ask_all(c, model, recs, "asking the unedited model")
        facts = [
            {
                "prompt": r.prompt,
                "subject": r.subject,
                "target_new": r.target_new,
                "target_true": r.target_true,
                "question": chat_question(r)[0],
            }
            for r in recs
        ]
        t_edit = time.monotonic()
        ids = c.post("/edits", json=facts).raise_for_status().json()["ids"]
        rows = _wait_settled(c, ids, timeout)
        edit_s = time.monotonic() - t_edit
        after = _ask_all(c, model, recs, "asking the edited model")
        served = c.get("/version").raise_for_status().json()
    finally:
        stop(proc)
    applied = [e for e in rows if e["status"] == "applied"]
    result = {
        "records": len(recs),
        "data": str(data),
        "applied": len(applied),
        "failed": len(rows) - len(applied),
        "worker_shown": _pct([bool(e["shown"]) for e in applied]),
        "worker_question_shown": _pct([bool(e["question_shown"]) for e in applied]),
        "unedited": _scores(recs, before),
        "edited": _scores(recs, after),
        "edit_seconds": round(edit_s, 1),
        "seconds_per_edit": round(edit_s / len(recs), 2),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "env": env,
        "served": {k: served[k] for k in ("model", "layers", "method", "version")},
        "settings": _settings(env),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "answers": [
            {"case_id": r.case_id, "before": b, "after": a} for r, b, a in zip(recs, before, after, strict=True)
        ],
    }
    table = _table(result)
    print(table)
    if not no_write:
        out.mkdir(parents=True, exist_ok=True)
        (out / "service-shown.json").write_text(json.dumps(result, indent=1))
        (out / "table.md").write_text(table)
        print(f"wrote {out}/service-shown.json and table.md")


def _settings(pairs: list[str]) -> dict:
    """The editing settings the server ran with: its config read from the same environment."""
    import os

    from app.config import ServiceConfig
    from benchmarks.procs import env_pairs

    saved = dict(os.environ)
    try:
        os.environ.update(env_pairs(pairs))
        return ServiceConfig().edit_settings().model_dump(mode="json")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _table(r: dict) -> str:
    rows = [
        ("edit prompt shows target_new (begins with it)", "prompt", "prompt_begins"),
        ("its first paraphrase", "paraphrase", None),
        ("the chat question (old object)", "chat", "chat_old"),
        ("target_new in the neighbourhood prompt's answer (leak)", "leak", None),
    ]
    lines = [
        f"{r['records']} CounterFact records ({Path(r['data']).name}), one POST /edits, the worker's own batches; "
        f"{r['applied']} applied, {r['failed']} failed; {r['seconds_per_edit']} s/edit through the worker.",
        "",
        "| asked through the service, greedy | unedited | after the edits |",
        "|---|---|---|",
    ]
    for label, key, extra in rows:
        u, e = (f"{s[key]} ({s[extra]})" if extra else f"{s[key]}" for s in (r["unedited"], r["edited"]))
        lines.append(f"| {label} | {u} | {e} |")
    lines += [
        f"| the worker's own check when its batch was written: prompt / question | – | "
        f"{r['worker_shown']} / {r['worker_question_shown']} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    typer.run(main)
