r"""Saving and loading trained estimators.

A file holds a versioned JSON config and a ``state_dict``, written with
:func:`torch.save` to a temporary file and renamed into place. :func:`load` reads
it with ``weights_only=True``, so it never unpickles arbitrary objects, and
rebuilds the networks from the config. Only builders from ``sbikit`` and ``zuko``
and distributions from ``torch.distributions`` are rebuilt by name; a posterior
trained with a custom prior, summary network or flow builder is loaded by
passing that object again.

What can be saved is a :class:`Saveable`: a class that names its ``kind``, holds
every trained weight in ``network`` and rebuilds itself with
``from_config(config, **components)``. :func:`load` finds the class by the
``kind`` in the file and hands it the components the caller passes, so a new
kind of estimator needs no change here.
"""

__all__ = [
    "FORMAT_VERSION",
    "Saveable",
    "save",
    "load",
    "prior_spec",
    "prior_from_spec",
    "constraint_spec",
    "constraint_from_spec",
    "builder_spec",
    "check_components",
    "module_spec",
    "rebuild",
    "rebuild_prior",
]

import abc
import errno
import functools
import importlib
import inspect
import json
import os
import pickle
import io
import re
import torch
import uuid
import torch.distributions as D

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from .errors import FormatError
from .priors import BoxUniform, ProductPrior, SupportOnly, check_prior, check_same_prior

# 2: the prior's fingerprint in the config; observations standardized per feature
# 3: bounded parameters mapped by LinearTailsTransform, not the logistic (config "intervals")
# 4: "intervals" may name the tails' share, "linear-<eps>" (NPE's are 1% of the interval; "linear" is 5%)
# 5: NLE keeps the support of x (x_low, x_high, x_declared, x_knee) and estimators the range of x
#    trained on (x_range); files of 4 and below load with an unbounded support and range
# 6: NPE keeps the mean, whitening and radius of its training summaries (summary_range); files of 5
#    and below load with an infinite radius
# 7: NPE(bounds="truncate") truncates its flow to a bounded prior's box (intervals "truncated", box_low,
#    box_high);
#    files of 6 and below load untruncated, with the map they name
# 8: the range of x trained on keeps a generalized Pareto fit to each tail (x_range.threshold, tail, shape,
#    share); files of 7 and below load with exponential tails of a tenth of an sd from the range's ends
# 9: NLE may model observations that are all counts with an autoregressive count model (config
#    "counts", the model's settings, or None for the flow); files of 8 and below load with the flow
FORMAT_VERSION = 9
_MAGIC = "sbikit"
_TRUSTED = ("sbikit.", "zuko.")


class Saveable(abc.ABC):
    r"""What :func:`save` writes and :func:`load` reads back.

    A subclass sets the class attribute ``kind`` (the name written in the file,
    which registers the class with :func:`load`), holds every trained weight in
    ``network``, a :class:`torch.nn.Module`, and provides ``config()`` and
    ``from_config(config, **components)``; the keyword arguments of
    ``from_config`` are the components a caller may pass to :func:`load`.
    """

    kinds: ClassVar[dict[str, type]] = {}
    kind: ClassVar[str]
    network: torch.nn.Module

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in vars(cls):
            Saveable.kinds[cls.kind] = cls

    @abc.abstractmethod
    def config(self) -> dict:
        r"""Returns the JSON-able description that :meth:`from_config` rebuilds from."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: dict, **components) -> "Saveable":
        r"""Rebuilds an untrained object from :meth:`config`, with the components
        (prior, networks) that cannot be rebuilt by name."""

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device):
        r"""Moves the network to ``device`` and returns the object."""

        self.network.to(device)
        return self

    def save(self, path) -> None:
        r"""Writes the object to ``path`` atomically; :func:`sbikit.load` reads it back.

        The file holds a versioned JSON config and the network's ``state_dict``
        (see :mod:`sbikit.io`).
        """

        save(self, path)


def _kind(name: object) -> type:
    if name not in Saveable.kinds:
        importlib.import_module("sbikit.estimators")  # registers every kind sbikit defines
    return Saveable.kinds[name]


def _custom(name: str) -> FormatError:
    return FormatError(
        f"this file was trained with a custom {name}, which is not rebuilt by name; "
        f"pass it: sbikit.load(path, {name}=...)."
    )


def rebuild(name: str, given: object, spec: dict | None, *args) -> object:
    r"""Returns the component ``given`` by the caller, else the one ``spec`` describes,
    built with ``args`` (see :func:`build`).

    Raises:
        FormatError: If neither is there: the component was custom, so not rebuilt by name.
    """

    if given is not None:
        return given
    if spec is None:
        raise _custom(name)
    return build(spec, *args)


def rebuild_prior(given: D.Distribution | None, specs: dict) -> D.Distribution:
    r"""Returns the prior passed, checked against the saved fingerprint
    (``specs["prior_check"]``), else the one rebuilt from ``specs["prior"]``."""

    if given is None:
        if specs["prior"] is None:
            raise _custom("prior")
        return prior_from_spec(specs["prior"])
    prior = check_prior(given)
    if specs.get("prior_check") is not None:
        check_same_prior(prior, specs["prior_check"])
    return prior


def _resolve(target: str) -> object:
    module, _, name = target.partition(":")
    if not module.startswith(_TRUSTED) or not name:
        raise FormatError(f"refusing to import {target!r}: only sbikit and zuko builders are rebuilt by name.")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def builder_spec(builder: Callable) -> dict | None:
    r"""Describes a flow builder by import path and keyword arguments, or None if
    it cannot be rebuilt by name (a lambda, a local function, a foreign module)."""

    kwargs = {}
    while isinstance(builder, functools.partial):
        if builder.args:
            return None
        kwargs = {**builder.keywords, **kwargs}
        builder = builder.func
    module, name = getattr(builder, "__module__", ""), getattr(builder, "__qualname__", "")
    if not (module + ".").startswith(_TRUSTED) or "<" in name or not _jsonable(kwargs):
        return None
    return {"target": f"{module}:{name}", "kwargs": kwargs}


def module_spec(module: torch.nn.Module) -> dict | None:
    r"""Describes an sbikit network by class and constructor config, else None."""

    cls = type(module)
    config = getattr(module, "config", None)
    if not cls.__module__.startswith("sbikit.") or not isinstance(config, dict) or not _jsonable(config):
        return None
    return {"target": f"{cls.__module__}:{cls.__qualname__}", "kwargs": config}


def build(spec: dict, *args) -> object:
    r"""Calls the builder or class described by ``spec``."""

    return _resolve(spec["target"])(*args, **spec["kwargs"])


def _params(prior: D.Distribution) -> dict:
    names = list(prior.arg_constraints)
    if "scale_tril" in names:
        names = [n for n in names if n not in ("covariance_matrix", "precision_matrix")]
    if "logits" in names and "probs" in names:
        names.remove("probs")
    return {n: getattr(prior, n).tolist() if torch.is_tensor(getattr(prior, n)) else getattr(prior, n) for n in names}


def constraint_spec(constraint: D.constraints.Constraint) -> dict | None:
    r"""Describes a support as JSON-able data, or None for one that is not rebuilt by name.

    Example:
        >>> constraint_spec(D.constraints.independent(D.constraints.interval(0.0, 1.0), 1))
        {'name': 'independent', 'base': {'name': 'interval', 'lower': 0.0, 'upper': 1.0}, 'ndims': 1}
    """

    c = D.constraints
    if isinstance(constraint, c.independent):
        base = constraint_spec(constraint.base_constraint)
        if base is None:
            return None
        return {"name": "independent", "base": base, "ndims": constraint.reinterpreted_batch_ndims}
    for name in ("real", "real_vector", "positive", "nonnegative", "unit_interval"):
        if constraint is getattr(c, name):
            return {"name": name}
    kinds = {type(c.interval(0.0, 1.0)): "interval", type(c.greater_than(0.0)): "greater_than",
             type(c.less_than(0.0)): "less_than"}
    if type(constraint) in kinds:
        bounds = {k: getattr(constraint, k) for k in ("lower_bound", "upper_bound") if hasattr(constraint, k)}
        bounds = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in bounds.items()}
        if _jsonable(bounds):
            short = {"lower_bound": "lower", "upper_bound": "upper"}
            return {"name": kinds[type(constraint)], **{short[k]: v for k, v in bounds.items()}}
    return None


def constraint_from_spec(spec: dict) -> D.constraints.Constraint:
    r"""Rebuilds a support from :func:`constraint_spec`'s description."""

    c = D.constraints
    name = spec["name"]
    if name == "independent":
        return c.independent(constraint_from_spec(spec["base"]), spec["ndims"])
    if name in ("real", "real_vector", "positive", "nonnegative", "unit_interval"):
        return getattr(c, name)
    def bound(value: object) -> object:
        return torch.tensor(value) if isinstance(value, list) else value

    if name == "interval":
        return c.interval(bound(spec["lower"]), bound(spec["upper"]))
    if name == "greater_than":
        return c.greater_than(bound(spec["lower"]))
    if name == "less_than":
        return c.less_than(bound(spec["upper"]))
    raise FormatError(f"unknown support {name!r} in the saved config.")


def prior_spec(prior: D.Distribution) -> dict | None:
    r"""Describes a prior as JSON-able data, or None if it cannot be rebuilt.

    Example:
        >>> prior_spec(BoxUniform(torch.zeros(1), torch.ones(1)))
        {'type': 'BoxUniform', 'low': [0.0], 'high': [1.0]}
    """

    if isinstance(prior, SupportOnly):
        support = constraint_spec(prior.support)
        return None if support is None else {"type": "SupportOnly", "support": support, "dim": prior.event_shape[0]}
    if isinstance(prior, BoxUniform):
        return {"type": "BoxUniform", "low": prior.low.tolist(), "high": prior.high.tolist()}
    if isinstance(prior, ProductPrior):
        parts = [prior_spec(m) for m in prior.marginals]
        return None if None in parts else {"type": "ProductPrior", "marginals": parts}
    if type(prior) is D.Independent:
        base = prior_spec(prior.base_dist)
        return None if base is None else {"type": "Independent", "base": base, "ndims": prior.reinterpreted_batch_ndims}
    cls = type(prior)
    if getattr(D, cls.__name__, None) is not cls:
        return None
    spec = {"type": cls.__name__, "params": _params(prior)}
    try:  # keep the spec only if it rebuilds the same distribution
        rebuilt, probe = prior_from_spec(spec), prior.sample((8,))
        same = torch.allclose(rebuilt.log_prob(probe), prior.log_prob(probe), equal_nan=True)
    except Exception:  # noqa: BLE001 - any failure means the spec cannot stand in for the prior
        return None
    return spec if same and _jsonable(spec) else None


def prior_from_spec(spec: dict) -> D.Distribution:
    r"""Rebuilds a prior from :func:`prior_spec`'s description."""

    kind = spec["type"]
    if kind == "SupportOnly":
        return SupportOnly(constraint_from_spec(spec["support"]), spec["dim"])
    if kind == "BoxUniform":
        return BoxUniform(torch.tensor(spec["low"]), torch.tensor(spec["high"]))
    if kind == "ProductPrior":
        return ProductPrior([prior_from_spec(m) for m in spec["marginals"]])
    if kind == "Independent":
        return D.Independent(prior_from_spec(spec["base"]), spec["ndims"])
    cls = getattr(D, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, D.Distribution)):
        raise FormatError(f"unknown prior type {kind!r} in the saved config.")
    params = {k: torch.tensor(v) if isinstance(v, (list, float)) else v for k, v in spec["params"].items()}
    return cls(**params)


# what os.link raises where the file system has no hard links (FAT, some network mounts)
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, replace: bool = True, mode: int = 0o666) -> bool:
    r"""Writes ``data`` to ``path`` through a fsynced temporary file beside it and a rename,
    so that ``path`` holds all of ``data`` or what it held before, never a part.

    The file is created with ``mode`` less the umask. With ``replace=False`` an existing
    ``path`` is kept (a hard link, which fails if it exists) and False is returned. On a
    file system without hard links, ``path`` is then written by a rename if it does not
    exist yet: still never a partial file, but two writers at the same moment may both
    succeed, the last one's contents kept. The temporary file, ``.{name}.{8 hex}.tmp``, is
    removed whatever happens; errors (a full disk, say) are raised as the :class:`OSError`
    they are.
    """

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as error:
                if error.errno not in _NO_HARD_LINKS:
                    raise
                if path.exists():
                    return False
                os.replace(tmp, path)
        _fsync_directory(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def save(posterior, path: str | os.PathLike) -> None:
    r"""Writes a trained posterior to ``path`` atomically (temporary file, then rename).

    The file's permissions follow the umask, like any other file the user writes.
    """

    path = Path(path)
    config = {"kind": posterior.kind, **posterior.config()}
    payload = {
        "format": _MAGIC,
        "version": FORMAT_VERSION,
        "config": json.dumps(config, allow_nan=True),
        "state_dict": {k: v.detach().cpu() for k, v in posterior.network.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue())


def _read(path: Path, device: str) -> dict:
    r"""Reads the payload, turning every failure into a message that says what the file is."""

    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; pass the path of a saved posterior file (.sbk).")
    if not path.exists():
        raise FileNotFoundError(f"no file at {str(path)!r}; pass the path that Posterior.save wrote.")
    if path.stat().st_size == 0:
        raise FormatError(f"{str(path)!r} is empty (0 bytes); it is not an sbikit file, or its writing never finished.")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error):
            raise FormatError(
                f"{str(path)!r} holds Python objects other than tensors, which sbikit never unpickles "
                "(it loads with weights_only=True); it is not an sbikit file. Load it only if you trust "
                "it, with torch.load."
            ) from None
        reason = error
    except Exception as error:  # noqa: BLE001 - every other reading failure means a bad file
        reason = error
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(reason)).strip().splitlines()
    detail = f" ({type(reason).__name__}: {text[0]})" if text else f" ({type(reason).__name__})"
    raise FormatError(
        f"{str(path)!r} is not a readable sbikit file: it is truncated, damaged or in another format{detail}."
    ) from None


def check_components(cls: type, kind: str, components: dict) -> None:
    r"""Raises a TypeError naming the components that ``cls.from_config`` does not take
    (one that takes ``**components`` hands them on, and checks them there)."""

    parameters = inspect.signature(cls.from_config).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name in parameters if name != "config"]
    unknown = sorted(set(components) - set(accepted))
    if unknown:
        raise TypeError(
            f"load got {', '.join(map(repr, unknown))}, which a {kind} file does not take; "
            f"it takes {', '.join(map(repr, accepted))}."
        )


def load(path: str | os.PathLike, *, device: str = "cpu", **components):
    r"""Loads a posterior or likelihood written by its ``save`` method.

    Arguments:
        path: The file.
        device: Where to put the networks.
        components: What the saved class cannot rebuild by name, passed again and
            handed to its ``from_config``: for NPE, ``prior`` (a custom
            distribution), ``summary`` (an untrained instance of a custom summary
            network) and ``flow`` (a custom flow builder); for NLE, ``prior``,
            ``embedding`` and ``flow``. A ``prior`` passed is compared with the one
            trained with, and refused if it differs.

    Raises:
        FormatError: If the file is empty, truncated, foreign, from a newer
            format version, or needs a component that was not passed.
        ValueError: If a component passed differs from the one trained with.
    """

    path = Path(path)
    payload = _read(path, device)
    if not isinstance(payload, dict) or payload.get("format") != _MAGIC or "config" not in payload:
        raise FormatError(f"{str(path)!r} is not an sbikit file (no sbikit header).")
    version = payload.get("version")
    if not isinstance(version, int):
        raise FormatError(f"{str(path)!r} has no valid format version.")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{str(path)!r} has format version {version}, newer than the version this sbikit reads "
            f"({FORMAT_VERSION}); upgrade sbikit to load it."
        )
    try:
        config = json.loads(payload["config"])
        cls = _kind(config["kind"])
    except (KeyError, ValueError, TypeError) as error:
        raise FormatError(f"{str(path)!r} has a damaged config: {error}") from None
    check_components(cls, config["kind"], components)
    posterior = cls.from_config(config, **components)
    try:
        posterior.network.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as error:
        custom = [name for name in components if name != "prior"]
        hint = (
            f"the {' and '.join(custom)} passed must have the architecture it was trained with"
            if custom
            else "it was written by an incompatible version of sbikit, or damaged"
        )
        raise FormatError(f"the weights in {str(path)!r} do not fit the rebuilt networks; {hint}: {error}") from None
    posterior.network.to(device).eval()
    return posterior
