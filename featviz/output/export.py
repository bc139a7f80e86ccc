"""The only writer: output layout, atomic files, the manifest, and batches over many photos.

Every file is written to a temporary name in its own folder and renamed into place, so a run
that is interrupted leaves whole files or none; ``summary.json`` is written last, so a folder
with a summary whose listed files all exist is complete (what ``--skip-existing`` checks).
Nothing is written outside the output folder.

For speed, PNG encoding (numpy and ISA-L release the GIL while they work) runs on a thread pool while
the main thread decodes and runs the next batch through the model. The bookkeeping (counts,
manifest records, ``--skip-existing``) is :mod:`featviz.output.records`, which ``Exporter`` inherits.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from featviz.errors import FeatvizError, ImageError, OutputError, UsageError
from featviz.inputs.names import display_name
from featviz.output.layout import (
    MANIFEST,
    SUMMARY,
    TMP_MARK,
    atomic_write,
    check_output_folder,
    ensure_inside,
    is_complete,
    is_fatal_write_error,
    layer_dir,
    remove_stale_temporaries,
)
from featviz.output.records import ExportRecords, ExportReport, _PendingResult, default_batch_size
from featviz.output.report import REPORT, ReportWriter
from featviz.output.result import Producer, result_files
from featviz.output.resume import photo_fingerprint
from featviz.output.vitrun import write_run_average

if TYPE_CHECKING:

    from featviz.inputs.discover import InputImage
    from featviz.output.pipeline import LayerResult, PreparedImage

__all__ = ["MANIFEST", "SUMMARY", "TMP_MARK", "ExportReport", "Exporter", "chunks", "default_batch_size", "is_complete",
           "layer_dir", "shard"]


class Exporter(ExportRecords):
    """Runs photos through a :class:`~featviz.output.pipeline.Visualizer` and writes every result.

    ``layout(image)`` gives the folder key for an input (by default its ``key``). ``on_record``
    receives each manifest record (one per photo and layer, or one per failed photo) as it is
    made; ``on_image_done`` is called once per input photo. Both may be called from worker
    threads, never at the same time. ``stop`` is asked before each batch: once it returns True
    the run starts no new photo, finishes the ones in flight (files, summaries and manifest
    lines written whole) and returns with ``report.stopped`` set (the CLI's SIGTERM handling).
    """

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
        visualizer = self.visualizer
        if visualizer.options.pca_tokens and not visualizer.pca_bases:  # one basis, before the first photo
            visualizer.fit_token_pca([image.path for image in (images if self.pca_photos is None
                                                                else self.pca_photos)])
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
        if visualizer.options.vit_stats and self.write_manifest:  # the run's mean, from every done photo
            try:
                write_run_average(self.out, visualizer.loaded.name, visualizer.loaded.weights,
                                  visualizer.options.png_level)
            except OSError as exc:
                raise OutputError(f"cannot write the run's attention statistics into {self.out} ({exc})",
                                  hint="free space or fix the output folder, then rerun with --skip-existing") from None
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


def chunks(items: Sequence[InputImage], size: int) -> Iterator[list[InputImage]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def shard(items: Sequence[InputImage], index: int, count: int) -> list[InputImage]:
    """The ``index``-th (1-based) of ``count`` deterministic, disjoint slices of sorted inputs:
    every ``count``-th item, starting at ``index - 1``."""
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"--shard {index}/{count} is not valid", hint="use I/N with 1 <= I <= N")
    return list(items[index - 1::count])
