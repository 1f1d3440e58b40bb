"""The edit log at lifelong scale (issue 15): a PostgreSQL log of N synthetic edits, and what it costs.

Fills a fresh PostgreSQL database with N edits (default 10,000) in batches of the service's
default size B (8): per batch, random low-rank factors of the shapes SmolLM2-135M's edited layers
have (ΔW = U Vᵀ with U 576×B, V 1536×B, keys 1536×B, at layers 4–8), each batch added to the
weights exactly as a replay adds it and the weights hash computed the real way (the editor's
weights_hash), with norm snapshots and every edit's z*, through the store's own record_batch.
The model is a random Llama with SmolLM2's hidden and MLP sizes and 9 layers (the edited layers
and their shapes are SmolLM2's; the layers above 8 do not enter the log), so nothing needs the
real weights. Then it measures:

    database size; `kedit api` start to /ready (its replay); the replay alone in-process; a worker's
    start-up replay including the preservation sum Σ K Kᵀ; `kedit verify`; the revert of the
    oldest edit (its batch removed = weights rebuilt from W₀ and every other live batch, plus the
    re-apply of its 7 batch-mates); GET /edits at offset 9,000; GET /health/norms.

    .venv/bin/python -m benchmarks.log_scale                       # N = 10,000 (a few minutes)
    .venv/bin/python -m benchmarks.log_scale --edits 800 --no-write  # a quick look

Writes benchmarks/results/log-scale.{json,md}. Needs PostgreSQL and Redis on 127.0.0.1 (the
database kedit_logscale_<random> is dropped at the end).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import typer

from app.config import ServiceConfig
from app.editing.types import BatchResult, EditOutcome, LayerDelta
from app.service.host import ModelHost, snapshot_schedule
from app.store import repo
from app.store.codec import delta_to_bytes
from app.store.db import ensure_schema, make_engine, session_factory, transaction
from benchmarks.procs import REPO, spawn_kedit, stop, wait_ready

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)
LAYERS = [4, 5, 6, 7, 8]
# The worker solves nothing here but the revert's re-apply; its C₀ comes from a small corpus.
OVERRIDES = {"stats_tokens": 2000, "n_prefixes": 2, "prefix_tokens": 4}
GOALS = {"replica_ready_s": 10.0, "revert_total_s": 2.0, "db_mb": 300.0, "verify_s": 60.0}


def build_model(folder: Path) -> None:
    from tests.utils.tiny import TRAINING_TEXT, random_llama, train_tiny_tokenizer

    tok = train_tiny_tokenizer()
    torch.manual_seed(0)
    model = random_llama(tok, num_hidden_layers=9, max_position_embeddings=2048, initializer_range=0.02, **SMOLLM2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder.parent / "corpus.txt").write_text("\n".join(TRAINING_TEXT * 200))


def writer_host(editor, sessions, templates: list[str]) -> ModelHost:
    """A host that records the model (settings and templates) in the log, as a worker's does."""
    return ModelHost(
        editor, sessions, editor.lm.name, editor.layers, editor.settings.model_dump(mode="json"), templates
    )


def fill(cfg: ServiceConfig, n_edits: int, batch: int, seed: int = 0, snapshot_every: int = 0) -> dict:
    """Write n_edits synthetic applied edits into the log; returns what was written."""
    editor = cfg.load_editor("replica")
    engine = make_engine(cfg.resolved_database_url())
    ensure_schema(engine, auto_migrate=True)
    sessions = session_factory(engine)
    host = writer_host(editor, sessions, ["{}", "The {}", "Therefore {}"])
    host.bootstrap()  # records the model (base hash, layers, templates) as a worker would
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, cfg.edit_settings().factor_dtype)  # rounded as the worker rounds them
    d, f = editor.base[LAYERS[0]].shape
    t0 = time.perf_counter()
    version = 0
    raw_bytes = stored_bytes = 0
    for start in range(0, n_edits, batch):
        size = min(batch, n_edits - start)
        version += 1
        deltas = [
            LayerDelta(
                layer,
                (torch.randn(d, size, generator=g) * 1e-3).to(dt),
                (torch.randn(f, size, generator=g) * 1e-3).to(dt),
                torch.randn(f, size, generator=g).to(dt),
            )
            for layer in LAYERS
        ]
        # Exactly what Editor.add_batch does to the weights (the preservation sum is not needed to
        # hash them); the api's replay of the finished log proves it against the stored hashes.
        with torch.no_grad():
            for dl in deltas:
                editor._w(dl.layer).add_(dl.matrix())
        weights_hash, norms = editor.weights_hash(), editor.norms()
        facts = [
            {"prompt": "The home town of {} is", "subject": f"Person {start + i}", "target_new": "Paris"}
            for i in range(size)
        ]
        outcomes = [EditOutcome(torch.randn(d, generator=g), 5, 0.01, 0.9) for _ in range(size)]
        raw_bytes += sum(len(delta_to_bytes(dl, compress=False)) for dl in deltas)
        stored_bytes += sum(len(delta_to_bytes(dl)) for dl in deltas)
        with transaction(sessions) as s:
            rows = repo.insert_edits(s, facts)
            repo.record_batch(
                s, repo.Applied(version, weights_hash, norms), BatchResult(version, deltas, outcomes), rows, 1.0
            )
            if snapshot_every and version % snapshot_every == 0:
                # What the worker's housekeeping writes (batch ids = versions here) and keeps.
                repo.put_snapshot(s, version, list(range(1, version + 1)), editor.dense_weights())
                have = [x.version for x in repo.snapshots(s)]
                kept = snapshot_schedule(have, version, snapshot_every, cfg.snapshot_keep)
                repo.delete_snapshots(s, [v for v in have if v not in kept])
        if version % 25 == 0:
            print(f"  {start + size} edits, {version} versions, {time.perf_counter() - t0:.0f} s", flush=True)
    engine.dispose()
    return {
        "versions": version,
        "head_hash": weights_hash,
        "fill_s": time.perf_counter() - t0,
        "factor_dtype": str(dt).removeprefix("torch."),
        "factor_bytes_per_edit": stored_bytes / n_edits,
        "factor_bytes_per_edit_uncompressed": raw_bytes / n_edits,
        "compression_ratio": raw_bytes / stored_bytes,
    }


def db_size_mb(url: str) -> dict:
    from sqlalchemy import text

    engine = make_engine(url)
    with engine.connect() as c:
        total = c.execute(text("SELECT pg_database_size(current_database())")).scalar()
        tables = {
            r[0]: r[1]
            for r in c.execute(
                text("SELECT relname, pg_total_relation_size(relid) FROM pg_catalog.pg_statio_user_tables")
            )
        }
        raw = c.execute(text("SELECT sum(octet_length(data)) FROM layer_deltas")).scalar()
    engine.dispose()
    mb = 1024 * 1024
    return {
        "database_mb": total / mb,
        "layer_deltas_mb": tables.get("layer_deltas", 0) / mb,
        "edits_mb": tables.get("edits", 0) / mb,
        "delta_payload_mb": raw / mb,
        "weight_snapshots_mb": tables.get("weight_snapshots", 0) / mb,
    }


def env_for(cfg: ServiceConfig, prefix: str) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": cfg.database_url,
        "REDIS_URL": REDIS,
        "KEDIT_REDIS_PREFIX": prefix,
        "KEDIT_MODEL_PATH": cfg.model_path,
        "KEDIT_CACHE_DIR": str(cfg.cache_dir),
        "KEDIT_STATS_CORPUS": str(cfg.stats_corpus),
        "KEDIT_EDIT_OVERRIDES": json.dumps(OVERRIDES),
        "KEDIT_FACTOR_DTYPE": cfg.factor_dtype,
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("KEDIT_API_KEY", None)
    return env


def time_api(cfg: ServiceConfig, prefix: str, port: int, offset: int) -> dict:
    import httpx

    env = env_for(cfg, prefix)
    log = Path(tempfile.gettempdir()) / f"log-scale-api-{port}.log"
    t0 = time.perf_counter()
    p = spawn_kedit("api", "--port", str(port), env=env, log=log, log_level="info")
    out: dict = {}
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, [p], timeout=600, poll=0.1)  # fine-grained: the time to ready is the figure
        out["api_start_to_ready_s"] = time.perf_counter() - t0
        with httpx.Client(base_url=url, timeout=60) as c:
            out["api_version"] = c.get("/version").json()

            def median_ms(path, **params):
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    r = c.get(path, params=params)
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
                return statistics.median(times), r

            out["get_edits_offset_ms"], r = median_ms("/edits", offset=offset, limit=50)
            assert r.json()["items"], "no page at that offset"
            out["health_norms_ms"], _ = median_ms("/health/norms")
            out["get_edit_ms"], _ = median_ms(f"/edits/{offset}")
    finally:
        stop(p, timeout=30)
    # Where the start went: imports until the schema check (the first timestamped line), then
    # model load + replay + hash proof until "replayed ... live batches".
    from datetime import datetime

    stamps = {}
    for line in log.read_text(errors="replace").splitlines():
        if line[:4].isdigit() and ("alembic.runtime.migration" in line or "replayed" in line):
            stamps.setdefault(
                "replayed" if "replayed" in line else "schema", datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            )
    if len(stamps) == 2:
        out["api_load_and_replay_s"] = (stamps["replayed"] - stamps["schema"]).total_seconds()
    return out


def time_inprocess(cfg: ServiceConfig, snapshots: bool = False) -> dict:
    from sqlalchemy import select

    from app.queue import LocalQueue
    from app.service import applying
    from app.service import edits as edit_service
    from app.store.models import Edit

    out: dict = {}
    engine = make_engine(cfg.resolved_database_url())
    sessions = session_factory(engine)
    replica = cfg.load_editor("replica")
    with sessions() as s:
        info = repo.get_model_info(s)
    host = ModelHost(replica, sessions, replica.lm.name, replica.layers)
    host.use_snapshots = False  # from W₀ and every live delta
    t = time.perf_counter()
    host.bootstrap()
    out["replica_replay_s"] = time.perf_counter() - t
    head_hash = host.weights_hash
    del replica, host
    if snapshots:
        replica = cfg.load_editor("replica")
        host = ModelHost(replica, sessions, replica.lm.name, replica.layers)
        t = time.perf_counter()
        host.bootstrap()  # the newest usable snapshot + the deltas after it, proven the same way
        out["replica_replay_snapshot_s"] = time.perf_counter() - t
        out["replica_snapshot_deltas"] = len(replica.batch_ids) - len(replica.missing_deltas())
        assert host.weights_hash == head_hash, "snapshot + later deltas hash differently from a full replay"
        del replica, host

    worker_editor = cfg.load_editor("worker", templates=list(info.templates))  # C₀ loaded before the clock
    whost = writer_host(worker_editor, sessions, list(info.templates))
    t = time.perf_counter()
    whost.bootstrap()  # replay: weights + the preservation sum of every live batch's keys
    out["worker_replay_s"] = time.perf_counter() - t

    # Revert the oldest edit: its batch leaves (no snapshot is older than it: the weights are rebuilt
    # from W₀ + every other live batch) and its batch-mates come back from their stored z* as a new
    # batch. Then an edit 10 versions from the head: rebuilt from the newest snapshot before it.
    rebuilds: list[float] = []
    remove = whost.remove_batch

    def timed_remove(batch_id: int) -> None:
        t = time.perf_counter()
        remove(batch_id)
        rebuilds.append(time.perf_counter() - t)

    whost.remove_batch = timed_remove
    with sessions() as s:
        recent = s.scalars(
            select(Edit.id).where(Edit.applied_version == max(1, whost.version - 10)).order_by(Edit.id).limit(1)
        ).one()
    for name, edit_id in (("revert_recent", recent), ("revert", 1)):  # the oldest makes every snapshot stale
        edit_service.request_revert(sessions, LocalQueue(), edit_id)
        t = time.perf_counter()
        report = applying.revert_edit(whost, edit_id)
        out[f"{name}_total_s"] = time.perf_counter() - t
        assert report.applied == [edit_id], report
        out[f"{name}_rebuild_s"] = rebuilds[-1]
        out[f"{name}_reapply_s"] = out[f"{name}_total_s"] - out[f"{name}_rebuild_s"]
        assert whost.weights_hash == worker_editor.weights_hash()
    # Both reverts give the bits of a replay from W₀ of the log without them: proven on the hash.
    check = cfg.load_editor("replica")
    chost = ModelHost(check, sessions, check.lm.name, check.layers)
    chost.use_snapshots = False
    chost.bootstrap()
    assert chost.weights_hash == whost.weights_hash
    engine.dispose()
    return out


def time_verify(cfg: ServiceConfig, prefix: str) -> dict:
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "verify"],
        cwd=REPO,
        env=env_for(cfg, prefix),
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"kedit verify failed:\n{r.stdout}\n{r.stderr}")
    return {"verify_s": seconds, "verify_output": r.stdout.strip()}


FACTOR_DTYPES = ("float32", "bfloat16", "float16")


def main(
    edits: int = typer.Option(10_000),
    batch_size: int = typer.Option(ServiceConfig.model_fields["batch_size"].default),
    snapshot_every: int = typer.Option(
        0,
        help="write weight snapshots every N versions while filling (as KEDIT_SNAPSHOT_EVERY "
        "does); the api and worker then start from the newest, and the replica replay is "
        "timed both with and without it",
    ),
    factor_dtype: str = typer.Option(
        "bfloat16",
        help="the log's factor dtype (KEDIT_FACTOR_DTYPE) for the filled log and every process started: "
        + ", ".join(FACTOR_DTYPES),
    ),
    no_write: bool = typer.Option(False, "--no-write", help="print only; leave benchmarks/results alone"),
    keep: bool = typer.Option(False, "--keep", help="keep the database (its URL is printed)"),
    rewrite: bool = typer.Option(False, "--rewrite", help="only rewrite log-scale.md from log-scale.json"),
) -> None:
    """The edit log at lifelong scale: a PostgreSQL log of N synthetic edits, and what it costs."""
    if factor_dtype not in FACTOR_DTYPES:
        raise typer.BadParameter(
            f"{factor_dtype!r} is not one of {', '.join(FACTOR_DTYPES)}", param_hint="--factor-dtype"
        )
    if rewrite:
        r = json.loads((REPO / "benchmarks" / "results" / "log-scale.json").read_text())
        r["goals"] = goals(r)
        write(r)
        return

    import psycopg

    work = Path(tempfile.mkdtemp(prefix="kedit-log-scale-"))
    model_dir = work / "smollm2-shaped"
    build_model(model_dir)
    name = f"kedit_logscale_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    prefix = f"kedit-logscale-{uuid.uuid4().hex[:8]}"
    cfg = ServiceConfig(
        model_path=str(model_dir),
        cache_dir=work / "cache",
        stats_corpus=work / "corpus.txt",
        edit_overrides=OVERRIDES,
        database_url=url,
        redis_url=REDIS,
        redis_prefix=prefix,
        factor_dtype=factor_dtype,
    )
    results: dict = {
        "edits": edits,
        "batch_size": batch_size,
        "layers": LAYERS,
        "shapes": {
            "W": [576, 1536],
            "U": [576, batch_size],
            "V": [1536, batch_size],
            "keys": [1536, batch_size],
        },
        "codec": "safetensors of u, v, keys in KEDIT_FACTOR_DTYPE, top bytes zlib-compressed, as app/store/codec.py "
        "stores them",
        "cpu": f"{os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "date": datetime.date.today().isoformat(),
    }
    try:
        print(f"filling {url} with {edits} edits in batches of {batch_size} ...", flush=True)
        results["snapshot_every"] = snapshot_every
        results["snapshot_keep"] = cfg.snapshot_keep
        results.update(fill(cfg, edits, batch_size, snapshot_every=snapshot_every))
        results.update(db_size_mb(cfg.resolved_database_url()))
        print(json.dumps({k: v for k, v in results.items() if k.endswith(("_mb", "_s"))}), flush=True)
        results.update(time_api(cfg, prefix, 18000 + os.getpid() % 1000, offset=max(1, min(9000, edits - 50))))
        assert results["api_version"]["weights_hash"] == results["head_hash"], "the api serves another hash"
        results.update(time_verify(cfg, prefix))
        results.update(time_inprocess(cfg, snapshots=bool(snapshot_every)))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)') if not keep else print(f"kept {url}")
        admin.close()
        shutil.rmtree(work, ignore_errors=True)
    results["goals"] = goals(results)
    print(json.dumps(results, indent=2, default=str))
    if not no_write:
        write(results)


def goals(r: dict, at: int = 10_000) -> dict:
    """The goals are for a 10,000-edit log. A smaller run is scaled linearly (replay, rebuild and
    storage are each a sum over the live batches; the fixed parts are kept out of the scaling)."""
    k = at / r["edits"]
    fixed_start = r["api_start_to_ready_s"] - r.get("api_load_and_replay_s", 0) + 0.0
    out = {
        "replica_ready_s": {
            "goal": GOALS["replica_ready_s"],
            "at_edits": r["edits"],
            "got": r["api_start_to_ready_s"],
            f"scaled_to_{at}": fixed_start + r["replica_replay_s"] * k,
        },
        "revert_total_s": {
            "goal": GOALS["revert_total_s"],
            "at_edits": r["edits"],
            "got": r["revert_total_s"],
            f"scaled_to_{at}": r["revert_rebuild_s"] * k + r["revert_reapply_s"],
        },
        "verify_s": {
            "goal": GOALS["verify_s"],
            "at_edits": r["edits"],
            "got": r["verify_s"],
            f"scaled_to_{at}": max(r["verify_s"] - r["replica_replay_s"], 0.0) + r["replica_replay_s"] * k,
        },
        "db_mb": {
            "goal": GOALS["db_mb"],
            "at_edits": r["edits"],
            "got": r["database_mb"],
            f"scaled_to_{at}": (r["layer_deltas_mb"] + r["edits_mb"]) * k
            + (r["database_mb"] - r["layer_deltas_mb"] - r["edits_mb"]),
        },
    }
    if r.get("replica_replay_snapshot_s") is not None:
        # With snapshots the replay does not grow with the log: the snapshot's load and hash check,
        # then at most every−1 deltas (the worst case, whatever this run's position after a snapshot).
        per_delta = r["replica_replay_s"] / r["versions"]
        load = max(r["replica_replay_snapshot_s"] - r["replica_snapshot_deltas"] * per_delta, 0.0)
        out["replica_ready_snapshot_s"] = {
            "goal": GOALS["replica_ready_s"],
            "at_edits": r["edits"],
            "got": r["api_start_to_ready_s"],
            f"scaled_to_{at}": fixed_start + load + (r["snapshot_every"] - 1) * per_delta,
            "snapshot_load_s": load,
            "per_delta_s": per_delta,
        }
    for g in out.values():
        g["met"] = g[f"scaled_to_{at}"] <= g["goal"]
    return out


def write(r: dict) -> None:
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "log-scale.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    g = r["goals"]

    def verdict(x):
        v = x["scaled_to_10000"]
        at = "" if r["edits"] == 10_000 else f" (scaled to 10,000: {v:.0f})"
        return f"met{at}" if x["met"] else f"missed{at} by {v - x['goal']:.0f} ({v / x['goal']:.1f}×)"

    snap_rows = ""
    if "replica_ready_snapshot_s" in g:
        x = g["replica_ready_snapshot_s"]
        snap_rows = (
            f"| replica replay alone from the newest weight snapshot + its {r['replica_snapshot_deltas']} later deltas "
            f"(snapshots every {r['snapshot_every']} versions; same hash) | {r['replica_replay_snapshot_s']:.1f} s | "
            f"≤ {x['goal']:.0f} s for an api replica: {verdict(x)}, as the api's fixed start + the snapshot's load "
            f"({x['snapshot_load_s']:.1f} s) + the worst case of {r['snapshot_every'] - 1} deltas, whatever the log's length |\n"
            f"| weight snapshots stored (the schedule's, at most {r.get('snapshot_keep', 2)}; compressed) | {r.get('weight_snapshots_mb', 0):.0f} MB | |\n"
        )
    snap_arg = f" --snapshot-every {r['snapshot_every']}" if r.get("snapshot_every") else ""
    no_snap = " replaying from W₀ (no snapshots)" if r.get("snapshot_every") else ""
    b = r.get("without_snapshots")
    base_row = (
        (
            f"| … the same `kedit api` start with no snapshot in the log (a separate run, `--edits {r['edits']}` "
            f"without `--snapshot-every`, minutes apart) | {b['api_start_to_ready_s']:.1f} s (of which load + replay "
            f"+ proof {b.get('api_load_and_replay_s', float('nan')):.1f} s; in-process replay "
            f"{b['replica_replay_s']:.1f} s) | |\n"
        )
        if b
        else ""
    )
    worker_how = " (from the newest snapshot; every live batch's keys still loaded)" if r.get("snapshot_every") else ""
    api_how = "from the newest weight snapshot" if r.get("snapshot_every") else "from W₀"
    md = f"""# The edit log at {r["edits"]:,} edits (benchmarks/log_scale.py)

Commit {r.get("commit", "?")}, {r.get("date", "?")}. PostgreSQL on 127.0.0.1, {r["cpu"]}, torch threads {r["torch_threads"]}.
{r["edits"]:,} synthetic edits in {r["versions"]:,} batches of {r["batch_size"]} at SmolLM2-135M's edited layers
{r["layers"]} (W 576×1536; per batch and layer U 576×B, V 1536×B, keys 1536×B), hashes computed the real
way; stored as the service stores them: {r["codec"]}.
Command: `.venv/bin/python -m benchmarks.log_scale --edits {r["edits"]}{snap_arg}`.

| measure | value | goal |
|---|---|---|
| factors stored per edit ({r.get("factor_dtype", "float32")}, 5 layers) | {r.get("factor_bytes_per_edit", 0):,.0f} bytes ({r.get("factor_bytes_per_edit_uncompressed", 0):,.0f} before compression: ratio {r.get("compression_ratio", 1):.2f}) | |
| database size | {r["database_mb"]:.0f} MB (layer_deltas {r["layer_deltas_mb"]:.0f} MB, of which factor bytes {r["delta_payload_mb"]:.0f} MB; edits {r["edits_mb"]:.0f} MB) | ≤ {g["db_mb"]["goal"]:.0f} MB: {verdict(g["db_mb"])} |
| `kedit api` start → /ready (process start, model load, replay {api_how}, hash proof) | {r["api_start_to_ready_s"]:.1f} s | ≤ {g["replica_ready_s"]["goal"]:.0f} s{no_snap}: {verdict(g["replica_ready_s"])} |
| … of which model load + replay + proof in the api process (its log) | {r.get("api_load_and_replay_s", float("nan")):.1f} s | |
{base_row}| replica replay alone (in-process, from W₀ and every delta) | {r["replica_replay_s"]:.1f} s | |
{snap_rows}| worker start-up replay incl. preservation sum Σ K Kᵀ{worker_how} | {r["worker_replay_s"]:.1f} s | |
| `kedit verify` (process: start, model load, replay from W₀ of every live delta, hash proof) | {r["verify_s"]:.1f} s | ≤ {g["verify_s"]["goal"]:.0f} s: {verdict(g["verify_s"])} |
| revert of the oldest edit, total | {r["revert_total_s"]:.1f} s | ≤ {g["revert_total_s"]["goal"]:.0f} s: {verdict(g["revert_total_s"])} |
| … of which the rebuild (no snapshot is older than it: W₀ + every other live batch) | {r["revert_rebuild_s"]:.1f} s | |
| … of which the re-apply of its {r["batch_size"] - 1} batch-mates | {r["revert_reapply_s"]:.1f} s | |
| revert of an edit 10 versions from the head, total | {r.get("revert_recent_total_s", float("nan")):.1f} s | |
| … of which the rebuild (from the newest snapshot before it + the later deltas) | {r.get("revert_recent_rebuild_s", float("nan")):.1f} s | |
| GET /edits?offset={max(1, min(9000, r["edits"] - 50))}&limit=50 (median of 5) | {r["get_edits_offset_ms"]:.0f} ms | |
| GET /edits/{{id}} (median of 5) | {r["get_edit_ms"]:.0f} ms | |
| GET /health/norms (median of 5) | {r["health_norms_ms"]:.0f} ms | |

Filling the log took {r["fill_s"]:.0f} s. Goals are for 10,000 edits; a smaller run is scaled
linearly (each of replay, rebuild and storage is a sum over the live batches): replica ready =
the api's fixed start (imports, model load) + the in-process replay × 10,000 / {r["edits"]:,}.
Timings on this machine vary up to 3× with the load of the jobs beside it.
"""
    (out / "log-scale.md").write_text(md)
    print(f"wrote {out / 'log-scale.md'}")


if __name__ == "__main__":
    typer.run(main)
