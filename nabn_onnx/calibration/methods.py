"""The calibration methods: one small class per method, found by name in one registry.

Each method says which statistics it writes for every recalibrated BatchNorm, from the
BatchNorm's reference statistics (those it holds before calibration) and the train-mode
statistics measured on the noisy (``noisy``) and the clean (``clean``) model:

* ``"paper"`` (Algorithm 1): the noisy statistics. Every BatchNorm normalizes each batch
  with the batch's own statistics while the batches stream through (so each layer is
  measured under the recalibrated layers before it) and its running statistics are
  replaced by the estimate.
* ``"delta"``: keep each BatchNorm's reference statistics and apply only the change the
  noise causes, measured the same way on the clean and the noisy model. Needs the clean
  model. The noise is modelled per channel as the affine map that takes the clean
  activations' distribution (mean ``mu_c``, variance ``v_c``) to the noisy one
  (``mu_n``, ``v_n``)::

      x_noisy = mu_n + a * (x_clean - mu_c),      a = sqrt(v_n / v_c)

  The BatchNorm's stored statistics (``mean``, ``var``) describe the distribution it was
  trained for, which need not be the calibration data's (data unlike the training data is
  the case ``delta`` exists for). Pushing that distribution through the same map gives::

      mean' = mu_n + a * (mean - mu_c)  =  mean + (mu_n - mu_c) + (a - 1) * (mean - mu_c)
      var'  = a^2 * var                 =  var * v_n / v_c

  (the second form of ``mean'`` is the one computed: without noise it is ``mean`` bit for
  bit). Shifting the mean by ``mu_n - mu_c`` alone, as earlier versions did, leaves the
  offset ``mean - mu_c`` unscaled while the variance is rescaled, which is inconsistent as
  soon as the stored mean is off the calibration data's.
* ``"blend"``: the average of ``delta`` and ``paper`` (geometric for variances).
* ``"none"``: the reference statistics, unchanged.
* ``"auto"`` (default; needs the clean model): writes no statistics of its own but chooses
  among :data:`CANDIDATES` (``delta``, ``blend``, ``paper``, ``none``), each estimated on
  part of the calibration data and scored on the rest by the divergence of its outputs
  from the clean model's, sample by sample; a candidate replaces a simpler one only when
  it is better beyond the noise of those samples, and on labelled classifier data top-1
  can overrule the divergence the same way (:mod:`.scoring`, :mod:`.holdout`,
  :func:`.choice.decide`). Without a clean model it means ``paper``, checked against
  ``none`` by the chip guard.

``paper``, ``delta`` and ``auto`` are the public :data:`~.config.METHODS` (``selectable``);
``blend`` and ``none`` are ``auto``'s candidates only. A new method is one class here,
decorated with :func:`register`.
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional, Sequence, Tuple, Type

import numpy as np

from ..errors import NabnError
from .batchnorms import BNValues, Stats

__all__ = [
    "Method",
    "Paper",
    "Delta",
    "Blend",
    "Unchanged",
    "Auto",
    "METHOD_REGISTRY",
    "CANDIDATES",
    "register",
    "get_method",
    "selectable_methods",
    "new_stats",
    "delta_map",
]

#: Every method by name, in the order registered (``auto``, ``paper``, ``delta`` first: the CLI's order).
METHOD_REGISTRY: Dict[str, Type[Method]] = {}


def register(cls: Type[Method]) -> Type[Method]:
    """Class decorator: add a :class:`Method` to :data:`METHOD_REGISTRY` under its ``name``."""
    if cls.name in METHOD_REGISTRY:
        raise TypeError(f"method {cls.name!r} is registered twice")
    METHOD_REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        NabnError: no method has that name (one line naming the known ones).
    """
    try:
        return METHOD_REGISTRY[name]()
    except KeyError:
        raise NabnError(f"unknown method {name!r}; choose one of {', '.join(METHOD_REGISTRY)}") from None


def selectable_methods() -> Tuple[str, ...]:
    """The names users may ask for (``method="..."``), in registry order."""
    return tuple(name for name, cls in METHOD_REGISTRY.items() if cls.selectable)


class Method:
    """One calibration method: which statistics it writes.

    Attributes:
        name: the ``method="..."`` string.
        selectable: users may ask for it (else it is only one of ``auto``'s candidates).
        needs_clean: it reads the clean model's train-mode statistics.
        chooses: it writes no statistics of its own but scores :attr:`candidates` and keeps one.
        candidates: what it chooses among (``chooses`` only).
    """

    name: ClassVar[str] = ""
    selectable: ClassVar[bool] = False
    needs_clean: ClassVar[bool] = False
    chooses: ClassVar[bool] = False
    candidates: ClassVar[Tuple[str, ...]] = ()

    def statistics(self, names: Sequence[str], reference: BNValues, noisy: Stats, clean: Optional[Stats]) -> BNValues:
        """``{bn name: {"mean", "var"}}`` this method writes for the BatchNorms ``names``.

        Args:
            names: the BatchNorms recalibrated.
            reference: their statistics before calibration.
            noisy: the chip's train-mode statistics (Algorithm 1).
            clean: the clean model's train-mode statistics, None when no clean model is known.
        """
        return {name: self.layer(name, reference[name], noisy, clean) for name in names}

    def layer(
        self, name: str, reference: Dict[str, np.ndarray], noisy: Stats, clean: Optional[Stats]
    ) -> Dict[str, np.ndarray]:
        """The statistics of one BatchNorm (see :meth:`statistics`)."""
        raise NotImplementedError


def delta_map(
    reference: Dict[str, np.ndarray], noisy: Tuple[np.ndarray, np.ndarray], clean: Tuple[np.ndarray, np.ndarray]
) -> Tuple[np.ndarray, np.ndarray]:
    """``(mean', var')``: the reference statistics through the noise's per-channel affine map (module docstring)."""
    mean_r, var_r = reference["mean"], reference["var"]
    mean_n, var_n = noisy
    mean_c, var_c = clean
    ratio = _safe_ratio(var_n, var_c)
    mean_d = mean_r + (mean_n - mean_c) + (np.sqrt(ratio) - 1.0) * (mean_r - mean_c)
    var_d = var_r * ratio
    return mean_d, var_d


@register
class Auto(Method):
    """Score :attr:`candidates` on held-out samples and keep the best (:mod:`.choice`)."""

    name = "auto"
    selectable = True
    needs_clean = True
    chooses = True
    candidates = ("delta", "blend", "paper", "none")

    def layer(
        self, name: str, reference: Dict[str, np.ndarray], noisy: Stats, clean: Optional[Stats]
    ) -> Dict[str, np.ndarray]:
        """``auto`` writes the statistics of the candidate it chose, never its own."""
        raise TypeError("'auto' writes the statistics of the candidate it chooses")


@register
class Paper(Method):
    """Algorithm 1: the chip's train-mode statistics."""

    name = "paper"
    selectable = True

    def layer(
        self, name: str, reference: Dict[str, np.ndarray], noisy: Stats, clean: Optional[Stats]
    ) -> Dict[str, np.ndarray]:
        """The noisy statistics."""
        mean_n, var_n = noisy[name]
        return {"mean": mean_n, "var": var_n}


@register
class Delta(Method):
    """The reference statistics moved by the change the noise causes (:func:`delta_map`)."""

    name = "delta"
    selectable = True
    needs_clean = True

    def layer(
        self, name: str, reference: Dict[str, np.ndarray], noisy: Stats, clean: Optional[Stats]
    ) -> Dict[str, np.ndarray]:
        """The reference statistics through the noise's affine map."""
        assert clean is not None, f"{self.name!r} needs the clean statistics"
        mean_d, var_d = delta_map(reference, noisy[name], clean[name])
        return {"mean": mean_d, "var": var_d}


@register
class Blend(Method):
    """The average of ``delta`` and ``paper`` (geometric for variances)."""

    name = "blend"
    needs_clean = True

    def layer(
        self, name: str, reference: Dict[str, np.ndarray], noisy: Stats, clean: Optional[Stats]
    ) -> Dict[str, np.ndarray]:
        """``0.5 (mean_delta + mean_paper)``, ``sqrt(var_delta var_paper)``."""
        mean_n, var_n = noisy[name]
        assert clean is not None, f"{self.name!r} needs the clean statistics"
        mean_d, var_d = delta_map(reference, noisy[name], clean[name])
        return {"mean": 0.5 * (mean_d + mean_n), "var": np.sqrt(var_d * var_n)}


@register
class Unchanged(Method):
    """``"none"``: the statistics left as they are."""

    name = "none"

    def layer(
        self, name: str, reference: Dict[str, np.ndarray], noisy: Stats, clean: Optional[Stats]
    ) -> Dict[str, np.ndarray]:
        """The reference statistics."""
        return {"mean": reference["mean"], "var": reference["var"]}


#: Candidates ``auto`` scores, in order of preference on ties.
CANDIDATES = Auto.candidates


def new_stats(method: str, names: Sequence[str], reference: BNValues, noisy: Stats, clean: Optional[Stats]) -> BNValues:
    """The statistics the method (or ``auto``'s candidate) ``method`` writes (:meth:`Method.statistics`)."""
    return get_method(method).statistics(names, reference, noisy, clean)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 1 where the clean variance is zero (a dead channel stays as it was)."""
    out = np.ones_like(num)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out
