"""A PyTorch twin of micn's CTR models: load a trained micn model (`model.safetensors` of a run
or a checkpoint) as a `torch.nn.Module` that scores exactly as `micn predict` does, to serve it
with PyTorch or TorchScript.

    import micn_twin
    net = micn_twin.load("runs/quickstart")            # a run, a checkpoint or a .safetensors
    batch = micn_twin.read_export("export", "test")    # from `micn data export`
    probs = net(*(batch[k] for k in micn_twin.INPUTS))
    torch.jit.script(net).save("model.pt")

`micn_twin.onnx_file` writes the same model as an ONNX file, checked against the twin with
onnxruntime (`python -m micn_twin onnx`).

A checkpoint directory is read only when micn would load it (its `COMPLETE` marker, and each
file's size and checksum as `manifest.json` records them: `micn_twin.checkpoint`). `check_export`
refuses an export that `micn predict` would not score the same way with the model: another
dataset's vocabularies, histories cut to another length than the run trained with, or
another validation share (as `export.json` records it; inferred from the held-out count for an
export written before it did, see `check_valid_share`).
"""
import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Optional

import torch

from . import checkpoint
from .files import FileFormatError, read_export, read_export_info, read_npy, read_safetensors
from .model import ModelFileError, Network

# The inputs of `Network.forward`, in order.
INPUTS = ("users", "items", "cats", "hist_items", "hist_cats", "hist_mask")

__all__ = ["INPUTS", "FileFormatError", "ModelFileError", "Network", "check_export", "config_file", "history_length",
           "load", "model_config", "model_file", "read_export", "read_export_info", "read_npy", "read_safetensors",
           "run_config", "score", "trained_vocabularies", "valid_share", "weights_digest"]


def model_file(path) -> Path:
    """The weights file of a run directory, a checkpoint directory, or the file itself. A
    checkpoint (the directory, or a file in it) must be finished and undamaged
    (`checkpoint.verify`); a run, one that has finished, its model the file its summary records
    (`checkpoint.verify_run_model`; a model file given itself is checked where its summary is beside it)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    given_run = path.is_dir() and (directory / "config.toml").is_file()
    if path.is_dir():
        path = path / "model.safetensors"
    if path.name == "model.safetensors" and not path.is_file() and (directory / "config.toml").is_file():
        raise FileNotFoundError(checkpoint.unfinished_run(directory))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model file (give a run directory, a checkpoint directory or a "
                                f".safetensors file)")
    if checkpoint.is_checkpoint(directory) and path.name in checkpoint.FILES:
        checkpoint.verify(directory)
    elif given_run or (path.name == "model.safetensors" and (directory / "summary.json").is_file()):
        checkpoint.verify_run_model(directory)
    return path


def trained_vocabularies(path) -> Optional[str]:
    """The digest of the vocabularies the model at `path` was trained with, as micn records it (a
    checkpoint's `state.json`, a finished run's `summary.json`: `vocabularies`); `None` where
    there is none (a bare `.safetensors`, a run from before micn recorded it)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    for name in ("state.json", "summary.json"):
        try:
            digest = json.loads((directory / name).read_bytes()).get("vocabularies")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(digest, str):
            return digest
    return None


def weights_digest(net) -> str:
    """A digest of every weight and buffer of `net` (by name, dtype, shape and value): the same
    model gives the same digest wherever it is loaded from (its run or one of its checkpoints
    holding the same weights), another model another."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def config_file(path) -> Optional[Path]:
    """Where the configuration of the run that made `path` is: a run directory's `config.toml`, a
    checkpoint's `state.json`, or a `config.toml` beside a model file; `None` when there is none."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    for name in ("config.toml", "state.json"):
        if (directory / name).is_file():
            return directory / name
    return None


def run_config(path) -> Optional[dict]:
    """The configuration of the run that made `path` (see `config_file`); `None` when there is
    none. Its `[data]` and `[model]` are tables."""
    source = config_file(path)
    if source is None:
        return None
    try:
        text = source.read_text()
        if source.name == "state.json":
            text = json.loads(text)["config"]
        config = tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError,
            tomllib.TOMLDecodeError) as e:
        raise FileFormatError(f"{source}: not a run's configuration ({type(e).__name__}: {e})") from None
    for table in ("data", "model"):
        if not isinstance(config.get(table, {}), dict):
            raise FileFormatError(f"{source}: {table} = {config[table]!r} is not a table ([{table}])")
    return config


def model_config(path) -> Optional[dict]:
    """The `[model]` table of the run that made `path` (see `run_config`)."""
    config = run_config(path)
    return None if config is None else config.get("model", {})


def history_length(path) -> Optional[int]:
    """The history length the run that made `path` trained with (`data.max_hist_len`, whose
    default is 20); `None` without the run's configuration."""
    config = run_config(path)
    if config is None:
        return None
    value = config.get("data", {}).get("max_hist_len", 20)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FileFormatError(f"{config_file(path)}: data.max_hist_len = {value!r} is not a whole number >= 1")
    return value


def valid_share(path) -> Optional[float]:
    """The share of the training samples the run that made `path` held out for validation
    (`data.valid_share`, whose default is 0.1); `None` without the run's configuration."""
    config = run_config(path)
    if config is None:
        return None
    value = config.get("data", {}).get("valid_share", 0.1)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise FileFormatError(f"{config_file(path)}: data.valid_share = {value!r} is not a number in [0, 1)")
    return float(value)


def load(path) -> Network:
    """The trained model at `path` (see `model_file`), in evaluation mode."""
    file = model_file(path)
    return Network(read_safetensors(file), str(file), model_config(path), str(config_file(path))).eval()


def vocabulary_sizes(net) -> dict:
    """The entries of the user, item and category tables of `net` (a `Network` or its
    TorchScript form), by `export.json`'s names."""
    emb = net.embeddings
    return {"users": int(emb.user.shape[0]), "items": int(emb.item.shape[0]), "cats": int(emb.cat.shape[0])}


def check_vocabularies(have: dict, want: dict, what: str, model: str, fix: str):
    """`have` (sizes by `export.json`'s names) equal to `want` (the model's), else an error
    naming both: `what` holds `have`, `model` is the model."""
    for key, name in (("users", "user"), ("items", "item"), ("cats", "category")):
        if have.get(key) is not None and have[key] != want[key]:
            raise FileFormatError(f"{what}: its {name} vocabulary has {have[key]} entries, the model's ({model}) "
                                  f"{want[key]}: made from another dataset than the model was trained on; {fix}")


def check_export(export, info: dict, split: str, net, model, lengths=()):
    """Refuse an export (`read_export_info`'s `info` of directory `export`) whose samples
    `micn predict` would not score the same way with `net`, the `Network` loaded from `model`
    (its path, whose run's configuration is read):

    - another dataset's: a vocabulary size other than the model's tables', or vocabularies
      other than those the run recorded (their digest, where both the export and the run
      record it: a dataset prepared again, its ids in another order);
    - histories cut to another length than the run trained with (`data.max_hist_len`; also
      each `(length, what)` of `lengths`, what a TorchScript or ONNX file records);
    - for `valid` and `train`, another validation share than the run's `data.valid_share`
      (see `check_valid_share`).

    Without the run's configuration (a bare `.safetensors`) only the vocabularies are compared."""
    info_file = Path(export) / "export.json"
    fix = f"export the model's own: `{export_command(model, export)}`"
    check_vocabularies(info, vocabulary_sizes(net), str(info_file), str(model), fix)
    exported, trained_with = info.get("vocabularies"), trained_vocabularies(model)
    if isinstance(exported, str) and trained_with is not None and exported != trained_with:
        raise FileFormatError(f"{info_file}: exported from a dataset whose vocabularies (digest {exported}) are not "
                              f"those {model} was trained with ({trained_with}), though as large: its ids would "
                              f"mean other users, items or categories; {fix}")
    trained = history_length(model)
    if trained is not None:
        lengths = ((trained, f"{model}'s run trained on histories of {trained} (data.max_hist_len)"),) + tuple(lengths)
    for length, what in lengths:
        if info["max_hist_len"] != length:
            command = export_command(model, export, length)
            raise FileFormatError(f"{info_file}: histories cut to {info['max_hist_len']} behaviours (max_hist_len), "
                                  f"where {what}: the scores would differ from micn predict's; export them again with "
                                  f"`{command}`")
    share = valid_share(model)
    if split != "test" and share is not None:
        check_valid_share(export, info, share, str(model), export_command(model, export))


def export_command(model, export, length: Optional[int] = None) -> str:
    """The `micn data export` that writes into `export` the samples the run of `model` trained
    on (its `data.dir`, `data.max_hist_len` and `data.valid_share`), `DATA` where unknown or not
    found from here (said);
    `length` for the history length when the run does not say it."""
    config = run_config(model)
    if config is None:
        hist = "" if length is None else f" --max-hist-len {length}"
        return f"micn data export DATA{hist} --out {export}"
    data = config.get("data", {}).get("dir", "DATA")
    # A relative data.dir is relative to where the run trained, which may not be here.
    where = ""
    if not isinstance(data, str) or not (Path(data) / "dataset.json").is_file():
        where = f" (DATA: the run's data.dir, {data!r}{', relative to where it trained' if isinstance(data, str) else ''})"
        data = "DATA"
    return (f"micn data export {data} --max-hist-len {history_length(model)} --valid-share {valid_share(model)} "
            f"--out {export}{where}")


def check_valid_share(export, info: dict, share: float, model: str, command: str):
    """The export's `valid/` and `train/` hold out the samples the run's `data.valid_share`
    holds out. `export.json` records the share it was written with (`micn data export
    --valid-share`); for an export written before it did, the share is inferred: each sample
    (each user under the DIEN protocol) is held out with probability `share`, so the held-out
    count must lie within 5 standard deviations of `share` of them (0 exactly when `share` is 0)."""
    samples = info.get("samples", {})
    held, total, unit = samples.get("valid", 0), samples.get("train", 0) + samples.get("valid", 0), "samples"
    recorded = info.get("valid_share")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        differs = abs(recorded - share) > 1e-12
        said = f"holds out valid_share = {recorded}"
    else:
        if info.get("protocol") == "dien" and share > 0 and held > 0:
            (held, total), unit = held_out_users(export), "users"
        spread = 5 * math.sqrt(total * share * (1 - share)) + 1
        differs = (held > 0) != (share > 0) or abs(held - share * total) > spread
        said = f"holds out {held} of {total} training {unit}"
    if differs:
        raise FileFormatError(f"{Path(export) / 'export.json'}: {said} as valid/, where {model}'s run holds out "
                              f"data.valid_share = {share}: its valid/ and train/ are not the samples micn predict "
                              f"scores; export them again with `{command}`")


def held_out_users(export) -> tuple:
    """(users in `valid/`, users in `train/` and `valid/`): DIEN's protocol holds out users."""
    valid = set(read_npy(Path(export) / "valid" / "users.npy").tolist())
    train = set(read_npy(Path(export) / "train" / "users.npy").tolist())
    return len(valid), len(valid | train)


@torch.no_grad()
def score(net, batch, batch_size: int = 4096) -> torch.Tensor:
    """Click probabilities of every sample of `batch` (`read_export`'s dict), in order; `net` is
    a `Network`, its TorchScript form or an `onnx_file.OnnxModel`."""
    n = batch["items"].shape[0]
    parts = []
    for start in range(0, n, batch_size):
        part = [batch[k][start:start + batch_size] for k in INPUTS]
        parts.append(net(*part))
    return torch.cat(parts) if parts else torch.empty(0)
