"""The human-readable table."""

from __future__ import annotations

from typing import Any


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _slower(ratio: float) -> str:
    return f"{1 / ratio:.1f}x slower" if ratio and ratio < 1 else ("faster" if ratio > 1 else "")


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Clarion benchmarks: {results['installation']}"
        + (f" (server {machine['postgresql']})" if "postgresql" in machine else "")
        + f", broker {machine['broker']}"
        + (f" (Redis {machine['redis']})" if "redis" in machine else "")
        + (f"; {machine['database_connections']}" if "database_connections" in machine else ""),
        f"machine: {machine['cpus']} x {machine['cpu_model']}, {machine['memory_gb']} GB, {machine['os']}, "
        f"Python {machine['python']}, Django {machine.get('django', '?')}, SQLite {machine['sqlite']}"
        + (" [quick]" if results.get("quick") else ""),
        f"load average (1 min) at start {machine['load_average_at_start']}, "
        f"at end {machine.get('load_average_at_end', '?')}",
        "",
    ]
    benchmarks = results["benchmarks"]
    if "ingest" in benchmarks:
        ing = benchmarks["ingest"]
        cfg = ing["config"]
        lines += [
            f"ingest: {cfg['requests_per_endpoint']:,} requests per endpoint in {cfg['rounds']} alternating round(s), "
            f"{cfg['concurrency']} connections, after {cfg['warmup_per_endpoint']} warm-up; one uvicorn worker",
            f"  {'endpoint':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/req':>18} {'SQL/req':>8}",
        ]
        for name, label in (("bare", "bare DRF (/bench/bare)"), ("trigger", "trigger (/api/v1/events/trigger)")):
            row = ing[name]
            lines.append(
                f"  {label:<30} {_fmt(row['requests_per_s']):>9} "
                f"{_fmt(row['p50_ms'], 2):>8} {_fmt(row['p99_ms'], 2):>8} "
                f"{_fmt(row['server_cpu_ms_per_request'], 2):>18} {ing['queries_per_request'][name]:>8}"
            )
        ratio = ing["ratio_trigger_over_bare"]
        cpu_ratio = ing["cpu_ratio_trigger_over_bare"]
        lines += [
            f"  ratio trigger/bare (req/s): {ratio:.3f}  ({_slower(ratio)})",
            f"  ratio trigger/bare (inverse server CPU per request): {cpu_ratio:.3f}  ({_slower(cpu_ratio)})",
            "",
        ]
    if "fanout" in benchmarks:
        fan = benchmarks["fanout"]
        cfg = fan["config"]
        lines += [
            f"fanout: {cfg['subscribers']:,} topic subscribers, one in_app step, chunk {cfg['fanout_chunk_size']}, "
            f"median of {cfg['repeats']} alternating run(s); push: no-op",
            f"  {'path':<46} {'seconds':>9} {'notifications/s':>16}",
        ]
        rows = [
            ("baseline (bulk_create Message + InboxMessage)", fan["baseline"]),
            ("clarion (process_event + advance_runs)", fan["clarion"]),
        ]
        for label, row in rows:
            lines.append(f"  {label:<46} {_fmt(row['seconds'], 2):>9} {_fmt(row['notifications_per_s']):>16}")
        ratio = fan["ratio_clarion_over_baseline"]
        lines.append(f"  ratio clarion/baseline (notifications/s): {ratio:.3f}  ({_slower(ratio)})")
        if "clarion_with_inmemory_push" in fan:
            push = fan["clarion_with_inmemory_push"]
            lines.append(
                f"  info: one clarion run with the real push to an in-memory layer took {push['seconds']:.2f} s, "
                f"{push['push_seconds']:.2f} s of it in the push ({push['push_share']:.0%})"
            )
        if "phases" in fan:
            lines.append("  phases of one clarion run (seconds; bulk_* nest inside the phases above them):")
            for name, value in fan["phases"].items():
                lines.append(f"    {name:<44} {value:8.2f}")
        lines.append("")
    if "digest" in benchmarks:
        dig = benchmarks["digest"]
        cfg = dig["config"]
        ingest_row, base_row, flush = dig["ingest"], dig["baseline"], dig["flush"]
        per_trigger = cfg["subscribers"] / ingest_row["median_trigger_seconds"]
        ratio = dig["ratio_clarion_over_baseline"]
        lines += [
            f"digest: {cfg['triggers']} triggers x {cfg['subscribers']:,} topic subscribers = "
            f"{cfg['entries']:,} events into {cfg['digests']:,} digests (window {cfg['window']}); push: no-op",
            f"  {'path (median per trigger)':<46} {'seconds':>9} {'entries/s':>12}",
            f"  {'baseline (bulk_create Run + DigestEntry)':<46} "
            f"{_fmt(base_row['median_seconds'], 3):>9} {_fmt(base_row['entries_per_s']):>12}",
            f"  {'clarion (process_event + advance_runs)':<46} "
            f"{_fmt(ingest_row['median_trigger_seconds'], 3):>9} {_fmt(per_trigger):>12}",
            f"  clarion ingest in all: {ingest_row['seconds']:.1f} s, {_fmt(ingest_row['entries_per_s'])} entries/s",
            f"  ratio clarion/baseline (entries/s): {ratio:.3f}  ({_slower(ratio)})",
            f"  flush of all {cfg['digests']:,} digests: {flush['seconds']:.1f} s "
            f"({_fmt(flush['digests_per_s'])} digests/s, {_fmt(flush['entries_per_s'])} entries/s)",
            "",
        ]
    return "\n".join(lines)
