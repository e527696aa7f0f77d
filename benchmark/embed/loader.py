"""Input pipeline of the embed stage: a torch ``DataLoader`` whose workers decode aligned faces while the
model runs. Each batch is ``(indices, faces, failures)``: the item indices that decoded, their faces as a
``(m, 112, 112, 3)`` uint8 tensor (pinned on GPU runs) and ``(index, reason, detail)`` for the rest."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.align import ALIGNED_SIZE


class FaceFiles:
    """Map-style dataset over aligned-face files; item ``i`` is ``(i, face | None, reason, detail)``.

    ``sources[i]`` is a path, or ``None`` with ``known_failures[i] = (reason, detail)`` for items lost
    before decoding (e.g. no face found at preparation).
    """

    def __init__(
        self,
        sources: Sequence[str | None],
        known_failures: dict[int, tuple[str, str]] | None = None,
        size: int = ALIGNED_SIZE,
    ):
        self.sources = list(sources)
        self.known_failures = known_failures or {}
        self.size = size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        from ..data.images import ImageError, read_image

        path = self.sources[i]
        if path is None:
            reason, detail = self.known_failures.get(i, ("missing", ""))
            return i, None, reason, detail
        try:
            face = read_image(path)
        except ImageError as exc:
            return i, None, exc.reason, exc.detail
        if face.shape[:2] != (self.size, self.size):
            return (
                i,
                None,
                "not-aligned",
                (f"{face.shape[1]}x{face.shape[0]} image where an aligned {self.size}x{self.size} face was expected"),
            )
        return i, face, "", ""


def collate(samples):
    """Stack the decoded faces of a batch; failures travel beside them."""
    import torch

    ok = [(i, face) for i, face, _, _ in samples if face is not None]
    failures = [(i, reason, detail) for i, face, reason, detail in samples if face is None]
    if ok:
        indices = torch.tensor([i for i, _ in ok], dtype=torch.int64)
        faces = torch.from_numpy(np.stack([face for _, face in ok]))
    else:
        indices = torch.empty(0, dtype=torch.int64)
        faces = torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    return indices, faces, failures


def make_loader(files: FaceFiles, batches: Sequence[Sequence[int]], workers: int, pin_memory: bool, prefetch: int = 4):
    """A ``DataLoader`` yielding the given batches of indices in order (decoded by ``workers`` processes)."""
    from torch.utils.data import DataLoader

    kwargs = {}
    if workers > 0:
        # Workers only decode (PIL + numpy). They touch no thread pool inherited from the parent (cv2,
        # OpenMP, onnxruntime): after fork() such pools can deadlock, so nothing is configured in them.
        kwargs = {"prefetch_factor": prefetch, "persistent_workers": False}
    return DataLoader(
        files,
        batch_sampler=[list(b) for b in batches],
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        **kwargs,
    )
