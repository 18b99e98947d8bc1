"""5CAT settings: the thresholds of the five gates and the sample sizes, from a YAML file.

``configs/fivecat.yaml`` holds the calibrated defaults (how they were chosen is documented
there and in the README). The file has two sections, ``thresholds`` and ``samples``; unknown
keys are rejected like in every other backlm config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backlm.config import CONFIG_DIR, from_dict, preset_path, read_yaml
from backlm.errors import UserError

DEFAULT_SPEC = "fivecat"


@dataclass
class Thresholds:
    """Pass marks of the gates (DESIGN.md §4); see configs/fivecat.yaml for their calibration."""

    offset_margin: float = 0.5  # θA, nats: logp(+1) − max over the other offsets
    direction_margin: float = 0.05  # θB, relative CE margin of the declared order
    marker_margin: float = 0.02  # θB for the marker of bidirectional models, relative
    context_drop: float = 0.05  # θC, nats per target: both ablations must cost at least this
    rollout_ratio: float = 0.2  # θD, greedy match rate / teacher-forced top-1 accuracy
    generalisation_gap: float = 0.5  # θE, mean relative CE gap OOD vs VAL per entropy bin
    inverted_below: float = -0.01  # a direction or marker margin below this is an inversion


@dataclass
class Samples:
    """How much text 5CAT reads, and the shape of its probes."""

    max_samples: int = 24  # documents per held-out set
    window: int = 128  # tokens per document window (capped by the model's seq_len)
    min_tokens: int = 40  # shortest window when documents are short
    ablate_last: int = 16  # K: targets whose context gate C ablates
    horizon: int = 4  # H: greedy rollout length of gate D
    entropy_bins: int = 8  # gate E bins (quantiles of the pooled predictive entropy)
    min_bin_tokens: int = 16  # a bin counts when both sets have this many tokens in it
    batch_rows: int = 8  # rows per forward pass (bounds the memory of full logits)
    scan_docs: int = 4000  # documents read at most per set while looking for long ones
    seed: int = 0


@dataclass
class FivecatSpec:
    """Everything that parameterises one 5CAT run."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    samples: Samples = field(default_factory=Samples)
    source: str = ""  # the YAML file it came from

    def with_max_samples(self, n: int | None) -> FivecatSpec:
        """A copy reading at most ``n`` documents per set (``None``: unchanged)."""
        if n is None:
            return self
        if n < 2:
            raise UserError(f"--max-samples must be at least 2, got {n}")
        samples = Samples(**{**vars(self.samples), "max_samples": n})
        return FivecatSpec(self.thresholds, samples, self.source)


def load_spec(name_or_path: str | Path | None = None) -> FivecatSpec:
    """Read a 5CAT spec (default ``configs/fivecat.yaml``); bad keys raise UserError."""
    path = Path(name_or_path) if name_or_path else CONFIG_DIR / f"{DEFAULT_SPEC}.yaml"
    if not path.is_file():
        path = preset_path(str(name_or_path))
    data = read_yaml(path)
    spec = from_dict(FivecatSpec, {k: v for k, v in data.items() if k != "source"})
    spec.source = str(path)
    s = spec.samples
    if s.max_samples < 2 or s.window < 8 or s.ablate_last < 1 or s.horizon < 1:
        raise UserError(f"{path}: samples need max_samples ≥ 2, window ≥ 8, ablate_last ≥ 1 "
                        "and horizon ≥ 1")
    if s.min_tokens < s.ablate_last + 4 or s.min_tokens < s.horizon + 4:
        raise UserError(f"{path}: samples.min_tokens must exceed ablate_last and horizon by 4")
    return spec
