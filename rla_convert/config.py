"""The one object that describes a conversion; saved (as ``conversion``) with every exported checkpoint.

Everything that changes what a converted model computes lives here: the variant, the residual
function and its clip threshold, the gate-initialisation strategy, which layers stay softmax, the
short convolution, whether RoPE is kept, and the kernel backend. The pipeline fills in ``source``
(what was converted) and ``layers`` (one entry per replaced module: its path and the constructor
arguments of its new layer), which is all the exported modeling code needs to rebuild the model.

One field changes only how training runs, not what the model computes: ``recompute_states`` (see
``TRAINING_ONLY``). It reaches the layers of the live model and the distill recipes, but exports do not
store it and a resumed run may change it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import UserError

# gdn: the plain gated delta rule (RDN without its residual branch), the baseline conversions are
# compared against (rla_convert/layers/gdn_op.py)
VARIANTS = ("rla", "rdn", "gdn")
RESIDUAL_FUNCTIONS = ("clip", "tanh")
BACKENDS = (None, "torch", "triton", "naive")
# Fields that set how a model trains, not what it computes: the exported checkpoint's config does not store
# them (a reloaded model takes the layer defaults; rla_convert.layers.set_recompute_states changes them) and
# a distillation run resumes across a change of them (rla_convert.distill.trainer.recipe_fingerprint).
TRAINING_ONLY = ("recompute_states",)


@dataclass
class ConversionConfig:
    variant: str = "rdn"
    clip: float | None = 1.0  # None: no clipping, the residual is the raw prediction error
    residual: str = "clip"  # "clip" (Huber pseudo-residual) or "tanh" (log-cosh), paper Appendix B
    gate_init: str = "auto"  # a name from rla_convert.init.STRATEGIES
    keep_softmax: list[int] = field(default_factory=list)  # decoder-layer indices left as they are
    conv_size: int = 0  # short causal conv on q/k/v for softmax sources (0: none); GDN keeps its own
    keep_rope: bool = True  # softmax sources: rotate q/k as the original did before the feature map
    output_gate: bool = False  # softmax sources: add GDN's output norm + SiLU gate
    backend: str | None = None  # kernel backend; None lets rla_kernels pick
    seed: int = 0  # for the random parts of gate initialisation
    # training with the Triton kernels, memory against time (the rdn / rla ops' docstrings say what each keeps):
    # True (default), the backward rebuilds the chunk states from the walk's kept per-token tensors; False, the
    # forward keeps the states too (B=16 T=2k H=16 K=V=128 bf16 on an H200: RDN ~0.6 ms less fwd+bwd per layer
    # for 1.48 GB held until the backward, RLA ~0.7 ms for 0.67 GB). Passed to the rdn / rla op only when
    # False; ignored by inference, the torch backend and the gdn baseline. Training-only (TRAINING_ONLY): not
    # stored in exports.
    recompute_states: bool = True
    source: dict = field(default_factory=dict)  # filled by the pipeline: base model type, class, name
    layers: list[dict] = field(default_factory=list)  # filled by the pipeline: replaced modules

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise UserError(f"--variant {self.variant!r} is not known; accepted: {', '.join(VARIANTS)}")
        if self.residual not in RESIDUAL_FUNCTIONS:
            raise UserError(f"--residual {self.residual!r} is not known; accepted: {', '.join(RESIDUAL_FUNCTIONS)}")
        if self.clip is not None and not self.clip > 0:
            raise UserError(f"--clip must be a positive number (or 'none'), got {self.clip!r}")
        if self.conv_size < 0 or self.conv_size == 1:
            raise UserError(f"--conv-size must be 0 (no convolution) or at least 2, got {self.conv_size}")
        if self.backend not in BACKENDS:
            raise UserError(f"--backend {self.backend!r} is not known; accepted: torch, triton, naive (or leave unset)")
        from .init import STRATEGIES

        if self.gate_init != "auto" and self.gate_init not in STRATEGIES:
            raise UserError(f"--gate-init {self.gate_init!r} is not known; accepted: auto, {', '.join(STRATEGIES)}")
        if not isinstance(self.recompute_states, bool):
            raise UserError(f"recompute_states must be true or false (false keeps the state walk for the backward), "
                            f"got {self.recompute_states!r}")
        if any(i < 0 for i in self.keep_softmax):
            raise UserError(f"--keep-softmax: layer indices must be >= 0, got {self.keep_softmax}")

    def to_dict(self) -> dict:
        return asdict(self)

    def model_dict(self) -> dict:
        """``to_dict`` without the TRAINING_ONLY fields: what an exported checkpoint stores as ``conversion``."""
        return {k: v for k, v in self.to_dict().items() if k not in TRAINING_ONLY}

    @classmethod
    def from_dict(cls, data: dict) -> "ConversionConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_keep_softmax(spec: str | None, num_layers: int | None) -> list[int]:
    """``"0,15"`` keeps those layers; a bare count ``"4"`` keeps 4 evenly spaced layers (0 first).

    A single index is written with a trailing comma (``"3,"``). Indices are checked against the model's
    ``num_layers``; None checks the syntax alone (before the model is loaded). Keeping every layer is refused:
    nothing would be converted.
    """
    if spec is None or str(spec).strip() == "":
        return []
    text = str(spec).strip()
    usage = "expected layer indices like 0,15 (one layer: 15,) or a count like 4"
    try:
        if "," not in text:
            count = int(text)
            if count < 0 or (num_layers is not None and count > num_layers):
                raise UserError(f"--keep-softmax {count}: a count must be between 0 and the model's {num_layers} layers")
            indices = sorted({round(i * num_layers / count) for i in range(count)}) if count and num_layers else []
        else:
            parts = text.split(",")
            if parts[-1].strip() == "":  # the trailing comma of a single index
                parts = parts[:-1]
            if any(part.strip() == "" for part in parts):
                raise UserError(f"--keep-softmax {spec!r}: an empty item; {usage}")
            named = [int(part) for part in parts]
            twice = sorted({i for i in named if named.count(i) > 1})
            if twice:
                raise UserError(f"--keep-softmax {spec!r}: layer {twice[0]} is named twice")
            indices = sorted(named)
    except ValueError:
        raise UserError(f"--keep-softmax {spec!r}: {usage}") from None
    if num_layers is None:
        return indices
    bad = [i for i in indices if not 0 <= i < num_layers]
    if bad:
        raise UserError(f"--keep-softmax: layer index {bad[0]} is out of range; the model has layers 0-{num_layers - 1}")
    if num_layers and len(indices) == num_layers:
        raise UserError(f"--keep-softmax {spec!r} keeps all {num_layers} layers: nothing would be converted")
    return indices
