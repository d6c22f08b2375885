"""Which images are copies of one another (a photo and its turned, darkened or cropped edits, a
burst, a re-upload), so that a split or a CV fold never puts a photo on one side and its copy on
the other. Two signals, joined with union-find:

* **Names.** A copy named after its original: ``Deer_7_2.jpg`` of ``Deer_7.jpg`` (the convention
  of the shared data set's source: ``<name>_<n>_<k>``), ``photo (1).jpg``, ``photo copy.jpg``,
  ``photo-copy2.jpg``. The key is the name with that suffix removed, within one folder.
* **Content.** A perceptual hash (64-bit DCT hash of a 32x32 grey thumbnail, as in pHash) of each
  image, under its four quarter turns and mirror; two images are near-duplicates when some
  orientation of one is within :data:`HASH_THRESHOLD` bits of the other. The threshold is measured
  on the shared photos against their name groups (``bench/near_duplicates.py``, bench/RESULTS.md
  "Data: copies across the split"), not guessed.

:func:`find_groups` returns a group id per sample path and what it found (:class:`GroupStats`).
No torch; content hashing decodes each image once, at thumbnail size (JPEG draft mode).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from animalclf.config import GROUP_MODES  # one list, torch-free
from animalclf.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["GROUP_MODES", "HASH_THRESHOLD", "GroupStats", "name_key", "phash", "orientation_hashes",
           "near_duplicate_pairs", "find_groups", "check_mode"]

# GROUP_MODES: ``auto`` names and content; ``names`` the name convention only; ``none`` every file alone.

HASH_THRESHOLD = 8
"""Bits (of 64) within which two images are near-duplicates; measured, see the module docstring."""

_COPY_SUFFIXES = [
    re.compile(r"^(?P<key>.*_\d+)_\d+$"),                    # Deer_7_2 -> Deer_7
    re.compile(r"^(?P<key>.+?) \(\d+\)$"),                   # photo (1) -> photo
    re.compile(r"^(?P<key>.+?)[ _-]copy(?:[ _-]?\d+)?$", re.IGNORECASE),  # photo copy, photo-copy2
]


def check_mode(mode: str) -> str:
    if mode not in GROUP_MODES:
        raise UserError(f"--groups {mode!r}: choose one of {', '.join(GROUP_MODES)}.")
    return mode


def name_key(path: str) -> str:
    """The group key a file's name gives: its folder plus its stem without a copy suffix."""
    folder, _, name = str(path).rpartition("/")
    stem = PurePosixPath(name).stem
    for pattern in _COPY_SUFFIXES:
        m = pattern.match(stem)
        if m:
            stem = m.group("key")
            break
    return f"{folder}/{stem}"


# ---------------------------------------------------------------------------------------------
# Perceptual hashes
# ---------------------------------------------------------------------------------------------
_N = 32
_DCT = np.cos(np.pi / _N * (np.arange(_N)[:, None]) * (np.arange(_N)[None, :] + 0.5))  # DCT-II basis


def phash(grey: np.ndarray) -> int:
    """64-bit hash of a 32x32 grey image: the signs of its 8x8 lowest DCT frequencies (DC left
    out) against their median."""
    coeffs = (_DCT @ grey.astype(np.float64) @ _DCT.T)[:8, :8].ravel()[1:]
    bits = coeffs > np.median(coeffs)
    return int(np.packbits(np.concatenate([[False], bits])).view(">u8")[0])


def orientation_hashes(data: bytes) -> list[int]:
    """The image's hash under its 8 orientations (4 quarter turns, each also mirrored); the first
    is the image as it is."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (_N * 4, _N * 4))  # JPEG: decode at 1/2..1/8 scale
        grey = np.asarray(im.convert("L").resize((_N, _N), Image.Resampling.BILINEAR), dtype=np.float64)
    out = []
    for k in range(4):
        turned = np.rot90(grey, k)
        out += [phash(turned), phash(turned[:, ::-1])]
    return out


def near_duplicate_pairs(hashes: Sequence[Optional[Sequence[int]]], threshold: int = HASH_THRESHOLD,
                         cells: int = 1 << 22) -> Iterator[tuple[int, int, int]]:
    """``(i, j, distance)`` for every ``i < j`` whose images are within ``threshold`` bits under
    some orientation (``hashes[i]``: :func:`orientation_hashes`, or ``None`` for an unreadable
    file), as they are found: nothing is kept but one block of ~``cells`` distances (the distance
    is symmetric: a turn of one image is the inverse turn of the other). Vectorised, but
    quadratic: n² comparisons of 8 hashes (see docs/data-and-quality.md for the cost at size;
    past ~100,000 images group by names, or by your own ids)."""
    idx = [i for i, h in enumerate(hashes) if h]
    if len(idx) < 2:
        return
    base = np.array([hashes[i][0] for i in idx], dtype=np.uint64)
    turns = np.array([list(hashes[i]) for i in idx], dtype=np.uint64)  # (n, 8)
    chunk = max(1, cells // len(idx))  # rows per block: its buffers stay ~``cells`` x 9 bytes (~40 MB)
    for start in range(0, len(idx), chunk):
        block = turns[start:start + chunk]  # (b, 8): each image's orientations against every image as it is
        dist = np.bitwise_count(block[:, 0:1] ^ base[None, :])
        for o in range(1, block.shape[1]):
            np.minimum(dist, np.bitwise_count(block[:, o:o + 1] ^ base[None, :]), out=dist)
        for a, b in zip(*np.nonzero(dist <= threshold)):
            if start + int(a) < int(b):
                yield idx[start + int(a)], idx[int(b)], int(dist[a, b])


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------
@dataclass
class GroupStats:
    """What grouping found: files, groups, files joined by name, near-duplicate pairs by content
    (``cross_pairs``: those whose names did not already group them), unreadable files."""

    mode: str
    files: int = 0
    groups: int = 0
    by_name: int = 0
    content_pairs: int = 0
    cross_pairs: int = 0
    cross_label_pairs: int = 0
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.mode == "none":
            return f"{self.files} files, not grouped (--groups none): copies of one photo may straddle the split"
        text = f"{self.files} files in {self.groups} groups ({self.by_name} files joined to another by name"
        if self.mode == "auto":
            text += (f"; {self.content_pairs} near-duplicate pairs by content, {self.cross_pairs} of them across name "
                     f"groups, {self.cross_label_pairs} across classes")
        return text + ")" + (f"; content pairs across names, e.g. {', '.join(self.examples)}" if self.examples else "")


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def find_groups(samples: Sequence[tuple[str, int]], mode: str = "auto",
                read: Optional[Callable[[str], bytes]] = None, threshold: int = HASH_THRESHOLD,
                ) -> tuple[dict[str, str], GroupStats]:
    """A group id per sample path (a representative path of its group) and the stats. ``read``
    gives a file's bytes (content hashing, ``auto`` only); an unreadable file stays alone."""
    check_mode(mode)
    paths = [p for p, _ in samples]
    labels = [y for _, y in samples]
    stats = GroupStats(mode=mode, files=len(paths))
    uf = _Union(len(paths))
    if mode != "none":
        first: dict[str, int] = {}
        for i, p in enumerate(paths):
            key = name_key(p)
            if key in first:
                uf.join(first[key], i)
            else:
                first[key] = i
        stats.by_name = len(paths) - len(first)
    if mode == "auto":
        if read is None:
            raise ValueError("find_groups(mode='auto') needs read= to hash the images' content")
        hashes = [_hash_or_none(read, p) for p in paths]
        name_root = [uf.find(i) for i in range(len(paths))]
        for i, j, d in near_duplicate_pairs(hashes, threshold):
            stats.content_pairs += 1
            if name_root[i] != name_root[j]:
                stats.cross_pairs += 1
                if labels[i] != labels[j]:
                    stats.cross_label_pairs += 1
                if len(stats.examples) < 5:
                    stats.examples.append(f"{PurePosixPath(paths[i]).name} ~ {PurePosixPath(paths[j]).name} ({d} bits)")
            uf.join(i, j)
    group = {p: paths[uf.find(i)] for i, p in enumerate(paths)}
    stats.groups = len(set(group.values()))
    return group, stats


def _hash_or_none(read: Callable[[str], bytes], path: str) -> Optional[list[int]]:
    try:
        return orientation_hashes(read(path))
    except Exception as e:  # noqa: BLE001 - an unreadable file stays in a group of its own
        log.debug("No content hash for %s (%s)", path, e)
        return None
