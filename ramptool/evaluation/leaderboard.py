"""The leaderboard of ``ramptool benchmark``: models ranked by union accuracy, as markdown, JSON, CSV and one
self-contained HTML page (inline style and script, sortable by any column, nothing fetched from the network).

A row is one model: its accuracies with their 95% Wilson intervals (an upper bound marked as such), the threat
model it declares, its parameters, what its evaluation cost and where its numbers come from. A model that could
not be evaluated keeps its reason and is listed after the ranked ones.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from ramptool.evaluation.report import NORM_ORDER, display, eps_line, wilson_interval, write_json, write_text

LEADERBOARD_FILES = ("leaderboard.json", "leaderboard.md", "leaderboard.csv", "leaderboard.html")
UPPER_BOUND_MARK = "≤"


def ranked(rows: list[dict]) -> list[dict]:
    """Evaluated models by union accuracy, then clean accuracy, then name; failed ones after them, by name. Each
    evaluated row gets its rank (ties share one)."""
    done = sorted((row for row in rows if row["status"] == "ok"),
                  key=lambda row: (-row["accuracy"]["union"], -row["accuracy"]["clean"], row["name"]))
    failed = sorted((row for row in rows if row["status"] != "ok"), key=lambda row: row["name"])
    for position, row in enumerate(done):
        tied = position and row["accuracy"]["union"] == done[position - 1]["accuracy"]["union"]
        row["rank"] = done[position - 1]["rank"] if tied else position + 1
    for row in failed:
        row["rank"] = None
    return done + failed


def accuracy_keys(norms: list[str], corruptions: bool = False) -> list[str]:
    """union first (the ranking), then clean, the norms (linf, l2, l1 first) and the mean accuracy under common
    corruptions if it was measured."""
    ordered = [norm for norm in NORM_ORDER if norm in norms] + [norm for norm in norms if norm not in NORM_ORDER]
    return ["union", "clean", *ordered, *(["corruptions"] if corruptions else [])]


def columns(document: dict) -> list[str]:
    settings = document["settings"]
    return accuracy_keys(settings["norms"], settings.get("corruptions") is not None)


def with_intervals(accuracy: dict[str, float], n: int) -> dict[str, list[float]]:
    return {key: [round(bound, 6) for bound in wilson_interval(value, n)] for key, value in accuracy.items()}


def cost_unit(row: dict) -> str:
    return "GPU-seconds" if row["cost"]["device"].startswith("cuda") else "CPU-seconds"


def _percent(row: dict, key: str, with_interval: bool = False) -> str:
    value = row["accuracy"].get(key)
    if value is None:
        return "-"
    mark = UPPER_BOUND_MARK if key in row["upper_bounds"] else ""
    low, high = row["interval"][key]
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if with_interval else ""
    return f"{mark}{100 * value:.1f}{interval}"


def _weights(row: dict) -> str:
    return ", ".join(digest[:12] for digest in row["provenance"]["weights_sha256"]) or "-"


def settings_text(document: dict) -> str:
    settings = document["settings"]
    if settings["n"] is None:
        return "No model could be evaluated"
    cascade = (f"union-only cascade: {UPPER_BOUND_MARK} marks an upper bound (points broken in another norm are not "
               f"attacked again)" if settings["union_only"] else "full evaluation of every norm")
    request = settings.get("corruptions")
    corruptions = "" if request is None else (
        f"; corruptions: mean accuracy over {len(request['names'])} corruptions x "
        f"severities {','.join(map(str, request['severities']))} "
        f"({'pre-corrupted sets in ' + request['from'] if request['from'] else 'imagecorruptions'})")
    return (f"{document['attack']}, {settings['n']} {settings['dataset']} test points (fingerprint "
            f"{settings['points_fingerprint']}), eps {eps_line(settings['eps'])}; {cascade}{corruptions}; "
            f"accuracies in %, [95% Wilson interval]")


def title(document: dict) -> str:
    norms = ", ".join(display(norm) for norm in document["settings"]["norms"])
    return f"Leaderboard: {document['settings']['dataset']}, union of {norms}"


def _table_cells(row: dict, keys: list[str]) -> list[str]:
    return [str(row["rank"]), row["name"], *[_percent(row, key, key == "union") for key in keys],
            row["threat_model"], f"{row['parameters']:,}",
            f"{row['cost']['device_seconds']:.0f} {cost_unit(row)}",
            f"{row['cost']['forward_per_point']:.0f}", _weights(row)]


HEADERS = ["threat model (declared)", "parameters", "attack cost", "forwards/point", "weights sha256"]


def markdown(document: dict) -> str:
    keys = columns(document)
    rows = document["models"]
    header = ["rank", "model", *[display(key) for key in keys], *HEADERS]
    lines = [f"# {title(document)}", "", settings_text(document), "",
             "| " + " | ".join(header) + " |", "|---:|---|" + "---:|" * len(keys) + "---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(_table_cells(row, keys)) + " |" for row in rows if row["status"] == "ok"]
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["", "Not evaluated:", ""] + [f"- {row['name']} ({row['model']}): {row['reason']}" for row in failed]
    provenance = document["provenance"]
    lines += ["", f"ramptool {provenance['ramptool']}, torch {provenance['torch']}, autoattack "
                  f"{provenance['autoattack']}, {provenance.get('device', '')}, {provenance['date']}"]
    return "\n".join(lines) + "\n"


def csv_text(document: dict) -> str:
    """One line per model, numbers as fractions; ``<column>_upper_bound`` says which ones are upper bounds."""
    keys = columns(document)
    fields = ["rank", "name", "model", "status", "n", "union", "union_low", "union_high",
              "clean", *[f"{key}{suffix}" for key in keys[2:] for suffix in ("", "_upper_bound")],
              "threat_model", "parameters", "device", "processes", "seconds", "device_seconds", "forward_per_point",
              "backward_per_point", "weights_sha256", "points_fingerprint", "reason"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, lineterminator="\n")
    writer.writeheader()
    for row in document["models"]:
        line = {"rank": row["rank"], "name": row["name"], "model": row["model"], "status": row["status"],
                "reason": row.get("reason", "")}
        if row["status"] == "ok":
            low, high = row["interval"]["union"]
            line.update({"n": row["n"], "union": row["accuracy"]["union"], "union_low": low, "union_high": high,
                         "threat_model": row["threat_model"], "parameters": row["parameters"],
                         "weights_sha256": " ".join(row["provenance"]["weights_sha256"]),
                         "points_fingerprint": row["provenance"]["points_fingerprint"],
                         **{key: row["cost"][key] for key in ("device", "processes", "seconds", "device_seconds",
                                                              "forward_per_point", "backward_per_point")}})
            line["clean"] = row["accuracy"]["clean"]
            for key in keys[2:]:
                line[key] = row["accuracy"][key]
                line[f"{key}_upper_bound"] = key in row["upper_bounds"]
        writer.writerow(line)
    return buffer.getvalue()


# clicking a header sorts the rows by its cells' data-value (numbers as numbers; a second click reverses)
SORT_SCRIPT = """
document.querySelectorAll("#leaderboard th").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var body = document.querySelector("#leaderboard tbody");
    var descending = header.getAttribute("aria-sort") !== "descending";
    if (header.dataset.type === "text") { descending = header.getAttribute("aria-sort") === "ascending"; }
    document.querySelectorAll("#leaderboard th").forEach(function (other) { other.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var order = header.dataset.type === "text" ? x.localeCompare(y) : parseFloat(x) - parseFloat(y);
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f3f3f3; user-select: none; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
td.text, th.text { text-align: left; }
.interval { color: #777; font-size: 0.85em; }
code { font-size: 0.85em; }
"""


def _cell(value, shown: str, text: bool = False) -> str:
    align = ' class="text"' if text else ""
    return f'<td{align} data-value="{html.escape(str(value))}">{shown}</td>'


def html_page(document: dict) -> str:
    keys = columns(document)
    headers = [("rank", "number"), ("model", "text"), *[(display(key), "number") for key in keys],
               ("threat model (declared)", "text"), ("parameters", "number"), ("attack cost (s)", "number"),
               ("forwards/point", "number"), ("weights sha256", "text")]
    head = "".join(f'<th data-type="{kind}" class="{"text" if kind == "text" else "number"}">{html.escape(name)}</th>'
                   for name, kind in headers)
    body = []
    for row in document["models"]:
        if row["status"] != "ok":
            continue
        cells = [_cell(row["rank"], str(row["rank"])), _cell(row["name"], html.escape(row["name"]), text=True)]
        for key in keys:
            low, high = row["interval"][key]
            interval = f' <span class="interval">[{100 * low:.1f}, {100 * high:.1f}]</span>'
            cells.append(_cell(row["accuracy"][key], html.escape(_percent(row, key)) + interval))
        cells += [_cell(row["threat_model"], html.escape(row["threat_model"]), text=True),
                  _cell(row["parameters"], f"{row['parameters']:,}"),
                  _cell(row["cost"]["device_seconds"],
                        f"{row['cost']['device_seconds']:.0f} {cost_unit(row)}"),
                  _cell(row["cost"]["forward_per_point"], f"{row['cost']['forward_per_point']:.0f}"),
                  _cell(_weights(row), f"<code>{html.escape(_weights(row))}</code>", text=True)]
        body.append(f"<tr>{''.join(cells)}</tr>")
    failed = [f"<li>{html.escape(row['name'])} ({html.escape(row['model'])}): {html.escape(row['reason'])}</li>"
              for row in document["models"] if row["status"] != "ok"]
    failed_part = f"<h2>Not evaluated</h2><ul>{''.join(failed)}</ul>" if failed else ""
    provenance = html.escape(json.dumps(document["provenance"], default=str))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title(document))}'
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title(document))}</h1>"
            f"<p>{html.escape(settings_text(document))}. Click a header to sort.</p>"
            f'<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f"{failed_part}<p><small>provenance: <code>{provenance}</code></small></p>"
            f"<script>{SORT_SCRIPT}</script></body></html>\n")


def write_leaderboard(document: dict, out_dir) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"json": write_json(out_dir / "leaderboard.json", document),
            "markdown": write_text(out_dir / "leaderboard.md", markdown(document)),
            "csv": write_text(out_dir / "leaderboard.csv", csv_text(document)),
            "html": write_text(out_dir / "leaderboard.html", html_page(document))}
