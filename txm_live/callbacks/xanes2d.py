"""Live 2D XANES analysis of one raw run, emitting an analysis run (event-model).

:class:`Xanes2DAnalysis` is an ``event_model.DocumentRouter`` built per raw run (by the
``RunRouter`` in :class:`txm_live.callbacks.LiveAnalysis`) and fed documents on the
analysis worker thread, never on the RunEngine's.

Determinism (live == replay)
----------------------------
Live documents interleave (stream_datum per frame, flats after each energy); a run
replayed from Tiled gives all events first and then one ``stream_datum`` per stream. The
result must not depend on that, so every choice is made from frame *indices*, never from
arrival order or time:

* sample frame ``k`` is at energy index ``k // frames_per_energy``; flat frame ``f`` at
  energy index ``flat_energy_indices[f // flats_per_energy]``;
* frame ``k`` is corrected with the median of all darks and the median of the flats at the
  flat energy index nearest to its own (ties to the earlier one in scan order) once those
  are complete, and registered strictly in index order (``StackAligner``, running mean);
* at the stop document, frames still waiting (aborted scan) use the nearest flats that
  exist and whatever darks exist;
* the final maps are one :func:`fit_xanes` over the aligned per-energy stack.

Partial maps (every ``partial_every`` energies) and previews are for watching only.
"""
from __future__ import annotations

import logging
import time
import traceback
import warnings

import event_model
import numpy as np

from txm_live.analysis import StackAligner, apply_shifts, fit_xanes, flat_dark_correct, remove_zingers

from ._frames import FrameReader

logger = logging.getLogger(__name__)

__all__ = ["Xanes2DAnalysis", "ANALYSIS_NAME"]

ANALYSIS_NAME = "xanes2d_live"
ANALYSIS_VERSION = 1
MAP_FIELDS = ("whiteline", "edge", "edge_jump")


def _image_key(descriptor) -> str | None:
    for key, dk in descriptor["data_keys"].items():
        if dk.get("external") == "STREAM:":
            return key
    return None


def _array_key(shape, dtype_numpy="<f4", dims=("y", "x")):
    return {"source": "txm-live", "dtype": "array", "shape": list(shape), "dtype_numpy": dtype_numpy,
            "dims": list(dims)}


def _scalar_key(dtype="number"):
    return {"source": "txm-live", "dtype": dtype, "shape": []}


class Xanes2DAnalysis(event_model.DocumentRouter):
    """Flat/dark, registration and XANES maps of one ``scan_type='xanes2d'`` run.

    Parameters
    ----------
    start : dict
        The raw run's start document.
    emit : callable ``(name, doc)``
        Receives the analysis run's documents (e.g. a Tiled writer).
    preview : object, optional
        Has ``update(state)`` / ``final(state)`` (see :mod:`txm_live.callbacks.preview`).
    registration_mode : str
        :class:`StackAligner` mode. Default ``'running_mean'``.
    fit_params : dict, optional
        Keyword arguments for :func:`fit_xanes` (recorded in the start document).
    partial_every : int
        Partial maps every this many energies (0: none).
    min_partial_energies : int
        No partial maps before this many energies are in.
    replay : bool
        Recorded in the analysis start document.
    frame_wait_s : float
        How long to wait for an announced frame to appear in its file.
    page_interval_s : float
        Drift and spectrum rows are sent as event pages at most this often (s).
    zinger_sigma : float or None
        Zinger/hot-pixel threshold of :func:`remove_zingers` (flats and darks cleaned once,
        each frame as it comes); None: off.
    """

    def __init__(self, start, emit, *, preview=None, registration_mode: str = "running_mean",
                 fit_params: dict | None = None, partial_every: int = 10,
                 min_partial_energies: int = 20, replay: bool = False, frame_wait_s: float = 10.0,
                 page_interval_s: float = 1.0, zinger_sigma: float | None = 10.0):
        super().__init__()
        self.raw_start = start
        self._emit = emit
        self.preview = preview
        self.fit_params = dict(fit_params or {})
        self.registration_mode = registration_mode
        self.partial_every = int(partial_every)
        self.page_interval_s = float(page_interval_s)
        self.zinger_sigma = zinger_sigma
        self.min_partial_energies = int(min_partial_energies)
        self.errors: list[str] = []
        self.failed = False
        self.finished = False

        self.energies = np.asarray(start.get("energies_ev", []), dtype=float)
        self.fpe = int(start.get("frames_per_energy", 1))
        self.n_darks = int(start.get("n_darks", 0))
        self.flats_per_energy = int(start.get("flats_per_energy", 1))
        self.flat_energy_indices = list(start.get("flat_energy_indices", range(len(self.energies))))

        self._reader = FrameReader(wait_s=frame_wait_s)
        self._aligner = StackAligner(mode=registration_mode)
        self._stream_of: dict[str, str] = {}        # descriptor uid -> stream name
        self._resources: dict[str, dict] = {}       # stream_resource uid -> doc
        self._darks: dict[int, np.ndarray] = {}
        self._flats: dict[int, np.ndarray] = {}
        self._pending: dict[int, np.ndarray] = {}    # raw sample frames not yet processed
        self._dark = None
        self._flat_cache: dict[int, np.ndarray] = {}
        self._next = 0                               # next sample frame index to process
        self.shifts: list[tuple[float, float]] = []
        self._energy_frames: dict[int, list[np.ndarray]] = {}
        self._stack = None                           # (n_energies, ny, nx) float32, filled in order
        self._n_stack = 0
        self.sample_mask = None
        self.mean_spectrum: list[float] = []
        self.partial_result = None
        self.result = None

        self.parameters = {
            "registration_mode": registration_mode,
            "zinger_sigma": zinger_sigma,
            "fit_xanes": self.fit_params,
            "flat_dark": {"dark": "median of all darks",
                          "flat": "median of the flats at the nearest flat energy"},
            "version": ANALYSIS_VERSION,
        }
        metadata = {
            "parent_uid": start["uid"],
            "parent_plan_name": start.get("plan_name"),
            "analysis": ANALYSIS_NAME,
            "analysis_parameters": self.parameters,
            "scan_type": start.get("scan_type"),
            "element": start.get("element"),
            "edge": start.get("edge"),
            "energies_ev": self.energies.tolist(),
            "pixel_size_nm": start.get("pixel_size_nm"),
            "replay": bool(replay),
        }
        self._bundle = event_model.compose_run(metadata={k: v for k, v in metadata.items() if v is not None})
        self.uid = self._bundle.start_doc["uid"]
        self._emit("start", self._bundle.start_doc)
        self._descriptors: dict[str, object] = {}
        self._buffer: dict[str, list] = {}
        self._last_page = time.monotonic()
        self._describe("drift", {"frame_index": _scalar_key("integer"), "energy_ev": _scalar_key(),
                                 "shift_y_px": _scalar_key(), "shift_x_px": _scalar_key(),
                                 "drift_y_px": _scalar_key(), "drift_x_px": _scalar_key()})
        self._describe("spectrum", {"energy_index": _scalar_key("integer"), "energy_ev": _scalar_key(),
                                    "mean_absorbance": _scalar_key()})
        if self.energies.size == 0 or not np.all(np.isfinite(self.energies)):
            self._fail("start document", ValueError(
                f"the raw run's start document needs finite 'energies_ev' in scan order; got {start.get('energies_ev')!r}"))

    # ---- emitting -------------------------------------------------------------------
    def _describe(self, name, data_keys):
        bundle = self._bundle.compose_descriptor(name=name, data_keys=data_keys)
        self._descriptors[name] = bundle
        self._emit("descriptor", bundle.descriptor_doc)

    def _event(self, name, data, *, buffered: bool = False):
        """Emit an event; ``buffered`` rows are sent as one event page per stream at most
        every ``page_interval_s`` (each Tiled write is an HTTP round trip, ~0.1 s)."""
        now = time.time()
        ev = self._descriptors[name].compose_event(data=data, timestamps={k: now for k in data})
        if not buffered:
            self._flush_pages()
            self._emit("event", ev)
            return
        self._buffer.setdefault(name, []).append(ev)
        if time.monotonic() - self._last_page >= self.page_interval_s:
            self._flush_pages()

    def _flush_pages(self):
        self._last_page = time.monotonic()
        for name in list(self._buffer):
            events = self._buffer.pop(name)
            if events:
                self._emit("event_page", event_model.pack_event_page(*events))

    # ---- guarding: analysis errors are recorded, never raised ---------------------
    def _fail(self, where: str, exc: BaseException) -> None:
        message = f"{where}: {type(exc).__name__}: {exc}"
        self.errors.append(message)
        self.failed = True
        logger.error("live XANES analysis of run %s failed in %s\n%s", self.raw_start.get("uid"), where,
                     "".join(traceback.format_exception(exc)))

    def __call__(self, name, doc, validate=False):
        if self.finished:
            return None
        if self.failed and name != "stop":
            return None  # after a failure only the stop document matters
        try:
            return super().__call__(name, doc, validate=validate)
        except Exception as exc:
            self._fail(f"{name} document", exc)
            if name == "stop":
                self._finish(doc)
        return None

    # ---- raw documents ------------------------------------------------------------
    def descriptor(self, doc):
        self._stream_of[doc["uid"]] = doc["name"]

    def stream_resource(self, doc):
        self._resources[doc["uid"]] = doc

    def stream_datum(self, doc):
        stream = self._stream_of.get(doc["descriptor"])
        if stream not in ("dark", "flat", "primary"):
            return
        res = self._resources[doc["stream_resource"]]
        start, stop = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        frames = self._reader.read(res["uri"], res["parameters"]["dataset"], start, stop)
        target = {"dark": self._darks, "flat": self._flats, "primary": self._pending}[stream]
        for i, frame in enumerate(frames):
            target[start + i] = frame
        self._advance(final=False)

    def stop(self, doc):
        if not self.failed:
            try:
                self._advance(final=True)
            except Exception as exc:
                self._fail("frames left at the stop document", exc)
        self._finish(doc)

    # ---- processing ---------------------------------------------------------------
    def _flat_position_for(self, energy_index: int, available=None) -> int | None:
        """Index into flat_energy_indices of the flats for ``energy_index``."""
        positions = range(len(self.flat_energy_indices)) if available is None else available
        best = None
        for p in positions:
            d = abs(self.flat_energy_indices[p] - energy_index)
            if best is None or d < best[0]:
                best = (d, p)
        return None if best is None else best[1]

    def _flats_at(self, position: int):
        lo = position * self.flats_per_energy
        frames = [self._flats.get(i) for i in range(lo, lo + self.flats_per_energy)]
        return frames if all(f is not None for f in frames) else None

    def _dark_image(self, final: bool):
        if self._dark is None:
            if len(self._darks) < self.n_darks and not final:
                return None
            if self._darks:
                stack = np.stack([self._darks[i] for i in sorted(self._darks)]).astype(np.float32)
                self._dark = np.median(stack, axis=0) if len(stack) > 1 else stack[0]
                if len(stack) < 3 and self.zinger_sigma is not None:  # as flat_dark_correct does
                    self._dark, _ = remove_zingers(self._dark, None, sigma=self.zinger_sigma)
            else:
                shape = next(iter(self._pending.values())).shape
                self._dark = np.zeros(shape, np.float32)
        return self._dark

    def _flat_image(self, energy_index: int, final: bool):
        pos = self._flat_position_for(energy_index)
        flats = self._flats_at(pos) if pos is not None else None
        if flats is None:
            if not final:
                return None
            complete = [p for p in range(len(self.flat_energy_indices)) if self._flats_at(p) is not None]
            pos = self._flat_position_for(energy_index, complete)
            if pos is None:
                raise RuntimeError("no complete set of flat frames was measured; cannot correct the frames")
            flats = self._flats_at(pos)
        if pos not in self._flat_cache:
            stack = np.stack(flats).astype(np.float32)
            flat = np.median(stack, axis=0) if len(stack) > 1 else stack[0]
            if self.zinger_sigma is not None:
                flat, _ = remove_zingers(flat, self._dark, sigma=self.zinger_sigma)
            self._flat_cache[pos] = flat
        return self._flat_cache[pos]

    def _advance(self, final: bool):
        while self._next in self._pending:
            k = self._next
            energy_index = k // self.fpe
            dark = self._dark_image(final)
            if dark is None:
                return
            flat = self._flat_image(energy_index, final)
            if flat is None:
                return
            self._process(k, self._pending.pop(k), flat, dark)
            self._next += 1

    def _process(self, k, raw, flat, dark):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dead pixels -> NaN, expected
            # flat and dark were cleaned once (cached): only the frame's zingers here
            if self.zinger_sigma is not None:
                raw, _ = remove_zingers(raw, dark, sigma=self.zinger_sigma)
            absorb = flat_dark_correct(raw, flat, dark, zinger_sigma=None)
        shift = self._aligner.add(absorb)
        aligned = apply_shifts(absorb[None], [shift])[0]
        self.shifts.append(shift)
        energy_index = k // self.fpe
        energy = float(self.energies[energy_index]) if energy_index < len(self.energies) else float("nan")
        self._event("drift", {"frame_index": k, "energy_ev": energy, "shift_y_px": shift[0],
                              "shift_x_px": shift[1], "drift_y_px": -shift[0], "drift_x_px": -shift[1]},
                    buffered=True)
        frames = self._energy_frames.setdefault(energy_index, [])
        frames.append(aligned)
        if len(frames) == self.fpe:
            self._energy_done(energy_index)

    def _energy_done(self, energy_index):
        frames = self._energy_frames.pop(energy_index)
        img = frames[0] if len(frames) == 1 else np.mean(frames, axis=0, dtype=np.float32)
        if self._stack is None:
            self._stack = np.empty((max(len(self.energies), 1),) + img.shape, np.float32)
        self._stack[self._n_stack] = img
        self._n_stack += 1
        if self.sample_mask is None:
            self.sample_mask = self._make_mask(img)
        value = float(np.nanmean(img[self.sample_mask])) if self.sample_mask.any() else float("nan")
        self.mean_spectrum.append(value)
        self._event("spectrum", {"energy_index": energy_index,
                                 "energy_ev": float(self.energies[energy_index]), "mean_absorbance": value},
                    buffered=True)
        n = len(self.stack)
        if self.partial_every and n >= self.min_partial_energies and n % self.partial_every == 0:
            self._partial_maps()
        if self.preview is not None:
            self._preview(final=False)

    @staticmethod
    def _make_mask(img):
        """Sample pixels: absorbance above a quarter of its 99th percentile (first energy)."""
        finite = np.isfinite(img)
        if not finite.any():
            return finite
        level = max(0.02, 0.25 * float(np.nanpercentile(img, 99)))
        return finite & (img > level)

    def _fit(self):
        n = len(self.stack)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_xanes(self.stack, self.energies[:n], **self.fit_params)

    @property
    def stack(self) -> np.ndarray:
        """Aligned absorbance so far, one frame per energy in scan order: (n, ny, nx) float32."""
        if self._stack is None:
            return np.empty((0, 0, 0), np.float32)
        return self._stack[: self._n_stack]

    def _partial_maps(self):
        """Partial maps for watching: the full fit once pre-edge, peak and post-edge are all
        measured, a quick whiteline (:meth:`_peak_map`) once only the peak has been passed."""
        peak = self._passed_peak()
        if peak is None:
            return
        e = self.energies[: len(self.stack)]
        self.partial_result = None
        if np.count_nonzero(e < peak - 20.0) >= 2 and np.count_nonzero(e > peak + 10.0) >= 2:
            try:
                self.partial_result = self._fit()
            except Exception as exc:  # e.g. too few points in a normalization range yet
                logger.debug("partial XANES fit not available yet (%d energies): %r", len(self.stack), exc)
        if self.partial_result is None:
            self.partial_result = self._peak_map(peak)
        if self.partial_result is not None:
            self._emit_maps(self.partial_result, final=False)

    def _passed_peak(self):
        """Energy of the mean spectrum's maximum once it has been passed (two or more
        measured energies below it, the absorbance there down to 90 % of the peak, and one
        above it); else None."""
        e = self.energies[: len(self.stack)]
        spectrum = np.asarray(self.mean_spectrum, dtype=float)
        if not np.isfinite(spectrum).any():
            return None
        order = np.argsort(e)
        es, sp = e[order], spectrum[order]
        ipk = int(np.nanargmax(sp))
        if ipk < 2 or ipk == len(es) - 1 or not np.nanmin(sp[:ipk]) <= 0.9 * sp[ipk]:
            return None
        return float(es[ipk])

    def _peak_map(self, peak_ev: float, halfwidth_ev: float = 3.0):
        """Preview whiteline before a full fit is possible: per pixel, the vertex of a
        parabola through the absorbance maximum and its neighbours in energy, searched
        within ``3 * halfwidth_ev`` of the mean spectrum's peak ``peak_ev``. Edge and edge
        jump are NaN: they need the pre-edge."""
        from types import SimpleNamespace

        e = self.energies[: len(self.stack)]
        order = np.argsort(e)
        es = e[order]
        window = np.flatnonzero(np.abs(es - peak_ev) <= 3 * halfwidth_ev)
        if window.size < 3:
            return None
        sub = self.stack[order[window]]                    # (w, ny, nx)
        filled = np.where(np.isfinite(sub), sub, -np.inf)
        j = np.clip(np.argmax(filled, axis=0), 1, window.size - 2)
        ew = es[window]
        y0 = np.take_along_axis(sub, (j - 1)[None], 0)[0]
        y1 = np.take_along_axis(sub, j[None], 0)[0]
        y2 = np.take_along_axis(sub, (j + 1)[None], 0)[0]
        x0, x1, x2 = ew[j - 1], ew[j], ew[j + 1]
        # vertex of the parabola through three (possibly uneven) points
        d1, d2 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        curv = (d2 - d1) / (x2 - x0)
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = 0.5 * (x0 + x1) - d1 / (2 * curv)
            vertex = np.where(curv < 0, vertex, x1)
        vertex = np.clip(vertex, x0, x2)
        mask = self.sample_mask & np.isfinite(vertex) & np.isfinite(y1)
        whiteline = np.where(mask, vertex, np.nan).astype(np.float32)
        nan = np.full(whiteline.shape, np.nan, np.float32)
        return SimpleNamespace(whiteline=whiteline, edge=nan, edge_jump=nan, mask=mask,
                               params={"e0": float("nan"), "method": "parabola at the absorbance maximum"})

    def _emit_maps(self, r, final):
        if "maps" not in self._descriptors:
            shape = r.whiteline.shape
            keys = {f: _array_key(shape) for f in MAP_FIELDS}
            keys.update(mask=_array_key(shape, "|u1"), n_energies=_scalar_key("integer"),
                        final=_scalar_key("boolean"), e0_ev=_scalar_key())
            self._describe("maps", keys)
        data = {f: np.asarray(getattr(r, f), dtype=np.float32) for f in MAP_FIELDS}
        data.update(mask=np.asarray(r.mask, dtype=np.uint8), n_energies=len(self.stack),
                    final=bool(final), e0_ev=float(r.params.get("e0", float("nan"))))
        self._event("maps", data)

    def _preview(self, final):
        try:
            self.preview.update(self, final=final)
        except Exception as exc:  # a preview never fails the analysis
            logger.warning("preview failed: %r", exc)

    def _finish(self, raw_stop):
        if self.finished:
            return
        self.finished = True
        raw_status = raw_stop.get("exit_status", "success")
        planned = len(self.energies) * self.fpe
        complete = raw_status == "success" and len(self.shifts) == planned
        if not self.failed:
            try:
                if len(self.stack) == 0:
                    raise RuntimeError("no complete energy was measured")
                self.result = self._fit()
                self._emit_maps(self.result, final=True)
            except Exception as exc:
                if raw_status == "success":
                    self._fail("final maps", exc)
                else:  # an interrupted scan may lack the pre-edge: a partial result, not a failure
                    self.errors.append(f"final maps unavailable from the partial data: {type(exc).__name__}: {exc}")
                    logger.warning("run %s: %s", self.raw_start.get("uid"), self.errors[-1])
        if self.preview is not None and not self.failed:
            self._preview(final=True)
        self._reader.close()
        partial = not complete
        self._flush_pages()
        self._describe("status", {"raw_exit_status": _scalar_key("string"), "raw_reason": _scalar_key("string"),
                                  "partial": _scalar_key("boolean"), "failed": _scalar_key("boolean"),
                                  "errors": _scalar_key("string"), "n_frames": _scalar_key("integer"),
                                  "n_frames_planned": _scalar_key("integer"),
                                  "n_energies": _scalar_key("integer")})
        self._event("status", {"raw_exit_status": raw_status, "raw_reason": raw_stop.get("reason", ""),
                               "partial": partial, "failed": self.failed, "errors": "\n".join(self.errors),
                               "n_frames": len(self.shifts), "n_frames_planned": planned,
                               "n_energies": len(self.stack)})
        if self.failed:
            exit_status = "fail"
        elif raw_status != "success":
            exit_status = raw_status
        else:
            exit_status = "success"
        reason = (f"raw run {raw_status}"
                  + (f" ({raw_stop.get('reason')})" if raw_stop.get("reason") else "")
                  + f"; analysed {len(self.shifts)}/{planned} frames, {len(self.stack)} energies"
                  + ("; PARTIAL result" if partial else "")
                  + (f"; analysis failed: {'; '.join(self.errors)}" if self.failed else ""))
        self._emit("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))
