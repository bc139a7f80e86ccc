"""The batch engine's bookkeeping: counts, manifest records, and what ``--skip-existing`` skips.

:class:`featviz.output.export.Exporter` runs photos through the model and encodes their files on
a thread pool; this module holds the other half of its job, the part that must stay correct
when a run is interrupted: the run's counts (:class:`ExportReport`), one manifest line per photo
and layer as each finishes (``summary.json`` last), the failed and skipped photos' lines, and
whether a photo's folders are already complete with this run's settings. ``Exporter`` inherits
it; nothing here starts work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import OutputError, UsageError
from featviz.inputs.names import name_fields
from featviz.output.layout import (
    MANIFEST,
    SUMMARY,
    append_line,
    atomic_write,
    complete_summary,
    is_fatal_write_error,
    json_bytes,
    json_line,
    layer_dir,
)
from featviz.output.result import Producer
from featviz.output.resume import FINGERPRINT, changed_photo, photo_fingerprint, skipped_fields
from featviz.output.settings import changed_settings

if TYPE_CHECKING:

    from featviz.inputs.discover import InputImage
    from featviz.output.pipeline import LayerResult, Visualizer


@dataclass
class ExportReport:
    """Counts for a run; per-image details went to the manifest and the record callback."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    # --skip-existing: images that were complete but made with other settings, and why (a count
    # per reason, e.g. {"--cmap changed (gray -> viridis)": 5}); they are also counted in ok/failed
    redone: dict[str, int] = field(default_factory=dict)
    # the run's ``stop`` callable asked it to stop (SIGTERM, Ctrl-C): photos not begun are not
    # counted anywhere; --skip-existing does them
    stopped: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class _PendingResult:
    """Files of one (photo, layer) being encoded; the last one to finish writes the summary."""

    def __init__(self, result: LayerResult, directory: Path, files: list[tuple[str, Producer]],
                 on_done: Callable[[_PendingResult], None]) -> None:
        self.result = result
        self.directory = directory
        self.names = [name for name, _ in files]
        self.remaining = len(files)
        self.error: str | None = None
        self.seconds = 0.0
        self.futures: list[Future[None]] = []
        self._lock = threading.Lock()
        self._on_done = on_done

    def file_done(self, seconds: float, error: str | None) -> None:
        with self._lock:
            self.remaining -= 1
            self.seconds += seconds
            if error and not self.error:
                self.error = error
            last = self.remaining == 0
        if last:
            self._on_done(self)


class ExportRecords:
    """The bookkeeping half of :class:`featviz.output.export.Exporter` (see there for the
    arguments): its state, counts, manifest records and skip decisions."""

    def __init__(self, visualizer: Visualizer, out: Path, *, batch_size: int | None = None, workers: int | None = None,
                 skip_existing: bool = False, manifest: bool = True,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_image_done: Callable[[], None] | None = None,
                 stop: Callable[[], bool] | None = None, pca_photos: Sequence[InputImage] | None = None) -> None:
        if batch_size is None:
            batch_size = default_batch_size(visualizer.device)
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.visualizer = visualizer
        self.out = Path(out)
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 1
        self.skip_existing = skip_existing
        self.write_manifest = manifest
        self.on_record = on_record
        self.on_image_done = on_image_done
        self.stop = stop
        self.pca_photos = pca_photos  # --pca-tokens: the photos its basis is fitted over (default: the run's)
        self.report = ExportReport()
        self._lock = threading.Lock()
        self._layers_left: dict[str, int] = {}
        self._image_failed: dict[str, bool] = {}
        self._redo_reason: dict[str, str] = {}  # key -> why a complete folder is done again
        self._done_summaries: dict[str, list[dict[str, Any]]] = {}  # key -> its layers' summaries, to skip
        self._fingerprints: dict[str, dict[str, int] | None] = {}  # key -> the photo as read (resume.py)
        self._report_writer: Any = None  # featviz.output.report.ReportWriter while run() writes a manifest
        self._fatal: OutputError | None = None  # set when OUT stops taking files: the run stops

    # Records ----------------------------------------------------------------------------
    def _emit(self, record: dict[str, Any]) -> None:
        """Append a manifest line and pass the record on; serialised by the caller's lock.
        Text quoting a file name that is not UTF-8 is escaped in both (layout.json_line)."""
        line, record = json_line(record)
        if self.write_manifest and self._fatal is None:
            try:  # one write per line; a failed append leaves no torn line (layout.append_line)
                append_line(self.out / MANIFEST, line)
            except OSError as exc:  # full, read-only, or a link planted there during the run
                self._stop(self.out / MANIFEST, exc)
            else:
                if self._report_writer is not None:
                    self._report_writer.update()  # OUT/index.html, rewritten every few seconds
        if self.on_record is not None:
            self.on_record(record)

    def _stop(self, path: Path, error: OSError) -> None:
        """OUT stopped taking files: finish what is in flight, start nothing new, and let
        :meth:`run` raise one :class:`OutputError` (the first cause is the one reported)."""
        if self._fatal is None:
            reason = error.strerror or str(error)
            self._fatal = OutputError(
                f"cannot write {path} ({reason}); the run stopped",
                hint="free space or fix the output folder, then rerun with --skip-existing: the photos "
                     "already done are whole and are kept",
            )

    def _fail_image(self, image: InputImage, message: str, seconds: float = 0.0) -> None:
        with self._lock:
            self.report.failed += 1
            self._redo_reason.pop(str(image.key), None)
            self._fingerprints.pop(str(image.key), None)
            if len(self.report.errors) < 1000:
                self.report.errors.append(message)
            self._emit({**name_fields(image.path), "key": str(image.key), "layer": None, "output": None,
                        "status": "error", "error": message, "shape": None, "top_channels": None,
                        "seconds": round(seconds, 4)})
            if self.on_image_done:
                self.on_image_done()

    def _result_done(self, pending: _PendingResult) -> None:
        result = pending.result
        error = pending.error
        if error is None:
            try:
                summary = result.summary(pending.names)
                with self._lock:
                    summary[FINGERPRINT] = self._fingerprints.get(result.key)
                atomic_write(pending.directory / SUMMARY, json_bytes(summary))
            except OSError as exc:
                error = f"{pending.directory}: cannot write summary ({exc})"
                if is_fatal_write_error(exc):
                    self._stop(pending.directory / SUMMARY, exc)
        with self._lock:
            key = result.key
            self._layers_left[key] -= 1
            if error:
                self._image_failed[key] = True
                if len(self.report.errors) < 1000:
                    self.report.errors.append(error)
            self._emit({
                **name_fields(result.image_path or ""), "key": key, "layer": result.layer.path,
                **({"call": result.layer.call} if result.layer.call is not None else {}),  # layer1.0.relu@2
                "output": pending.directory.relative_to(self.out).as_posix(),
                "status": "error" if error else "ok", "error": error,
                "shape": list(result.activations.shape),
                "top_channels": result.ranking[: result.options.summary_top],
                "seconds": round(pending.seconds, 4),
                **_report_fields(result, pending.names),
                **({"reason": f"redone: {self._redo_reason[key]}"} if key in self._redo_reason else {}),
            })
            if self._layers_left[key] == 0:
                del self._layers_left[key]
                self._fingerprints.pop(key, None)
                reason = self._redo_reason.pop(key, None)
                if reason:
                    self.report.redone[reason] = self.report.redone.get(reason, 0) + 1
                if self._image_failed.pop(key, False):
                    self.report.failed += 1
                else:
                    self.report.ok += 1
                if self.on_image_done:
                    self.on_image_done()

    # Work -------------------------------------------------------------------------------
    def _directories(self, image: InputImage) -> list[Path]:
        return [layer_dir(self.out, str(image.key), ref.path) for ref in self.visualizer.layers]

    def _already_done(self, image: InputImage) -> bool:
        """With ``skip_existing``: whether every layer's folder holds a finished result made with
        this run's settings. A finished one made with other settings is redone; why is kept for
        its manifest lines and the report's counts."""
        if not self.skip_existing:
            return False
        try:
            directories = self._directories(image)
        except UsageError:  # its folder leads out of OUT: not done; writing it fails the photo
            return False
        reason = None
        summaries = []
        current = photo_fingerprint(image.path)
        for ref, directory in zip(self.visualizer.layers, directories, strict=True):
            summary = complete_summary(directory)
            if summary is None:
                return False  # unfinished: done now, a resume rather than a redo
            reason = (reason or changed_settings(summary.get("options"), self.visualizer.settings(ref))
                      or changed_photo(summary.get(FINGERPRINT), current))
            summaries.append(summary)
        if reason:
            self._redo_reason[str(image.key)] = reason
            return False
        self._done_summaries[str(image.key)] = summaries
        return True

    def _skip(self, image: InputImage) -> None:
        with self._lock:
            self.report.skipped += 1
            summaries = self._done_summaries.pop(str(image.key))
            layers = zip(self.visualizer.layers, self._directories(image), summaries, strict=True)
            for ref, directory, summary in layers:
                # the finished record again (the last line per key and layer wins): no stub
                self._emit({**name_fields(image.path), "key": str(image.key), "layer": ref.path,
                            **({"call": ref.call} if ref.call is not None else {}),
                            "output": directory.relative_to(self.out).as_posix(), "status": "skipped",
                            "error": None, "seconds": 0.0, **skipped_fields(summary)})
            if self.on_image_done:
                self.on_image_done()


def _report_fields(result: LayerResult, names: Sequence[str]) -> dict[str, Any]:
    """What the HTML report shows of a result, carried in its manifest line so that the report
    can be rebuilt from the manifest alone (no summary has to be re-read)."""
    drawn = set(result.drawn_channels)
    fields: dict[str, Any] = {
        "model": result.model_name,
        "weights": result.weights,
        "layer_index": result.layer.index,
        "layer_type": result.layer.type_name,
        "files": [name for name in names if not name.startswith("channels/")],  # keeps lines short
        "top_channel_files": [f"channels/{c:04d}.png" for c in result.ranking[: result.options.summary_top]
                              if c in drawn],
    }
    if "predictions" in result.extra:
        fields["predictions"] = result.extra["predictions"]
    if result.extra.get("nonfinite"):  # NaN or infinite activations, replaced before drawing
        fields["nonfinite"] = result.extra["nonfinite"]
    if result.cams:  # --cam: what the report's row of class maps needs (the weights stay in summary.json)
        fields["cams"] = [{k: r[k] for k in ("method", "target", "rank", "label", "logit", "probability", "file")}
                          | ({"scores": cam.scores.brief_json()} if cam.scores is not None else {})
                          for r, cam in zip(result.cam_records(), result.cams, strict=True)]
    return fields


def default_batch_size(device: Any) -> int:
    """1 on the CPU: on two cores, batches of 1, 4, 8 and 16 ran at the same speed or slower
    (PNG encoding dominates) and larger ones hold more results in memory; 8 on an accelerator,
    where batching is what makes the forward pass cheap."""
    return 1 if getattr(device, "type", str(device)) == "cpu" else 8

