"""Where ONNX Runtime's int8 model spends its time: per-node kernel time, one thread -- the
counterpart of profile_model.py for the runtime tvm_mpq is compared with in runtimes.py.

    .venv/bin/python benchmarks/profile_ort.py --model mobilenet_v2
    .venv/bin/python benchmarks/profile_ort.py --model resnet18 --reduce-range --top 15

The model, calibration, quantization recipe (static QDQ, u8 activations, s8 per-channel weights)
and session settings are runtimes.py's (``load_case``, ``export_onnx``, ``quantize_qdq``,
``ort_session``), with ONNX Runtime's own profiler on; the table lists, per node of the optimized
graph, the median over ``--runs`` runs of its kernel time, with its op type and input shapes
(after ORT's layout transformation: NHWC for QLinearConv), then the totals per op type. Read it
next to ``TVM_NUM_THREADS=1 benchmarks/profile_model.py --model ... --configs w8a8``: the
kernels of a sequential network appear in the same order in both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtimes  # noqa: E402 - load_case / export_onnx / quantize_qdq / ort_session


def node_times(session_path: Path, case, threads: int, runs: int, workdir: Path) -> dict[str, tuple]:
    """{node name: (median us per run, op type, input shapes)} from ORT's profiler."""
    session = runtimes.ort_session(session_path, threads, profile_prefix=str(workdir / "ort_profile"))
    feed = dict(zip(case.input_names, case.timed))
    for _ in range(3):  # warm-up (dropped below: only the last ``runs`` calls of each node count)
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list] = defaultdict(list)
    info: dict[str, tuple] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        per_node[name].append(e["dur"])
        shapes = " ".join(
            "x".join(str(d) for d in next(iter(t.values()))) + ":" + next(iter(t))
            for t in e["args"].get("input_type_shape", []) if next(iter(t.values()), None)
        )
        info[name] = (e["args"].get("op_name", "?"), shapes)
    return {k: (float(np.median(v[-runs:])), *info[k]) for k, v in per_node.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2", choices=["mobilenet_v2", "resnet18", "minilm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights (ORT's reduce_range)")
    args = ap.parse_args()
    case = runtimes.load_case(args.model)
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_profile_ort_") as tmp:
        work = Path(tmp)
        runtimes.export_onnx(case, work / "fp32.onnx")
        src = work / "fp32.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(src), str(work / "pre.onnx"))
            src = work / "pre.onnx"
        except Exception as e:  # noqa: BLE001 - optional step, as in runtimes.py
            print(f"quant_pre_process failed ({runtimes._short(e, 80)}); quantizing the raw export")
        runtimes.quantize_qdq(src, work / "int8.onnx", case, reduce_range=args.reduce_range)
        rows = node_times(work / "int8.onnx", case, args.threads, args.runs, work)
    total = sum(r[0] for r in rows.values())
    recipe = "int8 QDQ" + (" reduce_range" if args.reduce_range else "")
    print(f"\n{args.model} ONNX Runtime {recipe}, {args.threads} thread(s): kernel time {total / 1e3:.2f} ms "
          f"per run (median of {args.runs}), {len(rows)} nodes (pid {os.getpid()})")
    for name, (us, op, shapes) in sorted(rows.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {us:9.0f} us  {op:18} {name[-44:]:44} {shapes[:100]}")
    by_op: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for us, op, _ in rows.values():
        by_op[op][0] += us
        by_op[op][1] += 1
    print("\n  per op type:")
    for op, (us, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0]):
        print(f"  {us:9.0f} us  x{n:<3} {op}")


if __name__ == "__main__":
    main()
