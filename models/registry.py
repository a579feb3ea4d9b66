"""The model registry: versioned, checksummed model folders, published atomically.

Layout under a registry root::

    <kind>/<version>/manifest.json + payload files   kind: "base" (TFX) or "delta" (FTRL)
    <kind>/CURRENT                                    the promoted version (else: the newest)
    <kind>/history.jsonl                              every promote / rollback, in order

A version folder is written under a hidden temporary name and renamed into place, so readers
never see half a model. The manifest records a SHA-256 per payload file; ``verify`` refuses a
folder whose files do not match, or whose feature-spec fingerprint differs from the one the
caller serves, with a clear ``RegistryError`` -- the caller keeps its current model.

>>> import tempfile
>>> reg = Registry(tempfile.mkdtemp())
>>> v1 = reg.publish("delta", {"weights.npz": b"w1"}, {"spec_fingerprint": "fp"}).version
>>> v2 = reg.publish("delta", {"weights.npz": b"w2"}, {"spec_fingerprint": "fp"}).version
>>> reg.versions("delta"), reg.current("delta")
(['000000000001', '000000000002'], '000000000002')
>>> reg.rollback("delta", v1).version, reg.current("delta")
('000000000001', '000000000001')
>>> reg.verify("delta", v2, fingerprint="other")
Traceback (most recent call last):
...
models.registry.RegistryError: delta 000000000002: feature-spec fingerprint 'fp' does not match the served 'other'
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

KINDS = ("base", "delta")
MANIFEST = "manifest.json"
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class RegistryError(Exception):
    """A model folder that must not be loaded: missing, corrupted or incompatible."""


@dataclass(frozen=True)
class ModelRef:
    kind: str
    version: str
    path: Path
    manifest: dict


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, kind: str) -> Path:
        if kind not in KINDS:
            raise RegistryError(f"unknown model kind {kind!r}; one of {KINDS}")
        return self.root / kind

    def _version_dir(self, kind: str, version: str) -> Path:
        """A version's folder; the name (from a CURRENT pointer, a manifest, a command line)
        must be a plain folder name: no path can leave the registry."""
        if not isinstance(version, str) or not VERSION.fullmatch(version) or ".." in version:
            raise RegistryError(f"{kind}: invalid version name {version!r}")
        return self._dir(kind) / version

    @staticmethod
    def _inside(folder: Path, name: str) -> Path:
        """A payload file of a version folder; names that would leave it are refused."""
        f = (folder / name).resolve()
        if Path(name).is_absolute() or not f.is_relative_to(folder.resolve()):
            raise RegistryError(f"file name {name!r} leaves the version folder {folder}")
        return f

    def versions(self, kind: str) -> list[str]:
        """Published versions, oldest first (hidden in-progress folders are not versions)."""
        d = self._dir(kind)
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.exists() else []

    def publish(self, kind: str, files: dict[str, bytes], manifest: dict, version: str | None = None) -> ModelRef:
        """Write ``files`` and a manifest (``version``, ``kind``, ``created_unix``, checksums,
        plus the caller's fields) as a new version, atomically. Publishing an existing
        version again is a no-op if its files are the same (a replayed snapshot)."""
        d = self._dir(kind)
        d.mkdir(parents=True, exist_ok=True)
        if version is None:
            version = f"{int(max(self.versions(kind), default='0')) + 1:012d}"
        final = self._version_dir(kind, version)
        sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        if final.exists():
            return self._same_or_error(kind, version, sums)
        tmp = d / f".{version}.inprogress-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():  # names may be relative paths (a SavedModel's tree)
            try:
                f = self._inside(tmp, name)
            except RegistryError:
                shutil.rmtree(tmp)
                raise
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
        full = {**manifest, "kind": kind, "version": version, "files": sums,
                "created_unix": manifest.get("created_unix", time.time())}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another writer published it first
            shutil.rmtree(tmp)
            return self._same_or_error(kind, version, sums)
        return ModelRef(kind, version, final, full)

    def _same_or_error(self, kind: str, version: str, sums: dict) -> ModelRef:
        ref = self.verify(kind, version)
        if ref.manifest.get("files") != sums:
            raise RegistryError(f"{kind} {version} exists with different contents")
        return ref

    def verify(self, kind: str, version: str, fingerprint: str | None = None) -> ModelRef:
        """The version's folder, if it is complete, uncorrupted and (given a fingerprint) built
        for the same feature spec; else ``RegistryError`` saying why."""
        path = self._version_dir(kind, version)
        where = f"{kind} {version}"
        if not path.is_dir():
            raise RegistryError(f"{where}: no such version in {self._dir(kind)}")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(f"{where}: unreadable manifest ({e})") from None
        if not isinstance(manifest, dict):
            raise RegistryError(f"{where}: manifest is not a JSON object")
        for name, want in (manifest.get("files") or {}).items():
            try:
                f = self._inside(path, name)
            except RegistryError as e:
                raise RegistryError(f"{where}: {e}") from None
            if not f.is_file():
                raise RegistryError(f"{where}: file {name} is missing")
            if _sha256(f) != want:
                raise RegistryError(f"{where}: file {name} is corrupted (checksum mismatch)")
        if not manifest.get("files"):
            raise RegistryError(f"{where}: manifest lists no files")
        if fingerprint is not None and manifest.get("spec_fingerprint") != fingerprint:
            raise RegistryError(f"{where}: feature-spec fingerprint {manifest.get('spec_fingerprint')!r} "
                                f"does not match the served {fingerprint!r}")
        return ModelRef(kind, version, path, manifest)

    def current(self, kind: str) -> str | None:
        """The promoted version, or the newest one if none was promoted."""
        pointer = self._dir(kind) / "CURRENT"
        if pointer.exists():
            with open(pointer, encoding="utf-8", errors="replace") as f:
                return f.read(256).strip()  # a version name; verify() checks it
        versions = self.versions(kind)
        return versions[-1] if versions else None

    def promote(self, kind: str, version: str, fingerprint: str | None = None, reason: str = "promote") -> ModelRef:
        """Make ``version`` current, after verifying it (a bad one leaves CURRENT as it was)."""
        ref = self.verify(kind, version, fingerprint)
        previous = self.current(kind)
        d = self._dir(kind)
        tmp = d / f".CURRENT.{os.getpid()}"
        tmp.write_text(version + "\n")
        os.replace(tmp, d / "CURRENT")
        with open(d / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"action": reason, "version": version, "previous": previous,
                                "unix": time.time()}) + "\n")
        return ref

    def rollback(self, kind: str, version: str, fingerprint: str | None = None) -> ModelRef:
        """Promote an earlier version than the current one."""
        current = self.current(kind)
        if current is not None and version >= current:
            raise RegistryError(f"{kind} {version}: not earlier than the current {current}; use promote")
        return self.promote(kind, version, fingerprint, reason="rollback")

    def history(self, kind: str) -> list[dict]:
        p = self._dir(kind) / "history.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
