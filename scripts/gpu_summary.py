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
  bench-*.log          the benches' `dispatch: ID: host H us/call, GPU G us/call,
                       B of N samples host-bound` lines (benches/common)

Per stage, one table: a row per (case, impl) with its median in µs, its
TFLOP/s where the case names the work (attention: 4·B·H·N²·D from
`B7_H25_D128_N1025`; the projector's GEMMs from the config's dims), and its
ratio to the rows COMPARE pairs it with on the same case, as their time ÷
this time (above 1: faster than that row). A stage COMPARE does not name
compares our rows with each of its peers. Below the tables, the ids whose
GPU waited on the host in most samples: their median is the host's rate.

  gpu_summary.py RESULTS_DIR
"""
import fnmatch
import json
import re
import sys
from pathlib import Path

# Per stage, (pattern of an impl, the impls its row is compared with, each
# a name or a function of the row's impl); the first pattern that matches
# wins, and a row no pattern matches gets no ratio.
COMPARE = {
    "attention": [
        ("nvlm-*", ["torch-sdpa-cudnn", "torch-sdpa-flash", "torch-sdpa-efficient"]),
    ],
    "projector": [
        ("nvlm-front", ["torch-eager-shuffle-ln"]),
        ("nvlm-hopper-linear", ["torch-eager", "nvlm-exact-gelu"]),
        ("nvlm-*", ["torch-eager", "cublaslt-gemms-only"]),
        ("cublaslt-gemms-only", ["torch-linears-only"]),
        ("linear1-hopper-gelu", ["torch-linear1-gelu", "linear1-cublaslt-gelu-pass",
                                 "linear1-hopper-gelu-n256"]),
        ("linear1-hopper-gelu-*", ["torch-linear1-gelu", "linear1-cublaslt-gelu-pass"]),
        ("linear1-*", ["torch-linear1-gelu"]),
        ("linear2-hopper", ["torch-linear2", "linear2-cublaslt"]),
        ("linear2-*", ["torch-linear2"]),
    ],
    "preprocess": [
        ("nvlm-v?", ["torch-interpolate", "d2d-copy-floor"]),
        ("nvlm-v?-first-sight", [lambda impl: impl.removesuffix("-first-sight"),
                                 "torch-interpolate"]),
        ("nvlm-v?-host", ["h2d-copy-pageable", "pil-torchvision-cpu"]),
        ("nvlm-v?-pinned-*", ["h2d-copy-pinned", "pil-torchvision-cpu"]),
    ],
}

# The projector cases' dims: C, Linear 1's and Linear 2's outputs.
PROJECTOR_DIMS = {"NVLM-D-72B": (3200, 29568, 8192), "NVLM-D-34B": (3200, 20480, 7168)}


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


DISPATCH = re.compile(
    r"dispatch: (\S+): host ([\d.]+) us/call, GPU ([\d.]+) us/call, (\d+) of (\d+) samples host-bound")


def host_bound_ids(results):
    """Lines for the bench ids whose host queued a call in at least 90% of
    the time the GPU ran one, in most samples (the benches' `dispatch:`
    lines in the bench logs)."""
    lines = []
    for log in sorted(results.glob("bench-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = DISPATCH.fullmatch(line.strip())
            if m and 2 * int(m[4]) > int(m[5]):
                lines.append(f"- {m[1]}: host {m[2]} µs/call, GPU {m[3]} µs/call "
                             f"({m[4]} of {m[5]} samples)")
    return lines


def fmt_us(us):
    return f"{us:.1f}" if us < 1000 else f"{us:.0f}"


def flop(stage, impl, case):
    """The FLOPs one call does, where the case's name says; else None."""
    if stage == "attention":
        m = re.fullmatch(r"B(\d+)_H(\d+)_D(\d+)_N(\d+)", case)
        if m:
            b, h, d, n = map(int, m.groups())
            return 4 * b * h * n * n * d
    if stage == "projector":
        m = re.fullmatch(r"(.+)_T(\d+)", case)
        if m and m.group(1) in PROJECTOR_DIMS:
            c, h1, h2 = PROJECTOR_DIMS[m.group(1)]
            rows = int(m.group(2)) * 256
            linear1, linear2 = 2 * rows * 4 * c * h1, 2 * rows * h1 * h2
            if impl.startswith("linear1-") or impl == "torch-linear1-gelu":
                return linear1
            if impl.startswith("linear2-") or impl == "torch-linear2":
                return linear2
            if "front" in impl or "shuffle-ln" in impl:
                return None
            return linear1 + linear2
    return None


def compared_with(stage, impl, stage_peers, is_peer):
    for pattern, others in COMPARE.get(stage, []):
        if fnmatch.fnmatchcase(impl, pattern):
            return [other(impl) if callable(other) else other for other in others]
    if stage in COMPARE or is_peer:
        return []
    return stage_peers


def timing_tables(ours, theirs, peers):
    times = {**ours, **theirs}
    lines = []
    for stage in sorted({k[0] for k in times}):
        stage_peers = sorted(impl for s, impl in peers if s == stage)
        lines.append(f"### {stage}")
        lines.append("")
        lines.append("| case | impl | median µs | TFLOP/s | compared with (their time ÷ this) |")
        lines.append("|---|---|---|---|---|")
        cases = sorted({k[2] for k in times if k[0] == stage})
        for case in cases:
            rows = sorted(
                ((impl, us) for (s, impl, c), us in times.items() if s == stage and c == case),
                # ours first, then the peers; each by time
                key=lambda r: ((stage, r[0]) in peers, r[1]),
            )
            for impl, us in rows:
                work = flop(stage, impl, case)
                rate = f"{work / us * 1e-6:.1f}" if work and us > 0 else ""
                ratios = []
                for other in compared_with(stage, impl, stage_peers, (stage, impl) in peers):
                    other_us = times.get((stage, other, case))
                    if other_us is not None and us > 0:
                        ratios.append(f"{other} {other_us / us:.2f}×")
                lines.append(f"| {case} | {impl} | {fmt_us(us)} | {rate} | {', '.join(ratios)} |")
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
    lines.append("## Timings (median; a ratio above 1: this row is faster)")
    lines.append("")
    if ours or theirs:
        lines += timing_tables(ours, theirs, peers)
    else:
        lines += ["(no timings found)", ""]
    if errors:
        lines += ["Peer rows without a time:", ""] + errors + [""]
    bound = host_bound_ids(results)
    if bound:
        lines += ["Host-bound ids: the GPU waited on the host, so the median is the host's "
                  "rate, an upper bound on the GPU's work (expected where the id includes "
                  "the host's copies):", ""] + bound + [""]
    text = "\n".join(lines)
    (results / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
