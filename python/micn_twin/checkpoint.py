"""micn's checkpoint directories (`run.dir/checkpoints/step-N`), checked before the twin reads one,
as micn checks them before it loads one: the completion marker `COMPLETE` (written last) must be
there, and every file must have the size and the xxh3-64 checksum `manifest.json` records for it
(`{"files": [[name, bytes, "16 hex digits"], ...]}`). A checkpoint that fails is refused, naming
the file and what is wrong, so that the twin never scores a model that `micn predict` refuses.

`xxh3_64` is XXH3's 64-bit hash (seed 0, the default secret), written out here from the
reference implementation (xxhash-rust's `const_xxh3`, which micn uses), with NumPy for the long
inputs' stripes. Without NumPy only the sizes are compared (`CHECKSUMS` is False).
"""
import json
from pathlib import Path
from typing import List, Optional, Tuple

from .files import FileFormatError

try:
    import numpy
except ImportError:  # only the sizes can be checked
    numpy = None

# Whether `verify` compares checksums (NumPy is installed) or sizes only.
CHECKSUMS = numpy is not None
MARKER = "COMPLETE"
MANIFEST = "manifest.json"
# The files of a checkpoint, each listed in its manifest.
FILES = ("model.safetensors", "optimizer.safetensors", "state.json")

MASK64 = (1 << 64) - 1
PRIME32 = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)
PRIME64 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)
SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671fcb79e64eccc0e578825ad07dccff7221"
    "b8084674f743248ee03590e6813a264c3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364eac5ac8334d3ebc3c581a0fffa1363eb"
    "170ddd51b7f0da49d316552629d4689e2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e")
STRIPE = 64
# Stripes per block: (secret length − stripe) / 8 bytes of secret consumed per stripe.
STRIPES_PER_BLOCK = (len(SECRET) - STRIPE) // 8
BLOCK = STRIPE * STRIPES_PER_BLOCK


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "little")


def _u64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 8], "little")


def _avalanche(h: int) -> int:
    h ^= h >> 37
    h = h * 0x165667919E3779F9 & MASK64
    return h ^ (h >> 32)


def _avalanche_xxh64(h: int) -> int:
    h ^= h >> 33
    h = h * PRIME64[1] & MASK64
    h ^= h >> 29
    h = h * PRIME64[2] & MASK64
    return h ^ (h >> 32)


def _rotl(h: int, r: int) -> int:
    return (h << r | h >> (64 - r)) & MASK64


def _strong_avalanche(h: int, length: int) -> int:
    h ^= _rotl(h, 49) ^ _rotl(h, 24)
    h = h * 0x9FB21C651E98DF25 & MASK64
    h ^= (h >> 35) + length & MASK64
    h = h * 0x9FB21C651E98DF25 & MASK64
    return h ^ (h >> 28)


def _fold(a: int, b: int) -> int:
    """The 128-bit product's halves xor-ed."""
    p = a * b
    return (p & MASK64) ^ (p >> 64)


def _mix16(data: bytes, at: int, secret_at: int) -> int:
    return _fold(_u64(data, at) ^ _u64(SECRET, secret_at), _u64(data, at + 8) ^ _u64(SECRET, secret_at + 8))


def _short(data: bytes) -> int:
    """Inputs of at most 16 bytes."""
    n = len(data)
    if n > 8:
        low = _u64(data, 0) ^ _u64(SECRET, 24) ^ _u64(SECRET, 32)
        high = _u64(data, n - 8) ^ _u64(SECRET, 40) ^ _u64(SECRET, 48)
        swapped = int.from_bytes(low.to_bytes(8, "little"), "big")
        return _avalanche((n + swapped + high + _fold(low, high)) & MASK64)
    if n >= 4:
        keyed = (_u32(data, n - 4) + (_u32(data, 0) << 32)) ^ _u64(SECRET, 8) ^ _u64(SECRET, 16)
        return _strong_avalanche(keyed, n)
    if n > 0:
        combo = data[0] << 16 | data[n >> 1] << 24 | data[n - 1] | n << 8
        return _avalanche_xxh64(combo ^ _u32(SECRET, 0) ^ _u32(SECRET, 4))
    return _avalanche_xxh64(_u64(SECRET, 56) ^ _u64(SECRET, 64))


def _medium(data: bytes) -> int:
    """Inputs of 17 to 240 bytes."""
    n = len(data)
    acc = n * PRIME64[0] & MASK64
    if n <= 128:
        for i in reversed(range((n - 1) // 32 + 1)):
            acc += _mix16(data, 16 * i, 32 * i) + _mix16(data, n - 16 * (i + 1), 32 * i + 16)
        return _avalanche(acc & MASK64)
    for i in range(8):
        acc += _mix16(data, 16 * i, 16 * i)
    acc = _avalanche(acc & MASK64)
    for i in range(8, n // 16):
        acc += _mix16(data, 16 * i, 16 * (i - 8) + 3)
    acc += _mix16(data, n - 16, 136 - 17)
    return _avalanche(acc & MASK64)


def _accumulate(acc, stripes, keys):
    """`acc` (`[8]`) plus the sum of what each stripe `[k, 8]` adds with its keys `[k, 8]`
    (all uint64, wrapping): each lane its `lo32(d ^ key) · hi32(d ^ key)`, its neighbour `d`."""
    keyed = stripes ^ keys
    products = (keyed & numpy.uint64(0xFFFFFFFF)) * (keyed >> numpy.uint64(32))
    return acc + products.sum(0, dtype=numpy.uint64) + stripes.sum(0, dtype=numpy.uint64)[[1, 0, 3, 2, 5, 4, 7, 6]]


def _long(data: bytes) -> int:
    """Inputs of more than 240 bytes: stripes of 64 bytes accumulated into 8 lanes, the lanes
    scrambled after each block of `STRIPES_PER_BLOCK` stripes, the last stripe added apart."""
    n = len(data)
    secret = numpy.frombuffer(SECRET, dtype="<u8")
    # Stripe j of a block reads the secret from byte 8j: lane i reads word j + i.
    keys = numpy.stack([secret[j:j + 8] for j in range(STRIPES_PER_BLOCK)])
    scramble_key = secret[(len(SECRET) - STRIPE) // 8:]
    acc = numpy.array([PRIME32[2], PRIME64[0], PRIME64[1], PRIME64[2], PRIME64[3], PRIME32[1], PRIME64[4],
                       PRIME32[0]], dtype=numpy.uint64)
    blocks = (n - 1) // BLOCK
    words = numpy.frombuffer(data, dtype="<u8", count=blocks * BLOCK // 8).reshape(blocks, STRIPES_PER_BLOCK, 8)
    with numpy.errstate(over="ignore"):
        for start in range(0, blocks, 4096):
            chunk = words[start:start + 4096]
            keyed = chunk ^ keys
            added = ((keyed & numpy.uint64(0xFFFFFFFF)) * (keyed >> numpy.uint64(32))).sum(1, dtype=numpy.uint64)
            added += chunk.sum(1, dtype=numpy.uint64)[:, [1, 0, 3, 2, 5, 4, 7, 6]]
            for block in added:
                acc = acc + block
                acc = ((acc ^ (acc >> numpy.uint64(47))) ^ scramble_key) * numpy.uint64(PRIME32[0])
        rest = ((n - 1) - blocks * BLOCK) // STRIPE
        tail = numpy.frombuffer(data, dtype="<u8", count=rest * 8, offset=blocks * BLOCK).reshape(rest, 8)
        acc = _accumulate(acc, tail, keys[:rest])
        last = numpy.frombuffer(data[n - STRIPE:], dtype="<u8").reshape(1, 8)
        last_key = numpy.frombuffer(SECRET[len(SECRET) - STRIPE - 7:len(SECRET) - 7], dtype="<u8").reshape(1, 8)
        acc = _accumulate(acc, last, last_key)
    lanes = [int(a) for a in acc]
    result = n * PRIME64[0] & MASK64
    for i in range(4):
        result += _fold(lanes[2 * i] ^ _u64(SECRET, 11 + 16 * i), lanes[2 * i + 1] ^ _u64(SECRET, 19 + 16 * i))
    return _avalanche(result & MASK64)


def xxh3_64(data: bytes) -> int:
    """XXH3's 64-bit hash of `data` (seed 0), as micn's manifests record it (in 16 hex digits).
    Inputs over 240 bytes need NumPy."""
    if len(data) <= 16:
        return _short(data)
    if len(data) <= 240:
        return _medium(data)
    if numpy is None:
        raise RuntimeError("xxh3_64 of more than 240 bytes needs NumPy")
    return _long(data)


def is_checkpoint(directory: Path) -> bool:
    """Whether `directory` is (or was meant to be) a checkpoint rather than a run directory."""
    if (directory / MARKER).exists() or (directory / MANIFEST).exists():
        return True
    return (directory / "state.json").exists() and not (directory / "config.toml").exists()


def newest_finished(checkpoints: Path) -> Optional[Path]:
    """The finished checkpoint (`step-N` with its completion marker) of the highest step in a
    run's `checkpoints/`, if any."""
    finished = [d for d in checkpoints.glob("step-*") if d.name[5:].isdigit() and (d / MARKER).exists()]
    return max(finished, key=lambda d: int(d.name[5:]), default=None)


def read_manifest(directory: Path) -> List[Tuple[str, int, str]]:
    """The entries of a checkpoint's `manifest.json`: (file name, bytes, checksum)."""
    path = directory / MANIFEST
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file: the checkpoint is damaged (micn refuses it too)")
    try:
        files = json.loads(path.read_bytes())["files"]
        entries = [(str(name), size, str(digest)) for name, size, digest in files]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise FileFormatError(f"{path}: not a checkpoint manifest ({type(e).__name__}: {e})") from None
    for name, size, digest in entries:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FileFormatError(f"{path}: the size of {name} is {size!r}, not a number of bytes")
    return entries


def verify(directory) -> None:
    """Refuse a checkpoint directory that micn would refuse: one without its completion marker
    (unfinished), or with a file missing or of another size or checksum than its manifest says
    (damaged)."""
    directory = Path(directory)
    if not (directory / MARKER).exists():
        raise FileFormatError(f"{directory}: no completion marker ({MARKER}): the checkpoint was not finished "
                              f"(micn refuses it too); give an earlier checkpoint or the run directory")
    manifest = {name: (size, digest) for name, size, digest in read_manifest(directory)}
    for name in FILES:
        if name not in manifest:
            raise FileFormatError(f"{directory / MANIFEST}: {name} is not in the manifest: the checkpoint is damaged")
        path = directory / name
        if not path.is_file():
            raise FileFormatError(f"{path}: no such file: the checkpoint is damaged (micn refuses it too)")
        size, digest = manifest[name]
        if path.stat().st_size != size:
            raise FileFormatError(f"{path}: {path.stat().st_size} bytes where {MANIFEST} records {size}: the "
                                  f"checkpoint is damaged (micn refuses it too)")
        if CHECKSUMS:
            actual = f"{xxh3_64(path.read_bytes()):016x}"
            if actual != digest.lower():
                raise FileFormatError(f"{path}: xxh3 checksum {actual} where {MANIFEST} records {digest}: the "
                                      f"checkpoint is damaged (micn refuses it too)")


def newest_checkpoint(run: Path) -> str:
    """What to score instead of a run that has not finished: its newest checkpoint, if any."""
    newest = newest_finished(run / "checkpoints")
    return "it has no checkpoint yet" if newest is None else f"score its newest checkpoint, {newest}"


def unfinished_run(run: Path) -> str:
    """The error of a run directory whose end (its model, then its summary) is not written."""
    return (f"{run}: the run has not finished (its model.safetensors and summary.json are written at the end): "
            f"{newest_checkpoint(run)}")


def verify_run_model(directory) -> None:
    """Refuse a run's `model.safetensors` as micn does: without a readable `summary.json` beside it
    (the run has not finished writing its end, or the summary is damaged), or of another checksum
    than the summary records (`model_xxh3`: a damaged file, or one copied over it). A summary
    that records none (written before micn kept it), or no NumPy, checks no checksum."""
    directory = Path(directory)
    path = directory / "summary.json"
    if not path.is_file():
        raise FileFormatError(unfinished_run(directory) + "; or give the model file itself, which is not checked")
    try:
        summary = json.loads(path.read_bytes())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FileFormatError(f"{path}: {e}: the run's summary is damaged; {newest_checkpoint(directory)}") from None
    recorded = summary.get("model_xxh3")
    if not isinstance(recorded, str) or not CHECKSUMS:
        return
    model = directory / "model.safetensors"
    actual = f"{xxh3_64(model.read_bytes()):016x}"
    if actual != recorded:
        raise FileFormatError(f"{model}: its checksum is {actual}, summary.json's model_xxh3 {recorded}: the file is "
                              f"not the one the run wrote (micn refuses it too); `micn train --resume auto` on the "
                              f"run writes it again, or {newest_checkpoint(directory)}")
