r"""A run on disk: a manifest, the parameters, and immutable checksummed result shards.

A store is a directory::

    manifest.json        schema, root seed, N, simulator and prior fingerprints, options, versions
    theta.npy            all N parameter vectors, written before any simulation starts
    shards/              <start>-<stop>.<sha256 prefix>.npz: outputs and one record per simulation
    claims/              <cell>.claim: which process is running a cell, refreshed while it runs
    quarantine/          shards that failed their checksum, and temporary files left by a crash

Every file is written to a temporary file, fsynced and renamed into place, so a
reader sees a whole file or none. A shard is complete if and only if it exists and
the SHA-256 of its bytes starts with the digest in its name. Shards are ``.npz``
files read with ``allow_pickle=False``: numpy's own format, readable anywhere numpy
is, append-only by construction (a new shard is a new file), and with no
dependency beyond numpy; zarr and HDF5 would add a dependency and, for HDF5, a
single file that a crash mid-write can corrupt.

Cells of the run's grid (``chunk_size`` consecutive indices, fixed by the manifest)
are the unit of claims (:mod:`sbikit.runs.claims`): a process claims a cell before
running it and lets go after the cell's shard is in place, and a dead process's claim
is taken over, so two processes resuming one store run every index once.
"""

__all__ = ["Store", "StoreError", "StoreWriteError", "open_store"]

import errno
import hashlib
import io
import json
import numpy as np
import os
import platform
import re
import torch
import uuid

from collections.abc import Iterator
from pathlib import Path
from torch import Tensor

from .chunk import stack_outputs
from .claims import Claims
from ..io import atomic_write as _atomic_write
from ..data import STATUSES, Failure, Simulations

SCHEMA = 1
# a structured model's run (sets or series): its shards add the mask and the local parameters, which an
# sbikit that reads schema 1 only would drop; it refuses this schema instead
STRUCTURED_SCHEMA = 2
_SHARD = re.compile(r"^(\d{12})-(\d{12})\.([0-9a-f]{16})\.npz$")
_DIGEST = 16
KINDS = ("nan", "inf", "exception", "timeout", "crashed")


class StoreError(RuntimeError):
    r"""A store cannot be used for this run: it holds another run, or is incomplete."""


class StoreWriteError(OSError):
    r"""A file of the store could not be written (a full disk, say); nothing partial is left visible."""


def atomic_write(path: Path, data: bytes, replace: bool = True) -> bool:
    r"""Writes a file of the store as :func:`sbikit.io.atomic_write` does (mode 0644).

    Raises:
        StoreWriteError: If the disk is full or the write fails; no temporary file is left.
    """

    try:
        return _atomic_write(path, data, replace, mode=0o644)
    except OSError as error:
        hint = " The disk is full: free space and run again; finished shards are kept." if error.errno == errno.ENOSPC else ""
        raise StoreWriteError(error.errno, f"could not write {path}: {error.strerror or error}.{hint}") from error


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_DIGEST]


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def versions() -> dict:
    import sbikit

    return {"sbikit": sbikit.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _differences(old: dict, new: dict) -> list[str]:
    r"""What differs between a store's manifest and this run, in words."""

    out = []
    if old["seed"] != new["seed"]:
        out.append(f"the seed ({old['seed']} in the store, {new['seed']} here)")
    if old["num_simulations"] != new["num_simulations"]:
        out.append(f"num_simulations ({old['num_simulations']} in the store, {new['num_simulations']} here)")
    if old["simulator"] != new["simulator"]:
        a, b = old["simulator"], new["simulator"]
        what = f"{a['name']} and {b['name']}" if a["name"] != b["name"] else f"{a['name']}, whose code changed"
        out.append(f"the simulator ({what})")
    if old["prior"] != new["prior"]:
        out.append(f"the prior ({old['prior']['repr']} in the store, {new['prior']['repr']} here)")
    if old["options"] != new["options"]:
        out.append(f"the simulator options ({old['options']} in the store, {new['options']} here)")
    return out


class Store:
    r"""A simulation run on disk, read lazily; open one with :func:`open_store`.

    ``len(store)`` is the number of simulations done :math:`n` (those that succeeded and
    the failures recorded); ``store.num_simulations`` is the number planned :math:`N`.
    ``store.theta`` :math:`(n, D)`, ``store.x`` :math:`(n, *)` (NaN rows for failed
    simulations) and ``store.records`` have one row per simulation done, in index order:
    ``store.records["index"]`` says which, and for a complete store row ``i`` is simulation
    ``i``. They are read on first access, as the store stood then (open it again to see the
    shards that other processes have written since); ``store.failures`` lists the failed
    simulations. ``sbikit.NPE(prior).fit(store)`` trains on a complete store.

    Arguments:
        path: The run's directory.
        claim_ttl: Seconds after which a claim that is not refreshed is taken over.
    """

    def __init__(self, path: str | os.PathLike, claim_ttl: float = 300.0) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.path} is not a simulation store (it has no manifest.json).")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("schema") not in (SCHEMA, STRUCTURED_SCHEMA):
            raise StoreError(
                f"{self.path} has store schema {self.manifest.get('schema')}; this sbikit reads {SCHEMA} and "
                f"{STRUCTURED_SCHEMA}."
            )
        self.claims = Claims(self.path / "claims", claim_ttl)
        self.claim_ttl = claim_ttl
        self._cache: dict = {}

    # ---- creation -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, manifest: dict, theta: "Iterator[Tensor]", claim_ttl: float = 300.0) -> "Store":
        r"""Opens the store at ``path`` for the run that ``manifest`` describes, creating it if needed.

        ``theta`` yields the run's parameters in order; it is drawn only for a new store.

        Raises:
            StoreError: If ``path`` holds a run with another seed, simulator, prior or options.
        """

        path = Path(path)
        if not (path / "manifest.json").is_file():
            for sub in ("shards", "claims", "quarantine"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            if not (path / "theta.npy").is_file():
                buffer = io.BytesIO()
                # the parameters are identical in every process that gets here, so a replace is safe
                np.save(buffer, torch.cat(list(theta)).numpy())
                atomic_write(path / "theta.npy", buffer.getvalue())
            # the manifest comes last: a store with a manifest has its parameters
            atomic_write(path / "manifest.json", _json(manifest), replace=False)
        store = cls(path, claim_ttl)
        differs = _differences(store.manifest, manifest)
        if differs:
            raise StoreError(
                f"{path} holds another run, and this call differs in {'; '.join(differs)}. Pass another "
                "store directory, or the arguments the store was made with."
            )
        return store

    # ---- shards ---------------------------------------------------------------------------

    @property
    def num_simulations(self) -> int:
        r"""The number of simulations planned, :math:`N`; ``len(store)`` counts those done."""

        return int(self.manifest["num_simulations"])

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    def __len__(self) -> int:
        return sum(stop - start for start, stop, _ in self._listing())

    def _shard_files(self) -> list[tuple[int, int, Path]]:
        out = []
        for entry in os.scandir(self.path / "shards"):
            match = _SHARD.match(entry.name)
            if match:
                out.append((int(match[1]), int(match[2]), Path(entry.path)))
        return sorted(out)

    def _listing(self) -> list[tuple[int, int, Path]]:
        r"""The shards as this object first listed them, so that what it reads describes one set
        of simulations while other processes write more."""

        if "shards" not in self._cache:
            self._cache["shards"] = self._shard_files()
        return self._cache["shards"]

    def _quarantine(self, path: Path, reason: str) -> None:
        target = self.path / "quarantine" / f"{path.name}.{uuid.uuid4().hex[:6]}"
        try:
            os.replace(path, target)
        except FileNotFoundError:  # another process moved it first
            return
        atomic_write(target.with_name(target.name + ".why"), reason.encode() + b"\n")

    def verify(self) -> None:
        r"""Moves shards whose checksum fails, and temporary files that no live claim
        is writing, to ``quarantine/``; what they held is simulated again."""

        for start, stop, path in self._shard_files():
            if digest(path.read_bytes()) != _SHARD.match(path.name)[3]:
                self._quarantine(path, "checksum mismatch")
        live = set(self.claims.live())
        for entry in os.scandir(self.path / "shards"):
            if entry.name.endswith(".tmp"):
                cell = re.match(r"^\.(\d{12})-", entry.name)
                if cell is None or int(cell[1]) // self.chunk_size * self.chunk_size not in live:
                    self._quarantine(Path(entry.path), "temporary file left by an interrupted write")
        self._cache.clear()

    def done_mask(self) -> np.ndarray:
        r"""Whether each simulation has a result in a shard now, :math:`(N,)` booleans."""

        return self._done(self._shard_files())

    def _done(self, shards: list[tuple[int, int, Path]]) -> np.ndarray:
        done = np.zeros(self.num_simulations, dtype=bool)
        for start, stop, _ in shards:
            done[start:stop] = True
        return done

    @property
    def complete(self) -> bool:
        return bool(self.done_mask().all())

    def write_shard(self, start: int, x: np.ndarray | None, status: np.ndarray, duration: np.ndarray,
                    attempt: np.ndarray, failures: list[Failure], flags: dict, mask: np.ndarray | None = None,
                    local: np.ndarray | None = None) -> Path:
        r"""Writes the results of simulations ``start`` to ``start + len(status) - 1`` as one shard.

        A structured model's shard also holds the ``mask`` of its sets or series, :math:`(n, W)`,
        padded to the shard's widest row, and for mixed effects the ``local`` parameters,
        :math:`(n, W, K)`.

        Raises:
            StoreWriteError: If it cannot be written; no partial shard is left visible.
        """

        stop = start + len(status)
        fields = {
            "x": np.full(len(status), np.nan, np.float32) if x is None else np.ascontiguousarray(x, np.float32),
            "has_x": np.array(x is not None),
            "status": status.astype(np.uint8),
            "duration": duration.astype(np.float32),
            "attempt": attempt.astype(np.uint8),
            "failure_index": np.array([f.index for f in failures], np.int64),
            "failure_kind": np.array([KINDS.index(f.kind) for f in failures], np.uint8),
            "failure_type": np.array([f.error_type for f in failures], dtype=str),
            "failure_message": np.array([f.message for f in failures], dtype=str),
            "failure_attempt": np.array([f.attempt for f in failures], np.uint8),
            "unattributed": np.array(bool(flags.get("unattributed"))),
            "global_draws": np.array(bool(flags.get("global_draws"))),
        }
        if mask is not None:
            fields["mask"] = np.ascontiguousarray(mask, bool)
        if local is not None:
            fields["local"] = np.ascontiguousarray(local, np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, **fields)
        data = buffer.getvalue()
        path = self.path / "shards" / f"{start:012d}-{stop:012d}.{digest(data)}.npz"
        atomic_write(path, data)
        self._cache.clear()
        return path

    def _read(self, path: Path) -> dict:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    def shards(self) -> Iterator[tuple[int, int, dict]]:
        r"""Yields ``(start, stop, fields)`` for each shard, in index order."""

        for start, stop, path in self._listing():
            yield start, stop, self._read(path)

    # ---- lazily read contents -------------------------------------------------------------

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def theta(self) -> Tensor:
        r"""The parameters of the simulations done, :math:`(n, D)`, in index order (those of
        simulations not run yet are read with :meth:`theta_rows`)."""

        if "theta" not in self._cache:
            planned = np.load(self.path / "theta.npy", mmap_mode="r", allow_pickle=False)
            done = [planned[start:stop] for start, stop, _ in self._listing()]
            self._cache["theta"] = torch.from_numpy(np.concatenate([planned[:0], *done]))
        return self._cache["theta"]

    def theta_rows(self, start: int, stop: int) -> Tensor:
        r"""Parameters ``start`` to ``stop - 1`` of the run's :math:`N`, done or not, read without
        loading the rest."""

        array = np.load(self.path / "theta.npy", mmap_mode="r", allow_pickle=False)
        return torch.from_numpy(np.array(array[start:stop]))

    @property
    def structure(self) -> str | None:
        r"""``"set"`` or ``"series"`` for a structured model's run (its outputs are padded, with a
        :attr:`mask`), None for a simulator's."""

        return self.manifest["options"].get("structure")

    @property
    def x_shape(self) -> tuple[int, ...] | None:
        r"""The shape of one output; for sets and series, padded to the widest in the run."""

        if "x" in self._cache:
            return tuple(self._cache["x"].shape[1:])
        shape, width = None, int(self.manifest["options"].get("width", 0))
        for _, _, path in self._listing():
            with np.load(path, allow_pickle=False) as fields:
                if not fields["has_x"]:
                    continue
                if shape is None:
                    shape = tuple(fields["x"].shape[1:])
                if self.structure is None:
                    return shape
                width = max(width, fields["mask"].shape[1])  # the mask is the shard's small field
        return None if shape is None else (width, *shape[1:])

    def _outputs(self) -> None:
        r"""Reads every shard's outputs into the cache: ``x``, and for sets and series the
        ``mask`` and the local parameters, padded to the widest row."""

        if "x" in self._cache:
            return
        parts = []
        for start, stop, fields in self.shards():
            present = bool(fields["has_x"])

            def read(name: str) -> Tensor | None:
                return torch.from_numpy(fields[name]) if present and name in fields else None

            parts.append((stop - start, read("x"), read("mask"), read("local")))
        try:
            x, mask, local = stack_outputs(parts, int(self.manifest["options"].get("width", 0)))
        except ValueError as error:
            raise StoreError(f"the shards of {self.path} do not fit together: {error}") from None
        if x is None:
            raise StoreError(f"{self.path} holds no successful simulation yet.")
        self._cache.update(x=x, mask=mask, local=local)

    @property
    def x(self) -> Tensor:
        r"""The outputs of the simulations done, :math:`(n, *)`, in the rows of :attr:`theta`: NaN
        rows where a simulation failed. Sets and series are padded along their member or time
        axis, :math:`(n, W, L)`; :attr:`mask` says which entries are present."""

        self._outputs()
        return self._cache["x"]

    @property
    def mask(self) -> Tensor | None:
        r"""For sets and series, which members or time steps are present, :math:`(n, W)` (none
        for a simulation lost to a timeout or a crash); None for a simulator's run."""

        self._outputs()
        return self._cache["mask"]

    @property
    def theta_local(self) -> Tensor | None:
        r"""For mixed effects, each member's local parameters, :math:`(n, W, K)`; else None."""

        self._outputs()
        return self._cache["local"]

    @property
    def failures(self) -> tuple[Failure, ...]:
        r"""The failed simulations, in index order."""

        out = []
        for _, _, f in self.shards():
            for i, kind, kind_type, message, attempt in zip(
                f["failure_index"].tolist(), f["failure_kind"].tolist(), f["failure_type"].tolist(),
                f["failure_message"].tolist(), f["failure_attempt"].tolist(),
            ):
                out.append(Failure(i, KINDS[kind], message, kind_type, attempt))
        return tuple(out)

    @property
    def records(self) -> dict[str, np.ndarray]:
        r"""One record per simulation done, in the rows of :attr:`theta`: ``index``, ``status``
        (a name from ``"ok"``, ``"invalid"``, ``"error"``, ``"timeout"``, ``"crashed"``),
        ``duration`` (seconds) and ``attempt``, as arrays."""

        parts = {"index": [], "status": [], "duration": [], "attempt": []}
        for start, stop, f in self.shards():
            parts["index"].append(np.arange(start, stop))
            parts["status"].append(f["status"])
            parts["duration"].append(f["duration"])
            parts["attempt"].append(f["attempt"])
        out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        out["status"] = np.array(STATUSES, dtype=str)[out["status"].astype(int)] if len(out["index"]) else np.zeros(0, str)
        return out

    def simulations(self) -> Simulations:
        r"""Reads the whole run into memory as :class:`sbikit.Simulations`.

        Raises:
            StoreError: If simulations are missing (run ``simulate`` again with the
                same arguments to finish it).
        """

        missing = int((~self._done(self._listing())).sum())
        if missing:
            raise StoreError(
                f"{self.path} is missing {missing} of {self.num_simulations} simulations; call sbikit.simulate "
                "with the arguments it was made with (and store=) to finish it."
            )
        return Simulations(theta=self.theta, x=self.x, seed=self.seed, failures=self.failures, mask=self.mask,
                           structure=self.structure, theta_local=self.theta_local)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n={self.num_simulations}, done={len(self)}, seed={self.seed})"

    # ---- claims (see sbikit.runs.claims) --------------------------------------------------

    def claim(self, cell: int) -> bool:
        return self.claims.claim(cell)

    def release(self, cell: int) -> None:
        self.claims.release(cell)

    def refresh_claims(self) -> None:
        self.claims.refresh()

    def release_all(self) -> None:
        self.claims.release_all()


def open_store(path: str | os.PathLike) -> Store:
    r"""Opens a simulation store that :func:`sbikit.simulate` wrote with ``store=path``.

    Example:
        >>> import tempfile
        >>> prior = sbikit.BoxUniform(-torch.ones(2), torch.ones(2))
        >>> path = tempfile.mkdtemp() + "/run"
        >>> data = sbikit.simulate(lambda t: 2 * t, prior, 10, seed=0, store=path)
        >>> store = sbikit.open_store(path)
        >>> len(store), store.failures, torch.equal(store.x, data.x)
        (10, (), True)
    """

    return Store(path)
