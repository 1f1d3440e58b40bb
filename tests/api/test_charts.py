"""The dashboard's charts' axes: round ticks, whole numbers on an axis that counts, labels that
tell neighbouring ticks apart."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from app.api.charts import Series, axis, line_chart

NS = "{http://www.w3.org/2000/svg}"


def tick_labels(svg: str, which: str) -> list[str]:
    root = ElementTree.fromstring(svg)
    return [t.text for t in root.iter(f"{NS}text") if t.get("class") == "tick" and t.get("data-axis") == which]


@pytest.mark.parametrize(
    "lo, hi, labels",
    [
        (1, 2, ["1", "2"]),  # two versions: no 1.25 or 1.5 between them
        (1, 3, ["1", "2", "3"]),
        (0, 37, ["0", "10", "20", "30", "40"]),
        (3, 3, ["2", "3", "4"]),  # one point: a version on each side
        (0, 500, ["0", "200", "400", "600"]),
    ],
)
def test_a_count_axis_has_whole_ticks(lo, hi, labels):
    a = axis(lo, hi, integer=True)
    assert a.labels == labels
    assert all(t == int(t) for t in a.ticks) and a.lo <= lo and a.hi >= hi


def test_close_values_get_the_decimals_that_tell_them_apart():
    a = axis(20.612, 20.634)
    assert a.labels == ["20.61", "20.62", "20.63", "20.64"]
    assert len(set(a.labels)) == len(a.labels) and a.lo <= 20.612 and a.hi >= 20.634


@pytest.mark.parametrize(
    "lo, hi, labels",
    [
        (0, 0.09, ["0.00", "0.05", "0.10"]),
        (-0.3, 0.25, ["-0.4", "-0.2", "0.0", "0.2", "0.4"]),
        (0, 100, ["0", "50", "100"]),
        (250_000, 410_000, ["2.50e+05", "3.00e+05", "3.50e+05", "4.00e+05", "4.50e+05"]),
    ],
)
def test_ticks_are_round_steps_covering_the_values(lo, hi, labels):
    a = axis(lo, hi)
    assert a.labels == labels and a.lo <= lo and a.hi >= hi


def test_the_chart_prints_its_axes_ticks():
    svg = line_chart(
        "Held-out perplexity",
        "applied edits",
        "perplexity",
        [Series("perplexity", [(0, 20.612), (1, 20.634), (2, 20.62)])],
        y_from_zero=False,
        x_integer=True,
    )
    assert tick_labels(svg, "x") == ["0", "1", "2"]
    y = tick_labels(svg, "y")
    assert len(set(y)) == len(y) >= 3 and all(label.startswith("20.6") for label in y)
