"""report.md, report.html and the console summary, all from one set of tables."""

from __future__ import annotations

from html import escape
from typing import Any

from warpserve.profiling import svg
from warpserve.profiling.ops import top_ops

Table = tuple[str, list[str], list[list[str]]]  # title, header, rows


def _ms(value: float) -> str:
    return f"{value:.3f}"


def latency_table(profile: dict[str, Any]) -> Table:
    header = ["version", "batch", "n", "p50 ms", "p90 ms", "p99 ms", "mean ms", "rows/s"]
    header += ["input p50", "compute p50", "output p50", "profiler overhead"]
    rows = []
    for version, record in profile["versions"].items():
        for size, b in record["batches"].items():
            s, steps = b["summary"], b["step_medians_ms"]
            rows.append(
                [version, size, str(s.get("n", 0))]
                + [_ms(s.get(k, 0.0)) for k in ("p50", "p90", "p99", "mean")]
                + [f"{b['throughput_rows_per_s']:.0f}"]
                + [_ms(steps.get(k, 0.0)) for k in ("input_staging", "compute", "output_staging")]
                + [f"x{b['profiling_overhead']:.2f}"]
            )
    return "Latency per run", header, rows


def comparison_table(comparison: dict[str, Any]) -> Table:
    header = ["batch", "verdict", "median", "p99", "p (slower)", "evidence"]
    rows = []
    for size, c in comparison["batches"].items():
        ratio = (
            [f"x{c['median_ratio']:.2f}", f"x{c['p99_ratio']:.2f}", f"{c['p_slower']:.2g}"]
            if c["candidate_n"] and c["verdict"] != "insufficient_data"
            else ["", "", ""]
        )
        rows.append([size, c["verdict"], *ratio, c["reason"]])
    title = f"Version {comparison['candidate_version']} against {comparison['baseline_version']}"
    return title, header, rows


def op_change_table(comparison: dict[str, Any]) -> Table:
    header = ["batch", "change", "op", "baseline us/run", "candidate us/run"]
    rows = []
    for size, change in comparison.get("ops", {}).items():
        for item in change["slower"]:
            before, after = f"{item['baseline_us']:.1f}", f"{item['candidate_us']:.1f}"
            rows.append([size, f"slower x{item['ratio']:.2f}", item["op"], before, after])
        for item in change["new"]:
            rows.append([size, "new", item["op"], "", f"{item['candidate_us']:.1f}"])
        for item in change["gone"]:
            rows.append([size, "gone", item["op"], f"{item['baseline_us']:.1f}", ""])
    return "Ops that changed", header, rows


def top_op_tables(profile: dict[str, Any]) -> list[Table]:
    tables = []
    for version, record in profile["versions"].items():
        ops = record.get("ops")
        if not ops:
            continue
        size = max(ops, key=int)
        rows = [[op, f"{us:.1f}", f"{ops[size][op]['calls']:.0f}"] for op, us in top_ops(ops[size])]
        title = f"Top ops, version {version}, batch {size} (self time per run)"
        tables.append((title, ["op", "self us/run", "calls/run"], rows))
    return tables


def tables(profile: dict[str, Any]) -> list[Table]:
    found = [latency_table(profile)]
    comparison = profile.get("comparison")
    if comparison and comparison.get("batches"):
        found += [comparison_table(comparison), op_change_table(comparison)]
    return found + top_op_tables(profile)


def headline(profile: dict[str, Any]) -> str:
    comparison = profile.get("comparison")
    name = f"model '{profile['model']}' version {profile['subject_version']}"
    if not comparison:
        return f"Profile of {name}"
    return (
        f"{name} against version {comparison['baseline_version']}: "
        f"**{comparison['verdict'].upper()}**: {comparison['reason']}"
    )


def _machine_line(profile: dict[str, Any]) -> str:
    m = profile.get("machine", {})
    libs = ", ".join(f"{k} {v}" for k, v in sorted(m.get("libraries", {}).items()))
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (
        f"{m.get('cpu_model', '?')}, {m.get('usable_cores', '?')} usable cores{gpu}, "
        f"host {m.get('hostname', '?')}, Python {m.get('python', '?')}; {libs}"
    )


def markdown(profile: dict[str, Any]) -> str:
    plan = profile.get("plan", {})
    interleaved = ", versions interleaved" if plan.get("interleaved") else ""
    lines = [
        f"## {headline(profile)}",
        "",
        f"- machine: {_machine_line(profile)}",
        f"- profiler: {profile.get('profiler', '?')}",
        f"- plan: {plan.get('iterations')} timed runs per version and batch size after "
        f"{plan.get('warmup')} warm-up runs{interleaved}",
        f"- peak RSS: {profile.get('memory', {}).get('peak_rss_mb', 0):.0f} MiB",
        "",
    ]
    for title, header, rows in tables(profile):
        lines += [f"### {title}", ""]
        if not rows:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def text(profile: dict[str, Any]) -> str:
    lines = [headline(profile).replace("**", ""), f"machine: {_machine_line(profile)}", ""]
    for title, header, rows in tables(profile):
        lines.append(title)
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(header)
        ]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append("")
    return "\n".join(lines)


def html(profile: dict[str, Any]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(headline(profile).replace('**', ''))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>",
        f"<h2>{escape(headline(profile).replace('**', ''))}</h2>",
        f"<p>machine: {escape(_machine_line(profile))}<br>profiler: "
        f"{escape(str(profile.get('profiler', '?')))}</p>",
        "<h3>Latency distribution per batch size</h3>",
    ]
    for size in profile["batch_sizes"]:
        series = [
            (f"version {v}", r["batches"].get(str(size), {}).get("latency_ms", []))
            for v, r in profile["versions"].items()
        ]
        parts.append(svg.latency_boxes(f"batch {size}: latency per run (ms)", series))
    for version, record in profile["versions"].items():
        ops = record.get("ops")
        if ops:
            size = max(ops, key=int)
            parts.append(
                svg.bars(f"top ops, version {version}, batch {size}", top_ops(ops[size]), "us")
            )
    for title, header, rows in tables(profile):
        parts.append(f"<h3>{escape(title)}</h3><table><tr>")
        parts.append("".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
