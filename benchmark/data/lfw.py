"""LFW protocol files: ``pairs.txt`` (View 2: folds × (matched + mismatched) pairs), ``people.txt``, and the
image layout ``images/<Name>/<Name>_NNNN.jpg``.

Lines naming files that are not on disk are kept aside and reported (count and examples), never fatal.
When a copy of LFW comes without ``pairs.txt``, :func:`make_pairs` writes a seeded file in the same
format (identity-disjoint folds) — clearly not the official pairs, but the same protocol.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text
from .prepare import PrepareItem


@dataclass(frozen=True)
class LfwImage:
    """One LFW image named by person and 1-based number."""

    name: str
    number: int

    @property
    def key(self) -> str:
        """``Name/Name_NNNN.jpg``: the path relative to ``images/`` (also the prepare key)."""
        return f"{self.name}/{self.name}_{self.number:04d}.jpg"

    def path(self, images_root: str | os.PathLike) -> Path:
        """File of this image under ``images_root``."""
        return Path(images_root) / self.key


@dataclass(frozen=True)
class LfwPair:
    """A pair of ``pairs.txt``: fold index (0-based), whether it is a matched pair, the two images."""

    fold: int
    same: bool
    a: LfwImage
    b: LfwImage
    line: int


@dataclass
class LfwPairs:
    """Parsed ``pairs.txt`` against an image folder: usable pairs and pairs naming absent files."""

    n_folds: int
    per_fold: int
    images_root: Path
    pairs: list[LfwPair]
    missing: list[tuple[LfwPair, list[str]]] = field(default_factory=list)

    def report(self, examples: int = 5) -> dict:
        """Counts of present / missing pairs with a few examples of missing files."""
        return {
            "folds": self.n_folds,
            "per_fold": self.per_fold,
            "pairs_listed": len(self.pairs) + len(self.missing),
            "pairs_with_files": len(self.pairs),
            "pairs_missing_files": len(self.missing),
            "missing_examples": [f"line {p.line}: {', '.join(m)}" for p, m in self.missing[:examples]],
        }

    def images(self) -> list[LfwImage]:
        """The distinct images of the usable pairs, in first-seen order."""
        seen: dict[LfwImage, None] = {}
        for p in self.pairs:
            seen.setdefault(p.a)
            seen.setdefault(p.b)
        return list(seen)

    def items(self) -> list[PrepareItem]:
        """Prepare items of :meth:`images`."""
        return [PrepareItem(key=im.key, path=str(im.path(self.images_root)), identity=im.name) for im in self.images()]


def images_root(data_dir: str | os.PathLike) -> Path:
    """``DIR/images`` when it exists (the shared layout), else ``DIR`` itself (``lfw-deepfunneled/``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"LFW folder not found: {data_dir}")
    return data_dir / "images" if (data_dir / "images").is_dir() else data_dir


def parse_pairs(path: str | os.PathLike) -> tuple[int, int, list[LfwPair]]:
    """Parse a ``pairs.txt`` file: ``(n_folds, per_fold, pairs)``.

    Header ``<folds>\\t<n>`` (View 2: ``10 300``) or ``<n>`` (the dev files, one fold); then per fold
    ``n`` matched lines ``name i j`` followed by ``n`` mismatched lines ``name1 i name2 j``.
    Raises ``ValueError`` naming the line for a malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pairs file not found: {path} (get the official pairs.txt from the LFW site, "
            "or write protocol-format pairs with `mf2m lfw-pairs`)"
        )
    lines = [(n, ln.split()) for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    head_no, head = lines[0]
    try:
        n_folds, per_fold = (int(head[0]), int(head[1])) if len(head) == 2 else (1, int(head[0]))
    except (ValueError, IndexError):
        raise ValueError(
            f"{path}:{head_no}: expected a header '<folds> <pairs per fold>', got {' '.join(head)!r}"
        ) from None
    body = lines[1:]
    if len(body) != 2 * n_folds * per_fold:
        raise ValueError(
            f"{path}: header promises {n_folds} folds × 2 × {per_fold} = {2 * n_folds * per_fold} "
            f"pairs but {len(body)} lines follow"
        )
    pairs = []
    for idx, (n, f) in enumerate(body):
        fold, same = idx // (2 * per_fold), (idx % (2 * per_fold)) < per_fold
        try:
            if same and len(f) == 3:
                pairs.append(LfwPair(fold, True, LfwImage(f[0], int(f[1])), LfwImage(f[0], int(f[2])), n))
            elif not same and len(f) == 4:
                pairs.append(LfwPair(fold, False, LfwImage(f[0], int(f[1])), LfwImage(f[2], int(f[3])), n))
            else:
                raise ValueError
        except ValueError:
            kind = "matched 'name i j'" if same else "mismatched 'name1 i name2 j'"
            raise ValueError(f"{path}:{n}: expected a {kind} line, got {' '.join(f)!r}") from None
    return n_folds, per_fold, pairs


def load_pairs(
    data_dir: str | os.PathLike, pairs_file: str | os.PathLike | None = None, limit_folds: int | None = None
) -> LfwPairs:
    """Parse ``pairs.txt`` (default ``DIR/pairs.txt``) and split pairs by whether both files exist."""
    root = images_root(data_dir)
    pairs_file = Path(pairs_file) if pairs_file else Path(data_dir) / "pairs.txt"
    n_folds, per_fold, pairs = parse_pairs(pairs_file)
    if limit_folds is not None:
        if limit_folds < 1:
            raise ValueError("--limit-folds must be ≥ 1")
        n_folds = min(n_folds, limit_folds)
        pairs = [p for p in pairs if p.fold < n_folds]
    present: dict[LfwImage, bool] = {}
    usable, missing = [], []
    for p in pairs:
        absent = []
        for im in (p.a, p.b):
            if im not in present:
                present[im] = im.path(root).is_file()
            if not present[im]:
                absent.append(im.key)
        (missing.append((p, absent)) if absent else usable.append(p))
    return LfwPairs(n_folds=n_folds, per_fold=per_fold, images_root=root, pairs=usable, missing=missing)


def parse_people(path: str | os.PathLike) -> list[tuple[int, str, int]]:
    """Parse ``people.txt``: ``[(fold, name, n_images)]``; header = number of folds, then per fold a count
    line followed by that many ``name n`` lines (a one-fold file has no fold count line)."""
    path = Path(path)
    rows = [(n, ln.split()) for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ln.strip()]
    out: list[tuple[int, str, int]] = []
    if not rows:
        return out
    i, fold = 1, 0
    n_folds = int(rows[0][1][0])
    single = len(rows) - 1 == n_folds and all(len(r[1]) == 2 for r in rows[1:])
    if single:  # peopleDevTrain.txt style: count then names
        return [(0, f[0], int(f[1])) for _, f in rows[1:]]
    while i < len(rows) and fold < n_folds:
        n, f = rows[i]
        if len(f) != 1:
            raise ValueError(f"{path}:{n}: expected the number of people of fold {fold + 1}, got {' '.join(f)!r}")
        count = int(f[0])
        for n2, g in rows[i + 1 : i + 1 + count]:
            if len(g) != 2:
                raise ValueError(f"{path}:{n2}: expected 'name n_images', got {' '.join(g)!r}")
            out.append((fold, g[0], int(g[1])))
        i += 1 + count
        fold += 1
    return out


def list_images(data_dir: str | os.PathLike) -> list[Path]:
    """All ``<Name>/<Name>_NNNN.jpg`` files, as paths relative to :func:`images_root`, sorted."""
    return [Path(name) / f"{name}_{n:04d}.jpg" for name, nums in list_people(data_dir).items() for n in nums]


def list_people(data_dir: str | os.PathLike) -> dict[str, list[int]]:
    """Image numbers present per person (from the ``images/<Name>/<Name>_NNNN.jpg`` files)."""
    root = images_root(data_dir)
    people: dict[str, list[int]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        nums = []
        for f in d.glob(f"{d.name}_*.jpg"):
            tail = f.stem[len(d.name) + 1 :]
            if tail.isdigit():
                nums.append(int(tail))
        if nums:
            people[d.name] = sorted(nums)
    return people


def make_pairs(
    data_dir: str | os.PathLike, out: str | os.PathLike, n_folds: int = 10, per_fold: int = 300, seed: int = 0
) -> Path:
    """Write a seeded ``pairs.txt`` in the View 2 format from the images present.

    People are split into identity-disjoint folds; each fold gets ``per_fold`` matched pairs (two distinct
    images of one person) and ``per_fold`` mismatched pairs (images of two people of that fold).
    """
    rng = random.Random(seed)
    people = list_people(data_dir)
    names = sorted(people)
    rng.shuffle(names)
    folds = [names[k::n_folds] for k in range(n_folds)]
    lines = [f"{n_folds}\t{per_fold}"]
    for k, fold_names in enumerate(folds):
        multi = [n for n in fold_names if len(people[n]) >= 2]
        candidates = [(n, i, j) for n in multi for a, i in enumerate(people[n]) for j in people[n][a + 1 :]]
        if len(candidates) < per_fold or len(fold_names) < 2:
            raise ValueError(
                f"fold {k + 1} has only {len(candidates)} possible matched pairs "
                f"(need {per_fold}); use fewer folds or pairs"
            )
        # weight by person so people with many photos do not dominate
        by_person: dict[str, list[tuple[str, int, int]]] = {}
        for c in candidates:
            by_person.setdefault(c[0], []).append(c)
        chosen: set[tuple[str, int, int]] = set()
        while len(chosen) < per_fold:
            person = rng.choice(multi)
            chosen.add(rng.choice(by_person[person]))
        lines += [f"{n}\t{i}\t{j}" for n, i, j in sorted(chosen)]
        mism: set[tuple[str, int, str, int]] = set()
        while len(mism) < per_fold:
            a, b = rng.sample(fold_names, 2)
            a, b = min(a, b), max(a, b)
            mism.add((a, rng.choice(people[a]), b, rng.choice(people[b])))
        lines += [f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in sorted(mism)]
    out = Path(out)
    write_text(out, "\n".join(lines) + "\n")
    return out
