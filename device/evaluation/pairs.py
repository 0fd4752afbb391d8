"""LFW pairs files: the 1-fold development files and the 10-fold pairs.txt protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .common import InputError

# -- pairs files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One LFW pair: fold index, whether both images show the same person, and the two images."""

    fold: int
    same: bool
    first: tuple[str, int]  # (name, image number)
    second: tuple[str, int]


@dataclass(frozen=True)
class PairsFile:
    folds: int
    per_fold: int  # same-person pairs per fold (and as many different-person ones)
    pairs: list[Pair]

    @property
    def protocol(self) -> str:
        if self.folds == 1:
            return f"1 fold of {self.per_fold} same + {self.per_fold} different pairs"
        return f"{self.folds} folds of {self.per_fold} same + {self.per_fold} different pairs"


def parse_pairs(path: str | Path) -> PairsFile:
    """Read an official LFW pairs file (header `N` or `folds N`), checking every line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read pairs file {path}: {exc.strerror or exc}") from None
    numbered = [(i + 1, line.split()) for i, line in enumerate(lines)]
    numbered = [(n, fields) for n, fields in numbered if fields]
    if not numbered:
        raise InputError(f"{path}: empty pairs file")
    head_line, header = numbered[0]
    try:
        numbers = [int(v) for v in header]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        folds, per_fold = 1, numbers[0]
    elif len(numbers) == 2:
        folds, per_fold = numbers
    else:
        raise InputError(
            f"{path}:{head_line}: header must be `N` (one fold of N same + N different pairs) "
            f"or `FOLDS N` (e.g. `10 300`), got {' '.join(header)!r}"
        )
    if folds < 1 or per_fold < 1:
        raise InputError(f"{path}:{head_line}: header numbers must be positive")
    body = numbered[1:]
    expected = folds * 2 * per_fold
    if len(body) != expected:
        raise InputError(
            f"{path}: header says {folds} fold(s) x (2 x {per_fold}) = {expected} pairs, but the file has {len(body)} pair lines"
        )
    pairs = []
    for index, (line_no, fields) in enumerate(body):
        fold, position = divmod(index, 2 * per_fold)
        want_same = position < per_fold
        try:
            if len(fields) == 3:
                name, a, b = fields
                pair = Pair(fold, True, (name, int(a)), (name, int(b)))
            elif len(fields) == 4:
                name_a, a, name_b, b = fields
                pair = Pair(fold, False, (name_a, int(a)), (name_b, int(b)))
            else:
                raise ValueError
        except ValueError:
            raise InputError(
                f"{path}:{line_no}: expected `name n1 n2` or `name1 n1 name2 n2`, got {' '.join(fields)!r}"
            ) from None
        if pair.same != want_same:
            kind = "same-person (3 fields)" if want_same else "different-person (4 fields)"
            raise InputError(
                f"{path}:{line_no}: fold {fold + 1} expects {per_fold} same-person lines then "
                f"{per_fold} different-person lines; this line should be {kind}"
            )
        pairs.append(pair)
    return PairsFile(folds, per_fold, pairs)


def limit_pairs(pairs: PairsFile, limit: int) -> PairsFile:
    """The first `limit` same and first `limit` different pairs of each fold (quick runs)."""
    kept: list[Pair] = []
    counts: dict[tuple[int, bool], int] = {}
    for pair in pairs.pairs:
        key = (pair.fold, pair.same)
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            kept.append(pair)
    return PairsFile(pairs.folds, min(limit, pairs.per_fold), kept)


def image_path(folder: Path, image: tuple[str, int]) -> Path:
    name, number = image
    return folder / name / f"{name}_{number:04d}.jpg"
