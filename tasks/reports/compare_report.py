"""Tables, a markdown summary and a self-contained HTML report of a comparison.

Everything here is computed from the comparison table as stored
(``tasks/reports/comparison.py``). The HTML page needs no network: its charts are SVG
drawn by the small script inlined below from the JSON data block embedded in
the page; when they are drawn the page sets ``data-charts`` on ``<body>``
(the number of charts) and ends its title with "(rendered)". Pure code.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.reports import comparison
from tasks.reports.comparison import LABELS, TOTALS_ROUND, nan_to_none

DATA_ID = "fedsilo-data"


def _value(frame: pd.DataFrame, **where: Any) -> float:
    """Return the one value of the rows matching ``where`` (NaN if none)."""
    mask = pd.Series(True, index=frame.index)
    for column, wanted in where.items():
        mask &= frame[column] == wanted
    chosen = frame.loc[mask, "value"]
    return float(chosen.iloc[0]) if len(chosen) else float("nan")


def report_data(frame: pd.DataFrame, notes: dict[str, Any]) -> dict[str, Any]:
    """Return what the charts and tables show, taken from the stored rows."""
    metric = notes["metric"]
    variants = comparison.present_variants(frame)
    silos = comparison.silo_order(frame)
    test = frame[(frame["split"] == "test") & (frame["metric"] == metric)]
    curves: dict[str, dict[str, list[list[float | None]]]] = {}
    for variant in variants:
        rows = test[(test["variant"] == variant) & (test["round"] > TOTALS_ROUND)]
        curves[variant] = {
            str(silo): [
                [int(r), nan_to_none(v)]
                for r, v in sorted(zip(group["round"], group["value"], strict=True))
            ]
            for silo, group in rows.groupby("silo")
        }
    finals = comparison.final_rows(frame)
    final_values: dict[str, dict[str, dict[str, float | None]]] = {}
    for variant in variants:
        rows = finals[(finals["variant"] == variant) & (finals["split"] == "test")]
        final_values[variant] = {
            silo: {
                m: nan_to_none(_value(rows, silo=silo, metric=m))
                for m in comparison.metric_names(notes["task"])
            }
            for silo in [*silos, "global"]
        }
    totals = frame[frame["round"] == TOTALS_ROUND]
    per_variant: dict[str, dict[str, dict[str, float | None]]] = {}
    for variant in variants:
        rows = totals[totals["variant"] == variant]
        per_variant[variant] = {
            silo: {
                m: nan_to_none(_value(rows, silo=silo, metric=m))
                for m in comparison.TOTALS
            }
            for silo in [*silos, "global"]
        }
    return {
        "federation": notes["federation"],
        "compare_id": notes["compare_id"],
        "metric": metric,
        "metrics": list(comparison.metric_names(notes["task"])),
        "variants": variants,
        "labels": {v: LABELS[v] for v in variants},
        "silos": silos,
        "curves": curves,
        "finals": final_values,
        "totals": per_variant,
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _bytes(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{round(value):,}"


def _rounds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "not reached"
    return str(int(value))


def metric_table(
    data: dict[str, Any], metric: str
) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows): the final test ``metric`` per silo and variant."""
    header = ["silo", *data["variants"]]
    rows = [
        [silo, *(_fmt(data["finals"][v][silo][metric]) for v in data["variants"])]
        for silo in [*data["silos"], "global"]
    ]
    return header, rows


def reach_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows): rounds to reach 95% of the final federated metric."""
    header = ["silo", *data["variants"]]
    rows = [
        [
            silo,
            *(
                _rounds(data["totals"][v][silo]["rounds_to_95pct"])
                for v in data["variants"]
            ),
        ]
        for silo in [*data["silos"], "global"]
    ]
    return header, rows


def traffic_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows): bytes up/down per silo and variant, raw size, ratio."""
    header = ["silo", "raw data bytes"]
    for variant in data["variants"]:
        header += [f"{variant} up", f"{variant} down"]
    header.append("federated / raw")
    rows = []
    for silo in [*data["silos"], "global"]:
        raw = data["totals"][data["variants"][0]][silo]["raw_bytes"]
        row = [silo, _bytes(raw)]
        for variant in data["variants"]:
            cell = data["totals"][variant][silo]
            row += [_bytes(cell["bytes_up"]), _bytes(cell["bytes_down"])]
        fed = data["totals"].get("federated", {}).get(silo, {})
        moved = (fed.get("bytes_up") or 0.0) + (fed.get("bytes_down") or 0.0)
        row.append(f"{moved / raw:.2f}" if raw else "-")
        rows.append(row)
    return header, rows


def wall_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows): the wall time of each variant, in seconds."""
    rows = [
        [v, _fmt(data["totals"][v]["global"]["wall_seconds"], 2)]
        for v in data["variants"]
    ]
    return ["variant", "wall seconds"], rows


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * (len(header) - 1) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Return a plain aligned table for a terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _skipped(notes: dict[str, Any]) -> list[str]:
    return [f"- {v} not run: {why}" for v, why in sorted(notes["skipped"].items())]


def markdown_summary(frame: pd.DataFrame, notes: dict[str, Any], report: str) -> str:
    """Return the Prefect artifact's markdown: the main tables and the report link."""
    data = report_data(frame, notes)
    metric = notes["metric"]
    lines = [
        f"# Should {notes['federation']} federate? "
        f"(comparison `{notes['compare_id']}`)",
        "",
    ]
    lines += [
        f"## Final test {metric}",
        "",
        *_markdown(*metric_table(data, metric)),
        "",
    ]
    lines += [f"## Rounds to reach 95% of the final federated {metric}", ""]
    lines += [*_markdown(*reach_table(data)), ""]
    lines += [
        "## Bytes sent per silo over the run",
        "",
        *_markdown(*traffic_table(data)),
    ]
    lines += ["", "## Wall time", "", *_markdown(*wall_table(data)), ""]
    lines += _skipped(notes)
    link = report if "://" in report else Path(report).resolve().as_uri()
    lines += ["", f"Report: [{report}]({link})"]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return (
        f'<table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;
color:#222;max-width:1100px}
h1{font-size:1.5em}
h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}.note{color:#555;font-size:.9em}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{border:1px solid #eee;padding:4px}
code{background:#f6f6f6;padding:1px 4px}
"""

# Draws every chart from the embedded JSON; written for this report, no library.
_SCRIPT = r"""
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = {federated: "#1f77b4", personalized: "#9467bd",
                local: "#ff7f0e", centralized: "#2ca02c",
                traffic: "#1f77b4", raw: "#888888"};
  var data = JSON.parse(document.getElementById("fedsilo-data").textContent);
  var drawn = 0;
  function el(name, attrs, parent, text) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function frame(host, width, height, title) {
    var svg = el("svg", {width: width, height: height, role: "img",
                         "class": "fedsilo-chart"}, null);
    el("title", {}, svg, title);
    el("text", {x: width / 2, y: 16, "text-anchor": "middle",
                "font-size": 13, "font-weight": "bold"}, svg, title);
    var box = document.createElement("div");
    box.className = "chart";
    box.appendChild(svg);
    host.appendChild(box);
    return svg;
  }
  function extent(values) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) {
      if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    });
    if (lo === Infinity) { return [0, 1]; }
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    var pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }
  function axes(svg, box, xs, ys, xlabel, ylabel, xticks) {
    el("line", {x1: box.l, y1: box.b, x2: box.r, y2: box.b, stroke: "#444"}, svg);
    el("line", {x1: box.l, y1: box.t, x2: box.l, y2: box.b, stroke: "#444"}, svg);
    for (var i = 0; i <= 4; i++) {
      var v = ys.lo + (ys.hi - ys.lo) * i / 4, y = ys.map(v);
      el("line", {x1: box.l - 4, y1: y, x2: box.r, y2: y, stroke: "#eee"}, svg);
      el("text", {x: box.l - 6, y: y + 4, "text-anchor": "end", "font-size": 10},
         svg, v.toPrecision(3));
    }
    (xticks || []).forEach(function (t) {
      el("text", {x: xs.map(t), y: box.b + 14, "text-anchor": "middle",
                  "font-size": 10}, svg, String(t));
    });
    el("text", {x: (box.l + box.r) / 2, y: box.b + 30, "text-anchor": "middle",
                "font-size": 11}, svg, xlabel);
    el("text", {x: 12, y: (box.t + box.b) / 2, "font-size": 11,
                transform: "rotate(-90 12 " + (box.t + box.b) / 2 + ")",
                "text-anchor": "middle"}, svg, ylabel);
  }
  function scale(lo, hi, a, b) {
    return {lo: lo, hi: hi,
            map: function (v) { return a + (v - lo) / (hi - lo) * (b - a); }};
  }
  function legend(svg, x, y, names) {
    names.forEach(function (name, i) {
      el("rect", {x: x, y: y + i * 15, width: 10, height: 10,
                  fill: COLORS[name] || "#000"}, svg);
      el("text", {x: x + 14, y: y + 9 + i * 15, "font-size": 10}, svg,
         data.labels[name] || name);
    });
  }
  function curves(host, silo, width, height, side) {
    var svg = frame(host, width, height,
                    (silo === "global" ? "all silos" : silo) + ": test " + data.metric);
    var box = {l: 48, r: width - 12 - (side || 0), t: 26, b: height - 40};
    var values = [], maxRound = 1;
    data.variants.forEach(function (v) {
      (data.curves[v][silo] || []).forEach(function (p) {
        values.push(p[1]); maxRound = Math.max(maxRound, p[0]);
      });
    });
    var e = extent(values);
    var xs = scale(1, Math.max(maxRound, 2), box.l + 6, box.r - 6);
    var ys = scale(e[0], e[1], box.b, box.t);
    var ticks = [1, Math.round(maxRound / 2), maxRound].filter(
      function (t, i, a) { return t >= 1 && a.indexOf(t) === i; });
    axes(svg, box, xs, ys, "round", data.metric, ticks);
    data.variants.forEach(function (v) {
      var pts = (data.curves[v][silo] || []).filter(
        function (p) { return p[1] !== null; });
      if (pts.length > 1) {
        el("polyline", {fill: "none", stroke: COLORS[v], "stroke-width": 2,
                        "class": "curve", "data-variant": v,
                        points: pts.map(function (p) {
                          return xs.map(p[0]) + "," + ys.map(p[1]); }).join(" ")}, svg);
      }
      pts.forEach(function (p) {
        el("circle", {cx: xs.map(p[0]), cy: ys.map(p[1]), r: pts.length > 1 ? 2 : 5,
                      fill: COLORS[v], "data-variant": v}, svg);
      });
    });
    return svg;
  }
  function bars(host, width, height, title, groups, series, value, colors, ylabel,
                fromZero, side) {
    var svg = frame(host, width, height, title);
    var box = {l: 64, r: width - 12 - side, t: 26, b: height - 40};
    var values = fromZero ? [0] : [];
    groups.forEach(function (g) {
      series.forEach(function (s) { values.push(value(g, s)); });
    });
    var e = extent(values);
    var lo = e[0];
    if (fromZero) {
      lo = Math.min.apply(null, values.filter(function (v) {
        return v !== null && isFinite(v); }).concat([0]));
    }
    var ys = scale(lo, e[1], box.b, box.t);
    axes(svg, box, null, ys, "", ylabel, []);
    var gw = (box.r - box.l) / groups.length, bw = gw * 0.8 / series.length;
    groups.forEach(function (g, i) {
      var x0 = box.l + i * gw + gw * 0.1;
      series.forEach(function (s, j) {
        var v = value(g, s);
        if (v === null || !isFinite(v)) { return; }
        var y = ys.map(Math.max(v, lo)), base = ys.map(lo);
        el("rect", {x: x0 + j * bw, y: Math.min(y, base), width: bw - 1,
                    height: Math.abs(base - y), fill: colors[s],
                    "class": "bar", "data-series": s, "data-group": g},
           svg).appendChild(document.createElementNS(NS, "title")).textContent =
           g + ", " + s + ": " + v;
      });
      el("text", {x: box.l + i * gw + gw / 2, y: box.b + 14, "text-anchor": "middle",
                  "font-size": 10}, svg, g);
    });
    return svg;
  }
  var curveHost = document.getElementById("curves");
  curves(curveHost, "global", 720, 300, 250);
  legend(curveHost.lastChild.firstChild, 480, 40, data.variants);
  drawn++;
  var siloHost = document.getElementById("silo-curves");
  data.silos.forEach(function (s) { curves(siloHost, s, 260, 200); drawn++; });
  var groups = data.silos.concat(["global"]);
  var barHost = document.getElementById("silo-bars");
  var colors = {};
  data.variants.forEach(function (v) { colors[v] = COLORS[v]; });
  var width = 100 * groups.length + 330;
  var svg = bars(barHost, width, 300,
                 "final test " + data.metric + " per silo", groups, data.variants,
                 function (g, v) { return data.finals[v][g][data.metric]; }, colors,
                 data.metric, false, 250);
  legend(svg, width - 250, 40, data.variants);
  drawn++;
  var fed = data.totals.federated;
  if (fed) {
    var traffic = bars(document.getElementById("traffic-bars"), width, 260,
      "federated bytes up+down vs raw data bytes", groups, ["traffic", "raw"],
      function (g, s) {
        var t = fed[g];
        return s === "raw" ? t.raw_bytes : (t.bytes_up || 0) + (t.bytes_down || 0);
      }, COLORS, "bytes", true, 250);
    data.labels.traffic = "federated traffic (up + down)";
    data.labels.raw = "raw training rows";
    legend(traffic, width - 250, 40, ["traffic", "raw"]);
    drawn++;
  }
  document.body.setAttribute("data-charts", String(drawn));
  document.title = document.title + " (rendered)";
})();
"""

_ONERROR = (
    "window.addEventListener('error',function(e){"
    "document.documentElement.setAttribute('data-error',String(e.message));});"
)


def render_html(frame: pd.DataFrame, notes: dict[str, Any]) -> str:
    """Return the self-contained HTML report of a stored comparison."""
    data = report_data(frame, notes)
    metric = notes["metric"]
    esc = html.escape
    title = f"fedsilo compare: {notes['federation']}"
    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<script>{_ONERROR}</script>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">Comparison <code>{esc(notes["compare_id"])}</code>: '
        f"model <code>{esc(notes['model'])}</code>, {notes['rounds']} rounds, "
        f"{len(notes['silos'])} silos, every variant scored on each silo's own "
        "test rows. Centralized is an upper bound that a real deployment cannot "
        "run (it pools the rows). Personalized is the last federated model "
        f"fine-tuned at each silo for {notes['personalize']['epochs']} "
        f"{esc(notes['personalize']['unit'])}; it never leaves the silo.</p>",
    ]
    if notes.get("command"):
        parts.append(
            f"<p class='note'>Made with <code>{esc(notes['command'])}</code></p>"
        )
    for line in _skipped(notes):
        parts.append(f"<p class='note'>{esc(line[2:])}</p>")
    parts += [
        f"<h2>Learning curves: test {esc(metric)} by round</h2>",
        '<div id="curves" class="charts"></div>',
        '<div id="silo-curves" class="charts"></div>',
        f"<h2>Final test {esc(metric)} per silo</h2>",
        '<div id="silo-bars" class="charts"></div>',
    ]
    for name in data["metrics"]:
        parts.append(f"<h3>test {esc(name)}</h3>")
        parts.append(_html_table(*metric_table(data, name), f"metric-{name}"))
    parts += [
        f"<h2>Rounds to reach 95% of the final federated {esc(metric)}</h2>",
        _html_table(*reach_table(data), "reach"),
        "<h2>Communication</h2>",
        "<p class='note'>Bytes sent to (down) and from (up) each silo over the "
        "whole run; raw data is the silo's training rows as float64 features "
        "and label. Local-only sends nothing; centralized uploads the raw rows "
        "once.</p>",
        '<div id="traffic-bars" class="charts"></div>',
        _html_table(*traffic_table(data), "traffic"),
        "<h2>Wall time</h2>",
        _html_table(*wall_table(data), "wall"),
        f'<script type="application/json" id="{DATA_ID}">{payload}</script>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def embedded_data(page: str) -> dict[str, Any]:
    """Return the JSON data block of a rendered report."""
    start_tag = f'<script type="application/json" id="{DATA_ID}">'
    start = page.index(start_tag) + len(start_tag)
    end = page.index("</script>", start)
    loaded: dict[str, Any] = json.loads(page[start:end].replace("<\\/", "</"))
    return loaded
