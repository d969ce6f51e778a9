"""Serving speed of a trained micn model in the three forms the twin offers, on the same samples
and threads, in one run: PyTorch (eager), TorchScript and ONNX in onnxruntime.

    ~/.cache/micn/torch-2.11.0/bin/python bench/serving.py RUN --export DIR [--split test]
        [--threads 1] [--batch 1 --batch 256 --batch 4096] [--seconds 2] [--json]

RUN is a run or checkpoint directory, DIR what `micn data export` wrote (histories of the run's
length). Each form is built in memory (TorchScript by `torch.jit.script`, ONNX by the twin's own
checked export) and must give the eager twin's probabilities on the split's first 4,096 samples
(1e-5) before it is timed. Each batch size then scores consecutive slices of the split, one call
at a time, for at least `--seconds` after one warm-up call: samples/s and the median latency of
one call. Every call holds exactly that many samples (the split goes on from its start where a
slice runs past its end, and is repeated for a batch larger than itself).
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


# Exit status of an input or argument that running again cannot fix, as the twin's and micn's.
EXIT_INPUT_ERROR = 3


class ArgumentParser(argparse.ArgumentParser):
    """The twin's one-line argument errors and their status (its module, which has them, starts
    torch on import: that waits for `--threads`)."""

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--export", required=True)
    parser.add_argument("--split", default="test", choices=["test", "valid", "train"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads < 1 or not 0 < args.seconds < 3600 or any(b < 1 for b in args.batch or []):
        parser.error("--threads and --batch must be at least 1, --seconds within (0, 3600)")
    # Before torch and onnxruntime start their thread pools.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
    import torch
    import micn_twin
    from micn_twin.onnx_file import OnnxError, OnnxModel, TOLERANCE, export
    # The twin's statuses: 3 for what running again cannot fix, 1 for anything else.
    from micn_twin.__main__ import INPUT_ERRORS, LASTING

    torch.set_num_threads(args.threads)
    try:
        net = micn_twin.load(args.run)
        steps = micn_twin.history_length(args.run)
        if steps is None:
            raise micn_twin.FileFormatError(f"{args.run}: no run configuration (config.toml or state.json) beside it")
        # What `python -m micn_twin score` refuses (another dataset's export, histories cut to
        # another length, another validation share) would be timed on the wrong samples.
        micn_twin.check_export(args.export, micn_twin.read_export_info(args.export), args.split, net, args.run)
        batch = micn_twin.read_export(args.export, args.split)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_INPUT_ERROR if e.errno in LASTING else 1
    inputs = [batch[k] for k in micn_twin.INPUTS]
    n = inputs[0].shape[0]
    if n == 0:
        print(f"error: {args.export}/{args.split} holds no samples", file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        onnx = OnnxModel(export(net, steps, str(args.run)), "model.onnx")
    except OnnxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    forms = {"pytorch": net, "torchscript": torch.jit.script(net), "onnxruntime": onnx}
    head = [x[:4096] for x in inputs]
    with torch.no_grad():
        want = net(*head)
        for name, form in forms.items():
            worst = (form(*head) - want).abs().max().item()
            if not worst <= TOLERANCE:
                print(f"error: {name} differs from the twin by {worst}", file=sys.stderr)
                return 1
    rows = []
    for size in args.batch or [1, 256, 4096]:
        # Every call holds `size` samples: the split's samples one after another, round and round
        # (a call that would run past the end goes on from the start, as the samples repeated
        # make it: slices of them are views, no copy is timed).
        repeated = [torch.cat([x] * (1 + -(-size // n))) for x in inputs]
        for name, form in forms.items():
            latencies, start, done = [], 0, 0
            with torch.no_grad():
                form(*[x[:size] for x in repeated])  # warm-up
                began = time.perf_counter()
                while time.perf_counter() - began < args.seconds:
                    part = [x[start:start + size] for x in repeated]
                    t = time.perf_counter()
                    form(*part)
                    latencies.append(time.perf_counter() - t)
                    done += size
                    start = (start + size) % n
            elapsed = time.perf_counter() - began
            rows.append({"form": name, "batch": size, "samples": done, "samples_per_s": done / elapsed,
                         "median_ms": 1e3 * statistics.median(latencies), "calls": len(latencies)})
    if args.json:
        print(json.dumps({"model": net.kind, "threads": args.threads, "history_length": steps, "rows": rows}))
        return 0
    print(f"{net.kind}, histories of {steps}, {args.threads} thread(s), {n} samples of {args.split}")
    print(f"{'batch':>6} {'form':<12} {'samples/s':>11} {'median ms/call':>15}")
    for r in rows:
        print(f"{r['batch']:>6} {r['form']:<12} {r['samples_per_s']:>11,.0f} {r['median_ms']:>15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
