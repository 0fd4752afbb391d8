"""The lying cloud's forgery: Enc(-|x|^2) from a probe Enc(x) and the site's evaluation keys.

Square the probe, relinearize, rescale, rotate-and-sum over the `dim`-slot period, negate: every
slot then holds -|x|^2, which the device decodes as a distance of about 0 to any occupied slot.
Only what the cloud legitimately holds is used (the evaluation bundle, no secret key).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tenseal.sealapi as seal

from blindgate.shared.engine import EvaluationKeys
from blindgate.shared.engine.context import to_bytes
from blindgate.shared.engine.gallery import rotation_sum
from blindgate.shared.engine.scan import load_probe
from blindgate.shared.protocol import BlockResult, ProbeRequest, Reply, ReplyStatus


def minus_norm(keys: EvaluationKeys, probe: bytes) -> bytes:
    """Enc(-|x|^2) in every slot, at the reply level and scale."""
    ctx, ev = keys.context, keys.context.evaluator
    x = load_probe(keys, probe)
    ev.square_inplace(x)
    ev.relinearize_inplace(x, keys.relin)
    ev.rescale_to_next_inplace(x)
    rotation_sum(ctx, x, keys)
    out = seal.Ciphertext()
    ev.negate(x, out)
    return to_bytes(out)


def forged_reply(
    keys: EvaluationKeys, req: ProbeRequest, gallery_version: int, occupied: list[np.ndarray], ttl: float = 10.0
) -> Reply:
    """A well-formed `ok` reply to `req` whose every block says "distance 0" (sign it with the cloud's key)."""
    ct = minus_norm(keys, req.probe)
    fields = dict(
        status=ReplyStatus.OK,
        site=req.site,
        device=req.device,
        request_id=req.request_id,
        nonce=req.nonce,
        gallery_version=gallery_version,
        expires_at=time.time() + ttl,
        results=tuple(BlockResult.of(i, occ, ct) for i, occ in enumerate(occupied)),
    )
    names = {f.name for f in dataclasses.fields(Reply)}
    # Bind what an honest reply binds (probe hash, mode), if this protocol version has them.
    if "probe_sha256" in names:
        fields["probe_sha256"] = getattr(req, "probe_sha256", "")
    if "mode" in names:
        fields["mode"] = str(req.mode)
    return Reply(**fields)  # type: ignore[arg-type]
