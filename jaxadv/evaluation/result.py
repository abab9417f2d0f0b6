"""The result of a robustness evaluation: per-example flags and the summary figures."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxadv.evaluation.adaptive import AdaptiveReport
from jaxadv.evaluation.certified import CertifiedResult
from jaxadv.evaluation.diagnostics import FIXES
from jaxadv.evaluation.files import read_json, write_json_atomic

#: ``fooled_by`` codes for examples no attack was needed for, or none succeeded on.
MISCLASSIFIED = -2
ROBUST = -1


@dataclasses.dataclass
class EvaluationResult:
    """Per-example outcome of :func:`jaxadv.evaluate`.

    Attributes:
      eps, norm: the threat model.
      attacks: attack names, in the order they ran.
      fooled_by: ``[n]`` int; index into ``attacks`` of the first attack that
        fooled the model, ``-1`` (:data:`ROBUST`) if none did, ``-2``
        (:data:`MISCLASSIFIED`) if the clean example was already misclassified.
      perturbation_norm: ``[n]`` float; norm of the stored adversarial
        perturbation (0 for robust or misclassified examples).
      queries: ``[n]`` int; model queries spent by score-based attacks.
      warnings: gradient-masking and sanity warnings, each naming what looks wrong.
      checks: figures behind the warnings (accuracy at large eps, single-step vs
        iterative, ...).
      x_adv: optional ``[n, ...]`` adversarial examples (the clean example where
        no attack succeeded).
      non_finite: per attack, how many candidates it returned with a NaN or inf
        (in the example or in the model's logits on it); each counted as a
        failed attack on its example.
      non_finite_clean: clean examples on which the model's logits were not
        finite; each counted as misclassified.
      seconds: per attack, wall-clock seconds spent in it, summed over batches.
      batch_size: examples per batch the run ended with (with ``batch_size="auto"``,
        the size found to fit); ``None`` when unknown (a file from an older version).
      wall_seconds: wall-clock seconds of the whole run over its examples: reading,
        transfers, every attack, checkpoint writes and any batch retried after an
        out-of-memory error, summed over resumed sessions; not the masking checks.
      sessions: how many sessions (a first run and its resumptions) ``wall_seconds``
        adds up; 1 for a run that was never interrupted.
      certified: with ``evaluate(..., certify=...)``, the certified accuracy of the
        same examples at each radius (a lower bound, beside ``robust_accuracy``, an
        upper bound); ``None`` otherwise.
      indicators: with ``evaluate(..., diagnose=True)``, the per-example indicators
        of attack failure (:mod:`jaxadv.evaluation.diagnostics`): indicator name ->
        ``[n]`` bool; ``None`` otherwise.
      adaptive: with ``evaluate(..., adaptive=True)``, what the adaptive re-attack
        of the flagged robust examples ran and fooled
        (:class:`jaxadv.evaluation.adaptive.AdaptiveReport`); ``None`` otherwise.
    """

    eps: float
    norm: str
    attacks: list[str]
    fooled_by: np.ndarray
    perturbation_norm: np.ndarray
    queries: np.ndarray
    warnings: list[str] = dataclasses.field(default_factory=list)
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    x_adv: np.ndarray | None = None
    non_finite: dict[str, int] = dataclasses.field(default_factory=dict)
    non_finite_clean: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    batch_size: int | None = None
    wall_seconds: float = 0.0
    certified: CertifiedResult | None = None
    sessions: int = 1
    indicators: dict[str, np.ndarray] | None = None
    adaptive: AdaptiveReport | None = None

    def __repr__(self) -> str:
        return (
            f"EvaluationResult(n={self.num_examples}, clean_accuracy={self.clean_accuracy:.4g}, "
            f"robust_accuracy={self.robust_accuracy:.4g}, norm={self.norm!r}, eps={self.eps:g}, "
            f"attacks={self.attacks}, warnings={len(self.warnings)}"
            + ("" if self.certified is None else f", certified={self.certified!r}")
            + ")"
        )

    @property
    def num_examples(self) -> int:
        return int(self.fooled_by.shape[0])

    @property
    def clean_correct(self) -> np.ndarray:
        """``[n]`` bool: the model classifies the clean example correctly."""
        return self.fooled_by != MISCLASSIFIED

    @property
    def robust(self) -> np.ndarray:
        """``[n]`` bool: correctly classified and no attack of the suite succeeded."""
        return self.fooled_by == ROBUST

    @property
    def num_misclassified(self) -> int:
        return int(np.sum(~self.clean_correct))

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean(self.clean_correct)) if self.num_examples else float("nan")

    @property
    def robust_accuracy(self) -> float:
        """Fraction of examples that every attack failed on (per-example worst case)."""
        return float(np.mean(self.robust)) if self.num_examples else float("nan")

    @property
    def examples_per_second(self) -> float:
        """Throughput: ``num_examples / wall_seconds`` (NaN when no time was recorded)."""
        return self.num_examples / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def robust_accuracy_after(self) -> dict[str, float]:
        """Robust accuracy after each attack of the suite, cumulatively, in order."""
        out: dict[str, float] = {}
        for i, name in enumerate(self.attacks):
            still = self.clean_correct & ((self.fooled_by == ROBUST) | (self.fooled_by > i))
            out[name] = float(np.mean(still)) if self.num_examples else float("nan")
        return out

    def fooled_counts(self) -> dict[str, int]:
        """How many examples each attack was the first to fool."""
        return {name: int(np.sum(self.fooled_by == i)) for i, name in enumerate(self.attacks)}

    def summary(self) -> str:
        """A plain-text table of the evaluation."""
        n = self.num_examples
        lines = [
            f"threat model: {self.norm}, eps={self.eps:g}; {n} examples",
            f"{'':<24}{'accuracy':>10}{'fooled':>8}",
            f"{'clean':<24}{self.clean_accuracy:>10.2%}{self.num_misclassified:>8}"
            "  (misclassified, not attacked)",
        ]
        counts = self.fooled_counts()
        for name, acc in self.robust_accuracy_after().items():
            lines.append(f"{'after ' + name:<24}{acc:>10.2%}{counts[name]:>8}")
        lines.append(f"{'robust (worst case)':<24}{self.robust_accuracy:>10.2%}")
        if self.certified is not None:
            lines += self.certified.summary_lines(
                eps=self.eps, norm=self.norm, robust_accuracy=self.robust_accuracy
            )
        fooled = self.perturbation_norm[(self.fooled_by >= 0)]
        if fooled.size:
            lines.append(f"median {self.norm} norm of successful perturbations: {np.median(fooled):.4g}")
        if np.any(self.queries):
            lines.append(f"model queries by score-based attacks: {int(np.sum(self.queries))}")
        if self.seconds:
            timing = ", ".join(f"{name} {t:.3g}" for name, t in self.seconds.items())
            lines.append(f"seconds per attack: {timing}")
        if self.wall_seconds > 0:
            size = "" if self.batch_size is None else f", batch size {self.batch_size}"
            parts = (
                ""
                if self.sessions <= 1
                else f"; a resumed run: the times of its {self.sessions} sessions added, restarts not counted"
            )
            lines.append(
                f"throughput: {self.examples_per_second:.4g} examples/s "
                f"({n} examples in {self.wall_seconds:.4g} s{size}{parts})"
            )
        elif self.batch_size is not None:
            lines.append(f"batch size: {self.batch_size}")
        masking = self._masking_line()
        if masking:
            lines.append(masking)
        lines += self._indicator_lines()
        for w in self.warnings:
            lines.append(f"WARNING: {w}")
        return "\n".join(lines)

    @property
    def adaptive_robust_accuracy(self) -> float:
        """Robust accuracy after the adaptive re-attack: the examples the suite left
        robust that no fix fooled. ``robust_accuracy`` without ``adaptive=True``."""
        if self.adaptive is None or not self.num_examples:
            return self.robust_accuracy
        return float(np.mean(self.robust & ~np.asarray(self.adaptive.fooled, bool)))

    def indicator_counts(self) -> dict[str, int]:
        """How many examples each indicator of attack failure fired on (empty without
        ``diagnose=True``)."""
        return {name: int(np.sum(v)) for name, v in (self.indicators or {}).items()}

    def untrusted(self) -> np.ndarray:
        """``[n]`` bool: some indicator of attack failure fired on the example (all
        ``False`` without ``diagnose=True``)."""
        out = np.zeros(self.num_examples, bool)
        for v in (self.indicators or {}).values():
            out |= np.asarray(v, bool)
        return out

    def _indicator_lines(self) -> list[str]:
        if self.indicators is None:
            return []
        counts = self.indicator_counts()
        untrusted = self.untrusted()
        flagged, robust_flagged = int(np.sum(untrusted)), int(np.sum(untrusted & self.robust))
        lines = [
            f"indicators of attack failure: {flagged} of {self.num_examples} examples flagged "
            f"({robust_flagged} of them counted robust)"
        ]
        for name, count in counts.items():
            lines.append(f"  {name:<24}{count:>6}" + (f"  fix: {FIXES[name]}" if count else ""))
        if self.adaptive is not None:
            a = self.adaptive
            lines.append(
                f"adaptive re-attack of the flagged robust examples: robust accuracy "
                f"{self.robust_accuracy:.2%} -> {self.adaptive_robust_accuracy:.2%} "
                f"({int(np.sum(a.fooled))} more fooled)"
            )
            for fix, ran in a.ran.items():
                lines.append(f"  {fix:<24}ran on {ran}, fooled {a.fooled_by_fix.get(fix, 0)}")
        return lines

    def _masking_line(self) -> str:
        """The figures behind the gradient-masking checks (``checks``), on one line;
        empty when the checks did not run."""
        c = self.checks
        parts = []
        if "accuracy_at_large_eps" in c:
            parts.append(
                f"BIM-50 at eps={c.get('large_eps', float('nan')):g} {c['accuracy_at_large_eps']:.1%}"
            )
        if "accuracy_single_step" in c and "accuracy_iterative" in c:
            parts.append(f"FGSM {c['accuracy_single_step']:.1%} vs PGD-20 {c['accuracy_iterative']:.1%}")
        if "black_box_only_successes" in c:
            parts.append(f"black-box-only successes {c['black_box_only_successes']:.1%}")
        elif "accuracy_black_box" in c:
            parts.append(f"Square (300 queries) {c['accuracy_black_box']:.1%}")
        if not parts:
            return ""
        return "masking checks (accuracy on the first examples): " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (adversarial examples are not included)."""
        return {
            "eps": float(self.eps),
            "norm": self.norm,
            "attacks": list(self.attacks),
            "num_examples": self.num_examples,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_after": self.robust_accuracy_after(),
            "num_misclassified": self.num_misclassified,
            "fooled_by": self.fooled_by.astype(int).tolist(),
            "perturbation_norm": self.perturbation_norm.astype(float).tolist(),
            "queries": self.queries.astype(int).tolist(),
            "non_finite": {name: int(self.non_finite.get(name, 0)) for name in self.attacks},
            "non_finite_clean": int(self.non_finite_clean),
            "seconds": {name: float(self.seconds.get(name, 0.0)) for name in self.attacks},
            "batch_size": self.batch_size,
            "wall_seconds": float(self.wall_seconds),
            "sessions": int(self.sessions),
            "examples_per_second": self.examples_per_second if self.wall_seconds > 0 else None,
            "warnings": list(self.warnings),
            "checks": _jsonable(self.checks),
            "certified": None if self.certified is None else self.certified.to_dict(),
            "indicators": None
            if self.indicators is None
            else {name: np.asarray(v, bool).tolist() for name, v in self.indicators.items()},
            "indicator_counts": self.indicator_counts(),
            "adaptive": None if self.adaptive is None else self.adaptive.to_dict(),
            "adaptive_robust_accuracy": None if self.adaptive is None else self.adaptive_robust_accuracy,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationResult:
        return cls(
            eps=float(d["eps"]),
            norm=str(d["norm"]),
            attacks=list(d["attacks"]),
            fooled_by=np.asarray(d["fooled_by"], np.int32),
            perturbation_norm=np.asarray(d["perturbation_norm"], np.float32),
            queries=np.asarray(d["queries"], np.int64),
            warnings=list(d.get("warnings", [])),
            checks=dict(d.get("checks", {})),
            non_finite={str(k): int(v) for k, v in d.get("non_finite", {}).items()},
            non_finite_clean=int(d.get("non_finite_clean", 0)),
            seconds={str(k): float(v) for k, v in d.get("seconds", {}).items()},
            batch_size=None if d.get("batch_size") is None else int(d["batch_size"]),
            wall_seconds=float(d.get("wall_seconds", 0.0)),
            certified=None if d.get("certified") is None else CertifiedResult.from_dict(d["certified"]),
            sessions=int(d.get("sessions", 1)),
            indicators=None
            if d.get("indicators") is None
            else {str(k): np.asarray(v, bool) for k, v in d["indicators"].items()},
            adaptive=None if d.get("adaptive") is None else AdaptiveReport.from_dict(d["adaptive"]),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically (a reader never sees half a file)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvaluationResult:
        """Read a result (or a checkpoint) written by :meth:`save`.

        Raises:
          CheckpointError: the file is not valid JSON (truncated or garbled).
        """
        return cls.from_dict(read_json(path, "result file"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return np.asarray(value).tolist()
    return value
