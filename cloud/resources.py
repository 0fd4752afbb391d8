"""The cloud service's resources and their lifecycle: state dir, signing key, store, matcher pool, MQTT bridge.

Each resource lives in a typed `web.AppKey` slot of the aiohttp application. `state_ctx`,
`pool_ctx` and `bridge_ctx` are `cleanup_ctx` generators: opened in that order at startup and
closed in reverse at shutdown, so the bridge stops taking probes before the pool drains, and the
pool stops before the store closes. Store calls run in a thread (`in_thread`): the event loop
never waits on SQLite.

Secrets (`SECRETS`: the reply-signing key, the rotation's next key and endorsement, the provision
token) are cloud-wide. With a PostgreSQL `store_url` they live in the database
(cloud/store_settings.py), so every replica signs with the same key and admits the same token; a
file already in `state_dir` from a single-host install is copied into the database the first time
(then the database's copy rules). With SQLite they stay files in `state_dir`, as they always were.
Either way, whoever can read that place can sign replies as the cloud.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.shared.config import CloudConfig
from blindgate.shared.protocol import ProbeRequest, new_signing_key, signing_key_from_pem, signing_key_to_pem

from .bridge import MQTTBridge
from .matcher import MatcherPool
from .metrics import Metrics
from .registration import REGISTRATION, RegistrationGate
from .replica_sync import ReplicaSync
from .store import GalleryStore, SiteRecord
from .store_schema import PG_SCHEMES, store_location
from .store_seen import SeenStore
from .store_settings import SIGNING_KEY as SIGNING_KEY_SETTING
from .store_settings import CloudSettings, FileSecrets, SecretPlace

log = logging.getLogger("blindgate.cloud.app")

T = TypeVar("T")

DB_NAME = "gallery.db"
SIGNING_KEY_NAME = "reply-signing-key.pem"  # in state_dir, for an SQLite-backed cloud

CONFIG = web.AppKey("config", CloudConfig)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", GalleryStore)
POOL = web.AppKey("pool", MatcherPool)
BRIDGE = web.AppKey("bridge", MQTTBridge)
SIGNING_KEY = web.AppKey("signing_key", Ed25519PrivateKey)
SECRETS = web.AppKey("secrets", SecretPlace)  # where the cloud-wide secrets live (see above)
# site id -> SiteRecord (key id, gallery version), as last seen by this process
SITES = web.AppKey("sites", dict[str, SiteRecord])
# site id -> enrolled subjects, for /healthz and /metrics without a store read
SUBJECT_COUNTS = web.AppKey("subject_counts", dict[str, int])
# site id -> the lock that serializes that site's gallery changes within this process
SITE_LOCKS = web.AppKey("site_locks", defaultdict[str, asyncio.Lock])
REPLICA_SYNC = web.AppKey("replica_sync", ReplicaSync)  # other replicas' changes -> SITES (cloud/replica_sync.py)
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
        cached = app[SITES].get(site)
        if cached is None or cached.version <= record.version:  # a slower re-read never brings back an older record
            app[SITES][site] = record
    return record


async def resync_site(app: web.Application, site: str) -> None:
    """After another replica changed `site`: re-read its record and subject count, and prewarm the workers."""
    record = await refresh_site(app, site)
    if record is None:
        app[SITES].pop(site, None)
        app[SUBJECT_COUNTS].pop(site, None)
        return
    app[SUBJECT_COUNTS][site] = (await in_thread(app[STORE].stats, site))["subjects"]
    if POOL in app:
        app[POOL].prewarm(site)  # the workers load the new blocks now, not on the next probe


async def resync_all(app: web.Application) -> None:
    """Re-read every site's record and subject count (startup, and after missing notifications)."""
    store = app[STORE]
    for record in await in_thread(store.sites):
        app[SITES][record.site_id] = record
        app[SUBJECT_COUNTS][record.site_id] = (await in_thread(store.stats, record.site_id))["subjects"]


def shared_store(config: CloudConfig) -> bool:
    """Whether the store is a PostgreSQL database that replicas may share (secrets then live in it)."""
    return config.store_url.startswith(PG_SCHEMES)


def secret_place(config: CloudConfig, store: GalleryStore | None) -> SecretPlace:
    """The database's `cloud_secret` table for a shared store (needs `store`), else files in state_dir."""
    if shared_store(config):
        if store is None:
            raise ValueError("a PostgreSQL-backed cloud keeps its secrets in the store: open it first")
        return CloudSettings(store.database)
    return FileSecrets(config.state_dir)


def load_signing_key(place: SecretPlace, legacy: FileSecrets | None = None) -> Ed25519PrivateKey:
    """The cloud's Ed25519 reply-signing key from `place`, created on first start.

    `legacy`: a state dir whose existing key file is copied into `place` instead of a new key,
    so doors that pinned a single-host cloud's key keep trusting it after the move to PostgreSQL.
    """
    created: list[bool] = []

    def make() -> bytes:
        existing = legacy.get(SIGNING_KEY_SETTING) if legacy is not None else None
        created.append(existing is None)
        return existing or signing_key_to_pem(new_signing_key())

    key = signing_key_from_pem(place.get_or_create(SIGNING_KEY_SETTING, make))
    if created:
        log.info("stored the reply-signing key", extra={"new": created[0], "where": type(place).__name__})
    return key


def load_or_create_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """An SQLite-backed cloud's reply-signing key: `state_dir/reply-signing-key.pem` (0600), created on first start."""
    return load_signing_key(FileSecrets(state_dir))


async def state_ctx(app: web.Application) -> AsyncIterator[None]:
    """The state dir, signing key and gallery store; loads every site's record and subject count."""
    config = app[CONFIG]
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = await in_thread(GalleryStore, store_location(config.store_url, state_dir, DB_NAME))
    app[STORE] = store
    place = secret_place(config, store)
    app[SECRETS] = place
    legacy = FileSecrets(state_dir) if shared_store(config) else None
    app[SIGNING_KEY] = await in_thread(load_signing_key, place, legacy)

    def forget_door(site: str, door: str) -> None:
        if BRIDGE in app:
            app[BRIDGE].doors.forget(site, door)

    def forget_all_doors() -> None:
        if BRIDGE in app:
            app[BRIDGE].doors.forget_all()

    sync = ReplicaSync(
        config.store_url,
        lambda site: record.version if (record := app[SITES].get(site)) else None,
        lambda site: resync_site(app, site),
        lambda: resync_all(app),
        forget_door,
        forget_all_doors,
        store.database,
    )
    app[REPLICA_SYNC] = sync
    await sync.start()  # listening before the first load: no other replica's change is missed
    await resync_all(app)
    # closed by default; caps counted cloud-wide from the store (cloud/registration.py)
    app[REGISTRATION] = await in_thread(RegistrationGate.for_config, config, place, store, legacy)
    try:
        yield
    finally:
        await sync.stop()
        await in_thread(store.close)


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """The matcher worker processes; at shutdown, in-flight probes get up to 10 s to finish."""
    config = app[CONFIG]
    pool = MatcherPool(
        store_location(config.store_url, config.state_dir, DB_NAME),
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

    async def site_refresh(site: str) -> SiteRecord | None:
        return await refresh_site(app, site)

    first_use = None
    if shared_store(app[CONFIG]):  # replicas: a probe replayed to another one is not scanned again
        seen = SeenStore(app[STORE].database)

        async def first_use(req: ProbeRequest) -> bool:
            return await in_thread(seen.first_use, req.site, req.device, req.request_id, req.expires_at)

    bridge = MQTTBridge(app[CONFIG], app[POOL], app[SIGNING_KEY], site_lookup, app[METRICS], door_lookup, site_refresh, first_use)
    app[BRIDGE] = bridge
    await bridge.start()
    yield
    await bridge.stop()
