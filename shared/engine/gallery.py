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

The gallery holds only ciphertexts and the occupancy of its slots.
"""

from __future__ import annotations

import hashlib
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


def rotation_sum(ctx: Context, ct: seal.Ciphertext, keys: EvaluationKeys) -> None:
    """In place: every slot becomes the sum of the `dim` slots from it on (log2(dim) rotations)."""
    ev = ctx.evaluator
    for step in ctx.params.rotation_steps:
        rotated = seal.Ciphertext()
        ev.rotate_vector(ct, step, keys.galois, rotated)
        ev.add_inplace(ct, rotated)


def layout_values(params, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plaintext a block encrypts, for templates in slots 0..n-1 (bulk import on the device).

    Returns (P with shape (G, b, slots), N with shape (slots,)) as described in the module doc.
    """
    slots, b, d = params.slots, params.baby, params.dim
    full = np.zeros((slots, d))
    full[: len(templates)] = templates
    u = np.arange(slots)
    diagonals = np.empty((params.giant, b, slots))
    for g in range(params.giant):
        rows = full[(u - g * b) % slots]
        for j in range(b):
            diagonals[g, j] = -2.0 * rows[u, (u + j) % d]
    return diagonals, np.einsum("sd,sd->s", full, full)


class Block:
    """Up to `slots` templates as ciphertext diagonals; `None` while the block is empty."""

    def __init__(self, keys: EvaluationKeys) -> None:
        params = keys.params
        self.keys = keys
        self.diagonals: list[list[seal.Ciphertext]] | None = None  # [giant][baby]
        self.norms: seal.Ciphertext | None = None
        self.occupied = np.zeros(params.slots, dtype=bool)

    @property
    def count(self) -> int:
        return int(self.occupied.sum())

    @property
    def is_full(self) -> bool:
        return bool(self.occupied.all())

    def free_slot(self) -> int | None:
        free = np.flatnonzero(~self.occupied)
        return int(free[0]) if free.size else None

    # -- contributions of one template --------------------------------------------------------

    def _contribution(self, enrollment: seal.Ciphertext, slot: int):
        """The exact ciphertexts a template adds to this block (diagonals and norm)."""
        ctx, keys, params = self.keys.context, self.keys, self.keys.params
        ev, slots, b = ctx.evaluator, params.slots, params.baby
        mask_scale = ctx.prime(LEVEL_ENROLL)  # rescaling then divides it away exactly

        masks = []
        for g in range(params.giant):
            onehot = [0.0] * slots
            onehot[(slot + g * b) % slots] = -2.0
            masks.append(ctx.encode(onehot, LEVEL_ENROLL, mask_scale))

        diagonals = [[None] * b for _ in range(params.giant)]
        rotated = enrollment
        for j in range(b):
            if j:
                nxt = seal.Ciphertext()
                ev.rotate_vector(rotated, 1, keys.galois, nxt)
                rotated = nxt
            for g in range(params.giant):
                part = seal.Ciphertext()
                ev.multiply_plain(rotated, masks[g], part)
                ev.rescale_to_next_inplace(part)
                diagonals[g][j] = part

        # |y|^2 in every slot, then kept only in `slot`, brought down to the reply level.
        square = seal.Ciphertext()
        ev.square(enrollment, square)
        ev.relinearize_inplace(square, keys.relin)
        rotation_sum(ctx, square, keys)
        onehot = [0.0] * slots
        onehot[slot] = 1.0
        ev.multiply_plain_inplace(square, ctx.encode(onehot, LEVEL_ENROLL, mask_scale))
        ev.rescale_to_next_inplace(square)
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
        """Serialize: a JSON header (key id, occupancy, count) then every ciphertext, length-prefixed."""
        blobs = []
        if self.diagonals is not None and self.norms is not None:
            blobs = [to_bytes(ct) for row in self.diagonals for ct in row] + [to_bytes(self.norms)]
        header = {"key_id": self.keys.key_id, "occupied": np.packbits(self.occupied).tobytes().hex()}
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
        count, expected = len(blobs), params.dim + 1 if occupied.any() else 0
        if count != expected:
            raise EngineError(f"{what}: holds {count} ciphertexts, expected {expected}")
        block = cls(keys)
        block.occupied = occupied.astype(bool)
        if count:
            cts = [load_ciphertext(ctx, blob, LEVEL_PROBE, f"{what} diagonal") for blob in blobs[:-1]]
            block.diagonals = [cts[g * params.baby : (g + 1) * params.baby] for g in range(params.giant)]
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

    def next_slot(self) -> SlotRef:
        for index, block in enumerate(self.blocks):
            slot = block.free_slot()
            if slot is not None:
                return SlotRef(index, slot)
        return SlotRef(len(self.blocks), 0)

    def add(self, enrollment: bytes, at: SlotRef | None = None) -> SlotRef:
        """Enroll one template (from its enrollment ciphertext) into the first free slot, or `at`."""
        ct = self.load_enrollment(enrollment)
        ref = at or self.next_slot()
        if not 0 <= ref.block <= len(self.blocks):
            raise EngineError(f"block {ref.block} does not exist and is not the next new block ({len(self.blocks)})")
        block = self.blocks[ref.block] if ref.block < len(self.blocks) else Block(self.keys)
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
        """Which slots of each block hold a template: the device needs it to decode a scan."""
        return [block.occupied.copy() for block in self.blocks]
