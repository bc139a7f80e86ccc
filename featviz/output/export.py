"""The only writer: output layout, atomic files, the manifest, and batches over many photos.

Every file is written to a temporary name in its own folder and renamed into place, so a run
that is interrupted leaves whole files or none; ``summary.json`` is written last, so a folder
with a summary whose listed files all exist is complete (what ``--skip-existing`` checks).
Nothing is written outside the output folder.

For speed, PNG encoding (numpy and ISA-L release the GIL while they work) runs on a thread pool while
the main thread decodes and runs the next batch through the model.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import FeatvizError, ImageError, OutputError, UsageError
from featviz.inputs.names import display_name, name_fields
from featviz.output.layout import (
    MANIFEST,
    SUMMARY,
    TMP_MARK,
    append_line,
    atomic_write,
    check_output_folder,
    complete_summary,
    ensure_inside,
    is_complete,
    is_fatal_write_error,
    json_bytes,
    json_line,
    layer_dir,
    remove_stale_temporaries,
)
from featviz.output.report import REPORT, ReportWriter
from featviz.output.result import Producer, result_files
from featviz.output.resume import (
    FINGERPRINT,
    changed_photo,
    photo_fingerprint,
    skipped_fields,
)
from featviz.output.settings import changed_settings

if TYPE_CHECKING:

    from featviz.inputs.discover import InputImage
    from featviz.output.pipeline import LayerResult, PreparedImage, Visualizer

__all__ = ["MANIFEST", "SUMMARY", "TMP_MARK", "ExportReport", "Exporter", "chunks", "default_batch_size", "is_complete",
           "layer_dir", "shard"]


# --- batches ------------------------------------------------------------------------------

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


class Exporter:
    """Runs photos through a :class:`~featviz.output.pipeline.Visualizer` and writes every result.

    ``layout(image)`` gives the folder key for an input (by default its ``key``). ``on_record``
    receives each manifest record (one per photo and layer, or one per failed photo) as it is
    made; ``on_image_done`` is called once per input photo. Both may be called from worker
    threads, never at the same time. ``stop`` is asked before each batch: once it returns True
    the run starts no new photo, finishes the ones in flight (files, summaries and manifest
    lines written whole) and returns with ``report.stopped`` set (the CLI's SIGTERM handling).
    """

    def __init__(self, visualizer: Visualizer, out: Path, *, batch_size: int | None = None, workers: int | None = None,
                 skip_existing: bool = False, manifest: bool = True,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_image_done: Callable[[], None] | None = None,
                 stop: Callable[[], bool] | None = None) -> None:
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
                            "output": directory.relative_to(self.out).as_posix(), "status": "skipped",
                            "error": None, "seconds": 0.0, **skipped_fields(summary)})
            if self.on_image_done:
                self.on_image_done()

    def _prepare(self, image: InputImage) -> PreparedImage:
        fingerprint = photo_fingerprint(image.path)  # before the read: a change during it shows next time
        with self._lock:
            self._fingerprints[str(image.key)] = fingerprint
        return self.visualizer.prepare(image.path, key=str(image.key))

    def run(self, images: Sequence[InputImage]) -> ExportReport:
        """Process every image; returns the counts. Bad images are recorded, never raised.
        With the manifest comes OUT/index.html (featviz.output.report), up to date even if interrupted.

        Raises :class:`UsageError` before any image is read when OUT cannot be made or written
        (or its manifest or report is a planted symlink), and :class:`OutputError` after
        stopping cleanly when OUT stops taking files during the run (disk full, read-only)."""
        check_output_folder(self.out, (MANIFEST, REPORT) if self.write_manifest else ())
        remove_stale_temporaries(self.out)  # a killed run may have left the report half-written
        self._fatal = None
        self._report_writer = ReportWriter(self.out) if self.write_manifest else None
        try:
            report = self._run(images)
        finally:
            if self._report_writer is not None:
                if self.stopped is None:
                    self._report_writer.close()
                else:  # OUT is full: the page would fail too; the resume rewrites it
                    self._report_writer.discard()
                self._report_writer = None
        if self.stopped is not None:
            raise self.stopped
        return report

    @property
    def stopped(self) -> OutputError | None:
        """The error that stopped the last run (OUT stopped taking files), else None."""
        return self._fatal

    def _run(self, images: Sequence[InputImage]) -> ExportReport:
        self.out.mkdir(parents=True, exist_ok=True)
        todo = []
        for image in images:
            if self._already_done(image):
                self._skip(image)
            else:
                todo.append(image)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="featviz") as pool:
            in_flight: deque[_PendingResult] = deque()
            batches = chunks(todo, self.batch_size)
            decoding = self._decode_async(pool, next(batches, []))
            while decoding and self._fatal is None:
                if self.stop is not None and self.stop():
                    self.report.stopped = True  # the decoded batch is dropped: a resume does it
                    break
                current = decoding
                decoding = self._decode_async(pool, next(batches, []))  # overlaps the forward pass
                prepared = self._collect(current)
                for pending in self._forward_and_submit(pool, prepared):
                    in_flight.append(pending)
                # Keep memory flat: at most one batch of results waits for encoding while the
                # next batch is decoded and run (two batches cost ~400 MB more, no speed).
                while len(in_flight) > self.batch_size * len(self.visualizer.layers):
                    for future in in_flight.popleft().futures:
                        future.result()
            for pending in in_flight:
                for future in pending.futures:
                    future.result()
        return self.report

    def _decode_async(self, pool: ThreadPoolExecutor,
                      batch: list[InputImage]) -> list[tuple[InputImage, Future[PreparedImage], float]]:
        return [(image, pool.submit(self._prepare, image), time.perf_counter()) for image in batch]

    def _collect(self, decoding: list[tuple[InputImage, Future[PreparedImage], float]]
                 ) -> list[tuple[InputImage, PreparedImage]]:
        prepared = []
        for image, future, started in decoding:
            try:
                prepared.append((image, future.result()))
            except FeatvizError as exc:
                self._fail_image(image, str(exc), time.perf_counter() - started)
            except (OSError, ValueError, RuntimeError, MemoryError) as exc:
                self._fail_image(image, f"{display_name(image.path)}: {type(exc).__name__}: {exc}",
                                 time.perf_counter() - started)
        return prepared

    def _forward_and_submit(self, pool: ThreadPoolExecutor,
                            prepared: list[tuple[InputImage, PreparedImage]]) -> Iterator[_PendingResult]:
        if not prepared or self._fatal is not None:
            return
        started = time.perf_counter()
        try:
            outputs = list(zip(prepared, self.visualizer.forward([p for _, p in prepared]), strict=True))
        except (RuntimeError, ImageError):
            outputs = []
            for item in prepared:  # find the photo the batch failed on; the others go on
                try:
                    outputs.append((item, self.visualizer.forward([item[1]])[0]))
                except RuntimeError as exc:
                    self._fail_image(item[0], f"{display_name(item[0].path)}: the model failed on it "
                                     f"({str(exc).splitlines()[0][:200]})")
                except ImageError as exc:  # e.g. --cam: gradients that are not finite for this photo
                    self._fail_image(item[0], str(exc))
        share = (time.perf_counter() - started) / max(1, len(outputs))
        for (image, _), results in outputs:
            try:  # a folder that leads out of OUT (a planted symlink) or cannot be made fails this photo
                directories = [self._result_dir(result) for result in results]
            except UsageError as exc:
                self._fail_image(image, f"{display_name(image.path)}: {exc}")
                continue
            except OSError as exc:
                self._fail_image(image, f"{display_name(image.path)}: cannot create its output folder ({exc})")
                if is_fatal_write_error(exc):
                    self._stop(self.out / str(image.key), exc)
                    return
                continue
            with self._lock:
                self._layers_left[str(image.key)] = len(results)
            for result, directory in zip(results, directories, strict=True):
                yield self._submit(pool, result, directory, share / len(results))

    def _result_dir(self, result: LayerResult) -> Path:
        """The result's folder, created, with its ``channels/`` checked to stay inside OUT too."""
        directory = layer_dir(self.out, result.key, result.layer.path)
        directory.mkdir(parents=True, exist_ok=True)
        ensure_inside(self.out, directory / "channels")
        return directory

    def _submit(self, pool: ThreadPoolExecutor, result: LayerResult, directory: Path,
                forward_seconds: float) -> _PendingResult:
        begun = time.perf_counter()
        remove_stale_temporaries(directory)
        files = result_files(result)
        pending = _PendingResult(result, directory, files, self._result_done)
        pending.seconds = forward_seconds + (time.perf_counter() - begun)
        for name, produce in files:
            pending.futures.append(pool.submit(self._write_job, pending, directory / name, produce))
        return pending

    def _write_job(self, pending: _PendingResult, path: Path, produce: Producer) -> None:
        started = time.perf_counter()
        error = None
        if self._fatal is not None:
            error = f"{path}: not written: the output folder stopped taking files"
        else:
            try:
                atomic_write(path, produce())
            except (OSError, ValueError, FeatvizError) as exc:
                error = f"{path}: {exc}"
                if is_fatal_write_error(exc):
                    self._stop(path, exc)  # type: ignore[arg-type]
        pending.file_done(time.perf_counter() - started, error)


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


def chunks(items: Sequence[InputImage], size: int) -> Iterator[list[InputImage]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def default_batch_size(device: Any) -> int:
    """1 on the CPU: on two cores, batches of 1, 4, 8 and 16 ran at the same speed or slower
    (PNG encoding dominates) and larger ones hold more results in memory; 8 on an accelerator,
    where batching is what makes the forward pass cheap."""
    return 1 if getattr(device, "type", str(device)) == "cpu" else 8


def shard(items: Sequence[InputImage], index: int, count: int) -> list[InputImage]:
    """The ``index``-th (1-based) of ``count`` deterministic, disjoint slices of sorted inputs:
    every ``count``-th item, starting at ``index - 1``."""
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"--shard {index}/{count} is not valid", hint="use I/N with 1 <= I <= N")
    return list(items[index - 1::count])
