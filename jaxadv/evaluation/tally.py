"""The per-example results of an evaluation so far, gathered into its result."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxadv.evaluation.batch import _BatchResult
from jaxadv.evaluation.diagnostics import NAMES as INDICATOR_NAMES
from jaxadv.evaluation.layout import _Layout
from jaxadv.evaluation.result import EvaluationResult


class _Tally:
    """The per-example results so far (a resumed checkpoint's, then each batch's)."""

    def __init__(
        self, names: list[str], start: EvaluationResult | None, keep_adversarial: bool, diagnose: bool = False
    ) -> None:
        self.names = names
        self.keep_adversarial = keep_adversarial
        self.diagnose = diagnose
        self.flags: list[np.ndarray] = []  # [b, len(_DIAGNOSED)] bool per batch, with diagnose
        self.fooled_by: list[np.ndarray] = []
        self.norms: list[np.ndarray] = []
        self.queries: list[np.ndarray] = []
        self.advs: list[np.ndarray] = []
        self.non_finite = np.zeros(len(names), np.int64)
        self.non_finite_clean = 0
        self.seconds = np.zeros(len(names), np.float64)
        self.sessions = 1 if start is None else start.sessions + 1
        if start is not None:
            self.fooled_by.append(start.fooled_by)
            self.norms.append(start.perturbation_norm)
            self.queries.append(start.queries)
            self.non_finite += [start.non_finite.get(n, 0) for n in names]
            self.non_finite_clean = start.non_finite_clean
            self.seconds += [start.seconds.get(n, 0.0) for n in names]
            if diagnose and start.indicators is not None:
                self.flags.append(np.stack([start.indicators[k] for k in _DIAGNOSED], axis=1))

    def add(self, out: _BatchResult, flags: np.ndarray | None = None) -> None:
        """Add a batch's results, and its indicators of attack failure when diagnosing."""
        if flags is not None:
            self.flags.append(flags)
        self.fooled_by.append(out.fooled_by)
        self.norms.append(out.perturbation_norm)
        self.queries.append(out.queries)
        if self.keep_adversarial:
            self.advs.append(out.x_adv)
        self.non_finite += out.non_finite
        self.non_finite_clean += out.non_finite_clean
        self.seconds += out.seconds

    def result(
        self, eps: float, norm: str, batch_size: int, wall_seconds: float, layout: _Layout | None = None
    ) -> EvaluationResult:
        """The result so far; with ``layout``, every process's examples gathered (a collective)."""

        def joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        fooled_by = joined(self.fooled_by, np.int32)
        norms = joined(self.norms, np.float32)
        queries = joined(self.queries, np.int64)
        advs = np.concatenate(self.advs) if self.advs else None
        flags = np.concatenate(self.flags) if self.flags else np.zeros((0, len(_DIAGNOSED)), bool)
        non_finite, clean, seconds = self.non_finite, self.non_finite_clean, self.seconds
        if layout is not None and layout.processes > 1:
            # The only exchange of results between processes: once, at the end.
            if layout.agree(-len(fooled_by)) != -layout.agree(len(fooled_by)):
                raise ValueError("every process must evaluate the same number of examples")
            fooled_by, norms, queries = (layout.gather(a) for a in (fooled_by, norms, queries))
            advs = None if advs is None else layout.gather(advs)
            flags = layout.gather(flags)
            k = len(self.names)
            counts = layout.gather(np.append(non_finite, clean)).reshape(-1, k + 1).sum(axis=0)
            non_finite, clean = counts[:k], int(counts[k])
            seconds = layout.gather(seconds).reshape(-1, k).max(axis=0)  # wall time: the slowest process
            wall_seconds = float(layout.gather(np.asarray([wall_seconds], np.float64)).max())
        return EvaluationResult(
            eps=float(eps),
            norm=norm,
            attacks=list(self.names),
            fooled_by=fooled_by,
            perturbation_norm=norms,
            queries=queries,
            x_adv=advs,
            non_finite={n: int(c) for n, c in zip(self.names, non_finite, strict=True)},
            non_finite_clean=int(clean),
            seconds={n: float(t) for n, t in zip(self.names, seconds, strict=True)},
            batch_size=int(batch_size),
            wall_seconds=float(wall_seconds),
            sessions=self.sessions,
            indicators={k: flags[:, i] for i, k in enumerate(_DIAGNOSED)} if self.diagnose else None,
        )


#: The indicators ``evaluate(diagnose=True)`` computes (all but ``transfer_failure``,
#: which needs the surrogate an attack ran on).
_DIAGNOSED = INDICATOR_NAMES[:5]
