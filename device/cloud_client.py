"""A small blocking client for the cloud's admin HTTP API (shared/protocol.md), for the CLI and agent.

Errors come back as `CloudError` carrying the HTTP status and the server's JSON `error` text.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from blindgate.shared.errors import BlindgateError
from blindgate.shared.protocol import check_name


class CloudError(BlindgateError, RuntimeError):
    """The cloud refused a request or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"cloud error {status}: {message}" if status else f"cloud unreachable: {message}")
        self.status = status
        self.message = message


class CloudClient:
    """One site's view of the admin API: blocking calls, each answer the server's JSON object."""

    def __init__(self, base_url: str, site: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.site = check_name(site, "site")
        self.token = token
        self.timeout = timeout

    # -- transport ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        auth: bool = True,
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
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace")[:300] or exc.reason
            raise CloudError(exc.code, str(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CloudError(0, f"{self.base_url}: {reason}") from None
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise CloudError(0, f"{method} {path}: answer is not JSON") from None

    def _site_path(self, suffix: str = "") -> str:
        return f"/v1/sites/{urllib.parse.quote(self.site)}{suffix}"

    # -- endpoints ----------------------------------------------------------------------------

    def register_site(self, bundle: bytes, provision_token: str | None = None) -> dict:
        """POST the evaluation bundle; returns {"site", "key_id", "token", "cloud_public_key"}."""
        answer = self._request("POST", self._site_path(), bundle, token=provision_token or "", auth=False)
        for key in ("key_id", "token", "cloud_public_key"):
            if not isinstance(answer.get(key), str):
                raise CloudError(0, f"registration answer lacks {key!r}")
        return answer

    def enroll(self, enrollment: bytes, label: bytes, key_id: str) -> dict:
        headers = {"X-Blindgate-Label": base64.b64encode(label).decode(), "X-Blindgate-Key-Id": key_id}
        return self._request("POST", self._site_path("/subjects"), enrollment, headers)

    def subjects(self) -> dict:
        """{"gallery_version", "subjects": [{"subject", "label" (base64), "block", "slot", "created"}]}"""
        return self._request("GET", self._site_path("/subjects"))

    def remove(self, subject: str) -> dict:
        return self._request("DELETE", self._site_path(f"/subjects/{urllib.parse.quote(subject, safe='')}"))

    def stats(self) -> dict:
        return self._request("GET", self._site_path("/stats"))

    def cloud_key(self) -> str:
        answer = self._request("GET", "/v1/cloud-key", auth=False)
        key = answer.get("cloud_public_key")
        if not isinstance(key, str):
            raise CloudError(0, "cloud-key answer lacks 'cloud_public_key'")
        return key

    def health(self) -> dict:
        return self._request("GET", "/healthz", auth=False)
