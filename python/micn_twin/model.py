"""micn's CTR models as PyTorch modules, computing a click probability exactly as `micn predict`
does (evaluation mode: Dice and batch normalisation read their running statistics).

Every module is built from a trained model's tensors by name (`model.safetensors` of a run or a
checkpoint); the architecture is read from the names and shapes, and for MIND, MFN and CAMN,
whose number of interests, routing iterations, attention power, heads, top q and routing switch
are not in the weights, from the run's configuration (`[model]` of `config.toml`, or of a
checkpoint's `state.json`; `Settings` checks each value's type and range). Each tensor's shape
is checked against the widths the model's other tensors give as it is built, so that a file
whose tensors do not fit together is refused naming the tensor (`ModelFileError`), never
failing inside a forward pass.
The names and formulas are micn's (`src/model/`, `src/model/layers.rs`): where micn computes a
value in a particular order (DIN's attention unit reads `[q, k, q − k, q·k]` through a split
first layer), this code does the same, so that scores agree to float rounding.

MICN, the auxiliary task, shapes the `e_aux` tables during training only: a model trained with
it scores through the wider item vectors `[item, cat, item_aux, cat_aux]`, and `micn.*` tensors
are not needed here.

All modules are TorchScript-compatible (`torch.jit.script`).
"""
import math
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

# Constants of micn's layers (src/model/layers.rs, src/model/wide_deep.rs).
DICE_EPS = 1e-8
BATCH_NORM_EPS = 1e-3
PRIME = (1 << 31) - 1
ITEM_CROSS = (0x2545_F491, 0x1B87_3593, 0x0CC9_E2D5)
CAT_CROSS = (0x3C6E_F372, 0x27D4_EB2F, 0x165E_C3B9)


class ModelFileError(ValueError):
    """Tensors that do not make one of micn's models, or settings of the wrong type; the message
    names the tensor or the setting."""


class Weights:
    """The tensors of a model file, taken by name; reports what is missing or left over."""

    def __init__(self, tensors: Dict[str, Tensor], source: str):
        self.tensors = tensors
        self.source = source
        self.used = set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str, *shape: Optional[int]) -> Tensor:
        """The tensor `name` as float32, which must have `shape` (None: a dimension of any size)."""
        if name not in self.tensors:
            raise ModelFileError(f"{self.source}: tensor {name!r} is missing")
        tensor = self.tensors[name]
        fits = tensor.dim() == len(shape) and all(want is None or got == want for got, want in zip(tensor.shape, shape))
        if not fits:
            wanted = ", ".join("any" if d is None else str(d) for d in shape)
            raise ModelFileError(f"{self.source}: tensor {name!r} has shape {list(tensor.shape)}, where the model "
                                 f"needs [{wanted}]")
        self.used.add(name)
        return tensor.to(torch.float32)

    def fail(self, name: str, why: str) -> ModelFileError:
        return ModelFileError(f"{self.source}: tensor {name!r} {why}")

    def ids(self, name: str, rows: int, table: str, entries: int) -> Tensor:
        """`name` (`[rows, any]`) holding ids of a table of `entries` rows, as int64."""
        ids = self.get(name, rows, None).round().to(torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= entries):
            raise self.fail(name, f"holds ids from {int(ids.min())} to {int(ids.max())}, beyond the {entries} rows of "
                                  f"{table!r}")
        return ids

    def check_all_used(self, ignored_prefixes=("micn.",)):
        left = sorted(n for n in self.tensors if n not in self.used and not n.startswith(ignored_prefixes))
        if left:
            raise ModelFileError(f"{self.source}: tensors this model does not use: {', '.join(left)}")


class Settings:
    """The run's `[model]` settings that are not in the weights, each read with its type and
    range checked as micn checks them; an error names the configuration and the key."""

    def __init__(self, table: dict, source: str):
        self.table = table
        self.source = source

    def fail(self, key: str, value, why: str) -> ModelFileError:
        return ModelFileError(f"{self.source}: model.{key} = {value!r}: {why}")

    def count(self, key: str, default: int, most: int) -> int:
        """A whole number in [1, most]."""
        value = self.table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise self.fail(key, value, f"must be a whole number from 1 to {most}")
        return value

    def power(self, key: str, default: float) -> float:
        """A number >= 0, or "inf" (returned as infinity)."""
        value = self.table.get(key, default)
        if value == "inf" or (isinstance(value, float) and value == math.inf):
            return math.inf
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise self.fail(key, value, 'must be a number >= 0 or "inf"')
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, value, "must be true or false")
        return value


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dimension on the positions where `mask` is 1 (others exactly 0;
    a row without any gets all zeros). Padded positions score MASKED_SCORE (a literal here:
    TorchScript reads no float globals)."""
    return scores.masked_fill(mask <= 0.5, -1e9).softmax(-1) * mask


def masked_sum(xs: Tensor, mask: Tensor) -> Tensor:
    """`[b, T, w]`, `[b, T]` → `[b, w]`: the sum over real behaviours."""
    return (xs * mask.unsqueeze(-1)).sum(1)


def linear(w: Weights, prefix: str, inputs: int, outputs: Optional[int] = None, bias: bool = True) -> nn.Linear:
    """`prefix.weight` `[outputs, inputs]` (any number of outputs when None) and `prefix.bias`."""
    weight = w.get(f"{prefix}.weight", outputs, inputs)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias:
            layer.bias.copy_(w.get(f"{prefix}.bias", weight.shape[0]))
    return layer


class Sigmoid(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sigmoid()


class Relu(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class Prelu(nn.Module):
    """`max(0, x) + α·min(0, x)`, one α per channel."""

    def __init__(self, w: Weights, prefix: str, width: int):
        super().__init__()
        self.alpha = nn.Parameter(w.get(f"{prefix}.alpha", width))

    def forward(self, x: Tensor) -> Tensor:
        return x.relu() + self.alpha * x.clamp_max(0.0)


class Dice(nn.Module):
    """`p·x + (1 − p)·α·x`, `p = σ((x − mean) / sqrt(var + ε))` with the running statistics."""

    def __init__(self, w: Weights, prefix: str, width: int):
        super().__init__()
        self.alpha = nn.Parameter(w.get(f"{prefix}.alpha", width))
        self.register_buffer("running_mean", w.get(f"{prefix}.running_mean", width))
        self.register_buffer("running_var", w.get(f"{prefix}.running_var", width))
        self.eps = DICE_EPS

    def forward(self, x: Tensor) -> Tensor:
        p = ((x - self.running_mean) / (self.running_var + self.eps).sqrt()).sigmoid()
        return p * x + (1.0 - p) * self.alpha * x


class BatchNorm(nn.Module):
    """`γ·(x − mean) / sqrt(var + ε) + β` with the running statistics."""

    def __init__(self, w: Weights, prefix: str, width: int):
        super().__init__()
        self.gamma = nn.Parameter(w.get(f"{prefix}.gamma", width))
        self.beta = nn.Parameter(w.get(f"{prefix}.beta", width))
        self.register_buffer("running_mean", w.get(f"{prefix}.running_mean", width))
        self.register_buffer("running_var", w.get(f"{prefix}.running_var", width))
        self.eps = BATCH_NORM_EPS

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.running_mean) / (self.running_var + self.eps).sqrt() * self.gamma + self.beta


def activation(kind: str, w: Weights, prefix: str, width: int) -> nn.Module:
    if kind == "sigmoid":
        return Sigmoid()
    if kind == "relu":
        return Relu()
    if kind == "prelu":
        return Prelu(w, prefix, width)
    if kind == "dice":
        return Dice(w, prefix, width)
    raise ValueError(f"unknown activation {kind!r}")


class Stage(nn.Module):
    """One hidden layer's activation followed by the next linear layer."""

    def __init__(self, act: nn.Module, layer: nn.Linear):
        super().__init__()
        self.act = act
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.act(x))


class Mlp(nn.Module):
    """micn's `Mlp`: linear layers `layers.{i}` with an activation `activations.{i}` after each,
    then the linear `output` (one value), from `inputs` values. Held as the first linear layer
    and the stages after it."""

    def __init__(self, w: Weights, prefix: str, kind: str, inputs: int):
        super().__init__()
        hidden = 0
        while w.has(f"{prefix}.layers.{hidden}.weight"):
            hidden += 1
        layers: List[nn.Linear] = []
        width = inputs
        for i in range(hidden):
            layers.append(linear(w, f"{prefix}.layers.{i}", width))
            width = layers[-1].out_features
        layers.append(linear(w, f"{prefix}.output", width, 1))
        self.first = layers[0]
        self.stages = nn.ModuleList([Stage(activation(kind, w, f"{prefix}.activations.{i}", layers[i].out_features),
                                           layers[i + 1]) for i in range(hidden)])
        self.hidden = hidden

    def tail(self, first: Tensor) -> Tensor:
        """Everything after the first linear layer, from that layer's output."""
        x = first
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.first(x))


class AttentionUnit(nn.Module):
    """DIN's activation unit: an MLP (sigmoid) scores each position from `[q, k, q − k, q·k]`,
    a masked softmax makes the weights. A query narrower or wider than the keys is projected to
    their width by a linear layer and PReLU first (DIEN)."""

    def __init__(self, w: Weights, prefix: str, query: int, keys: int):
        """`query`, `keys`: the widths of the query and of each key."""
        super().__init__()
        self.projection: Optional[nn.Linear] = None
        self.projection_prelu: Optional[Prelu] = None
        if w.has(f"{prefix}.query_projection.linear.weight"):
            self.projection = linear(w, f"{prefix}.query_projection.linear", query, keys)
            self.projection_prelu = Prelu(w, f"{prefix}.query_projection.prelu", keys)
        elif query != keys:
            raise w.fail(f"{prefix}.query_projection.linear.weight", f"is missing (queries of {query} values meet keys "
                                                                      f"of {keys})")
        self.mlp = Mlp(w, f"{prefix}.mlp", "sigmoid", 4 * keys)

    def weights(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """`[b, q]`, `[b, T, k]`, `[b, T]` → `[b, T]`."""
        if self.projection is not None and self.projection_prelu is not None:
            query = self.projection_prelu(self.projection(query))
        k = keys.shape[2]
        q = query.unsqueeze(1)  # [b, 1, k]
        if self.mlp.hidden > 0:
            # As micn: W = [W_q W_k W_d W_p] applied as q·(W_q + W_d)ᵀ + b per sample and
            # k·(W_k − W_d)ᵀ + (q·k)·W_pᵀ per position.
            weight, bias = self.mlp.first.weight, self.mlp.first.bias
            w_q, w_k, w_d, w_p = weight[:, :k], weight[:, k:2 * k], weight[:, 2 * k:3 * k], weight[:, 3 * k:]
            per_sample = query.matmul((w_q + w_d).t()) + bias  # [b, h]
            per_position = keys.matmul((w_k - w_d).t()) + (q * keys).matmul(w_p.t())  # [b, T, h]
            scores = self.mlp.tail(per_position + per_sample.unsqueeze(1))
        else:
            queries = q.expand_as(keys)
            scores = self.mlp(torch.cat([queries, keys, queries - keys, queries * keys], -1))
        return masked_softmax(scores.squeeze(-1), mask)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """The attention-weighted sum of the keys, `[b, k]`."""
        return self.weights(query, keys, mask).unsqueeze(1).matmul(keys).squeeze(1)


class GruCell(nn.Module):
    """DIEN's GRU cell: `r, u = σ(W x + U h + b)`, `h̃ = tanh(W_c x + U_c (r·h) + b_c)`,
    `h' = h + u'·(h̃ − h)` with `u' = u` (GRU) or `a·u` (AUGRU); a padded step keeps `h`."""

    def __init__(self, w: Weights, prefix: str, inputs: int):
        super().__init__()
        self.input = linear(w, f"{prefix}.input", inputs)
        if self.input.out_features % 3:
            raise w.fail(f"{prefix}.input.weight", f"has {self.input.out_features} rows, not three gates' worth")
        hidden = self.input.out_features // 3
        self.hidden_gates = linear(w, f"{prefix}.hidden_gates", hidden, 2 * hidden, bias=False)
        self.hidden_candidate = linear(w, f"{prefix}.hidden_candidate", hidden, hidden, bias=False)
        self.hidden = hidden

    def forward(self, xs: Tensor, mask: Tensor, attention: Optional[Tensor]):
        """`[b, T, I]`, `[b, T]`, `[b, T]` → (`states [b, T, H]`, `last [b, H]`)."""
        b, steps = xs.shape[0], xs.shape[1]
        hidden = self.hidden
        projected = self.input(xs)  # [b, T, 3H]
        h = torch.zeros(b, hidden, dtype=xs.dtype, device=xs.device)
        states: List[Tensor] = []
        for t in range(steps):
            x = projected[:, t]
            gates = torch.addmm(x[:, :2 * hidden], h, self.hidden_gates.weight.t()).sigmoid()
            reset, update = gates[:, :hidden], gates[:, hidden:]
            candidate = torch.addmm(x[:, 2 * hidden:], reset * h, self.hidden_candidate.weight.t()).tanh()
            if attention is not None:
                update = update * attention[:, t].unsqueeze(-1)
            real = mask[:, t].unsqueeze(-1) > 0.5
            h = torch.where(real, torch.lerp(h, candidate, update), h)
            states.append(h)
        if steps == 0:
            return torch.zeros(b, 0, hidden, dtype=xs.dtype, device=xs.device), h
        return torch.stack(states, 1), h


class Crosses(nn.Module):
    """Wide&Deep's hashed crosses: (target item × history category) and (target category ×
    history category) per real slot, each a weight of `buckets`, plus a bias."""

    def __init__(self, w: Weights, prefix: str):
        super().__init__()
        self.weights = nn.Parameter(w.get(f"{prefix}.weights", None, 1))
        self.bias = nn.Parameter(w.get(f"{prefix}.bias", 1))
        self.buckets = self.weights.shape[0]
        if self.buckets == 0:
            raise w.fail(f"{prefix}.weights", "has no buckets")
        self.prime = PRIME
        self.item_cross = list(ITEM_CROSS)
        self.cat_cross = list(CAT_CROSS)

    def bucket(self, a: Tensor, b: Tensor, constants: List[int]) -> Tensor:
        """`((a·A + b·B + C) mod P) mod buckets`, exact in int64."""
        p = self.prime
        return ((a.remainder(p) * constants[0] + b.remainder(p) * constants[1] + constants[2]).remainder(p)
                ).remainder(self.buckets)

    def forward(self, items: Tensor, cats: Tensor, hist_cats: Tensor, mask: Tensor) -> Tensor:
        by_item = self.bucket(items.unsqueeze(1), hist_cats, self.item_cross)
        by_cat = self.bucket(cats.unsqueeze(1), hist_cats, self.cat_cross)
        per_slot = (self.weights[by_item].squeeze(-1) + self.weights[by_cat].squeeze(-1)) * mask
        return per_slot.sum(1) + self.bias


class WideDeep(nn.Module):
    """A PReLU MLP over the batch-normalised `[user, e_t, Σ hist]` plus a linear layer over
    `[e_t, Σ hist, e_t·Σ hist]`, and the hashed crosses when the model has them."""

    def __init__(self, w: Weights, emb: "Embeddings", prefix: str = "main"):
        super().__init__()
        user, width = emb.user_width, emb.width
        self.norm = BatchNorm(w, f"{prefix}.norm", user + 2 * width)
        self.deep = Mlp(w, f"{prefix}.deep", "prelu", user + 2 * width)
        self.wide = linear(w, f"{prefix}.wide", 3 * width, 1)
        self.crosses: Optional[Crosses] = Crosses(w, f"{prefix}.crosses") if w.has(f"{prefix}.crosses.weights") else None

    def forward(self, user: Tensor, target: Tensor, hist: Tensor, mask: Tensor, items: Tensor, cats: Tensor,
                hist_items: Tensor, hist_cats: Tensor) -> Tensor:
        hist_sum = masked_sum(hist, mask)
        deep = self.deep(self.norm(torch.cat([user, target, hist_sum], -1))).squeeze(-1)
        logit = deep + self.wide(torch.cat([target, hist_sum, target * hist_sum], -1)).squeeze(-1)
        if self.crosses is not None:
            logit = logit + self.crosses(items, cats, hist_cats, mask)
        return logit


class Din(nn.Module):
    """DIN: a Dice head over `[user, e_t, Σ hist, e_t·Σ hist, attended]`."""

    def __init__(self, w: Weights, emb: "Embeddings", prefix: str = "main"):
        super().__init__()
        self.attention = AttentionUnit(w, f"{prefix}.attention", emb.width, emb.width)
        self.head = Mlp(w, f"{prefix}.head", "dice", emb.user_width + 4 * emb.width)

    def forward(self, user: Tensor, target: Tensor, hist: Tensor, mask: Tensor, items: Tensor, cats: Tensor,
                hist_items: Tensor, hist_cats: Tensor) -> Tensor:
        hist_sum = masked_sum(hist, mask)
        attended = self.attention(target, hist, mask)
        return self.head(torch.cat([user, target, hist_sum, target * hist_sum, attended], -1)).squeeze(-1)


class Dien(nn.Module):
    """DIEN: a GRU over the history, attention of its states to the target, an AUGRU driven by
    it, and a Dice head over `[user, e_t, Σ hist, e_t·Σ hist, last AUGRU state]` (its
    auxiliary loss only trains)."""

    def __init__(self, w: Weights, emb: "Embeddings", prefix: str = "main"):
        super().__init__()
        self.gru = GruCell(w, f"{prefix}.gru", emb.width)
        self.attention = AttentionUnit(w, f"{prefix}.attention", emb.width, self.gru.hidden)
        self.augru = GruCell(w, f"{prefix}.augru", self.gru.hidden)
        self.head = Mlp(w, f"{prefix}.head", "dice", emb.user_width + 3 * emb.width + self.augru.hidden)
        # The auxiliary network is used in training only; its tensors are known, not needed.
        for name in list(w.tensors):
            if name.startswith(f"{prefix}.auxiliary."):
                w.used.add(name)

    def forward(self, user: Tensor, target: Tensor, hist: Tensor, mask: Tensor, items: Tensor, cats: Tensor,
                hist_items: Tensor, hist_cats: Tensor) -> Tensor:
        states, _ = self.gru(hist, mask, None)
        attention = self.attention.weights(target, states, mask)
        _, last = self.augru(states, mask, attention)
        hist_sum = masked_sum(hist, mask)
        return self.head(torch.cat([user, target, hist_sum, target * hist_sum, last], -1)).squeeze(-1)


# The 32-bit mixing's constants (src/micn/rng.rs) are written as literals in the functions below,
# which TorchScript compiles (it reads no globals): multiplier 0x045D9F3B, mask 0xFFFFFFFF,
# golden increment 0x9E3779B9, salts 0x85EBCA6B and 0xC2B2AE35.
MASK64 = (1 << 64) - 1
# micn's MIND routing start: seed "MIND" (src/model/mind.rs), stream 1 (src/micn/rng.rs).
MIND_ROUTING_SEED = 0x4D49_4E44
ROUTING_STREAM = 1


def _mix64(z: int) -> int:
    """SplitMix64's finaliser (src/rng.rs)."""
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & MASK64
    return z ^ (z >> 31)


def normal_field_key(seed: int, stream: int) -> int:
    """The 32-bit key of micn's `NormalField::new(seed, stream)` (src/micn/rng.rs)."""
    golden = 0x9E37_79B9_7F4A_7C15
    key = _mix64((_mix64(seed ^ golden) + stream * golden) & MASK64)
    return key >> 32


def _mix32(x: Tensor) -> Tensor:
    """The 32-bit finaliser on int64 tensors holding values below 2³²."""
    x = ((x >> 16) ^ x) * 0x045D9F3B & 0xFFFFFFFF
    x = ((x >> 16) ^ x) * 0x045D9F3B & 0xFFFFFFFF
    return (x >> 16) ^ x


def routing_start(key: int, steps: int, capsules: int, device: torch.device) -> Tensor:
    """MIND's fixed initial routing logits `[steps, capsules]`: micn's `NormalField` at the counter
    words `(0, 0, t, j)` (one sample's draw), Box–Muller in float64, as float32."""
    t = torch.arange(steps, dtype=torch.int64, device=device).view(steps, 1)
    j = torch.arange(capsules, dtype=torch.int64, device=device).view(1, capsules)
    zero = torch.zeros_like(t + j)
    h = torch.full_like(zero, key)
    for word in [zero, zero, t + zero, j + zero]:
        h = _mix32(h ^ _mix32((word + 0x9E3779B9) & 0xFFFFFFFF))
    u1 = ((_mix32(h ^ 0x85EBCA6B) >> 8).to(torch.float64) + 0.5) / float(1 << 24)
    u2 = ((_mix32(h ^ 0xC2B2AE35) >> 8).to(torch.float64) + 0.5) / float(1 << 24)
    return ((-2.0 * u1.log()).sqrt() * (u2 * 6.283185307179586).cos()).to(torch.float32)


def squash(s: Tensor) -> Tensor:
    """`|s|²/(1 + |s|²) · s/sqrt(|s|² + ε)` over the last dimension."""
    norm2 = s.square().sum(-1, keepdim=True)
    return norm2 / (1.0 + norm2) * s / (norm2 + 1e-9).sqrt()


class Mind(nn.Module):
    """MIND as a CTR model: the history routed into `K_u = max(1, min(K, ⌊log₂ len⌋))` interest
    capsules from fixed start logits, ReLU interests, label-aware attention with the target as
    query, and a Dice head over `[user, e_t, Σ hist, e_t·Σ hist, v_u]`."""

    def __init__(self, w: Weights, emb: "Embeddings", prefix: str = "main", config: Optional[Settings] = None):
        super().__init__()
        if config is None:
            raise ModelFileError(f"{w.source}: MIND's interests, routing iterations and attention power are not in "
                                 "the weights: give the run or checkpoint directory (its configuration)")
        self.bilinear = nn.Parameter(w.get(f"{prefix}.routing.bilinear", None, emb.width))
        self.interest = linear(w, f"{prefix}.interest", self.bilinear.shape[0], emb.width)
        if w.has(f"{prefix}.head.output.weight"):
            self.head = Mlp(w, f"{prefix}.head", "dice", emb.user_width + 4 * emb.width)
        self.k_max = config.count("mind_interests", 4, 62)
        self.iterations = config.count("mind_routing_iters", 3, 100)
        power = config.power("mind_pow_p", 2.0)
        self.hard = power == math.inf
        self.power = 0.0 if self.hard else power
        self.key = normal_field_key(MIND_ROUTING_SEED, ROUTING_STREAM)

    def interests(self, hist: Tensor, mask: Tensor):
        """`[b, T, w]`, `[b, T]` → (interests `[b, K, w]`, active `[b, K]`)."""
        b, steps = hist.shape[0], hist.shape[1]
        lengths = mask.sum(1).round().to(torch.int64)
        count = torch.zeros_like(lengths)
        for k in range(1, min(self.k_max, 62) + 1):
            count = count + (lengths >= (1 << k)).to(torch.int64)
        count = count.clamp_min(1)
        active = (torch.arange(self.k_max, device=hist.device).unsqueeze(0) < count.unsqueeze(1)).to(hist.dtype)
        inactive = (active <= 0.5).unsqueeze(1)  # [b, 1, K]
        mapped = hist.matmul(self.bilinear.t())
        logits = routing_start(self.key, steps, self.k_max, hist.device).to(hist.dtype).expand(b, steps, self.k_max)
        real = mask.unsqueeze(-1)
        u = torch.zeros(b, self.k_max, hist.shape[2], dtype=hist.dtype, device=hist.device)
        for iteration in range(self.iterations):
            weights = logits.masked_fill(inactive, float("-inf")).softmax(-1) * real
            u = squash(weights.transpose(1, 2).matmul(mapped))
            if iteration + 1 < self.iterations:
                logits = logits + mapped.matmul(u.transpose(1, 2))
        return self.interest(u).relu(), active

    def user_vector(self, interests: Tensor, active: Tensor, target: Tensor) -> Tensor:
        """Label-aware attention: `Σ_j softmax_j(sign(s)·|s|^p) v_j`, `s = v_jᵀ e_t`, over the
        active interests (p = 0: uniform; "inf": the best one)."""
        scores = interests.matmul(target.unsqueeze(-1)).squeeze(-1)
        inactive = active <= 0.5
        if self.hard:
            best = scores.masked_fill(inactive, float("-inf")).argmax(-1)
            weights = torch.nn.functional.one_hot(best, self.k_max).to(scores.dtype)
        elif self.power == 0.0:
            weights = torch.ones_like(scores).masked_fill(inactive, float("-inf")).softmax(-1)
        else:
            ceiling = min(1e30 ** (1.0 / self.power), 3.4028234663852886e38)
            powered = scores.sign() * scores.abs().clamp(1e-12, ceiling).pow(self.power)
            weights = powered.masked_fill(inactive, float("-inf")).softmax(-1)
        return weights.unsqueeze(1).matmul(interests).squeeze(1)

    def forward(self, user: Tensor, target: Tensor, hist: Tensor, mask: Tensor, items: Tensor, cats: Tensor,
                hist_items: Tensor, hist_cats: Tensor) -> Tensor:
        interests, active = self.interests(hist, mask)
        user_vector = self.user_vector(interests, active, target)
        hist_sum = masked_sum(hist, mask)
        return self.head(torch.cat([user, target, hist_sum, target * hist_sum, user_vector], -1)).squeeze(-1)


class MindRetrieval(Mind):
    """MIND trained for retrieval (`model.mind_objective = "retrieval"`): no head; the score is
    `v_u · e_t`, the label-aware user vector against the target's item vector."""

    def forward(self, user: Tensor, target: Tensor, hist: Tensor, mask: Tensor, items: Tensor, cats: Tensor,
                hist_items: Tensor, hist_cats: Tensor) -> Tensor:
        interests, active = self.interests(hist, mask)
        return (self.user_vector(interests, active, target) * target).sum(-1)


class Mfn(nn.Module):
    """MFN (src/model/mfn.rs): similarity interests `Pᵀ ℰ` with `P = softmax(E Cᵀ)` over fixed
    (pretrained) or stopped-gradient item vectors, combination interests `A ℰ` with
    `A = softmax_T(W₂ᵀ swish(W₁ MSA(ℰ)ᵀ))`, each relation weighed against the target by its own
    scorer, and a Dice head over `[user, e_t, Σ hist, e_t·Σ hist, R(e_t)]`; `ℰ` adds the
    attribute embeddings when the model has them."""

    def __init__(self, w: Weights, emb: "Embeddings", prefix: str = "main", config: Optional[Settings] = None):
        super().__init__()
        if config is None:
            raise ModelFileError(f"{w.source}: MFN's attention heads are not in the weights: give the run or "
                                 "checkpoint directory (its configuration)")
        width, items = emb.width, emb.items_count
        self.pretrained = w.has(f"{prefix}.fixed_items")
        fixed = w.get(f"{prefix}.fixed_items", items, None) if self.pretrained else torch.zeros(0, 0)
        self.register_buffer("fixed_items", fixed)
        self.register_buffer("centres", w.get(f"{prefix}.centres", None, fixed.shape[1] if self.pretrained else width))
        self.has_attributes = w.has(f"{prefix}.item_attributes")
        if self.has_attributes:
            self.attributes = nn.Parameter(w.get(f"{prefix}.attributes", None, width))
            self.register_buffer("item_attributes", w.ids(f"{prefix}.item_attributes", items, f"{prefix}.attributes",
                                                          self.attributes.shape[0]))
        else:
            self.attributes = nn.Parameter(torch.zeros(0, 0))
            self.register_buffer("item_attributes", torch.zeros(0, 0, dtype=torch.int64))
        self.heads = config.count("mfn_heads", 2, 62)
        if width % self.heads:
            raise config.fail("mfn_heads", self.heads, f"does not divide the item vectors' width {width}")
        self.query = linear(w, f"{prefix}.attention.query", width, width)
        self.key = linear(w, f"{prefix}.attention.key", width, width)
        self.value = linear(w, f"{prefix}.attention.value", width, width)
        self.output = linear(w, f"{prefix}.attention.output", width, width)
        self.w1 = linear(w, f"{prefix}.w1", width, bias=False)
        self.w2 = linear(w, f"{prefix}.w2", self.w1.out_features, bias=False)
        self.similarity_scorer = Mlp(w, f"{prefix}.similarity_scorer", "sigmoid", 4 * width)
        self.combination_scorer = Mlp(w, f"{prefix}.combination_scorer", "sigmoid", 4 * width)
        self.head = Mlp(w, f"{prefix}.head", "dice", emb.user_width + 4 * width)

    @staticmethod
    def features(interests: Tensor, target: Tensor) -> Tensor:
        """What a relation's scorer reads: `[r_j, e_t, r_j − e_t, r_j·e_t]`, `[b, K, 4w]`."""
        query = target.unsqueeze(1).expand_as(interests)
        return torch.cat([interests, query, interests - query, interests * query], -1)

    @staticmethod
    def weigh(scores: Tensor, interests: Tensor) -> Tensor:
        """`[b, K, w]` weighed by the softmax of their scores `[b, K, 1]` → `[b, w]`."""
        return scores.squeeze(-1).softmax(-1).unsqueeze(1).matmul(interests).squeeze(1)

    def forward(self, user: Tensor, target: Tensor, hist: Tensor, mask: Tensor, items: Tensor, cats: Tensor,
                hist_items: Tensor, hist_cats: Tensor) -> Tensor:
        b, steps, width = hist.shape[0], hist.shape[1], hist.shape[2]
        values = hist
        if self.has_attributes:
            values = hist + self.attributes[self.item_attributes[hist_items]].sum(2)
        fixed = self.fixed_items[hist_items] if self.pretrained else hist
        assignment = fixed.matmul(self.centres.t()).softmax(-1) * mask.unsqueeze(-1)
        similarity = assignment.transpose(1, 2).matmul(values)
        h, d = self.heads, width // self.heads
        q = self.query(values).view(b, steps, h, d).transpose(1, 2)
        k = self.key(values).view(b, steps, h, d).transpose(1, 2)
        v = self.value(values).view(b, steps, h, d).transpose(1, 2)
        keys = mask.view(b, 1, 1, steps).expand(b, h, steps, steps)
        mixed = masked_softmax(q.matmul(k.transpose(-1, -2)) / math.sqrt(d), keys).matmul(v)
        mixed = self.output(mixed.transpose(1, 2).reshape(b, steps, width))
        logits = self.w2(torch.nn.functional.silu(self.w1(mixed))).transpose(1, 2)  # [b, K, T]
        real = mask.view(b, 1, steps).expand(b, logits.shape[1], steps)
        combination = masked_softmax(logits, real).matmul(values)
        user_vector = (self.weigh(self.similarity_scorer(self.features(similarity, target)), similarity)
                       + self.weigh(self.combination_scorer(self.features(combination, target)), combination))
        hist_sum = masked_sum(hist, mask)
        return self.head(torch.cat([user, target, hist_sum, target * hist_sum, user_vector], -1)).squeeze(-1)


class Camn(nn.Module):
    """CAMN (src/model/camn.rs): the item vector and every attribute column as `k` sequences,
    collaborative scores `softmax(keepTop_q(LayerNorm(X) W_h))`, per-sequence attention whose
    logits are scaled key by key by those scores, a shared feed-forward layer, one DIN attention
    unit per sequence pooling it against the target, and a Dice head over
    `[user, e_t, Σ hist, e_t·Σ hist, target's attributes, interests]`. The diversity loss only trains."""

    def __init__(self, w: Weights, emb: "Embeddings", prefix: str = "main", config: Optional[Settings] = None):
        super().__init__()
        if config is None:
            raise ModelFileError(f"{w.source}: CAMN's top q and routing switch are not in the weights: give the run "
                                 "or checkpoint directory (its configuration)")
        width = emb.width
        self.attributes = nn.Parameter(w.get(f"{prefix}.attributes", None, width))
        self.register_buffer("item_attributes", w.ids(f"{prefix}.item_attributes", emb.items_count,
                                                      f"{prefix}.attributes", self.attributes.shape[0]))
        self.k = 1 + int(self.item_attributes.shape[1])
        k = self.k
        self.norm_weight = nn.Parameter(w.get(f"{prefix}.norm.weight", k * width))
        self.norm_bias = nn.Parameter(w.get(f"{prefix}.norm.bias", k * width))
        self.route = linear(w, f"{prefix}.route", k * width, k, bias=False)
        self.w_query = nn.Parameter(w.get(f"{prefix}.query", k, width, width))
        self.w_key = nn.Parameter(w.get(f"{prefix}.key", k, width, width))
        self.w_value = nn.Parameter(w.get(f"{prefix}.value", k, width, width))
        self.ffn_in = linear(w, f"{prefix}.ffn_in", width)
        self.ffn_out = linear(w, f"{prefix}.ffn_out", self.ffn_in.out_features, width)
        self.extractors = nn.ModuleList([AttentionUnit(w, f"{prefix}.extractor.{r}", width, width) for r in range(k)])
        self.head = Mlp(w, f"{prefix}.head", "dice", emb.user_width + (3 + (k - 1) + k) * width)
        self.top_q = min(config.count("camn_top_q", 3, 62), k)
        self.routing = config.flag("camn_routing", True)

    def embed_attributes(self, items: Tensor) -> Tensor:
        """`[S…]` item ids → `[S…, k − 1, w]`."""
        return self.attributes[self.item_attributes[items]]

    def scores(self, xs: Tensor) -> Tensor:
        """`[b, T, k, w]` → collaborative scores `[b, T, k]`."""
        b, steps, k, width = xs.shape[0], xs.shape[1], xs.shape[2], xs.shape[3]
        normed = torch.nn.functional.layer_norm(xs.reshape(b, steps, k * width), [k * width], self.norm_weight,
                                                self.norm_bias, 1e-5)
        logits = self.route(normed)
        kept = torch.zeros_like(logits).scatter(-1, logits.topk(self.top_q, -1)[1], 1.0)
        return masked_softmax(logits, kept)

    def forward(self, user: Tensor, target: Tensor, hist: Tensor, mask: Tensor, items: Tensor, cats: Tensor,
                hist_items: Tensor, hist_cats: Tensor) -> Tensor:
        b, steps, width = hist.shape[0], hist.shape[1], hist.shape[2]
        xs = torch.cat([hist.unsqueeze(2), self.embed_attributes(hist_items)], 2)  # [b, T, k, w]
        heads = xs.permute(0, 2, 1, 3)  # [b, k, T, w]
        q, key, v = heads.matmul(self.w_query), heads.matmul(self.w_key), heads.matmul(self.w_value)
        logits = q.matmul(key.transpose(-1, -2)) / math.sqrt(width)
        if self.routing:
            logits = logits * self.scores(xs).permute(0, 2, 1).unsqueeze(2)
        key_mask = mask.view(b, 1, 1, steps).expand(b, self.k, steps, steps)
        mixed = masked_softmax(logits, key_mask).matmul(v)
        out = self.ffn_out(self.ffn_in(mixed).relu())  # [b, k, T, w]
        interests: List[Tensor] = []
        for r, unit in enumerate(self.extractors):
            interests.append(unit(target, out[:, r], mask))
        target_attributes = self.embed_attributes(items).reshape(b, (self.k - 1) * width)
        hist_sum = masked_sum(hist, mask)
        return self.head(torch.cat([user, target, hist_sum, target * hist_sum, target_attributes] + interests,
                                   -1)).squeeze(-1)


class Embeddings(nn.Module):
    """The tables `user`, `item`, `cat` and, for a model trained with MICN, `item_aux`,
    `cat_aux`: an item is `[item, cat]` or `[item, cat, item_aux, cat_aux]`."""

    def __init__(self, w: Weights, prefix: str = "embeddings"):
        super().__init__()
        self.user = nn.Parameter(w.get(f"{prefix}.user", None, None))
        self.item = nn.Parameter(w.get(f"{prefix}.item", None, None))
        self.cat = nn.Parameter(w.get(f"{prefix}.cat", None, None))
        self.item_aux: Optional[nn.Parameter] = None
        self.cat_aux: Optional[nn.Parameter] = None
        # The widths the models' tensors are checked against: a user's vector, an item's.
        self.user_width = int(self.user.shape[1])
        self.width = int(self.item.shape[1] + self.cat.shape[1])
        self.items_count = int(self.item.shape[0])
        if w.has(f"{prefix}.item_aux"):
            self.item_aux = nn.Parameter(w.get(f"{prefix}.item_aux", self.item.shape[0], None))
            self.cat_aux = nn.Parameter(w.get(f"{prefix}.cat_aux", self.cat.shape[0], None))
            self.width += int(self.item_aux.shape[1] + self.cat_aux.shape[1])

    def items(self, items: Tensor, cats: Tensor) -> Tensor:
        item_aux, cat_aux = self.item_aux, self.cat_aux
        if item_aux is not None and cat_aux is not None:
            return torch.cat([self.item[items], self.cat[cats], item_aux[items], cat_aux[cats]], -1)
        return torch.cat([self.item[items], self.cat[cats]], -1)


MODELS = {"wide_deep": WideDeep, "din": Din, "dien": Dien, "mind": Mind, "mfn": Mfn, "camn": Camn}
# The models whose settings are read from the run's configuration.
CONFIGURED = ("mind", "mfn", "camn")


def model_kind(w: Weights) -> str:
    """Which of micn's main models the tensors are."""
    if w.has("main.gru.input.weight"):
        return "dien"
    if w.has("main.routing.bilinear"):
        return "mind"
    if w.has("main.similarity_scorer.output.weight"):
        return "mfn"
    if w.has("main.item_attributes"):
        return "camn"
    if w.has("main.deep.output.weight"):
        return "wide_deep"
    if w.has("main.head.output.weight"):
        return "din"
    raise ModelFileError(f"{w.source}: no tensors of a known main model (main.gru.*, main.deep.*, main.head.*)")


class Network(nn.Module):
    """A whole trained model: ids in, click probabilities out.

    Inputs, as `micn data export` writes them: `users`, `items`, `cats` `[b]` (int64),
    `hist_items`, `hist_cats` `[b, T]` (int64, real behaviours left-aligned, oldest first,
    padding 0) and `hist_mask` `[b, T]` (float, 1 for a real behaviour)."""

    def __init__(self, tensors: Dict[str, Tensor], source: str = "model", config: Optional[dict] = None,
                 config_source: str = "the run's configuration"):
        """`config`: the run's `[model]` table (needed for MIND, MFN and CAMN only), read from
        `config_source` (which errors in it name)."""
        super().__init__()
        w = Weights(tensors, source)
        settings = None if config is None else Settings(config, config_source)
        self.kind = model_kind(w)
        self.embeddings = Embeddings(w)
        if self.kind == "mind" and not w.has("main.head.output.weight"):
            self.main = MindRetrieval(w, self.embeddings, config=settings)
        elif self.kind in CONFIGURED:
            self.main = MODELS[self.kind](w, self.embeddings, config=settings)
        else:
            self.main = MODELS[self.kind](w, self.embeddings)
        w.check_all_used()

    def logits(self, users: Tensor, items: Tensor, cats: Tensor, hist_items: Tensor, hist_cats: Tensor,
               hist_mask: Tensor) -> Tensor:
        emb = self.embeddings
        return self.main(emb.user[users], emb.items(items, cats), emb.items(hist_items, hist_cats), hist_mask, items,
                         cats, hist_items, hist_cats)

    def forward(self, users: Tensor, items: Tensor, cats: Tensor, hist_items: Tensor, hist_cats: Tensor,
                hist_mask: Tensor) -> Tensor:
        return self.logits(users, items, cats, hist_items, hist_cats, hist_mask).sigmoid()
