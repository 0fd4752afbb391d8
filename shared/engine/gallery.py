"""The encrypted gallery: blocks of up to 4096 templates in a layout that makes 1:N cheap.

Layout (Halevi–Shoup diagonals split baby-step/giant-step). With S = 4096 slots, dimension d,
b baby steps and G = d / b giant steps, a block stores d ciphertexts

    P[g][j][u] = -2 * y_{(u - g*b) mod S}[(u + j) mod d]        (level 1, scale 2^40)

and one ciphertext of squared norms, N[s] = |y_s|^2 (level 0). For a probe x repeated with
period d, rot(x, j)[u] = x[(u + j) mod d], so

    sum_g rot( sum_j rot(x, j) * P[g][j], g*b )[s] + N[s] = |y_s|^2 - 2 <x, y_s>

in slot s for all 4096 templates at once: the query's b rotations are paid once per scan, each
block costs d multiplications and G rotations. The device adds |x|^2 after decrypting.

Enrollment from one ciphertext E = Enc(y repeated) at level 2, into slot s:
P[g][j] += rescale(rot(E, j) * onehot_{s+g*b} * -2); the mask plaintext is encoded at the scale
of the prime the rescale removes, so every scale stays exactly 2^40. The same contribution is
recomputed from the stored E and subtracted to remove a template: exact, no drift.

Blocks sized to the gallery: a block may give each template r = 1, 2 or 4 slots ("copies").
Copy c of a template sits at base slot p + O[c] and sums only d / r of its coordinates, using
b_r baby steps and G_r giant steps of the same stride b (k = g*b + j, j < b_r, g < G_r); the
copy offsets O tile the rest, so the device adds the r partial sums after decrypting. Such a
block costs d / r multiplications and holds 4096 / r templates: small galleries scan in a
fraction of the time with the same probe, reply and keys. At d = 128, r = 4 uses 8 baby and 4
giant steps, base slots {0..7, 16..23, 32..39, 48..55} + 128 q and copies at +0, +8, +64, +72.
r = 1 is exactly the layout above (a stored block without "copies" in its header is one). The
norm |y|^2 sits in copy 0 (the base slot) only. Every layout rotates by 1 and by b only: the
evaluation bundle holds just those two Galois keys. See `BlockLayout`.

The gallery holds only ciphertexts and the occupancy of its slots (base slots only).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from blindgate.shared.framing import Layout, frame, unframe
from blindgate.shared.limits import max_block_bytes

from .context import (
    LEVEL_ENROLL,
    LEVEL_PROBE,
    LEVEL_REPLY,
    Context,
    EngineError,
    Params,
    load_ciphertext,
    to_bytes,
)
from .keys import EvaluationKeys

# `BGB1 | u32 header length | JSON header | (u32 length, SEAL ciphertext)*`, no kind byte; the
# header's "ciphertexts" is their count. The limit depends on the dimension (see `from_bytes`).
_BLOCK_LAYOUT = Layout(magic=b"BGB1", name="blindgate gallery block", limit=0, kinded=False, sizes="ciphertexts", prefixed=True)


@dataclass(frozen=True, order=True)
class SlotRef:
    """Where a template lives: block index and slot within the block."""

    block: int
    slot: int


# Copies per template a block may use, and the policy for new blocks: the first 1,024 templates
# sit in a 4-copy block (a quarter of a full block's multiplications), then full blocks of 4,096.
# Measured on one core (bench/matching.py --copies plan, with this tuple changed), scan ms at
# 1,000 / 2,048 / 4,096 / 8,192 / 65,536 templates: (4,) 21 / 70 / 70 / 110 / 656;
# (4, 2) 21 / 51 / 92 / 132 / 684; all 1-copy 57 / 57 / 57 / 97 / 648. (4,) bounds the cost
# of a large gallery to one small extra block (+1 %); (4, 2) is 5 % slower at 65,536 and 60 %
# at 4,096.
COPY_CHOICES = (1, 2, 4)
_COPIES_BY_BLOCK = (4,)
# How much of r's saving comes from fewer baby steps (the rest from fewer giant steps): baby
# steps are rotations at level 1 paid once per scan (~1.1 ms each), giant steps a
# relinearization and a rotation at level 0 per block (~0.5 ms each). Measured at dim 128 on one
# core: a lone 4-copy block (galleries up to 1,024) scans in 21.7 ms with 8 baby steps, 27.7 ms
# with 16, 23.8 ms with 4; once 16 baby steps are paid for 1-copy blocks, a 2-copy block costs
# 20.5 ms with 16 and 26.5 ms with 8. So: 8 baby steps for 4 copies, 16 for 2 and 1.
_BABY_DIVISOR = {1: 1, 2: 1, 4: 2}


@dataclass(frozen=True)
class BlockLayout:
    """Where a block with `copies` slots per template puts them, and its baby/giant step counts.

    Slot s of a block computes sum over k in `terms` of x[(s+k) mod d] * y[(s+k) mod d], with
    terms = {g*stride + j : g < giant, j < baby}. A template at base slot p has copies at
    p + o for o in `offsets`; terms + offsets = {0..d-1}, so the copies' sums add up to <x, y>.
    """

    copies: int
    baby: int  # baby steps b_r <= params.baby
    giant: int  # giant steps G_r
    stride: int  # the giant step, params.baby for every layout (one Galois key)
    offsets: tuple[int, ...]  # offset of copy c from the base slot
    terms: tuple[int, ...]  # k values one slot sums, ascending

    @property
    def per_copy(self) -> int:
        return self.baby * self.giant


@functools.lru_cache(maxsize=32)
def block_layout(params: Params, copies: int) -> BlockLayout:
    """The layout of a block with `copies` slots per template (1, 2 or 4; at most dim)."""
    if copies not in COPY_CHOICES or copies > params.dim:
        raise EngineError(f"a block gives each template 1, 2 or 4 slots (at most {params.dim}), not {copies!r}")
    stride, giant = params.baby, params.giant
    divisor = min(_BABY_DIVISOR[copies], stride)
    while giant * divisor % copies:  # small dimensions: take more of the saving from baby steps
        divisor *= 2
    baby, giant = stride // divisor, giant * divisor // copies
    offsets = tuple(sorted(i * baby + h * stride * giant for i in range(divisor) for h in range(copies // divisor)))
    terms = tuple(g * stride + j for g in range(giant) for j in range(baby))
    return BlockLayout(copies=copies, baby=baby, giant=giant, stride=stride, offsets=offsets, terms=terms)


def copies_for_block(params: Params, index: int) -> int:
    """Layout policy for a NEW block at `index`: 4 copies for block 0, then 1 (at most dim)."""
    wanted = _COPIES_BY_BLOCK[index] if 0 <= index < len(_COPIES_BY_BLOCK) else 1
    return max(c for c in COPY_CHOICES if c <= min(wanted, params.dim))


def plan_blocks(params: Params, count: int, copies: int | None = None) -> list[tuple[int, int, int]]:
    """(start, end, copies) per block for `count` templates bulk-imported in order (`encrypt_block`).

    `copies` None: the layouts enrollment gives (`copies_for_block`); else that layout for every block.
    """
    plan: list[tuple[int, int, int]] = []
    start = 0
    while start < count:
        layout = copies_for_block(params, len(plan)) if copies is None else copies
        end = min(count, start + params.slots // layout)
        plan.append((start, end, layout))
        start = end
    return plan


@functools.lru_cache(maxsize=32)
def _base_slots(params: Params, copies: int) -> np.ndarray:
    terms = np.asarray(block_layout(params, copies).terms)
    slots = (np.arange(params.slots // params.dim)[:, None] * params.dim + terms[None, :]).ravel()
    slots.setflags(write=False)
    return slots


def base_slots(params: Params, copies: int) -> np.ndarray:
    """Slots where a template of that layout may sit (its copy 0), in allocation order."""
    return _base_slots(params, copies)


@functools.lru_cache(maxsize=32)
def base_mask(params: Params, copies: int) -> np.ndarray:
    """A (slots,) bool array, True at the base slots of that layout."""
    mask = np.zeros(params.slots, dtype=bool)
    mask[base_slots(params, copies)] = True
    mask.setflags(write=False)
    return mask


def is_base_slot(params: Params, copies: int, slot: int) -> bool:
    return 0 <= slot < params.slots and bool(base_mask(params, copies)[slot])


def copy_slots(params: Params, copies: int, slot: int) -> list[int]:
    """Every slot the template at base `slot` occupies (copy 0 first)."""
    return [slot + offset for offset in block_layout(params, copies).offsets]


def first_free_slot(params: Params, layouts: Sequence[int], occupied: Iterable[SlotRef]) -> tuple[SlotRef, int]:
    """The first free base slot over existing blocks (with `layouts[i]` copies), else a new block's.

    Returns (ref, copies of ref.block). Pure Python, no SEAL: the cloud store calls it.
    """
    taken: dict[int, set[int]] = {}
    for ref in occupied:
        taken.setdefault(ref.block, set()).add(ref.slot)
    for index, copies in enumerate(layouts):
        used = taken.get(index, set())
        if len(used) >= params.slots // copies:
            continue
        for slot in base_slots(params, copies):
            if int(slot) not in used:
                return SlotRef(index, int(slot)), copies
    copies = copies_for_block(params, len(layouts))
    return SlotRef(len(layouts), int(base_slots(params, copies)[0])), copies


def rotation_sum(ctx: Context, ct: seal.Ciphertext, keys: EvaluationKeys) -> None:
    """In place: every slot becomes the sum of the `dim` slots from it on.

    log2(dim) rotations with an old bundle (a Galois key per power of two); with today's bundle
    (steps 1 and b only) b - 1 rotations by 1 then G - 1 rotations by b.
    """
    ev, params = ctx.evaluator, ctx.params

    def rotated(source: seal.Ciphertext, step: int) -> seal.Ciphertext:
        out = seal.Ciphertext()
        ev.rotate_vector(source, step, keys.galois, out)
        return out

    if keys.has_steps(params.rotation_steps):
        for step in params.rotation_steps:
            ev.add_inplace(ct, rotated(ct, step))
        return
    for step, count in ((1, params.baby), (params.baby, params.giant)):
        current = ct
        total = None
        for _ in range(count - 1):
            current = rotated(current, step)
            if total is None:
                total = current
            else:
                ev.add_inplace(total, current)
        if total is not None:
            ev.add_inplace(ct, total)


def layout_values(params: Params, templates: np.ndarray, copies: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The plaintext a block encrypts, for templates in its first len(templates) base slots.

    Returns (P with shape (G_r, b_r, slots), N with shape (slots,)) as described in the module doc;
    bulk import on the device encrypts them.
    """
    layout = block_layout(params, copies)
    slots, d = params.slots, params.dim
    bases = base_slots(params, copies)[: len(templates)]
    full = np.zeros((slots, d))
    for offset in layout.offsets:
        full[bases + offset] = templates
    norms = np.zeros(slots)
    norms[bases] = np.einsum("td,td->t", templates, templates)
    u = np.arange(slots)
    diagonals = np.empty((layout.giant, layout.baby, slots))
    for g in range(layout.giant):
        rows = full[(u - g * layout.stride) % slots]
        for j in range(layout.baby):
            diagonals[g, j] = -2.0 * rows[u, (u + j) % d]
    return diagonals, norms


class Block:
    """Up to `capacity` templates as ciphertext diagonals; `None` while the block is empty.

    `copies` (1, 2 or 4) is its layout, fixed when the block is created; `occupied` marks the
    base slot (copy 0) of every template.
    """

    def __init__(self, keys: EvaluationKeys, copies: int = 1) -> None:
        params = keys.params
        self.keys = keys
        self.layout = block_layout(params, copies)
        self.diagonals: list[list[seal.Ciphertext]] | None = None  # [giant][baby]
        self.norms: seal.Ciphertext | None = None
        self.occupied = np.zeros(params.slots, dtype=bool)

    @property
    def copies(self) -> int:
        return self.layout.copies

    @property
    def capacity(self) -> int:
        """How many templates the block holds when full: slots / copies."""
        return self.keys.params.slots // self.copies

    @property
    def count(self) -> int:
        return int(self.occupied.sum())

    @property
    def is_full(self) -> bool:
        return self.count >= self.capacity

    def free_slot(self) -> int | None:
        """The first free base slot in allocation order, or None when the block is full."""
        bases = base_slots(self.keys.params, self.copies)
        free = bases[~self.occupied[bases]]
        return int(free[0]) if free.size else None

    # -- contributions of one template --------------------------------------------------------

    def _contribution(self, enrollment: seal.Ciphertext, slot: int):
        """The exact ciphertexts a template adds to this block (diagonals and norm)."""
        ctx, keys, params, layout = self.keys.context, self.keys, self.keys.params, self.layout
        ev, slots = ctx.evaluator, params.slots
        mask_scale = ctx.prime(LEVEL_ENROLL)  # rescaling then divides it away exactly

        masks = []
        for g in range(layout.giant):
            onehot = [0.0] * slots
            for offset in layout.offsets:
                onehot[(slot + offset + g * layout.stride) % slots] = -2.0
            masks.append(ctx.encode(onehot, LEVEL_ENROLL, mask_scale))

        diagonals: list[list[seal.Ciphertext]] = [[] for _ in range(layout.giant)]
        rotated = enrollment
        for j in range(layout.baby):
            if j:
                nxt = seal.Ciphertext()
                ev.rotate_vector(rotated, 1, keys.galois, nxt)
                rotated = nxt
            for g in range(layout.giant):
                part = seal.Ciphertext()
                ev.multiply_plain(rotated, masks[g], part)
                ev.rescale_to_next_inplace(part)
                diagonals[g].append(part)

        # |y|^2 in every slot (summed at level 1, where rotations are cheaper), then kept only in
        # the base slot and brought down to the reply level. Scales: 2^80 / p2 after the first
        # rescale, times the mask's p2, divided by p1: 2^80 / p1, the reply scale.
        square = seal.Ciphertext()
        ev.square(enrollment, square)
        ev.relinearize_inplace(square, keys.relin)
        ev.rescale_to_next_inplace(square)
        rotation_sum(ctx, square, keys)
        onehot = [0.0] * slots
        onehot[slot] = 1.0
        ev.multiply_plain_inplace(square, ctx.encode(onehot, LEVEL_PROBE, mask_scale))
        ev.rescale_to_next_inplace(square)
        square.scale = ctx.reply_scale  # equal up to float rounding of the same quotient
        return diagonals, square

    def _apply(self, enrollment: seal.Ciphertext, slot: int, subtract: bool) -> None:
        ev = self.keys.context.evaluator
        diagonals, norm = self._contribution(enrollment, slot)
        if self.diagonals is None:
            if subtract:
                raise EngineError("cannot remove from an empty block")
            self.diagonals, self.norms = diagonals, norm
            return
        combine = ev.sub_inplace if subtract else ev.add_inplace
        for row, new_row in zip(self.diagonals, diagonals):
            for ct, part in zip(row, new_row):
                combine(ct, part)
        combine(self.norms, norm)

    def _check_slot(self, slot: int) -> None:
        if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.occupied.size:
            raise EngineError(f"slot {slot!r} is outside the block (0..{self.occupied.size - 1})")
        if not is_base_slot(self.keys.params, self.copies, int(slot)):
            raise EngineError(f"slot {slot} is not where a template of a {self.copies}-copy block can sit")

    def add(self, enrollment: seal.Ciphertext, slot: int) -> None:
        self._check_slot(slot)
        if self.occupied[slot]:
            raise EngineError(f"slot {slot} is already occupied")
        self._apply(enrollment, slot, subtract=False)
        self.occupied[slot] = True

    def remove(self, enrollment: seal.Ciphertext, slot: int) -> None:
        self._check_slot(slot)
        if not self.occupied[slot]:
            raise EngineError(f"slot {slot} holds no template")
        if self.count == 1:  # subtracting the last one would leave transparent (all-zero) ciphertexts
            self.diagonals, self.norms = None, None
        else:
            self._apply(enrollment, slot, subtract=True)
        self.occupied[slot] = False

    # -- serialization ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialize: a JSON header (key id, occupancy, copies) then every ciphertext, length-prefixed.

        "copies" is left out for 1, so such blocks stay byte-identical to the older format.
        """
        blobs = []
        if self.diagonals is not None and self.norms is not None:
            blobs = [to_bytes(ct) for row in self.diagonals for ct in row] + [to_bytes(self.norms)]
        header: dict[str, object] = {"key_id": self.keys.key_id, "occupied": np.packbits(self.occupied).tobytes().hex()}
        if self.copies != 1:
            header["copies"] = self.copies
        return frame(_BLOCK_LAYOUT, header, blobs)

    @classmethod
    def from_bytes(cls, keys: EvaluationKeys, data: bytes) -> Block:
        what = "gallery block"
        params, ctx = keys.params, keys.context
        parsed = unframe(_BLOCK_LAYOUT, data, what, limit=max_block_bytes(params.dim), error=EngineError)
        header, blobs = parsed.header, parsed.blobs
        try:
            occupied = np.unpackbits(np.frombuffer(bytes.fromhex(header["occupied"]), dtype=np.uint8))
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"{what}: malformed header ({exc})") from None
        if header.get("key_id") != keys.key_id:
            raise EngineError(f"{what}: made for keys {header.get('key_id')}, not {keys.key_id}")
        if occupied.size != params.slots:
            raise EngineError(f"{what}: occupancy covers {occupied.size} slots, expected {params.slots}")
        copies = header.get("copies", 1)
        if type(copies) is not int or copies == 1 and "copies" in header:
            raise EngineError(f"{what}: malformed copies {copies!r} (1 is written by leaving it out)")
        block = cls(keys, copies)  # refuses a copies value the engine has no layout for
        if occupied[~base_mask(params, copies)].any():
            raise EngineError(f"{what}: a template is marked outside the base slots of a {copies}-copy block")
        count, expected = len(blobs), block.layout.per_copy + 1 if occupied.any() else 0
        if count != expected:
            raise EngineError(f"{what}: holds {count} ciphertexts, expected {expected}")
        block.occupied = occupied.astype(bool)
        if count:
            cts = [load_ciphertext(ctx, blob, LEVEL_PROBE, f"{what} diagonal") for blob in blobs[:-1]]
            baby = block.layout.baby
            block.diagonals = [cts[g * baby : (g + 1) * baby] for g in range(block.layout.giant)]
            block.norms = load_ciphertext(ctx, blobs[-1], LEVEL_REPLY, f"{what} norms", scale=ctx.reply_scale)
        return block

    def digest(self) -> str:
        """A short hash of the serialized block, to compare copies."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


class Gallery:
    """A site's encrypted templates, in blocks of up to 4096; no plaintext value is ever held."""

    def __init__(self, keys: EvaluationKeys) -> None:
        self.keys = keys
        self.blocks: list[Block] = []

    def __len__(self) -> int:
        return sum(block.count for block in self.blocks)

    def load_enrollment(self, enrollment: bytes) -> seal.Ciphertext:
        """Validate an enrollment ciphertext received from an enroller."""
        return load_ciphertext(self.keys.context, enrollment, LEVEL_ENROLL, "enrollment")

    def layouts(self) -> list[int]:
        """Copies per template of each block, in block order (the device needs it to decode)."""
        return [block.copies for block in self.blocks]

    def next_slot(self) -> SlotRef:
        occupied = (SlotRef(i, int(s)) for i, block in enumerate(self.blocks) for s in np.flatnonzero(block.occupied))
        return first_free_slot(self.keys.params, self.layouts(), occupied)[0]

    def add(self, enrollment: bytes, at: SlotRef | None = None) -> SlotRef:
        """Enroll one template (from its enrollment ciphertext) into the first free slot, or `at`.

        A new block takes the layout `copies_for_block` gives its index.
        """
        ct = self.load_enrollment(enrollment)
        ref = at or self.next_slot()
        if not 0 <= ref.block <= len(self.blocks):
            raise EngineError(f"block {ref.block} does not exist and is not the next new block ({len(self.blocks)})")
        if ref.block < len(self.blocks):
            block = self.blocks[ref.block]
        else:
            block = Block(self.keys, copies_for_block(self.keys.params, ref.block))
        block.add(ct, ref.slot)
        if block not in self.blocks:
            self.blocks.append(block)
        return ref

    def remove(self, ref: SlotRef, enrollment: bytes) -> None:
        """Remove the template at `ref`, given the enrollment ciphertext it was added from."""
        if not 0 <= ref.block < len(self.blocks):
            raise EngineError(f"no block {ref.block} in this gallery")
        self.blocks[ref.block].remove(self.load_enrollment(enrollment), ref.slot)

    def occupancy(self) -> list[np.ndarray]:
        """Which base slots of each block hold a template: the device needs it to decode a scan."""
        return [block.occupied.copy() for block in self.blocks]
