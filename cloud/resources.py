"""The cloud service's resources and their lifecycle: state dir, signing key, store, matcher pool, MQTT bridge.

Each resource lives in a typed `web.AppKey` slot of the aiohttp application. `state_ctx`,
`pool_ctx` and `bridge_ctx` are `cleanup_ctx` generators: opened in that order at startup and
closed in reverse at shutdown, so the bridge stops taking probes before the pool drains, and the
pool stops before the store closes. Store calls run in a thread (`in_thread`): the event loop
never waits on SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.config import CloudConfig
from blindgate.shared.protocol import new_signing_key, signing_key_from_pem, signing_key_to_pem

from .bridge import MQTTBridge
from .matcher import MatcherPool
from .metrics import Metrics
from .registration import REGISTRATION, RegistrationGate
from .store import GalleryStore, SiteRecord

log = logging.getLogger("blindgate.cloud.app")

T = TypeVar("T")

DB_NAME = "gallery.db"
SIGNING_KEY_NAME = "reply-signing-key.pem"

CONFIG = web.AppKey("config", CloudConfig)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", GalleryStore)
POOL = web.AppKey("pool", MatcherPool)
BRIDGE = web.AppKey("bridge", MQTTBridge)
SIGNING_KEY = web.AppKey("signing_key", Ed25519PrivateKey)
# site id -> SiteRecord (key id, gallery version), as last seen by this process
SITES = web.AppKey("sites", dict[str, SiteRecord])
# site id -> enrolled subjects, for /healthz and /metrics without a store read
SUBJECT_COUNTS = web.AppKey("subject_counts", dict[str, int])
# site id -> the lock that serializes that site's gallery changes within this process
SITE_LOCKS = web.AppKey("site_locks", defaultdict[str, asyncio.Lock])
STARTED = web.AppKey("started", float)  # Unix time the app was created, for uptime


def init_state(app: web.Application, config: CloudConfig) -> None:
    """Fill the slots that exist before startup: config, metrics and the per-process caches."""
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[SITES] = {}
    app[SUBJECT_COUNTS] = {}
    app[SITE_LOCKS] = defaultdict(asyncio.Lock)
    app[STARTED] = time.time()


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in the default thread executor: blocking store calls off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def lookup_site(app: web.Application, site: str) -> SiteRecord | None:
    """The site's record (key id, gallery version), from this process' cache or the store."""
    return app[SITES].get(site) or await refresh_site(app, site)


async def refresh_site(app: web.Application, site: str) -> SiteRecord | None:
    """Re-read the site's record from the store into this process' cache."""
    record = await in_thread(app[STORE].site, site)
    if record is not None:
        app[SITES][site] = record
    return record


def load_or_create_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The cloud's Ed25519 reply-signing key, created (mode 0600) on first start."""
    path = state_dir / SIGNING_KEY_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return signing_key_from_pem(path.read_bytes())
    key = new_signing_key()
    with os.fdopen(fd, "wb") as fh:
        fh.write(signing_key_to_pem(key))
        fh.flush()
        os.fsync(fh.fileno())
    log.info("created the reply-signing key", extra={"path": str(path)})
    return key


async def state_ctx(app: web.Application) -> AsyncIterator[None]:
    """The state dir, signing key and gallery store; loads every site's record and subject count."""
    config = app[CONFIG]
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    app[SIGNING_KEY] = load_or_create_signing_key(state_dir)
    store = await in_thread(GalleryStore, state_dir / DB_NAME)
    app[STORE] = store
    for record in await in_thread(store.sites):
        app[SITES][record.site_id] = record
        app[SUBJECT_COUNTS][record.site_id] = (await in_thread(store.stats, record.site_id))["subjects"]
    app[REGISTRATION] = RegistrationGate.for_config(config, state_dir)  # closed by default (cloud/registration.py)
    yield
    await in_thread(store.close)


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """The matcher worker processes; at shutdown, in-flight probes get up to 10 s to finish."""
    config = app[CONFIG]
    pool = MatcherPool(
        Path(config.state_dir) / DB_NAME,
        config.workers,
        config.queue_size,
        app[METRICS],
        site_share=config.site_queue_share,
        log_level=config.log_level if logging.getLogger().handlers else None,
        log_format=config.log_format,
        cache_bytes=config.worker_cache_bytes,
    )
    app[POOL] = pool
    await pool.start()
    yield
    await pool.drain(timeout=10.0)
    await pool.close()


async def bridge_ctx(app: web.Application) -> AsyncIterator[None]:
    """The MQTT bridge: probes in, signed replies out; stopped first at shutdown."""

    async def site_lookup(site: str) -> SiteRecord | None:
        return await lookup_site(app, site)

    async def door_lookup(site: str, door: str) -> bytes | None:
        return await in_thread(app[STORE].doors.key, site, door)

    bridge = MQTTBridge(app[CONFIG], app[POOL], app[SIGNING_KEY], site_lookup, app[METRICS], door_lookup)
    app[BRIDGE] = bridge
    await bridge.start()
    yield
    await bridge.stop()
