"""Episode videos, written frame by frame (a 520-step episode at 360 px would be ~0.4 GB in memory).

OpenCV comes with LIBERO (robosuite and libero-pro depend on it) and writes MP4 without ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class VideoRecorder:
    def __init__(self, path: str | Path, fps: int = 20):
        self.path = Path(path)
        self.fps = fps
        self._writer = None

    def add(self, frame: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write video {self.path}")
        self._writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def close(self) -> Path:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        return self.path

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def video_path(video_dir: str | Path, config_hash: str, suite: str, task_id: int, episode: int) -> Path:
    return Path(video_dir) / config_hash / suite / f"task{task_id:02d}_ep{episode:02d}.mp4"
