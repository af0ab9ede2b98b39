"""Detector files moved to a new root: rewrite the file references of a stored run's documents.

A run in Tiled names its frames by absolute ``file://`` URIs (``stream_resource``) or
``root`` + ``resource_path`` (old-style ``resource``). When the files are copied to
another disk or machine, ``txm-live replay UID --remap /old/root=/new/root`` reads them
from the new place: every reference under ``/old/root`` is rewritten before the analysis
sees it (the stored run itself is not changed).
"""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

logger = logging.getLogger(__name__)

__all__ = ["PathRemap", "parse_remap"]


def parse_remap(texts) -> list[tuple[str, str]]:
    """``["OLD=NEW", ...]`` -> ``[(old, new), ...]``; both absolute, NEW an existing folder.

    Raises
    ------
    ValueError
        A malformed pair, a relative path, or a NEW folder that does not exist.
    """
    pairs = []
    for text in texts or ():
        old, sep, new = str(text).partition("=")
        if not sep or not old or not new:
            raise ValueError(f"a path remap is OLD=NEW (two absolute folders); got {text!r}")
        if not (old.startswith("/") and new.startswith("/")):
            raise ValueError(f"both folders of a path remap must be absolute; got {text!r}")
        if not Path(new).is_dir():
            raise ValueError(f"the new root {new!r} of the path remap {text!r} is not an existing folder")
        pairs.append((str(PurePosixPath(old)), str(PurePosixPath(new))))
    return pairs


class PathRemap:
    """A ``(name, doc) -> (name, doc)`` filter moving file references from old roots to new ones.

    Parameters
    ----------
    pairs : sequence of (old_root, new_root)
        Absolute folders; the first pair whose old root contains a path applies.

    Attributes
    ----------
    n_remapped : int
        References rewritten so far.
    missing : list of str
        Referenced files (after remapping) that do not exist.
    """

    def __init__(self, pairs=()):
        self.pairs = [(str(PurePosixPath(o)), str(PurePosixPath(n))) for o, n in pairs]
        self.n_remapped = 0
        self.missing: list[str] = []

    def path(self, path: str) -> str:
        """``path`` moved to its new root (unchanged when no old root contains it)."""
        for old, new in self.pairs:
            if path == old or path.startswith(old.rstrip("/") + "/"):
                self.n_remapped += 1
                return new + path[len(old):]
        return path

    def _note(self, path: str) -> None:
        if not Path(path).exists() and path not in self.missing:
            self.missing.append(path)

    def __call__(self, name: str, doc: dict) -> tuple[str, dict]:
        if name == "stream_resource" and doc.get("uri", "").startswith("file:"):
            parsed = urlparse(doc["uri"])
            new_path = self.path(unquote(parsed.path))
            self._note(new_path)
            if self.pairs:
                doc = {**doc, "uri": Path(new_path).as_uri()}  # a new mapping: the caller's stays as it was
        elif name == "resource" and "root" in doc:
            full = str(PurePosixPath(doc["root"]) / doc.get("resource_path", ""))
            new_full = self.path(full)
            self._note(new_full)
            if new_full != full:
                doc = {**doc, "root": "/", "resource_path": new_full.lstrip("/")}
        return name, doc
