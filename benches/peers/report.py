"""Formats the results of benches/compare.sh as Markdown tables.

Usage: report.py RESULTS_TSV MEMORY_TSV CLK_TCK

RESULTS_TSV rows: table, scenario, server, config, round, server CPU ticks over the whole cell,
summary JSON path, CPU samples path. The samples file has "unix-ms ticks" lines. The server's
CPU time over the load's steady window (after the ramp, up to the deadline) is interpolated
from them. The rates are the steady-window rates of the summary.
MEMORY_TSV rows: connections, server, state, RSS before and loaded (KiB), VmSize before and
loaded (KiB), connections opened.
Cells run more than once report the median of their rounds.
"""

import json
import statistics
import sys
from collections import defaultdict

PEER_ORDER = ["framegate", "fastwebsockets", "tungstenite", "bun-uws", "node-ws"]


def ticks_at(samples, unix_ms):
    """Interpolates the CPU tick count at unix_ms from (ms, ticks) samples."""
    if not samples:
        return None
    if unix_ms <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in zip(samples, samples[1:]):
        if t0 <= unix_ms <= t1:
            return v0 + (v1 - v0) * (unix_ms - t0) / max(t1 - t0, 1)
    return samples[-1][1]


def read_samples(path):
    samples = []
    try:
        with open(path) as lines:
            for line in lines:
                parts = line.split()
                if len(parts) == 2:
                    samples.append((int(parts[0]), float(parts[1])))
    except OSError:
        pass
    return samples


def load_cells(path, clk_tck):
    cells = defaultdict(list)
    with open(path) as rows:
        for line in rows:
            table, scenario, server, config, _round, ticks, summary_path, samples_path = line.rstrip("\n").split("\t")
            try:
                with open(summary_path) as handle:
                    summary = json.load(handle)
            except (OSError, ValueError):
                continue
            connect = summary["run"]["scenario"] == "connect"
            steady = summary["steady"]
            work = steady["handshakes"] if connect else steady["messages_received"]
            samples = read_samples(samples_path)
            start = ticks_at(samples, steady["from_unix_ms"])
            end = ticks_at(samples, steady["to_unix_ms"])
            window_ticks = end - start if start is not None and end is not None else float(ticks)
            cpu_us = window_ticks * 1e6 / clk_tck
            cells[(table, scenario, server, config)].append(
                {
                    "rate": steady["handshakes_per_sec"] if connect else steady["messages_per_sec"],
                    "p99": summary["connect_latency_us" if connect else "latency_us"]["p99"],
                    "cpu": cpu_us / work if work else float("nan"),
                    "errors": summary["error_total"],
                    "connect": connect,
                }
            )
    merged = {}
    for key, runs in cells.items():
        merged[key] = {
            "rate": statistics.median(run["rate"] for run in runs),
            "p99": statistics.median(run["p99"] for run in runs),
            "cpu": statistics.median(run["cpu"] for run in runs),
            "errors": sum(run["errors"] for run in runs),
            "connect": runs[0]["connect"],
            "rounds": len(runs),
        }
    return merged


def unit(cell):
    return ("handshakes/s", "connect p99 µs", "CPU µs/handshake") if cell["connect"] else ("msg/s", "p99 µs", "CPU µs/msg")


def peers_table(cells):
    scenarios = []
    for (table, scenario, _server, _config) in cells:
        if table == "peers" and scenario not in scenarios:
            scenarios.append(scenario)
    lines = []
    for scenario in scenarios:
        rows = {server: cell for (table, name, server, _), cell in cells.items() if table == "peers" and name == scenario}
        if not rows:
            continue
        rate_name, p99_name, cpu_name = unit(next(iter(rows.values())))
        lines.append(f"\n**{scenario}**\n")
        lines.append(f"| server | {rate_name} | {p99_name} | server {cpu_name} | errors |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for server in [name for name in PEER_ORDER if name in rows]:
            cell = rows[server]
            lines.append(f"| {server} | {cell['rate']:,.0f} | {cell['p99']:,.0f} | {cell['cpu']:.2f} | {cell['errors']} |")
        peers = [cell for server, cell in rows.items() if server != "framegate"]
        framegate = rows.get("framegate")
        if framegate and peers:
            best_rate = max(cell["rate"] for cell in peers)
            best_p99 = min(cell["p99"] for cell in peers)
            best_cpu = min(cell["cpu"] for cell in peers)
            lines.append(
                f"| framegate / best peer | {framegate['rate'] / best_rate:.2f}× | "
                f"{framegate['p99'] / best_p99:.2f}× | {framegate['cpu'] / best_cpu:.2f}× | |"
            )
    return "\n".join(lines)


def checks_table(cells):
    lines = [
        "| scenario | framegate configuration | rate | p99 µs | server CPU µs per message or handshake | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (table, scenario, _server, config), cell in cells.items():
        if table != "checks":
            continue
        rate_name = unit(cell)[0]
        lines.append(
            f"| {scenario} | {config} | {cell['rate']:,.0f} {rate_name} | {cell['p99']:,.0f} | {cell['cpu']:.2f} | {cell['errors']} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def memory_table(path):
    lines = [
        "| connections | server | state | RSS before MiB | RSS with connections MiB | RSS KiB per connection | connections open |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    try:
        rows = open(path).read().splitlines()
    except OSError:
        rows = []
    for line in rows:
        # VmSize is recorded but not shown: glibc reserves 64 MiB of address space per thread
        # arena up front, so it hardly moves with the connection count.
        count, server, state, base, loaded, _vbase, _vloaded, opened = line.split("\t")
        opened_count = int(float(opened or 0))
        if not opened_count:
            lines.append(f"| {int(count):,} | {server} | {state} | | | | 0 |")
            continue
        rss = (int(loaded) - int(base)) / opened_count
        lines.append(
            f"| {int(count):,} | {server} | {state} | {int(base) / 1024:.1f} | {int(loaded) / 1024:.1f} "
            f"| {rss:.1f} | {opened_count:,} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def main():
    results, memory, clk_tck = sys.argv[1], sys.argv[2], float(sys.argv[3])
    cells = load_cells(results, clk_tck)
    sections = [
        ("Peers (echo, no auth, no JSON checks)", peers_table(cells)),
        ("framegate with its checks on", checks_table(cells)),
        ("Resident memory per idle connection", memory_table(memory)),
    ]
    for title, body in sections:
        if body:
            print(f"\n### {title}\n{body}")


if __name__ == "__main__":
    main()
