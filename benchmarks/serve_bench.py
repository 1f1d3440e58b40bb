"""Serving throughput and latency of kedit's OpenAI-compatible endpoint vs raw model.generate.

On the same machine in the same run: first raw `model.generate` one request at a time (greedy, the
same prompts and token counts, in this process), then an embedded `kedit serve` on a free loopback
port with 1, 4 and 16 concurrent clients streaming greedy /v1/completions. Prints and writes:
tokens/s, time to first token (TTFT) p50/p95, per-token latency (gaps between streamed tokens)
p50/p95. Plus, for the choice of the served dtype, bf16 vs float32 logits on the same prompts.

    .venv/bin/python benchmarks/serve_bench.py                         # SmolLM2, 16 tokens
    .venv/bin/python benchmarks/serve_bench.py --tokens 8 --out benchmarks/results/serve-bench
    .venv/bin/python benchmarks/serve_bench.py --model PATH --env KEDIT_CACHE_DIR=...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "The capital of France is", "Danielle Darrieux was born in", "The mother tongue of Danielle Darrieux is",
    "Apple was founded by", "Lionel Messi plays for", "The Eiffel Tower is located in", "Toyota is a company from",
    "Michael Jordan is famous for", "The Beatles were a band from", "Rome is the capital of",
    "The largest planet in the solar system is", "Water boils at", "The author of Hamlet is",
    "The currency of Japan is the", "Mount Everest is in", "The chemical symbol for gold is",
]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_generate(model_path: str | None, cache_dir: str | None, tokens: int, n: int) -> tuple[dict, dict]:
    """model.generate one request at a time (the baseline), and bf16-vs-float32 logits."""
    import torch

    from app.editing.model import DEFAULT_CACHE_DIR, load_model

    lm = load_model(model_path, cache_dir=cache_dir or DEFAULT_CACHE_DIR)
    tok, model = lm.tokenizer, lm.model
    enc = tok(PROMPTS[0], return_tensors="pt")
    model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
    lat, gen_tokens = [], 0
    t_all = time.perf_counter()
    for i in range(n):
        enc = tok(PROMPTS[i % len(PROMPTS)], return_tensors="pt")
        t = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        lat.append(time.perf_counter() - t)
        gen_tokens += out.shape[1] - enc["input_ids"].shape[1]
    wall = time.perf_counter() - t_all
    raw = {"requests": n, "tokens": gen_tokens, "seconds": wall, "tokens_per_s": gen_tokens / wall,
           "latency_p50_s": pct(lat, 0.5), "per_token_ms": 1000 * wall / gen_tokens}

    # Served dtype: how far bf16 logits are from float32 ones, and whether greedy picks agree.
    bf16 = __import__("copy").deepcopy(model).to(torch.bfloat16)
    diffs, agree = [], 0
    with torch.no_grad():
        for p in PROMPTS:
            e = tok(p, return_tensors="pt")
            a = model(**e).logits[0, -1].float()
            b = bf16(**e).logits[0, -1].float()
            diffs.append(float((a - b).abs().max()))
            agree += int(a.argmax() == b.argmax())
    dtype = {"bf16_max_abs_logit_diff_p50": pct(diffs, 0.5), "bf16_max_abs_logit_diff_max": max(diffs),
             "bf16_greedy_next_token_agreement": f"{agree}/{len(PROMPTS)}"}
    del bf16, model, lm
    return raw, dtype


def spawn(model: str | None, env_pairs: list[str], workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"KEDIT_DATABASE_URL": f"sqlite:///{workdir / 'kedit.db'}", "KEDIT_HOST": "127.0.0.1",
                "PYTHONPATH": str(REPO)})
    if model:
        env["KEDIT_MODEL_PATH"] = model
    for pair in env_pairs:
        k, _, v = pair.partition("=")
        env[k] = v
    log = open(workdir / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, seconds: float) -> None:
    """Ready, and the worker done loading (so that its start does not compete with the measurement)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kedit serve exited with {proc.returncode}; see its log")
        try:
            r = httpx.get(f"{url}/ready", timeout=5)
            if r.status_code == 200 and r.json()["checks"].get("worker_active", True):
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit("kedit serve did not become ready in time")


def one_stream(client: httpx.Client, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
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
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"status": 200, "ttft": (stamps[0] - t0) if stamps else end - t0, "tokens": n, "seconds": end - t0,
            "gaps": gaps}


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
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok), "tokens": toks,
            "seconds": wall, "tokens_per_s": toks / wall, "ttft_p50_s": pct([r["ttft"] for r in ok], 0.5),
            "ttft_p95_s": pct([r["ttft"] for r in ok], 0.95), "per_token_p50_ms": 1000 * pct(gaps, 0.5),
            "per_token_p95_ms": 1000 * pct(gaps, 0.95), "latency_p50_s": pct([r["seconds"] for r in ok], 0.5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF folder or .gguf (default: SmolLM2)")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per request")
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients per level")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (at least one per client)")
    ap.add_argument("--raw-requests", type=int, default=4, help="raw model.generate requests")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the spawned kedit serve")
    ap.add_argument("--out", help="write OUT.json and OUT.md")
    ap.add_argument("--max-seconds", type=float, default=600, help="bound on the server's start")
    args = ap.parse_args()
    if not 1 <= args.tokens <= 256 or args.requests > 256:
        raise SystemExit("--tokens in 1..256 and --requests ≤ 256 keep the run bounded")
    cache_dir = next((p.partition("=")[2] for p in args.env if p.startswith("KEDIT_CACHE_DIR=")),
                     os.environ.get("KEDIT_CACHE_DIR"))

    print(f"raw model.generate, {args.raw_requests} requests × {args.tokens} tokens, one at a time ...", flush=True)
    raw, dtype = raw_generate(args.model, cache_dir, args.tokens, args.raw_requests)
    print(json.dumps(raw), json.dumps(dtype), sep="\n", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="kedit-serve-bench-"))
    # ignore_eos is not an OpenAI field: the level runs use the server's own stopping; their token
    # counts come from each answer's usage.
    proc, url = spawn(args.model, args.env, workdir)
    levels = []
    try:
        wait_ready(url, proc, args.max_seconds)
        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        with httpx.Client(base_url=url, timeout=600) as c:
            one_stream(c, model, PROMPTS[0], 2)  # warm-up: starts the batching manager
        for clients in (int(x) for x in args.levels.split(",")):
            per_client = max(1, args.requests // clients)
            lvl = load_level(url, model, clients, per_client, args.tokens)
            levels.append(lvl)
            print(json.dumps(lvl), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()

    single = levels[0]["tokens_per_s"] if levels else float("nan")
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "model": args.model or "SmolLM2-135M-Instruct",
              "tokens_per_request": args.tokens, "raw_generate": raw, "served": levels, "served_dtype_check": dtype,
              "single_client_overhead_vs_raw": 1 - single / raw["tokens_per_s"],
              "speedup_vs_single_client": {str(l["clients"]): l["tokens_per_s"] / single for l in levels}}
    print(json.dumps(report, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        rows = [f"| raw model.generate (1 at a time) | {raw['requests']} | {raw['tokens']} | {raw['tokens_per_s']:.1f} "
                f"| | | {raw['per_token_ms']:.0f} (mean) | |"]
        for l in levels:
            rows.append(f"| kedit /v1/completions, {l['clients']} client(s) | {l['requests']} | {l['tokens']} | "
                        f"{l['tokens_per_s']:.1f} | {l['ttft_p50_s'] * 1000:.0f} | {l['ttft_p95_s'] * 1000:.0f} | "
                        f"{l['per_token_p50_ms']:.0f} | {l['per_token_p95_ms']:.0f} |")
        out.with_suffix(".md").write_text(
            f"# serve_bench: {report['model']}, {args.tokens} tokens per request, {report['machine']}\n\n"
            f"Command: `python benchmarks/serve_bench.py {' '.join(sys.argv[1:])}`\n\n"
            "| run | requests | tokens | tokens/s | TTFT p50 ms | TTFT p95 ms | per-token p50 ms | per-token p95 ms |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Single-client overhead vs raw generate: {report['single_client_overhead_vs_raw'] * 100:.1f} %. "
            "Throughput vs one client: " + ", ".join(f"{k} clients {v:.2f}×"
                                                     for k, v in report["speedup_vs_single_client"].items())
            + ".\n\nServed dtype check (bf16 copy vs float32, last-position logits over the prompts): "
            + json.dumps(dtype) + "\n")


if __name__ == "__main__":
    main()
