"""Command line of the twin:

    python -m micn_twin score MODEL --export DIR [--split test] --out scores.csv [--torchscript F]
    python -m micn_twin torchscript MODEL --out model.pt

MODEL is a run directory, a checkpoint directory or a `.safetensors` file; DIR is what
`micn data export` wrote. `score` writes `sample,score` per sample of the split (the sample
numbers of `micn predict`); with `--torchscript F` it scores with that TorchScript file
instead of MODEL's weights.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from . import load, read_export, score
from .files import FileFormatError
from .model import ModelFileError


def write_atomically(path: Path, write):
    """Write through a temporary file beside `path`, renamed over it when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m micn_twin", description="PyTorch twin of micn's models")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score", help="score a split of `micn data export`'s output")
    s.add_argument("model", help="run directory, checkpoint directory or .safetensors file")
    s.add_argument("--export", required=True, help="directory written by `micn data export`")
    s.add_argument("--split", default="test", choices=["test", "valid", "train"])
    s.add_argument("--out", required=True, type=Path, help="CSV to write: sample,score")
    s.add_argument("--torchscript", type=Path, help="score with this TorchScript file instead")
    s.add_argument("--batch-size", type=int, default=4096)
    t = commands.add_parser("torchscript", help="save the model as TorchScript")
    t.add_argument("model", help="run directory, checkpoint directory or .safetensors file")
    t.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            net = torch.jit.load(str(args.torchscript)) if args.torchscript else load(args.model)
            batch = read_export(args.export, args.split)
            probs = score(net, batch, args.batch_size).tolist()
            lines = "sample,score\n" + "".join(f"{i},{p!r}\n" for i, p in zip(batch["sample"].tolist(), probs))
            write_atomically(args.out, lambda f: f.write(lines.encode()))
            print(f"scored {len(probs)} samples of {args.split} -> {args.out}")
        else:
            scripted = torch.jit.script(load(args.model))
            write_atomically(args.out, lambda f: torch.jit.save(scripted, f))
            print(f"TorchScript model -> {args.out}")
    except (FileFormatError, ModelFileError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
