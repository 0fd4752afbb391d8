"""A small blocking client for the cloud's admin HTTP API (shared/protocol.md), for the CLI and agent.

Errors come back as `CloudError` carrying the HTTP status and the server's JSON `error` text.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from blindgate.shared.errors import BlindgateError
from blindgate.shared.limits import MAX_SEALED_BYTES
from blindgate.shared.protocol import check_name


class CloudError(BlindgateError, RuntimeError):
    """The cloud refused a request or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"cloud error {status}: {message}" if status else f"cloud unreachable: {message}")
        self.status = status
        self.message = message


class CloudClient:
    """One site's view of the admin API: blocking calls, each answer the server's JSON object."""

    def __init__(
        self, base_url: str, site: str, token: str | None = None, timeout: float = 30.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.site = check_name(site, "site")
        self.token = token
        self.timeout = timeout
        self.tls = tls  # https:// only; None = urllib's default, certificate-verifying context

    # -- transport ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        auth: bool = True,
        raw_answer: bool = False,
    ) -> Any:
        headers = dict(headers or {})
        bearer = token if token is not None else (self.token if auth else None)
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        if body is not None:
            headers.setdefault("Content-Type", "application/octet-stream")
        headers.setdefault("Accept", "application/json")
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.tls) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError, RecursionError):
                message = raw.decode("utf-8", "replace")[:300] or exc.reason
            raise CloudError(exc.code, str(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CloudError(0, f"{self.base_url}: {reason}") from None
        if raw_answer:
            return raw
        try:
            return json.loads(raw) if raw else {}
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack
            raise CloudError(0, f"{method} {path}: answer is not JSON") from None

    def _site_path(self, suffix: str = "") -> str:
        return f"/v1/sites/{urllib.parse.quote(self.site)}{suffix}"

    # -- endpoints ----------------------------------------------------------------------------

    def register_site(self, bundle: bytes, provision_token: str | None = None, door: tuple[str, str] | None = None) -> dict:
        """POST the evaluation bundle (and `door`: this door's id and request public key, 64 hex);
        returns {"site", "key_id", "token", "cloud_public_key"}."""
        headers = {"X-Blindgate-Door": door[0], "X-Blindgate-Door-Key": door[1]} if door else None
        answer = self._request("POST", self._site_path(), bundle, headers, token=provision_token or "", auth=False)
        for key in ("key_id", "token", "cloud_public_key"):
            if not isinstance(answer.get(key), str):
                raise CloudError(0, f"registration answer lacks {key!r}")
        return answer

    def enroll(
        self, enrollment: bytes, label: bytes, key_id: str, subject: str | None = None, sealed: bytes | None = None
    ) -> dict:
        """Enroll one template; `subject` (chosen by the device) and `sealed` (its sealed template) go as headers."""
        headers = {"X-Blindgate-Label": base64.b64encode(label).decode(), "X-Blindgate-Key-Id": key_id}
        if subject is not None:
            headers["X-Blindgate-Subject"] = subject
        if sealed is not None:
            headers["X-Blindgate-Sealed"] = base64.b64encode(sealed).decode()
        return self._request("POST", self._site_path("/subjects"), enrollment, headers)

    def sealed(self, subject: str) -> bytes:
        """The sealed template the device stored with `subject`'s enrollment (opaque bytes; the device opens it)."""
        path = self._site_path(f"/subjects/{urllib.parse.quote(subject, safe='')}/sealed")
        answer = self._request("GET", path, headers={"Accept": "application/octet-stream"}, raw_answer=True)
        if len(answer) > MAX_SEALED_BYTES:
            raise CloudError(0, f"sealed template of {len(answer)} bytes is over the {MAX_SEALED_BYTES} allowed")
        return bytes(answer)

    def subjects(self) -> dict:
        """{"gallery_version", "subjects": [{"subject", "label" (base64), "block", "slot", "created"}]}"""
        return self._request("GET", self._site_path("/subjects"))

    def put_door(self, door: str, public_key: str) -> dict:
        """Add or replace a door's request public key (64 hex); {"site", "door", "public_key"}."""
        body = json.dumps({"public_key": public_key}).encode()
        path = self._site_path(f"/doors/{urllib.parse.quote(check_name(door, 'door'), safe='')}")
        return self._request("PUT", path, body, {"Content-Type": "application/json"})

    def add_door(self, door: str, public_key: str) -> dict:
        """A NEW door of this site with its request public key; {"site", "door", "public_key", "token" (its own)}."""
        body = json.dumps({"public_key": public_key}).encode()
        path = self._site_path(f"/doors/{urllib.parse.quote(check_name(door, 'door'), safe='')}")
        answer = self._request("POST", path, body, {"Content-Type": "application/json"})
        if not isinstance(answer.get("token"), str):
            raise CloudError(0, "the door answer lacks its 'token'")
        return answer

    def remove_door(self, door: str) -> dict:
        """Revoke a door of this site (its token and key); {"site", "door", "removed", "doors"}."""
        return self._request("DELETE", self._site_path(f"/doors/{urllib.parse.quote(check_name(door, 'door'), safe='')}"))

    def doors(self) -> dict:
        """{"site", "doors": [{"door", "created", "own_token", "you"}]}"""
        return self._request("GET", self._site_path("/doors"))

    def remove(self, subject: str) -> dict:
        return self._request("DELETE", self._site_path(f"/subjects/{urllib.parse.quote(subject, safe='')}"))

    # rekey (shared/protocol.md): stage new keys and every subject, then switch over atomically

    def stage_rekey(self, bundle: bytes, gallery_version: int) -> dict:
        """POST the new evaluation bundle; {"site", "key_id", "gallery_version"}."""
        headers = {"X-Blindgate-Gallery-Version": str(gallery_version)}
        return self._request("POST", self._site_path("/rekey"), bundle, headers)

    def stage_rekey_subject(self, subject: str, key_id: str, enrollment: bytes, label: bytes, sealed: bytes) -> dict:
        headers = {
            "X-Blindgate-Key-Id": key_id,
            "X-Blindgate-Label": base64.b64encode(label).decode(),
            "X-Blindgate-Sealed": base64.b64encode(sealed).decode(),
        }
        return self._request(
            "POST", self._site_path(f"/rekey/subjects/{urllib.parse.quote(subject, safe='')}"), enrollment, headers
        )

    def abort_rekey(self) -> dict:
        """Drop the site's unfinished rekey in the cloud; {"site", "key_id", "gallery_version"}."""
        return self._request("DELETE", self._site_path("/rekey"))

    def commit_rekey(self, key_id: str, gallery_version: int) -> dict:
        """Switch the site to the staged keys; {"site", "key_id", "gallery_version", "subjects", "blocks"}."""
        headers = {"X-Blindgate-Key-Id": key_id, "X-Blindgate-Gallery-Version": str(gallery_version)}
        return self._request("POST", self._site_path("/rekey/commit"), b"", headers)

    def stats(self) -> dict:
        return self._request("GET", self._site_path("/stats"))

    def cloud_key(self) -> str:
        answer = self._request("GET", "/v1/cloud-key", auth=False)
        key = answer.get("cloud_public_key")
        if not isinstance(key, str):
            raise CloudError(0, "cloud-key answer lacks 'cloud_public_key'")
        return key

    def cloud_key_record(self) -> dict:
        """GET /v1/cloud-key in full: {"cloud_public_key", and during/after a rotation "endorsement"}."""
        answer = self._request("GET", "/v1/cloud-key", auth=False)
        if not isinstance(answer, dict) or not isinstance(answer.get("cloud_public_key"), str):
            raise CloudError(0, "cloud-key answer lacks 'cloud_public_key'")
        return answer

    def health(self) -> dict:
        return self._request("GET", "/healthz", auth=False)
