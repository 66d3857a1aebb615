"""Dynamic calibration (paper Section IV): BatchNorm statistics that keep tracking the chip.

:class:`NabnSession` is a drop-in for ``onnxruntime.InferenceSession.run``. One
onnxruntime session is built once; every BatchNorm's mean and variance are fed to it as
overridable initializers, and a dangling training-mode BatchNormalization on each BatchNorm
input reports that batch's statistics. After serving a batch (with the current
statistics) each BatchNorm's statistics move towards the batch's::

    mean <- m * mean + (1 - m) * mean_b        var <- m * var + (1 - m) * var_b (unbiased)

:class:`TemporalNoise` simulates a chip whose temporal fluctuation is re-drawn per batch
(the paper's ``N_T``), by feeding freshly drawn noisy weights to the same session: the
spatial draw ``N_S`` stays fixed per seed, ``eta`` may follow a schedule (a drifting
chip). Neither rebuilds the session per batch.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
from onnx import ModelProto, numpy_helper

from ..errors import DataError, NabnError, NothingToDoError
from ..model import ModelLike, all_nodes, batchnorm_nodes, load_model, read_record
from ..noise import NoiseModel
from ..passes.inject import noisy_tensor_names
from ..passes.write_stats import BN_MEAN, BN_VAR, WriteBatchNormStatsPass
from ..runtime import SERVE, make_overridable, make_session
from .batchnorms import name_batchnorms
from .statsgraph import ExposeBatchNormStatsPass

__all__ = ["NabnSession", "TemporalNoise"]


class TemporalNoise:
    """Noisy weights re-drawn per batch for one chip (fixed spatial draw, fresh temporal draw).

    Args:
        noise: the noise model; its seed is the chip instance.
        eta_schedule: optional function of the batch index giving that batch's eta (a
            drifting chip); the model's own eta when None.
    """

    def __init__(self, noise: NoiseModel, eta_schedule: Optional[Callable[[int], float]] = None):
        self.noise = noise
        self.eta_schedule = eta_schedule

    def weights(self, clean: Mapping[str, np.ndarray], draw: int) -> Dict[str, np.ndarray]:
        """The noisy weights for batch ``draw``."""
        noise = self.noise
        if self.eta_schedule is not None:
            noise = dataclasses.replace(noise, eta=float(self.eta_schedule(draw)))
        return {name: noise.apply(name, w, draw=draw) for name, w in clean.items()}


class NabnSession:
    """An inference session whose BatchNorm statistics follow the data it serves.

    Args:
        model: path or ``ModelProto`` with BatchNormalization nodes (calibrated or not).
        momentum: weight of the old statistics per served batch (``m``); lower tracks faster.
        update: keep updating (dynamic calibration); False serves with fixed statistics.
        noise: optional :class:`TemporalNoise` simulating a chip whose weights change per batch.
        providers: onnxruntime execution providers.
    """

    def __init__(
        self,
        model: ModelLike,
        *,
        momentum: float = 0.99,
        update: bool = True,
        noise: Optional[TemporalNoise] = None,
        providers: Optional[Sequence[str]] = None,
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        proto = load_model(copy.deepcopy(model) if isinstance(model, ModelProto) else model)
        name_batchnorms(proto)
        self.momentum = momentum
        self.update = update
        self.noise = noise
        self.batches = 0
        bns = batchnorm_nodes(proto)
        if not bns:
            raise NothingToDoError("the model has no BatchNormalization to calibrate; run nabn-onnx split first")
        # Each BatchNorm gets its own mean/var initializers, so feeding one cannot change another.
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        own = {n.name: {"mean": inits[n.input[BN_MEAN]].copy(), "var": inits[n.input[BN_VAR]].copy()} for n in bns}
        replaced = set()
        for node in bns:
            for slot, key in ((BN_MEAN, "mean"), (BN_VAR, "var")):
                name = f"{node.name}/nabn_running_{key}"
                proto.graph.initializer.append(numpy_helper.from_array(own[node.name][key], name))
                replaced.add(node.input[slot])
                node.input[slot] = name
        # the statistics' old initializers now have no reader: drop them, so that to_model()
        # does not hand onnxruntime unused initializers (it warns about each)
        still_read = {n for node in all_nodes(proto.graph) for n in node.input} | {o.name for o in proto.graph.output}
        keep = [t for t in proto.graph.initializer if t.name not in replaced or t.name in still_read]
        if len(keep) != len(proto.graph.initializer):
            del proto.graph.initializer[:]
            proto.graph.initializer.extend(keep)
        self._stat_names = {n.name: (n.input[BN_MEAN], n.input[BN_VAR]) for n in bns}
        self._state = {
            n.name: (own[n.name]["mean"].astype(np.float64), own[n.name]["var"].astype(np.float64)) for n in bns
        }
        self._dtype = {n.name: own[n.name]["mean"].dtype for n in bns}
        self._clean_weights: Dict[str, np.ndarray] = {}
        if noise is not None:
            if read_record(proto, "inject") is not None:
                raise NabnError(
                    "the model already carries injected noise (nabn.inject), so simulated noise would compound: "
                    "give NabnSession the clean model (with calibrated statistics) when simulating a chip"
                )
            names = noisy_tensor_names(proto, noise.noise.include_bias)
            self._clean_weights = {n: inits[n] for n in names}
            make_overridable(proto, names)
        make_overridable(proto, [name for pair in self._stat_names.values() for name in pair])
        self._model = copy.deepcopy(proto)
        self._user_outputs = [o.name for o in proto.graph.output]
        self._taps = ExposeBatchNormStatsPass(tap=[n.name for n in bns])(proto).details["outputs"]
        self._session = make_session(proto, optimization=SERVE, providers=providers)
        self._inputs = [
            i
            for i in self._session.get_inputs()
            if i.name not in set(list(self._clean_weights) + [n for pair in self._stat_names.values() for n in pair])
        ]

    def get_inputs(self):
        """The model's own inputs (as onnxruntime's NodeArg)."""
        return list(self._inputs)

    def get_outputs(self):
        """The model's own outputs."""
        return [o for o in self._session.get_outputs() if o.name in self._user_outputs]

    def run(self, output_names: Optional[List[str]], input_feed: Mapping[str, np.ndarray], run_options=None):
        """Serve one batch with the current statistics, then update them from it.

        Same signature and return value as ``onnxruntime.InferenceSession.run``.

        Raises:
            DataError: a batch of one sample while updating: a BatchNorm cannot measure a
                variance on one sample (the statistics would collapse towards that sample's
                own spatial statistics), the same rule ``calibrate`` applies. Serve such
                batches from a session with ``update=False``, or group samples into batches.
        """
        wanted = list(output_names) if output_names else list(self._user_outputs)
        feeds = dict(input_feed)
        if self.update:
            sizes = {
                np.asarray(feeds[i.name]).shape[0]
                for i in self._inputs
                if i.name in feeds and np.asarray(feeds[i.name]).ndim
            }
            if sizes and min(sizes) < 2:
                raise DataError(
                    "NabnSession got a batch of 1 sample: dynamic calibration needs at least 2 samples per batch to "
                    "measure a variance; group samples into batches, or serve them with update=False"
                )
        for bn, (mean_name, var_name) in self._stat_names.items():
            mean, var = self._state[bn]
            feeds[mean_name] = mean.astype(self._dtype[bn])
            feeds[var_name] = var.astype(self._dtype[bn])
        if self.noise is not None:
            feeds.update(self.noise.weights(self._clean_weights, self.batches))
        fetch = list(wanted)
        if self.update:
            for tap in self._taps.values():
                fetch += [tap.mean, tap.var, tap.shape]
        values = self._session.run(fetch, feeds, run_options)
        self.batches += 1
        if self.update:
            got = dict(zip(fetch, values))
            m = self.momentum
            for bn, tap in self._taps.items():
                shape = got[tap.shape]
                count = int(np.prod(shape) // shape[1])
                batch_var = got[tap.var].astype(np.float64) * (count / max(count - 1, 1))
                mean, var = self._state[bn]
                self._state[bn] = (m * mean + (1 - m) * got[tap.mean].astype(np.float64), m * var + (1 - m) * batch_var)
        return values[: len(wanted)]

    def statistics(self) -> Dict[str, tuple]:
        """Current ``{bn name: (mean, var)}`` (float64 copies)."""
        return {bn: (m.copy(), v.copy()) for bn, (m, v) in self._state.items()}

    def to_model(self) -> ModelProto:
        """A plain model holding the current statistics (weights as the model was given)."""
        model = copy.deepcopy(self._model)
        keep = {i.name for i in self._inputs}
        extra = [i for i in model.graph.input if i.name not in keep]
        for value in extra:
            model.graph.input.remove(value)
        WriteBatchNormStatsPass({bn: {"mean": m, "var": v} for bn, (m, v) in self._state.items()})(model)
        return model
