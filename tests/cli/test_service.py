"""`kedit verify` and `kedit db`: the offline checks an operator runs."""

from __future__ import annotations

import typer
from fastapi.testclient import TestClient
from sqlalchemy import update
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli.service import register
from app.store.models import Version
from tests.utils.service import FACTS, config_env, wait_status


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_db_commands_and_verify(make_config, monkeypatch, tmp_path):
    cfg = make_config()
    for k, v in config_env(cfg).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    r = runner.invoke(cli(), ["db", "current"])
    assert r.exit_code == 0 and "database: empty; code needs: 0005_shown" in r.output
    r = runner.invoke(cli(), ["db", "upgrade"])
    assert r.exit_code == 0 and "schema at 0005_shown" in r.output

    with TestClient(create_app(cfg)) as c:
        wait_status(c, c.post("/edits", json=FACTS[0]).json()["ids"][0])
        head = c.get("/version").json()
        engine = c.app.state.ctx.engine
    r = runner.invoke(cli(), ["verify"])
    assert r.exit_code == 0, r.output
    assert f"ok: version 1, 1 live batches, hash {head['weights_hash']}" in r.output

    with engine.begin() as conn:
        conn.execute(update(Version).where(Version.id == 1).values(weights_hash="0" * 64))
    r = runner.invoke(cli(), ["verify"])
    assert r.exit_code == 1 and "MISMATCH" in r.output and "refusing to serve" in r.output
