"""Readers for the files micn writes, with torch only: a model's `.safetensors`, and the NumPy
`.npy` arrays and `export.json` (vocabulary sizes, history length, sample counts) of `micn data
export`. Each error names the file and what is wrong in it."""
import json
import struct
from pathlib import Path
from typing import Dict

import torch

# safetensors dtype name -> torch dtype (those micn writes, and the common others).
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# NumPy descr -> torch dtype (little-endian only: micn writes little-endian).
_NPY_DTYPES = {
    "<f4": torch.float32,
    "<f8": torch.float64,
    "<i8": torch.int64,
    "<i4": torch.int32,
    "|u1": torch.uint8,
    "|b1": torch.bool,
}


class FileFormatError(ValueError):
    """A file that is not what it claims to be; the message names the file."""


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _whole(value) -> bool:
    """A JSON number that counts something: a non-negative integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(path: Path, name: str, entry) -> tuple:
    """One tensor's (dtype, shape, begin, end) from a safetensors header, or an error naming it."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise FileFormatError(f"{path}: tensor {name!r} lacks its dtype, shape or data_offsets")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    dtype = _SAFETENSORS_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise FileFormatError(f"{path}: tensor {name!r} has unknown dtype {dtype_name!r}")
    if not isinstance(shape, list) or not all(_whole(s) for s in shape):
        raise FileFormatError(f"{path}: tensor {name!r} has shape {shape!r}, not a list of sizes (integers >= 0)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets):
        raise FileFormatError(f"{path}: tensor {name!r} has data_offsets {offsets!r}, not two byte offsets "
                              f"(integers >= 0)")
    return dtype, shape, offsets[0], offsets[1]


def read_safetensors(path) -> Dict[str, torch.Tensor]:
    """Every tensor of a `.safetensors` file by name (copies, on the CPU). The header is checked
    entry by entry (a dtype, a shape of sizes, two byte offsets within the file that hold
    exactly the shape's values), so that a damaged file is refused naming the tensor."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise FileFormatError(f"{path}: {len(data)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise FileFormatError(f"{path}: header length {header_len} exceeds the file")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: header is not JSON: {e}") from None
    start = 8 + header_len
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: the header is not a JSON object of tensors")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _tensor_entry(path, name, entry)
        elements = 1
        for s in shape:
            elements *= s
        if begin > end or start + end > len(data) or end - begin != elements * _element_size(dtype):
            raise FileFormatError(f"{path}: tensor {name!r} has byte range {begin}..{end}, which does not hold "
                                  f"{shape} values of {entry['dtype']} within the file")
        raw = bytearray(data[start + begin : start + end])
        tensors[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape) if elements else torch.empty(shape, dtype=dtype)
    return tensors


def read_npy(path) -> torch.Tensor:
    """One `.npy` array (format 1.x or 2.x, little-endian, C order) as a tensor."""
    path = Path(path)
    data = path.read_bytes()
    if data[:6] != b"\x93NUMPY":
        raise FileFormatError(f"{path}: not a NumPy .npy file (bad magic)")
    if len(data) < 12:
        raise FileFormatError(f"{path}: {len(data)} bytes, too short for a .npy header")
    major = data[6]
    if major == 1:
        (header_len,), offset = struct.unpack("<H", data[8:10]), 10
    elif major in (2, 3):
        (header_len,), offset = struct.unpack("<I", data[8:12]), 12
    else:
        raise FileFormatError(f"{path}: .npy format version {major} is not supported")
    header = data[offset : offset + header_len].decode("latin1")
    try:
        import ast

        fields = ast.literal_eval(header)
        descr, fortran, shape = fields["descr"], fields["fortran_order"], tuple(fields["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise FileFormatError(f"{path}: unreadable .npy header {header.strip()!r}: {e}") from None
    if not all(_whole(s) for s in shape):
        raise FileFormatError(f"{path}: shape {shape!r} in the .npy header is not a tuple of sizes")
    if fortran:
        raise FileFormatError(f"{path}: Fortran-ordered arrays are not supported")
    dtype = _NPY_DTYPES.get(descr) if isinstance(descr, str) else None
    if dtype is None:
        raise FileFormatError(f"{path}: dtype {descr!r} is not supported")
    elements = 1
    for s in shape:
        elements *= s
    body = data[offset + header_len :]
    if len(body) != elements * _element_size(dtype):
        raise FileFormatError(f"{path}: {len(body)} bytes of data for shape {shape} of {descr}")
    if elements == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(body), dtype=dtype).reshape(shape)


def read_export(directory, split: str = "test") -> Dict[str, torch.Tensor]:
    """One split of `micn data export`'s output, with `hist_mask` (float, 1 = real behaviour)
    made from `hist_len`: `sample` (each sample's index in its archive, as `micn predict`
    numbers them), `users`, `items`, `cats`, `hist_items`, `hist_cats`, `hist_mask`, `labels`."""
    split_dir = Path(directory) / split
    if not split_dir.is_dir():
        hint = ("`micn data export --valid-share S` holds some out" if split == "valid"
                else "run `micn data export`")
        raise FileFormatError(f"{split_dir}: no such split in the export ({hint})")
    arrays = {name: read_npy(split_dir / f"{name}.npy")
              for name in ("sample", "users", "items", "cats", "hist_items", "hist_cats", "hist_len", "labels")}
    n = arrays["sample"].shape[0] if arrays["sample"].dim() == 1 else -1
    for name, array in arrays.items():
        two_d = name in ("hist_items", "hist_cats")
        if array.dim() != (2 if two_d else 1) or array.shape[0] != n:
            raise FileFormatError(f"{split_dir / (name + '.npy')}: shape {tuple(array.shape)}, not "
                                  f"{'[n, T]' if two_d else '[n]'} with the n = {n} samples of sample.npy")
        if name != "labels" and array.dtype != torch.int64:
            raise FileFormatError(f"{split_dir / (name + '.npy')}: {array.dtype} values, not int64 ids")
        if name != "labels" and array.numel() and int(array.min()) < 0:
            raise FileFormatError(f"{split_dir / (name + '.npy')}: a negative id ({int(array.min())})")
    if arrays["hist_items"].shape != arrays["hist_cats"].shape:
        raise FileFormatError(f"{split_dir}: hist_items.npy and hist_cats.npy differ in shape")
    width = arrays["hist_items"].shape[1]
    positions = torch.arange(width).unsqueeze(0)
    arrays["hist_mask"] = (positions < arrays.pop("hist_len").unsqueeze(1)).to(torch.float32)
    return arrays


# What `micn data export` records in `export.json` and the twin compares with a model.
EXPORT_COUNTS = ("users", "items", "cats", "max_hist_len")


def read_export_info(directory) -> dict:
    """`export.json` of `micn data export`'s output: the vocabulary sizes `users`, `items`,
    `cats` (id 0 included), the history length `max_hist_len`, the `protocol` and `samples` (the
    sample count of each split written), each checked for its type."""
    path = Path(directory) / "export.json"
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file: not a directory written by `micn data export` (write one with "
                              f"`micn data export DATA --out {directory}`)")
    try:
        info = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: not JSON: {e}") from None
    if not isinstance(info, dict):
        raise FileFormatError(f"{path}: not a JSON object")
    for key in EXPORT_COUNTS:
        if not _whole(info.get(key)):
            raise FileFormatError(f"{path}: {key} = {info.get(key)!r} is not a count (an integer >= 0)")
    samples = info.get("samples", {})
    if not isinstance(samples, dict) or not all(_whole(samples.get(k, 0)) for k in ("train", "valid", "test")):
        raise FileFormatError(f"{path}: samples = {samples!r} is not a sample count per split")
    return info
