"""``StreamingDetector``: detections of a live video, fed features block by block.

::

    stream = detector.stream()
    for block in feature_blocks:                  # [n, C] arrays, any n >= 0
        for d in stream.push(block):              # the detections that became final
            print(d.label, d.start, d.end, d.score)
    rest = stream.flush()                         # end of the video: the remaining ones

The stream runs the model over the same windows as :meth:`Detector.detect_raw` would over the
whole video (regular windows as soon as they are complete, the last one, aligned to the end, at
:meth:`flush`) and merges them with the same :class:`amnet.chunk_merge.ChunkMerger`. So, with no
detection cap (a stream has none: ``top_k`` does not apply), everything it emits equals the
whole-video detections, however the features were cut into blocks (DESIGN §6.5).

Delay. A detection ending at snippet ``e`` (its end time over ``feature_stride / fps``) is
emitted at the latest by the push that brings the count of fed snippets to ``e + max_delay``,
where ``max_delay = max_seq_len + step`` (``step`` being the stride between windows). Most are
emitted sooner: as soon as nothing that later windows can bring overlaps them.

Memory: the features of at most ``max_seq_len + step`` snippets and the candidates of about two
windows, whatever the stream's length. A stream belongs to one video and one producer; many
streams may share one :class:`Detector` from several threads.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from amnet.chunk_merge import ChunkMerger
from amnet.detections import Detections
from amnet.errors import AMNetError

if TYPE_CHECKING:
    from amnet.deploy.detector import Detection, Detector

__all__ = ["StreamingDetector"]


class StreamingDetector:
    """One live video through a :class:`Detector` (see the module doc); from
    :meth:`Detector.stream`."""

    def __init__(self, detector: Detector) -> None:
        if detector.force_upsampling:
            raise AMNetError(
                f"{detector.path}: this model resamples whole videos to {detector.max_seq_len} "
                "snippets (force_upsampling); it cannot follow a live stream"
            )
        self.detector = detector
        self.window = int(detector.max_seq_len)
        self.step = max(self.window - round(self.window * detector.chunk_overlap), 1)
        self.max_delay = self.window + self.step
        # Natural finality is checked at most once per this many snippets of progress.
        self._check_every = max(1, self.step // 8)
        self._merger = ChunkMerger(
            detector.postprocess,
            detector.fps,
            detector.feature_stride,
            detector.num_frames,
            min_score=detector.min_score,
        )
        self._rows = np.empty((self.window + self.step, detector.input_dim), dtype=np.float32)
        self._first = 0  # stream index of self._rows[0]
        self._used = 0
        self._fed = 0
        self._next = 0  # the next regular window starts at self._next * self.step
        self._last_run: int | None = None  # start of the last window run
        self._checked = -1
        self._closed = False
        self._lock = threading.Lock()

    @property
    def fed(self) -> int:
        """Snippets pushed so far."""
        return self._fed

    @property
    def pending(self) -> int:
        """Candidates held (bounded by the window, whatever the stream's length)."""
        return self._merger.pool_size

    def push(self, block: Any) -> list[Detection]:
        """Feed ``[n, C]`` features (any real dtype, ``n >= 0``); returns the detections that
        became final, best first.

        Raises:
            AMNetError: a bad block (shape, dtype, NaN/Inf) or a flushed stream; the stream is
                unchanged by a bad block.
        """
        with self._lock:
            self._check_open()
            array = self.detector.prepare(block, name="block")
            found: list[Detections] = []
            done = 0
            while done < len(array):
                take = min(len(array) - done, len(self._rows) - self._used)
                self._rows[self._used : self._used + take] = array[done : done + take]
                self._used += take
                self._fed += take
                done += take
                found.extend(self._run_ready_windows())
                self._compact()
            found.append(self._check_final())
            return self._detections(found)

    def flush(self) -> list[Detection]:
        """End the stream: the detections not emitted yet, best first. The stream is closed."""
        with self._lock:
            self._check_open()
            self._closed = True
            total, found = self._fed, []
            if total > 0 and total < self.window:
                found.append(self._run(0, total))
            elif total >= self.window and self._last_run != total - self.window:
                found.append(self._run(total - self.window, self.window))
            found.append(self._merger.finish())
            self._rows = np.empty((0, self._rows.shape[1]), dtype=np.float32)
            return self._detections(found)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a StreamingDetector cannot be pickled (it holds its Detector's loaded model); "
            "open the stream where the features arrive"
        )

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AMNetError("the stream was flushed; start a new one with detector.stream()")

    def _run_ready_windows(self) -> list[Detections]:
        found = []
        while self._next * self.step + self.window <= self._fed:
            found.append(self._run(self._next * self.step, self.window))
            self._next += 1
        return found

    def _run(self, start: int, length: int) -> Detections:
        rows = self._rows[start - self._first : start - self._first + length]
        scores, segments = self.detector.run_backend(rows[None], np.array([length], dtype=np.int64))
        self._last_run = start
        scores = np.asarray(scores, dtype=np.float32)[0]
        segments = np.asarray(segments, dtype=np.float32)[0]
        return self._merger.add(scores, segments, start, length)

    def _frontier(self) -> int | None:
        """No window run later can start before this snippet (None: none has run yet)."""
        if self._last_run is None:
            return None
        return min(self._next * self.step, self._fed - self.window)

    def _compact(self) -> None:
        """Drop the rows no later window needs (all of them before the frontier)."""
        frontier = self._frontier()
        if frontier is None or frontier <= self._first:
            return
        drop = frontier - self._first
        self._rows[: self._used - drop] = self._rows[drop : self._used]
        self._used -= drop
        self._first = frontier

    def _check_final(self) -> Detections:
        frontier = self._frontier()
        if frontier is None or frontier - self._checked < self._check_every:
            return Detections.empty()
        self._checked = frontier
        return self._merger.ready(frontier)

    def _detections(self, found: list[Detections]) -> list[Detection]:
        dets = Detections.concatenate(found)
        dets = dets.take(np.argsort(-dets.scores, kind="stable"))
        if self.detector.min_score is not None:
            dets = dets.take(np.flatnonzero(dets.scores >= self.detector.min_score))
        return self.detector.to_detections(dets)

    def __repr__(self) -> str:
        return (
            f"StreamingDetector(fed={self._fed}, window={self.window}, step={self.step}, "
            f"max_delay={self.max_delay}, closed={self._closed})"
        )
