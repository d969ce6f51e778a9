"""Command line of the twin:

    python -m micn_twin score MODEL --export DIR [--split test] --out scores.csv [--torchscript F | --onnx F]
    python -m micn_twin torchscript MODEL --out model.pt
    python -m micn_twin onnx MODEL --out model.onnx [--history-length T]

MODEL is a run directory, a checkpoint directory (finished and undamaged, as micn requires) or a
`.safetensors` file; DIR is what `micn data export` wrote. `score` writes `sample,score` per
sample of the split (the sample numbers of `micn predict`); with `--torchscript F` or `--onnx F`
it scores with that file (TorchScript through torch, ONNX through onnxruntime) instead of
MODEL's weights. Before scoring, the export must be one `micn predict` would score the same way
with MODEL (`micn_twin.check_export`): MODEL's vocabulary sizes, the history length its run
trained with and, for `valid` and `train`, its validation share; a TorchScript or ONNX file must
hold MODEL's kind of model, vocabularies and weights (the digest it records), and was it made
from a run, that run's history length. `score` runs torch on the run's `train.threads` threads,
as `micn predict` does (`OMP_NUM_THREADS`, or torch's default, where the run leaves it at 0).
`torchscript` writes `torch.jit.script` of the model with what it was made from in the file's
extra file `micn.json` (`model_kind`, vocabulary sizes, `trained_history_length`, `weights`,
`source`); `onnx` writes the model for histories of T behaviours (the run's `data.max_hist_len`
by default), checked against the twin by onnxruntime first (see `micn_twin.onnx_file`).

Errors are one line, `error: <file or argument>: <what is wrong>`. The exit status is 3 for
what running again cannot fix (a bad argument or input file, a lasting write error of `--out`),
1 for other failures, 128 + the signal for a stop signal (SIGTERM, SIGINT, SIGHUP, unless
ignored when the command started); a closed standard output (`| head`) ends quietly with 141,
as a process that SIGPIPE ends. `--out` is written whole or not at all, through `.NAME.partial`
beside it, which a stop signal (SIGTERM, SIGINT, SIGHUP) removes and the next write replaces.
"""
import argparse
import contextlib
import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import torch

from . import check_export, check_vocabularies, history_length, load, read_export, read_export_info, run_config
from . import score, vocabulary_sizes, weights_digest
from .files import FileFormatError
from .model import ModelFileError
from .onnx_file import OnnxError, OnnxModel, export

# Exit status of a failure that running again cannot fix, as micn's.
EXIT_INPUT_ERROR = 3
# Exit status when standard output is a closed pipe: 128 + SIGPIPE.
EXIT_CLOSED_PIPE = 141
# OSError numbers that the same command would meet again (micn's `io_error::is_lasting`).
LASTING = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EROFS, errno.ENAMETOOLONG,
           errno.EEXIST, errno.EINVAL}
# The extra file of a TorchScript model that says what it was made from.
TORCHSCRIPT_INFO = "micn.json"
INPUT_ERRORS = (FileFormatError, ModelFileError, OnnxError, FileNotFoundError)


class UsageError(ValueError):
    """A command line that cannot work."""


class OutputError(Exception):
    """`--out` could not be written; the message names `--out`, not a temporary file."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"--out {path}: {error.strerror or error}")
        self.lasting = error.errno in LASTING


class ArgumentParser(argparse.ArgumentParser):
    """argparse with micn's one-line errors and exit status 3 for a bad command line."""

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)


def check_out(path: Path):
    """Refuse an `--out` that cannot be written as a file before any work: a directory, or a
    path under something that is not a directory."""
    if path.is_dir():
        raise UsageError(f"--out {path}: is a directory; name a file to write")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {path}: {parent} is not a directory")


def write_atomically(path: Path, write):
    """Write through `.NAME.partial` beside `path` (as micn names its own), renamed over it when
    complete (with the permissions a new file gets); a failure or a stop signal removes it, and
    what SIGKILL leaves the next write replaces. A link is followed (its target replaced); a
    device or a pipe (`/dev/stdout`) is written in place. A failure is an `OutputError` naming
    `path`; a closed pipe is a `BrokenPipeError`."""
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            with open(path, "wb") as f:
                write(f)
            return
        target = Path(os.path.realpath(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.partial"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(path, e) from None


def say(text: str):
    """Print a line to standard output, at once (a closed pipe raises here, not at exit)."""
    print(text, flush=True)


def load_torchscript(path: Path):
    """A TorchScript file (`python -m micn_twin torchscript`) and what it records (its extra file
    `micn.json`, else what the module itself holds), or an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TorchScript file")
    extra = {TORCHSCRIPT_INFO: ""}
    try:
        scripted = torch.jit.load(str(path), _extra_files=extra)
    except (RuntimeError, ValueError) as e:
        raise FileFormatError(f"{path}: not a TorchScript model: {first_line(e)}") from None
    try:
        info = json.loads(extra[TORCHSCRIPT_INFO] or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict):
        raise FileFormatError(f"{path}: its {TORCHSCRIPT_INFO} is not what `python -m micn_twin torchscript` writes")
    if "model_kind" not in info:  # written before the file recorded it: what the module holds
        info["model_kind"] = getattr(scripted, "kind", None)
        try:
            info.update(vocabulary_sizes(scripted))
        except (AttributeError, RuntimeError, IndexError):
            pass
    return scripted, info


def torchscript_info(net, model) -> str:
    """What a TorchScript file records of the model it holds: kind, vocabulary sizes, the
    history length its run trained with (None for a bare `.safetensors`), its weights' digest and
    where it was made from."""
    trained = history_length(model)
    return json.dumps({"model_kind": net.kind, **vocabulary_sizes(net), "trained_history_length": trained,
                       "weights": weights_digest(net), "source": os.path.realpath(model)})


def check_same_model(file: Path, command: str, recorded: dict, model, model_path):
    """A TorchScript or ONNX `file` (written by the twin's `command`) holds `model`: its kind,
    vocabularies and weights as the file `recorded` them (`model_kind`, sizes by `export.json`'s
    names, `weights`, `source`; what it does not record is not compared)."""
    fix = f"write one from the model: `python -m micn_twin {command} {model_path} --out FILE`"
    kind = recorded.get("model_kind")
    if kind is not None and kind != model.kind:
        raise FileFormatError(f"{file} holds a {kind} model, {model_path} a {model.kind}; {fix}")
    check_vocabularies(recorded, vocabulary_sizes(model), str(file), str(model_path), fix)
    weights = recorded.get("weights")
    if isinstance(weights, str) and weights != weights_digest(model):
        source = recorded.get("source")
        made = f" (it was made from {source})" if isinstance(source, str) else ""
        raise FileFormatError(f"{file} holds other weights than {model_path}{made}: its scores would be another "
                              f"model's; {fix}")


def recorded_length(file: Path, length) -> tuple:
    """The `(length, what)` check of `check_export` for a file that recorded its run's history length."""
    if not isinstance(length, int) or isinstance(length, bool):
        return ()
    return ((length, f"{file} was made from a model trained on histories of {length}"),)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def scoring_net(args, model, threads: Optional[int]):
    """What scores: MODEL's twin, or the `--torchscript` / `--onnx` file checked against MODEL
    (onnxruntime on `threads` threads where given); and the `(length, what)` checks of the
    history length the file records."""
    if args.torchscript:
        net, info = load_torchscript(args.torchscript)
        # The weights the file holds, where they can be read as the twin's are.
        try:
            info["weights"] = weights_digest(net)
        except (RuntimeError, TypeError, AttributeError):
            pass
        check_same_model(args.torchscript, "torchscript", info, model, args.model)
        return net, recorded_length(args.torchscript, info.get("trained_history_length"))
    if args.onnx:
        net = OnnxModel(args.onnx, threads=threads)
        recorded = {**(net.vocabularies or {}), "model_kind": net.model_kind, "weights": net.weights,
                    "source": net.source}
        check_same_model(args.onnx, "onnx", recorded, model, args.model)
        # Scores comparable with micn predict's need histories as long as the run trained on,
        # which a file for shorter ones cannot take.
        trained = history_length(args.model) or net.trained_history_length
        if net.history_length is not None and trained is not None and net.history_length < trained:
            raise FileFormatError(f"{args.onnx} takes histories of {net.history_length} behaviours, and the run of "
                                  f"{args.model} trained on {trained} (data.max_hist_len), which score compares "
                                  f"with micn predict at: write one for them: "
                                  f"`python -m micn_twin onnx {args.model} --out FILE`")
        return net, recorded_length(args.onnx, net.trained_history_length)
    return model, ()


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


def use_run_threads(model_path) -> Optional[int]:
    """torch's threads as `micn predict` sets libtorch's for the run: its `train.threads` where
    set (above 0), returned; else `OMP_NUM_THREADS`, which torch reads, or torch's default (None)."""
    train = (run_config(model_path) or {}).get("train", {})
    threads = train.get("threads", 0) if isinstance(train, dict) else 0
    if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0:
        torch.set_num_threads(threads)
        return threads
    return None


def run_score(args):
    """`score`: the checks of the module's documentation, then `sample,score` of every sample."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    threads = use_run_threads(args.model)
    model = load(args.model)
    info = read_export_info(args.export)
    net, lengths = scoring_net(args, model, threads)
    check_export(args.export, info, args.split, model, args.model, lengths)
    batch = read_export(args.export, args.split)
    check_ids(batch, model, args.export)
    try:
        probs = score(net, batch, args.batch_size).tolist()
    except RuntimeError as e:  # a TorchScript file that is not one of the twin's models
        if "allocate memory" in str(e) or "out of memory" in str(e):
            raise MemoryError(first_line(e)) from None
        raise FileFormatError(f"{args.torchscript or args.model}: cannot score the export: {first_line(e)}") from None
    lines = "sample,score\n" + "".join(f"{i},{p!r}\n" for i, p in zip(batch["sample"].tolist(), probs))
    write_atomically(args.out, lambda f: f.write(lines.encode()))
    say(f"scored {len(probs)} samples of {args.split} -> {args.out}")


def run_torchscript(args):
    """`torchscript`: `torch.jit.script` of the model, with what it was made from (`micn.json`)."""
    model = load(args.model)
    scripted = torch.jit.script(model)
    extra = {TORCHSCRIPT_INFO: torchscript_info(model, args.model)}
    write_atomically(args.out, lambda f: torch.jit.save(scripted, f, _extra_files=extra))
    say(f"TorchScript model -> {args.out}")


def run_onnx(args):
    """`onnx`: the model for histories of T, checked by onnxruntime before it is written."""
    trained = history_length(args.model)
    steps = args.history_length if args.history_length is not None else trained
    if steps is None:
        raise OnnxError(f"{args.model}: no run configuration beside it to take the history length from: "
                        f"give --history-length")
    net = load(args.model)
    data = export(net, steps, os.path.realpath(args.model), trained_history_length=trained)
    write_atomically(args.out, lambda f: f.write(data))
    say(f"ONNX model ({net.kind}, histories of {steps}, {len(data)} bytes, equal to the twin within 1e-5 in "
        f"onnxruntime) -> {args.out}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m micn_twin", description="PyTorch twin of micn's models")
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
    return parser


def fail(message: str, status: int) -> int:
    """Report `error: message` in one line on standard error; returns `status`."""
    print(f"error: {message}", file=sys.stderr)
    return status


# The signals that stop a command, its partial `--out` removed.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_on_signal(number, _frame):
    """A stop signal ends the command as an exception would (so that `--out`'s partial file is
    removed), with exit status 128 + the signal; further stop signals are ignored meanwhile."""
    for other in STOP_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise SystemExit(128 + number)


def main(argv=None) -> int:
    # A signal ignored by whoever started the command (`nohup`, a background job) stays ignored.
    for number in STOP_SIGNALS:
        if signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, stop_on_signal)
    try:
        args = build_parser().parse_args(argv)
        check_out(args.out)
        {"score": run_score, "torchscript": run_torchscript, "onnx": run_onnx}[args.command](args)
    except BrokenPipeError:
        # Standard output (or `--out`) is a pipe its reader closed: end quietly, and keep the
        # interpreter's last flush from reporting it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except (UsageError,) + INPUT_ERRORS as e:
        return fail(str(e), EXIT_INPUT_ERROR)
    except OutputError as e:
        return fail(str(e), EXIT_INPUT_ERROR if e.lasting else 1)
    except OSError as e:  # reading an input
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"{where}{e.strerror or e}", EXIT_INPUT_ERROR if e.errno in LASTING else 1)
    except MemoryError:
        return fail("out of memory: score a smaller --batch-size, or use a machine with more memory", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
