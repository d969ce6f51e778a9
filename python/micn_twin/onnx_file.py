"""The twin as an ONNX file, to serve a trained model without PyTorch (onnxruntime, TensorRT,
Triton), and scoring with such a file.

`export` traces a `Network` with `torch.onnx.export` (torch.export underneath). The file takes
the inputs of `Network.forward` by their names (`INPUTS`) and gives `prob` `[batch]`. The batch
is a dynamic dimension; the history length T is fixed (DIEN's recurrent loops and MIND's
routing run once per behaviour, so their graphs are unrolled over T), and is the run's
`data.max_hist_len` unless told otherwise. Shorter histories are padded to T (padding 0, mask 0),
which changes no score.

The file records in its metadata the model kind (`micn.model_kind`), T (`micn.history_length`),
the vocabulary sizes (`micn.vocabularies`, JSON by `export.json`'s names), the digest of its
weights (`micn.weights`, `micn_twin.weights_digest`), where it was made from (`micn.source`)
and, when known, the history length the run trained with (`micn.trained_history_length`), so
that scoring with it can refuse another model's file, or an export it would score differently
from `micn predict`.

Before anything is written, onnxruntime runs the file on probe batches (1 and 64 samples of
random ids and history lengths 1..T) and its probabilities must equal the twin's to
`TOLERANCE`; a file that does not is refused. The graph is exported unoptimised: the exporter's
optimiser (onnxscript 0.7) takes MIND's `|s|² + 1e-9` for `|s|² + 0`, which makes an inactive
capsule's squash 0/0 (the check above caught it). onnxruntime optimises the graph when it loads it.
"""
import json
import logging
import os
import warnings
from typing import Dict, Optional

import torch

from . import INPUTS, vocabulary_sizes, weights_digest
from .model import Network

# The largest difference from the twin's probabilities an exported file may show.
TOLERANCE = 1e-5
# The longest history an exported graph takes (DIEN's and MIND's loops are unrolled over it).
MAX_HISTORY = 4096
# A protobuf message (an ONNX file without external data) holds at most 2 GiB.
PROTOBUF_LIMIT = (1 << 31) - 1


class OnnxError(ValueError):
    """An ONNX export that failed its check, or an ONNX file that cannot score the inputs given."""


def _require(module: str):
    """Import `module` (onnx, onnxscript, onnxruntime), or say how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise OnnxError(f"the Python package {module!r} is not installed in this Python: `bash cluster/setup-node.sh` "
                        f"installs onnx, onnxscript and onnxruntime into the set-up's torch") from None


def probe_batch(net: Network, size: int, history_length: int, seed: int) -> Dict[str, torch.Tensor]:
    """`size` samples of random ids within the model's vocabularies, each with a random history
    of 1..T real behaviours (left-aligned, padding 0)."""
    g = torch.Generator().manual_seed(seed)
    emb = net.embeddings
    users, items, cats = emb.user.shape[0], emb.item.shape[0], emb.cat.shape[0]
    lengths = torch.randint(1, history_length + 1, (size,), generator=g)
    lengths[0] = history_length  # at least one whole history
    mask = (torch.arange(history_length).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float32)
    real = mask.to(torch.int64)
    return {
        "users": torch.randint(0, users, (size,), generator=g),
        "items": torch.randint(1, max(items, 2), (size,), generator=g),
        "cats": torch.randint(0, cats, (size,), generator=g),
        "hist_items": torch.randint(1, max(items, 2), (size, history_length), generator=g) * real,
        "hist_cats": torch.randint(0, cats, (size, history_length), generator=g) * real,
        "hist_mask": mask,
    }


def export(net: Network, history_length: int, source: str = "model",
           trained_history_length: Optional[int] = None) -> bytes:
    """The serialised ONNX model of `net` for histories of `history_length`, checked against
    `net` by onnxruntime (see the module's documentation); `trained_history_length`, the run's
    `data.max_hist_len` when known, is recorded in its metadata."""
    if not 1 <= history_length <= MAX_HISTORY:
        raise OnnxError(f"history length {history_length}: must lie in [1, {MAX_HISTORY}] "
                        f"(the graph is unrolled over it)")
    onnx = _require("onnx")
    _require("onnxscript")
    example = probe_batch(net, 2, history_length, seed=0)
    batch = torch.export.Dim("batch")
    # The exporter warns about its own internals and about operators of packages that are not
    # installed (torchvision's): nothing the user can act on.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, tuple(example[k] for k in INPUTS), input_names=list(INPUTS),
                                    output_names=["prob"], dynamic_shapes={k: {0: batch} for k in INPUTS},
                                    dynamo=True, optimize=False, verbose=False)
        model = program.model_proto
    props = {
        "micn.model_kind": net.kind,
        "micn.history_length": str(history_length),
        "micn.vocabularies": json.dumps(vocabulary_sizes(net)),
        "micn.weights": weights_digest(net),
        "micn.source": source,
        "micn.inputs": "users, items, cats [batch] int64; hist_items, hist_cats [batch, T] int64 (left-aligned, "
                       "oldest first, padding 0); hist_mask [batch, T] float32 (1 = real behaviour)",
    }
    if trained_history_length is not None:
        props["micn.trained_history_length"] = str(trained_history_length)
    onnx.helper.set_model_props(model, props)
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise OnnxError(f"{source}: the ONNX model would take {size} bytes, more than one ONNX file holds (2 GiB)")
    data = model.SerializeToString()
    onnx.checker.check_model(data)
    worst = check(OnnxModel(data), net, history_length)
    if not worst <= TOLERANCE:
        differ = ("(or the twin's) are not all finite" if worst != worst
                  else f"differ from the twin's by up to {worst:.3g}")
        raise OnnxError(f"{source}: on probe batches onnxruntime's probabilities {differ} (the tolerance is "
                        f"{TOLERANCE}); the ONNX file was not written")
    return data


@torch.no_grad()
def check(model: "OnnxModel", net: Network, history_length: int) -> float:
    """The largest difference between `model`'s and `net`'s probabilities on probe batches of 1
    and 64 samples (NaN when either gives a non-finite one)."""
    worst = 0.0
    for size, seed in ((1, 1), (64, 2)):
        probe = probe_batch(net, size, history_length, seed)
        inputs = [probe[k] for k in INPUTS]
        got, want = model(*inputs), net(*inputs)
        if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
            return float("nan")
        worst = max(worst, (got.double() - want.double()).abs().max().item())
    return worst


class OnnxModel:
    """An ONNX file of `export` run by onnxruntime on the CPU, called as a `Network` is:
    `model(users, items, cats, hist_items, hist_cats, hist_mask)` → probabilities. Histories
    narrower than the file's T are padded to it; wider ones are refused."""

    def __init__(self, model, name: str = "model.onnx", threads: Optional[int] = None):
        """`model`: a path or the serialised bytes; `threads`: onnxruntime's (else
        `OMP_NUM_THREADS`, else its default)."""
        ort = _require("onnxruntime")
        self.name = str(name if isinstance(model, bytes) else model)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: not the constant folding it skips
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        if threads is None and from_env.isdigit():
            threads = int(from_env)
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        # A failed run is reported once, as an `OnnxError`, not also in onnxruntime's log.
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise OnnxError(f"{self.name}: onnxruntime cannot load it: {e}") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUTS):
            raise OnnxError(f"{self.name}: inputs {names}, not those of a micn twin ({', '.join(INPUTS)})")
        width = self.session.get_inputs()[INPUTS.index("hist_items")].shape[1]
        self.history_length: Optional[int] = width if isinstance(width, int) else None
        # What `export` recorded (None for a file made elsewhere or before it was recorded).
        meta = self.session.get_modelmeta().custom_metadata_map
        self.model_kind: Optional[str] = meta.get("micn.model_kind")
        self.vocabularies: Optional[Dict[str, int]] = self._recorded(meta, "micn.vocabularies", dict)
        self.trained_history_length: Optional[int] = self._recorded(meta, "micn.trained_history_length", int)
        self.weights: Optional[str] = meta.get("micn.weights")
        self.source: Optional[str] = meta.get("micn.source")

    def _recorded(self, meta: Dict[str, str], key: str, kind: type):
        """The JSON value of metadata `key` (None when absent), which must be a `kind`."""
        if key not in meta:
            return None
        try:
            value = json.loads(meta[key])
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise OnnxError(f"{self.name}: metadata {key} = {meta[key]!r} is not what `python -m micn_twin onnx` "
                            f"writes")
        return value

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = dict(zip(INPUTS, inputs))
        width, fixed = feed["hist_items"].shape[1], self.history_length
        if fixed is not None and width != fixed:
            if width > fixed:
                raise OnnxError(f"{self.name} takes histories of {fixed} behaviours; these have {width} "
                                f"(export them with `micn data export --max-hist-len {fixed}`)")
            pad = (0, fixed - width)
            for k in ("hist_items", "hist_cats", "hist_mask"):
                feed[k] = torch.nn.functional.pad(feed[k], pad)
        arrays = {k: v.contiguous().numpy() for k, v in feed.items()}
        try:
            probs = self.session.run(["prob"], arrays, self.run_options)[0]
        except Exception as e:  # onnxruntime raises its own exception types
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise OnnxError(f"{self.name}: onnxruntime cannot score these inputs: {why}") from None
        return torch.from_numpy(probs)

