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
"""
import json
import tomllib
from pathlib import Path
from typing import Optional

import torch

from .files import FileFormatError, read_export, read_npy, read_safetensors
from .model import ModelFileError, Network

# The inputs of `Network.forward`, in order.
INPUTS = ("users", "items", "cats", "hist_items", "hist_cats", "hist_mask")

__all__ = ["INPUTS", "FileFormatError", "ModelFileError", "Network", "history_length", "load", "model_config",
           "model_file", "read_export", "read_npy", "read_safetensors", "run_config", "score"]


def model_file(path) -> Path:
    """The weights file of a run directory, a checkpoint directory, or the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model file (give a run directory, a checkpoint directory or a "
                                f".safetensors file)")
    return path


def run_config(path) -> Optional[dict]:
    """The configuration of the run that made `path`: a run directory's `config.toml`, a
    checkpoint's `state.json`, or a `config.toml` beside a model file; `None` when there is none."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if (directory / "config.toml").is_file():
        source = directory / "config.toml"
    elif (directory / "state.json").is_file():
        source = directory / "state.json"
    else:
        return None
    try:
        text = source.read_text()
        if source.name == "state.json":
            text = json.loads(text)["config"]
        return tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError,
            tomllib.TOMLDecodeError) as e:
        raise FileFormatError(f"{source}: not a run's configuration ({type(e).__name__}: {e})") from None


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
    if not isinstance(value, int) or isinstance(value, bool):
        raise FileFormatError(f"{path}: data.max_hist_len = {value!r} is not a whole number")
    return value


def load(path) -> Network:
    """The trained model at `path` (see `model_file`), in evaluation mode."""
    file = model_file(path)
    return Network(read_safetensors(file), str(file), model_config(path)).eval()


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
