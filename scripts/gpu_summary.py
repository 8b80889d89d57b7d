#!/usr/bin/env python3
"""Summarises a GPU bundle run (scripts/gpu_run.sh) into RESULTS_DIR/summary.md
and prints it. Standard library only: the GPU host has no packages to spare.

Reads, all under RESULTS_DIR and all optional:
  card.txt             nvidia-smi's line for the card
  libraries.txt        where run.sh found cuBLASLt
  steps.tsv            one `name<TAB>exit code<TAB>seconds<TAB>log` line per step
                       (exit code `skipped` past the run's time budget)
  criterion/**/new/{benchmark,estimates}.json
                       criterion's results; the id `<stage>/<impl>/<case>` is
                       benchmark.json's full_id, the time estimates.json's median
  peers/*.jsonl        peer scripts' JSON lines: {"stage","impl","case","median_us",...}

Per stage, one table: a row per (case, impl) with its median in µs and its
ratio to each peer of that stage on the same case, as peer time ÷ this time
(above 1: faster than that peer).

  gpu_summary.py RESULTS_DIR
"""
import json
import sys
from pathlib import Path


def criterion_results(root):
    """(stage, impl, case) -> median µs, from criterion's output folders."""
    found = {}
    if not root.is_dir():
        return found
    for estimates in sorted(root.glob("**/new/estimates.json")):
        meta = estimates.with_name("benchmark.json")
        try:
            full_id = json.loads(meta.read_text())["full_id"]
            median_ns = json.loads(estimates.read_text())["median"]["point_estimate"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"gpu_summary: skipping {estimates}: {e}", file=sys.stderr)
            continue
        parts = full_id.split("/", 2)
        if len(parts) != 3:
            print(f"gpu_summary: skipping id {full_id!r}: not <stage>/<impl>/<case>",
                  file=sys.stderr)
            continue
        found[tuple(parts)] = median_ns / 1e3
    return found


def peer_results(root):
    """(stage, impl, case) -> median µs, the set of peer (stage, impl)s, and
    the lines of rows that report an "error" instead of a time."""
    found, peers, errors = {}, set(), []
    if not root.is_dir():
        return found, peers, errors
    for path in sorted(root.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            line = line.strip()
            if not line.startswith("{"):
                continue  # a library's chatter on stdout
            try:
                row = json.loads(line)
                key = (str(row["stage"]), str(row["impl"]), str(row["case"]))
                if "error" in row and "median_us" not in row:
                    errors.append(f"- {'/'.join(key)}: {str(row['error'])[:160]}")
                    continue
                median = float(row["median_us"])
            except (ValueError, KeyError, TypeError) as e:
                print(f"gpu_summary: {path.name}:{n}: skipped ({e})", file=sys.stderr)
                continue
            found[key] = median
            peers.add(key[:2])
    return found, peers, errors


def fmt_us(us):
    return f"{us:.1f}" if us < 1000 else f"{us:.0f}"


def timing_tables(ours, theirs, peers):
    times = {**ours, **theirs}
    lines = []
    for stage in sorted({k[0] for k in times}):
        stage_peers = sorted(impl for s, impl in peers if s == stage)
        lines.append(f"### {stage}")
        lines.append("")
        head = ["case", "impl", "median µs"] + [f"vs {p}" for p in stage_peers]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        cases = sorted({k[2] for k in times if k[0] == stage})
        for case in cases:
            rows = sorted(
                ((impl, us) for (s, impl, c), us in times.items() if s == stage and c == case),
                # ours first, then the peers; each by time
                key=lambda r: ((stage, r[0]) in peers, r[1]),
            )
            for impl, us in rows:
                cells = [case, impl, fmt_us(us)]
                for p in stage_peers:
                    peer_us = times.get((stage, p, case))
                    if p == impl:
                        cells.append("—")
                    elif peer_us is None or us <= 0:
                        cells.append("")
                    else:
                        cells.append(f"{peer_us / us:.2f}×")
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def steps_table(path):
    if not path.is_file():
        return ["(no steps ran)", ""]
    lines = ["| step | exit | s | log |", "|---|---|---|---|"]
    for row in path.read_text().splitlines():
        fields = row.split("\t")
        if len(fields) == 4:
            name, rc, secs, log = fields
            mark = "" if rc in ("0", "skipped") else " **FAIL**"
            lines.append(f"| {name} | {rc}{mark} | {secs} | {log} |")
    lines.append("")
    return lines


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    results = Path(argv[1])
    card_file = results / "card.txt"
    card = card_file.read_text().strip() if card_file.is_file() else "unknown"
    ours = criterion_results(results / "criterion")
    theirs, peers, errors = peer_results(results / "peers")
    lines = [f"# GPU bundle run: {card}", ""]
    libraries = results / "libraries.txt"
    if libraries.is_file():
        lines += [libraries.read_text().strip(), ""]
    lines += steps_table(results / "steps.tsv")
    lines.append("## Timings (median; ratio = peer time ÷ this time, >1 is faster)")
    lines.append("")
    if ours or theirs:
        lines += timing_tables(ours, theirs, peers)
    else:
        lines += ["(no timings found)", ""]
    if errors:
        lines += ["Peer rows without a time:", ""] + errors + [""]
    text = "\n".join(lines)
    (results / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
