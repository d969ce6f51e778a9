"""Command line of the twin:

    python -m micn_twin score MODEL --export DIR [--split test] --out scores.csv [--torchscript F | --onnx F]
    python -m micn_twin torchscript MODEL --out model.pt
    python -m micn_twin onnx MODEL --out model.onnx [--history-length T]

MODEL is a run directory, a checkpoint directory or a `.safetensors` file; DIR is what
`micn data export` wrote. `score` writes `sample,score` per sample of the split (the sample
numbers of `micn predict`); with `--torchscript F` or `--onnx F` it scores with that file
(TorchScript through torch, ONNX through onnxruntime) instead of MODEL's weights; MODEL still
gives the vocabularies the export's ids are checked against and, for ONNX, the kind of model the
file must hold. `onnx`
writes the model for histories of T behaviours (the run's `data.max_hist_len` by default),
checked against the twin by onnxruntime first (see `micn_twin.onnx_file`).
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from . import history_length, load, read_export, score
from .files import FileFormatError
from .model import ModelFileError
from .onnx_file import OnnxError, OnnxModel, export


def write_atomically(path: Path, write):
    """Write through a temporary file beside `path`, renamed over it when complete (with the
    permissions a new file gets). A link is followed (its target replaced); a device or a pipe
    (`/dev/stdout`) is written in place. A failure names `path`."""
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            with open(path, "wb") as f:
                write(f)
            return
        target = Path(os.path.realpath(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def load_torchscript(path: Path):
    """A TorchScript file (`python -m micn_twin torchscript`), or an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TorchScript file")
    try:
        return torch.jit.load(str(path))
    except (RuntimeError, ValueError) as e:
        raise FileFormatError(f"{path}: not a TorchScript model: {str(e).splitlines()[0]}") from None


def check_ids(batch, model, export):
    """Every id of `batch` within the vocabularies `model` was trained with (else its scores
    would read another row, or none)."""
    emb = model.embeddings
    for name, table in (("users", emb.user), ("items", emb.item), ("cats", emb.cat),
                        ("hist_items", emb.item), ("hist_cats", emb.cat)):
        values = batch[name]
        if values.numel() and int(values.max()) >= table.shape[0]:
            raise FileFormatError(f"{export}: {name} holds id {int(values.max())}, beyond the model's "
                                  f"{table.shape[0]} entries (exported from another dataset?)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m micn_twin", description="PyTorch twin of micn's models")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score", help="score a split of `micn data export`'s output")
    s.add_argument("model", help="run directory, checkpoint directory or .safetensors file")
    s.add_argument("--export", required=True, help="directory written by `micn data export`")
    s.add_argument("--split", default="test", choices=["test", "valid", "train"])
    s.add_argument("--out", required=True, type=Path, help="CSV to write: sample,score")
    instead = s.add_mutually_exclusive_group()
    instead.add_argument("--torchscript", type=Path, help="score with this TorchScript file instead")
    instead.add_argument("--onnx", type=Path, help="score with this ONNX file instead (onnxruntime)")
    s.add_argument("--batch-size", type=int, default=4096)
    t = commands.add_parser("torchscript", help="save the model as TorchScript")
    t.add_argument("model", help="run directory, checkpoint directory or .safetensors file")
    t.add_argument("--out", required=True, type=Path)
    o = commands.add_parser("onnx", help="save the model as ONNX, checked against the twin by onnxruntime")
    o.add_argument("model", help="run directory, checkpoint directory or .safetensors file")
    o.add_argument("--out", required=True, type=Path)
    o.add_argument("--history-length", type=int,
                   help="the history length T the file takes (default: the run's data.max_hist_len)")
    args = parser.parse_args(argv)
    if str(args.out) in ("", "."):
        parser.error("--out must name a file")
    try:
        if args.command == "score":
            if args.batch_size < 1:
                raise FileFormatError(f"--batch-size {args.batch_size}: must be at least 1")
            model = load(args.model)
            if args.torchscript:
                net = load_torchscript(args.torchscript)
            elif args.onnx:
                net = OnnxModel(args.onnx)
                if net.model_kind not in (None, model.kind):
                    raise OnnxError(f"{args.onnx} holds a {net.model_kind} model, {args.model} a {model.kind}")
            else:
                net = model
            batch = read_export(args.export, args.split)
            check_ids(batch, model, args.export)
            probs = score(net, batch, args.batch_size).tolist()
            lines = "sample,score\n" + "".join(f"{i},{p!r}\n" for i, p in zip(batch["sample"].tolist(), probs))
            write_atomically(args.out, lambda f: f.write(lines.encode()))
            print(f"scored {len(probs)} samples of {args.split} -> {args.out}")
        elif args.command == "torchscript":
            scripted = torch.jit.script(load(args.model))
            write_atomically(args.out, lambda f: torch.jit.save(scripted, f))
            print(f"TorchScript model -> {args.out}")
        else:
            steps = args.history_length if args.history_length is not None else history_length(args.model)
            if steps is None:
                raise OnnxError(f"{args.model}: no run configuration beside it to take the history length from: "
                                f"give --history-length")
            net = load(args.model)
            data = export(net, steps, str(args.model))
            write_atomically(args.out, lambda f: f.write(data))
            print(f"ONNX model ({net.kind}, histories of {steps}, {len(data)} bytes, equal to the twin within "
                  f"1e-5 in onnxruntime) -> {args.out}")
    except (FileFormatError, ModelFileError, OnnxError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
