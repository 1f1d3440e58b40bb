"""Serving throughput and latency of kedit's OpenAI-compatible endpoint vs raw model.generate.

On the same machine in the same run: an embedded `kedit serve` on a free loopback port with 1, 4 and
16 concurrent clients streaming greedy /v1/completions, and raw `model.generate` one request at a
time (greedy, the same prompts and token counts, in this process, while the server idles) before
and after them. Prints and writes:
tokens/s, time to first token (TTFT) p50/p95, per-token latency (gaps between streamed tokens)
p50/p95. Plus, for the choice of the served dtype, bf16 vs float32 logits on the same prompts.

    .venv/bin/python -m benchmarks.serve_bench                         # SmolLM2, 16 tokens
    .venv/bin/python -m benchmarks.serve_bench --tokens 8 --out benchmarks/results/serve-bench
    .venv/bin/python -m benchmarks.serve_bench --model PATH --env KEDIT_CACHE_DIR=...
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import typer

from benchmarks.load import spawn
from benchmarks.procs import pct, stop, wait_ready

PROMPTS = [
    "The capital of France is",
    "Danielle Darrieux was born in",
    "The mother tongue of Danielle Darrieux is",
    "Apple was founded by",
    "Lionel Messi plays for",
    "The Eiffel Tower is located in",
    "Toyota is a company from",
    "Michael Jordan is famous for",
    "The Beatles were a band from",
    "Rome is the capital of",
    "The largest planet in the solar system is",
    "Water boils at",
    "The author of Hamlet is",
    "The currency of Japan is the",
    "Mount Everest is in",
    "The chemical symbol for gold is",
]


def load_raw(model_path: str | None, cache_dir: str | None):
    from app.editing.model import DEFAULT_CACHE_DIR, load_model

    return load_model(model_path, cache_dir=cache_dir or DEFAULT_CACHE_DIR)


def raw_generate(lm, tokens: int, n: int) -> dict:
    """model.generate one request at a time (the baseline): per request the time to the first token
    (a 1-token generate) and the whole request; per-token latency = (whole - first) / (tokens - 1)."""
    tok, model = lm.tokenizer, lm.model
    enc = tok(PROMPTS[0], return_tensors="pt")
    model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
    lat, ttft, per_token, gen_tokens = [], [], [], 0
    for i in range(n):
        enc = tok(PROMPTS[i % len(PROMPTS)], return_tensors="pt")
        t = time.perf_counter()
        model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
        first = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        whole = time.perf_counter() - t
        k = out.shape[1] - enc["input_ids"].shape[1]
        lat.append(whole)
        ttft.append(first)
        gen_tokens += k
        if k > 1:
            per_token.append((whole - first) / (k - 1))
    busy = sum(lat)
    return {
        "requests": n,
        "tokens": gen_tokens,
        "seconds": busy,
        "tokens_per_s": gen_tokens / busy,
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p95_s": pct(ttft, 0.95),
        "per_token_p50_ms": 1000 * pct(per_token, 0.5),
        "per_token_p95_ms": 1000 * pct(per_token, 0.95),
        "latency_p50_s": pct(lat, 0.5),
    }


def dtype_check(lm) -> dict:
    """Served dtype: how far bf16 logits are from float32 ones, and whether greedy picks agree."""
    import copy

    import torch

    tok, model = lm.tokenizer, lm.model
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    diffs, agree = [], 0
    with torch.no_grad():
        for p in PROMPTS:
            e = tok(p, return_tensors="pt")
            a = model(**e).logits[0, -1].float()
            b = bf16(**e).logits[0, -1].float()
            diffs.append(float((a - b).abs().max()))
            agree += int(a.argmax() == b.argmax())
    return {
        "bf16_max_abs_logit_diff_p50": pct(diffs, 0.5),
        "bf16_max_abs_logit_diff_max": max(diffs),
        "bf16_greedy_next_token_agreement": f"{agree}/{len(PROMPTS)}",
    }


def worker_loaded(ready: dict) -> bool:
    """Ready, and the worker done loading (so that its start does not compete with the measurement)."""
    return ready["checks"].get("worker_active", True)


def one_stream(client: httpx.Client, model: str, prompt: str, tokens: int) -> dict:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    stamps, usage = [], None
    with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code}
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    n = usage["completion_tokens"] if usage else len(stamps)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "status": 200,
        "ttft": (stamps[0] - t0) if stamps else end - t0,
        "tokens": n,
        "seconds": end - t0,
        "gaps": gaps,
    }


def load_level(url: str, model: str, clients: int, per_client: int, tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            for k in range(per_client):
                r = one_stream(c, model, PROMPTS[(i * per_client + k) % len(PROMPTS)], tokens)
                with lock:
                    results.append(r)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    toks = sum(r["tokens"] for r in ok)
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "tokens": toks,
        "seconds": wall,
        "tokens_per_s": toks / wall,
        "ttft_p50_s": pct([r["ttft"] for r in ok], 0.5),
        "ttft_p95_s": pct([r["ttft"] for r in ok], 0.95),
        "per_token_p50_ms": 1000 * pct(gaps, 0.5),
        "per_token_p95_ms": 1000 * pct(gaps, 0.95),
        "latency_p50_s": pct([r["seconds"] for r in ok], 0.5),
    }


def main(
    model: str | None = typer.Option(None, help="HF folder or .gguf (default: SmolLM2)"),
    tokens: int = typer.Option(16, help="tokens per request"),
    levels: str = typer.Option("1,4,16", help="concurrent clients per level"),
    requests: int = typer.Option(16, help="requests per level (at least one per client)"),
    raw_requests: int = typer.Option(4, help="raw model.generate requests"),
    env: list[str] = typer.Option([], help="KEY=VALUE for the spawned kedit serve"),
    threads: int = typer.Option(
        0, help="torch threads for the baseline and the server (OMP_NUM_THREADS); 0 = torch's default"
    ),
    out: str | None = typer.Option(None, help="write OUT.json and OUT.md"),
    max_seconds: float = typer.Option(600, help="bound on the server's start"),
) -> None:
    """Serving throughput and latency of kedit's OpenAI-compatible endpoint vs raw model.generate."""
    if not 1 <= tokens <= 256 or requests > 256:
        raise SystemExit("--tokens in 1..256 and --requests ≤ 256 keep the run bounded")
    cache_dir = next(
        (p.partition("=")[2] for p in env if p.startswith("KEDIT_CACHE_DIR=")), os.environ.get("KEDIT_CACHE_DIR")
    )

    env = list(env)
    if threads:
        # The same for both sides: on a machine shared with other jobs, more threads than free cores
        # make every torch op wait for its slowest thread (measured: 5x slower forward passes).
        import torch

        torch.set_num_threads(threads)
        env.append(f"OMP_NUM_THREADS={threads}")
    lm = load_raw(model, cache_dir)
    dtype = dtype_check(lm)
    print(json.dumps(dtype), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="kedit-serve-bench-"))
    proc, url = spawn(model, env, workdir)
    served: list[dict] = []
    raws: list[dict] = []
    try:
        wait_ready(url, [proc], max_seconds, poll=1, accept=worker_loaded)
        # The baseline runs while the server idles, before and after the served runs, so that both
        # meet the same machine (other jobs on it come and go).
        raws.append(raw_generate(lm, tokens, raw_requests))
        print("raw before:", json.dumps(raws[-1]), flush=True)
        model_id = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        with httpx.Client(base_url=url, timeout=600) as c:
            one_stream(c, model_id, PROMPTS[0], 2)  # warm-up: starts the batching manager
        for clients in (int(x) for x in levels.split(",")):
            per_client = max(1, requests // clients)
            lvl = load_level(url, model_id, clients, per_client, tokens)
            served.append(lvl)
            print(json.dumps(lvl), flush=True)
        raws.append(raw_generate(lm, tokens, raw_requests))
        print("raw after:", json.dumps(raws[-1]), flush=True)
    finally:
        stop(proc, timeout=60)

    # The better of the two baseline runs: the machine's own speed, not a neighbour's burst.
    raw = max(raws, key=lambda r: r["tokens_per_s"])
    single = served[0]["tokens_per_s"] if served else float("nan")
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": threads or "default",
        "model": model or "SmolLM2-135M-Instruct",
        "tokens_per_request": tokens,
        "raw_generate": raw,
        "raw_generate_runs": raws,
        "served": served,
        "served_dtype_check": dtype,
        "single_client_overhead_vs_raw": 1 - single / raw["tokens_per_s"],
        "speedup_vs_single_client": {str(level["clients"]): level["tokens_per_s"] / single for level in served},
    }
    print(json.dumps(report, indent=2))
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        rows = [
            f"| raw model.generate, 1 at a time ({label}) | {r['requests']} | {r['tokens']} | "
            f"{r['tokens_per_s']:.1f} | "
            f"{r['ttft_p50_s'] * 1000:.0f} | {r['ttft_p95_s'] * 1000:.0f} | {r['per_token_p50_ms']:.0f} | "
            f"{r['per_token_p95_ms']:.0f} |"
            for label, r in zip(("before", "after"), raws, strict=True)
        ]
        for level in served:
            rows.append(
                f"| kedit /v1/completions, {level['clients']} client(s) | {level['requests']} | {level['tokens']} | "
                f"{level['tokens_per_s']:.1f} | {level['ttft_p50_s'] * 1000:.0f} | {level['ttft_p95_s'] * 1000:.0f} | "
                f"{level['per_token_p50_ms']:.0f} | {level['per_token_p95_ms']:.0f} |"
            )
        path.with_suffix(".md").write_text(
            f"# serve_bench: {report['model']}, {tokens} tokens per request, {report['machine']}, "
            f"torch threads: {report['torch_threads']}\n\n"
            f"Command: `python -m benchmarks.serve_bench {' '.join(sys.argv[1:])}`\n\n"
            "| run | requests | tokens | tokens/s | TTFT p50 ms | TTFT p95 ms | per-token p50 ms | per-token p95 ms |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "Raw tokens/s = generated tokens / time spent generating, one request at a time; served tokens/s = "
            "tokens / wall time of the level. Per-token = gaps between streamed tokens (served), "
            "(whole − first token) / (tokens − 1) (raw).\n\n"
            f"Single-client overhead vs raw generate (the faster baseline run): "
            f"{report['single_client_overhead_vs_raw'] * 100:.1f} % of tokens/s. "
            "Throughput vs one client: "
            + ", ".join(f"{k} clients {v:.2f}×" for k, v in report["speedup_vs_single_client"].items())
            + ".\n\nServed dtype check (bf16 copy vs float32, last-position logits over the prompts): "
            + json.dumps(dtype)
            + "\n"
        )


if __name__ == "__main__":
    typer.run(main)
