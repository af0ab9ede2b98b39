"""The document routing every live analysis shares: errors recorded, never raised.

A live analysis is an ``event_model.DocumentRouter`` fed one raw run. An exception in
it must never reach the RunEngine (it would stop the scan): :class:`GuardedFrameAnalysis`
records it, stops handling documents except the stop document, and lets the subclass
close its analysis run from there. The raw frames are matched to their labels by
:class:`~txm_live.callbacks._bookkeeping.LabelledFrames` (``self.frames``) and handed to
the subclass's ``_add``.
"""
from __future__ import annotations

import logging
import traceback

import event_model

__all__ = ["GuardedFrameAnalysis"]

logger = logging.getLogger(__name__)


class GuardedFrameAnalysis(event_model.DocumentRouter):
    """Base of the live analyses of one run (2D XANES, tomography).

    Subclasses set ``errors`` (list), ``failed``, ``finished``, ``raw_start`` and
    ``frames`` in ``__init__``, name themselves in ``analysis_label`` (for the log) and
    define ``_add(refs)`` and ``_finish(raw_stop)``.
    """

    #: how the log names this analysis ("live XANES analysis", ...)
    analysis_label = "live analysis"

    def _fail(self, where: str, exc: BaseException) -> None:
        self.errors.append(f"{where}: {type(exc).__name__}: {exc}")
        self.failed = True
        logger.error("%s of run %s failed in %s\n%s", self.analysis_label, self.raw_start.get("uid"), where,
                     "".join(traceback.format_exception(exc)))

    def __call__(self, name, doc, validate=False):
        if self.finished or (self.failed and name != "stop"):
            return None  # after a failure only the stop document matters
        try:
            return super().__call__(name, doc, validate=validate)
        except Exception as exc:
            self._fail(f"{name} document", exc)
            if name == "stop":
                self._finish(doc)
        return None

    # ---- raw documents: bookkeeping ----------------------------------------------
    def descriptor(self, doc):
        self.frames.descriptor(doc)

    def stream_resource(self, doc):
        self.frames.stream_resource(doc)

    def stream_datum(self, doc):
        self._add(self.frames.stream_datum(doc))

    def event(self, doc):
        self._add(self.frames.event(doc))
