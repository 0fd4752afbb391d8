"""Assembling a door from its configuration and state directory (what `blindgate-device run` starts).

The agent itself takes its parts ready-made (keys, cloud link, labels, sealed-template check, lock,
face analyzer); this module reads them from the files `blindgate-device init` wrote and the
`[camera]`, `[face]` and `[lock]` sections of the config.
"""

from __future__ import annotations

import logging
from typing import cast

from blindgate.shared.config import DeviceConfig

from .access_store import AccessPolicy, AccessRuleFile, door_timezone
from .agent import Agent
from .audit import AuditLog
from .camera import FrameStream, open_camera
from .claim_gate import door_claim_gate
from .cloud_client import CloudClient
from .directory import SubjectDirectory
from .door_key import DoorKeyFile
from .faces import Analyzer, DetectorModel, FaceAnalyzer, FaceConfig
from .integrity import TemplateCheck
from .labels import LabelCipher
from .link import DeviceTopics
from .liveness_watch import MIN_LIVENESS_FPS, LivenessWatch, check_liveness_config
from .lock import DoorLock, Lock
from .provision import TrustedCloudKeys, tls_context
from .sealing import TemplateSealer
from .site_state import SiteState
from .snapshots import open_snapshots
from .state import DeviceState, StateError
from .tracking import face_finder, track_faces

log = logging.getLogger("blindgate.device.build")


def build_agent(config: DeviceConfig, lock: DoorLock | None = None, analyzer: Analyzer | None = None) -> Agent:
    """The door as provisioned by `blindgate-device init`: keys, cloud link, labels, GPIO lock, dlib."""
    state = DeviceState(config.state_dir)
    state.ensure_dir()  # a directory left looser (0755 by hand or an old install) is tightened to 0700
    keys = state.load_keys()
    cloud = state.load_cloud()
    if cloud.key_id != keys.key_id:
        raise StateError(f"{state.cloud_path} names key {cloud.key_id}, but {state.keys_path} holds {keys.key_id}")
    labels = LabelCipher.load(state.dir, config.site)
    client = CloudClient(config.cloud_url, config.site, token=cloud.token, timeout=5.0, tls=tls_context(config.cloud_ca_file))
    sealer = TemplateSealer.load(state.dir, config.site)
    integrity = TemplateCheck(client.sealed, sealer, keys.key_id, config.decision, SiteState(state.dir, config.site))
    audit = AuditLog(state.audit_path)
    d = config.decision
    claims = door_claim_gate(d.mode, d.claim_ttl, state.dir, DeviceTopics.of(config).claim, audit)
    access = AccessPolicy(AccessRuleFile(state.dir), door_timezone(config.access.timezone))  # a bad zone: before the GPIO
    snapshots = open_snapshots(config)
    analyzer = analyzer if analyzer is not None else track_faces(FaceAnalyzer(face_config(config)), config.face.track_frames)
    return Agent(
        config,
        keys,
        TrustedCloudKeys(state),  # the pinned key and any it endorsed; follows refresh-cloud-key
        SubjectDirectory(client.subjects, labels),
        lock if lock is not None else Lock(config.lock.pin, config.lock.active_high, config.lock.pin_factory),
        integrity,
        analyzer,
        audit,
        door_key=DoorKeyFile(state).current,
        claims=claims,
        access=access,
        snapshots=snapshots,
        liveness=open_liveness(config, analyzer),
    )


def open_liveness(config: DeviceConfig, analyzer: Analyzer) -> LivenessWatch | None:
    """The liveness window when `[liveness] mode` is on (the 68-point model loads only then); None when off."""
    check_liveness_config(config.liveness)
    if config.liveness.mode == "off":
        return None
    finder = face_finder(analyzer)
    if not isinstance(finder, FaceAnalyzer):  # the follower scans regions: dlib's analyzer does
        raise StateError("liveness needs the door's dlib face analyzer")
    if config.camera.fps and config.camera.fps < MIN_LIVENESS_FPS:
        log.warning("liveness wants %d or more frames per second; [camera] fps is %g", MIN_LIVENESS_FPS, config.camera.fps)
    from .landmarks import FaceFollower, LandmarkFinder  # late: the 68-point model costs memory

    return LivenessWatch(FaceFollower(finder, LandmarkFinder()), config.liveness)


def face_config(config: DeviceConfig) -> FaceConfig:
    """The face analyzer's settings from the device config (0 width = no downscaling)."""
    f = config.face
    return FaceConfig(
        min_face_px=f.min_face_px,
        min_sharpness=f.min_sharpness,
        detect_max_width=f.detect_max_width or None,
        upsample=f.upsample,
        model=cast(DetectorModel, f.model),  # FaceConfig refuses other names
    )


def open_configured_camera(config: DeviceConfig) -> FrameStream:
    """The camera named in the device config (0 = the source's own size/rate)."""
    c = config.camera
    return open_camera(
        c.source, width=c.width or None, height=c.height or None, fps=c.fps or None, realtime=c.realtime, loop=c.loop
    )


__all__ = ["build_agent", "face_config", "open_configured_camera"]
