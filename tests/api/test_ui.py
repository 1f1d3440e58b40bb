"""The operator dashboard (/ui) in embedded mode on the tiny model: pages, filters, search, paging,
escaping of what clients wrote, the API key on the two forms that change something, the charts."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api import dashboard
from app.api.charts import RefLine, Series, line_chart
from app.api.main import create_app
from app.service.context import ServiceContext
from app.store import repo
from app.store.db import transaction
from app.store.models import Edit, QualityScore
from tests.utils.service import FACTS, wait_for, wait_status

SCRIPT = "<script>alert(1)</script>"
KEY = "s3cret-clé-ключ"


class Controls(HTMLParser):
    """Form controls, labels and scripts of a page."""

    def __init__(self):
        super().__init__()
        self.controls: list[dict] = []
        self.label_for: set[str] = set()
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append(a)
        elif tag == "label" and a.get("for"):
            self.label_for.add(a["for"])
        elif tag == "script":
            self.scripts += 1


def controls(html: str) -> Controls:
    p = Controls()
    p.feed(html)
    return p


def assert_accessible(html: str) -> None:
    """Every control has an id and a <label for=…>; no script anywhere."""
    c = controls(html)
    assert c.controls, "the page has a form"
    for ctl in c.controls:
        assert ctl.get("id") in c.label_for, f"control without a label: {ctl}"
    assert c.scripts == 0


def polylines(html: str) -> list[int]:
    """data-points of every chart series on the page."""
    return [int(n) for n in re.findall(r'<polyline class="series"[^>]*data-points="(\d+)"', html)]


def fact_form(fact: dict, **extra) -> dict:
    return {
        "prompt": fact["prompt"],
        "subject": fact["subject"],
        "target_new": fact["target_new"],
        "target_true": fact.get("target_true") or "",
        **extra,
    }


# What a browser sends with a form posted from kedit's own page (app/api/origin.py).
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def submit(c: TestClient, fact: dict, **extra):
    return c.post("/ui/submit", data=fact_form(fact, **extra), follow_redirects=False, headers=SAME_ORIGIN)


def test_home_edit_page_submit_and_revert(client):
    r = client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert_accessible(html)
    assert 'id="served-version">0<' in html and 'id="queue-depth">0<' in html
    assert re.search(r'id="worker-state">(active|standing by)<', html)
    assert "No canary scores yet" in html and "No edits applied yet" in html
    assert 'id="guard-policy">' in html
    assert 'type="password"' not in html, "no API key configured: no key field"
    assert client.get("/ui/kedit.css").headers["content-type"].startswith("text/css")
    assert client.get("/ui/submit").status_code == 200

    r = submit(client, FACTS[1])
    assert r.status_code == 303
    where = urlsplit(r.headers["location"])
    assert where.path == "/ui/edits/1" and "before" in parse_qs(where.query)
    before = parse_qs(where.query)["before"][0]

    wait_status(client, 1)
    wait_for(lambda: client.get("/edits/1").json()["checked_version"], what="the worker's check of the edit")
    page = client.get(r.headers["location"])
    assert page.status_code == 200
    # An applied edit says whether the answer to its prompt showed it, as the worker recorded it.
    e = client.get("/edits/1").json()
    css, verdict = {None: ("unchecked", "not checked"), True: ("shown", "shown"), False: ("not-shown", "not shown")}[
        e["shown"]
    ]
    assert f'id="edit-status" class="status status-applied shown-{css}">applied, {verdict}<' in page.text
    assert 'http-equiv="refresh"' not in page.text, "an applied edit's page does not reload itself"
    assert 'id="answer-before"' in page.text and 'id="answer-now"' in page.text
    now = dashboard.answer(client.app.state.ctx, dashboard.fill(FACTS[1]["prompt"], FACTS[1]["subject"]))
    assert now.text != before, "this fact changes the tiny model's answer"
    assert "P(target_new) after" in page.text and "MPES steps" in page.text
    assert 'action="/ui/edits/1/revert"' in page.text
    assert_accessible(client.get("/ui").text)

    home = client.get("/ui").text
    assert polylines(home) and all(n >= 1 for n in polylines(home))
    assert 'class="threshold"' in home

    r = client.post("/ui/edits/1/revert", data={}, headers=SAME_ORIGIN, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/edits/1"
    wait_status(client, 1, ("reverted",))
    page = client.get("/ui/edits/1").text
    assert "status-reverted" in page and 'action="/ui/edits/1/revert"' not in page
    # A second revert is refused with the service's reason, on the page.
    r = client.post("/ui/edits/1/revert", data={}, headers=SAME_ORIGIN)
    assert r.status_code == 409 and "only applied edits can be reverted" in r.text

    home = client.get("/ui").text
    assert polylines(home) == [2, 2, 3, 3, 3], (
        "norms: two versions (edit, revert) for each of the two edited layers; canaries (facts kept, perplexity, "
        "entropy): the unedited model, the edit and the revert"
    )
    assert client.get("/ui/edits/999").status_code == 404


def test_pages_waiting_for_the_worker_reload_themselves(make_config, client):
    # A queued edit, in a process with no model and no worker: its page waits (and says why no answer).
    ctx = ServiceContext.open(make_config(db=None))
    try:
        with transaction(ctx.sessions) as s:
            (row,) = repo.insert_edits(s, [FACTS[0]])
        view = dashboard.edit_page(ctx, row.id)
        assert view.refresh and view.status == "queued" and not view.can_revert
        assert view.now.text is None and view.now.problem == "this process serves no model"
    finally:
        ctx.close()
    # An applied edit whose revert was requested waits for the worker too.
    edit_id = client.post("/edits", json=FACTS[1]).json()["ids"][0]
    wait_status(client, edit_id)
    with transaction(client.app.state.ctx.sessions) as s:
        s.execute(update(Edit).where(Edit.id == edit_id).values(revert_requested=True))
    page = client.get(f"/ui/edits/{edit_id}").text
    assert '<meta http-equiv="refresh" content="2">' in page and "Revert requested" in page
    assert 'action="/ui/edits/' not in page


def test_filters_search_and_paging(client, monkeypatch):
    ids = client.post("/edits", json=FACTS[:3]).json()["ids"]
    for i in ids:
        wait_status(client, i)
    wait_status(client, client.post(f"/edits/{ids[0]}/revert").json()["id"], ("reverted",))

    def subjects(**params) -> list[str]:
        r = client.get("/ui", params=params)
        assert r.status_code == 200, r.text
        return re.findall(r'<td class="subject">([^<]*)</td>', r.text)

    assert sorted(subjects()) == sorted(f["subject"] for f in FACTS[:3])
    assert sorted(subjects(status="applied")) == sorted(f["subject"] for f in FACTS[1:3])
    assert subjects(status="reverted") == [FACTS[0]["subject"]]
    assert subjects(status="failed") == []
    assert subjects(subject="PARIS") == ["Paris"]
    assert subjects(status="reverted", subject="paris") == []
    assert subjects(status="all", subject="messi") == ["Lionel Messi"]
    page = client.get("/ui", params={"status": "applied"}).text
    assert '<option value="applied" selected>' in page

    r = client.get("/ui", params={"status": "nonsense"})
    assert r.status_code == 422 and "status must be all or one of" in r.text

    monkeypatch.setattr(dashboard, "PAGE_SIZE", 2)
    first = client.get("/ui").text
    assert "1–2 of 3" in first and 'rel="next"' in first and 'rel="prev"' not in first
    nxt = re.search(r'href="/ui\?([^"]*)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get(f"/ui?{nxt}").text
    assert "3–3 of 3" in second and 'rel="prev"' in second and 'rel="next"' not in second
    seen = re.findall(r'<td class="subject">([^<]*)</td>', first + second)
    assert sorted(seen) == sorted(f["subject"] for f in FACTS[:3])


def test_what_clients_wrote_is_shown_as_text(client):
    fact = {"prompt": "The favourite tag of {} is", "subject": SCRIPT, "target_new": "<b>bold</b>"}
    r = submit(client, fact)
    assert r.status_code == 303
    edit_id = int(urlsplit(r.headers["location"]).path.rsplit("/", 1)[1])
    wait_status(client, edit_id)
    for url in ("/ui", r.headers["location"], f"/ui?subject={SCRIPT}"):
        html = client.get(url).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url
        assert "<script>alert" not in html and "<b>bold" not in html, url
    # A fact the API would refuse re-renders the form with the reason (422) and what was typed, escaped.
    r = submit(client, {"prompt": "no slot here", "subject": SCRIPT, "target_new": "x"})
    assert r.status_code == 422
    assert 'id="form-error"' in r.text and "prompt" in r.text
    assert "&lt;script&gt;" in r.text and "<script>alert" not in r.text
    r = submit(client, {"prompt": "{} is", "subject": "A", "target_new": "same", "target_true": "same"})
    assert r.status_code == 422 and 'id="form-error"' in r.text


def test_the_api_key_guards_both_forms_and_is_never_shown(make_config):
    with TestClient(create_app(make_config(api_key=KEY))) as c:
        home = c.get("/ui").text
        assert_accessible(home)
        assert '<label for="submit-api-key">API key</label>' in home
        assert 'type="password" id="submit-api-key" name="api_key"' in home

        r = submit(c, FACTS[1])
        assert r.status_code == 401 and "needs the API key" in r.text
        r = submit(c, FACTS[1], api_key="not-the-key-42")
        assert r.status_code == 401 and "wrong API key" in r.text and "not-the-key-42" not in r.text
        assert FACTS[1]["subject"] in r.text, "what was typed is kept (the key is not)"
        assert c.get("/edits").json()["total"] == 0

        r = submit(c, FACTS[1], api_key=KEY)
        assert r.status_code == 303 and KEY not in r.headers["location"] and "set-cookie" not in r.headers
        wait_status(c, 1)
        page = c.get(r.headers["location"]).text
        assert '<label for="revert-api-key">API key</label>' in page and KEY not in page

        r = c.post("/ui/edits/1/revert", data={"api_key": "nope"}, headers=SAME_ORIGIN)
        assert r.status_code == 401 and "wrong API key" in r.text and "nope" not in r.text
        r = c.post("/ui/edits/1/revert", data={}, headers=SAME_ORIGIN)
        assert r.status_code == 401 and "needs the API key" in r.text
        assert c.get("/edits/1").json()["status"] == "applied"
        r = c.post("/ui/edits/1/revert", data={"api_key": KEY}, headers=SAME_ORIGIN, follow_redirects=False)
        assert r.status_code == 303 and KEY not in r.headers["location"] and "set-cookie" not in r.headers
        wait_status(c, 1, ("reverted",))
        for url in ("/ui", "/ui/edits/1", "/ui/submit"):
            assert KEY not in c.get(url).text

        # The JSON API's header check is the same function.
        assert c.post("/edits", json=FACTS[0]).status_code == 401
        assert c.post("/edits", json=FACTS[0], headers={"X-API-Key": KEY.encode()}).status_code == 202


def test_cross_site_and_non_form_posts_are_refused(client):
    r = client.post("/ui/submit", data=fact_form(FACTS[1]), headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert client.post("/ui/submit", json=fact_form(FACTS[1]), headers=SAME_ORIGIN).status_code == 415
    assert client.get("/edits").json()["total"] == 0


def test_canary_scores_are_charted_against_applied_edits(client):
    ctx = client.app.state.ctx
    with transaction(ctx.sessions) as s:
        for v, (live, kept, ppl, ent) in enumerate([(0, 10, 20.0, 3.0), (1, 9, 21.5, 2.9), (2, 8, 23.0, 2.7)]):
            repo.put_quality(
                s,
                QualityScore(
                    version=v,
                    live_edits=live,
                    facts_total=10,
                    facts_kept=kept,
                    lost=[],
                    perplexity=ppl,
                    entropy=ent,
                    guard={"policy": "warn", "verdict": "ok", "crossed": []},
                ),
            )
    html = client.get("/ui").text
    assert "No canary scores yet" not in html
    assert polylines(html) == [3, 3, 3]
    assert "Canary facts kept (%)" in html and "8 of 10" in html


def test_line_chart_is_valid_svg_with_escaped_labels():
    svg = line_chart(
        "a <title>",
        "x & y",
        "y",
        [Series("<b>", [(0, 1), (1, 2), (2, float("nan"))]), Series("one", [(1, 5)])],
        [RefLine("alarm", 0.5)],
    )
    root = ElementTree.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert [p.get("data-points") for p in lines] == ["2", "1"]
    assert [p.get("data-series") for p in lines] == ["<b>", "one"]
    assert root.find(f"{ns}title").text == "a <title>"
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert len(lines[0].get("points").split()) == 2
