"""The admin HTTP client against a tiny local server: requests as shared/protocol.md, clear errors."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from blindgate.device.cloud_client import CloudClient, CloudError
from blindgate.shared.limits import MAX_SEALED_BYTES

SEEN: list[tuple[str, str, dict[str, str], bytes]] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        SEEN.append((self.command, self.path, dict(self.headers), body))
        if self.path == "/v1/sites/home":
            self._answer(201, {"site": "home", "key_id": "k1", "token": "t0k", "cloud_public_key": "ab" * 32})
        elif self.path == "/v1/sites/taken":
            self._answer(409, {"error": "site taken exists already; pick another id"})
        elif self.headers.get("Authorization") != "Bearer t0k":
            self._answer(401, {"error": "missing or wrong site token"})
        else:
            self._answer(201, {"subject": "s1", "block": 0, "slot": 0, "gallery_version": 1})

    def do_GET(self):
        SEEN.append((self.command, self.path, dict(self.headers), b""))
        if self.path == "/v1/cloud-key":
            self._answer(200, {"cloud_public_key": "cd" * 32})
        elif self.path.endswith("/sealed") and self.headers.get("Authorization") == "Bearer t0k":
            data = b"\x00sealed" if "big" not in self.path else b"x" * (MAX_SEALED_BYTES + 1)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._answer(404, {"error": "unknown site"})

    def do_DELETE(self):
        SEEN.append((self.command, self.path, dict(self.headers), b""))
        self._answer(200, {"gallery_version": 2})


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_register_enroll_remove(server):
    client = CloudClient(server, "home")
    answer = client.register_site(b"bundle", provision_token="prov")
    assert answer["token"] == "t0k"
    method, path, headers, body = SEEN[-1]
    assert (method, path, body) == ("POST", "/v1/sites/home", b"bundle")
    assert headers["Authorization"] == "Bearer prov" and headers["Content-Type"] == "application/octet-stream"
    client.token = "t0k"
    assert client.enroll(b"ct", b"\x01label", "k1")["subject"] == "s1"
    method, path, headers, body = SEEN[-1]
    assert path == "/v1/sites/home/subjects" and body == b"ct"
    assert base64.b64decode(headers["X-Blindgate-Label"]) == b"\x01label" and headers["X-Blindgate-Key-Id"] == "k1"
    assert client.remove("s/1")["gallery_version"] == 2
    assert SEEN[-1][1] == "/v1/sites/home/subjects/s%2F1"
    assert client.cloud_key() == "cd" * 32


def test_errors_carry_status_and_server_message(server):
    with pytest.raises(CloudError) as exc:
        CloudClient(server, "taken").register_site(b"b")
    assert exc.value.status == 409 and "pick another id" in str(exc.value)
    with pytest.raises(CloudError) as exc:
        CloudClient(server, "home", token="wrong").enroll(b"ct", b"l", "k1")
    assert exc.value.status == 401 and "site token" in exc.value.message
    with pytest.raises(CloudError) as exc:
        CloudClient(server, "home", token="t0k").subjects()
    assert exc.value.status == 404


def test_unreachable_cloud():
    with pytest.raises(CloudError) as exc:
        CloudClient("http://127.0.0.1:9", "home", timeout=2).stats()
    assert exc.value.status == 0 and "unreachable" in str(exc.value)


def test_enroll_with_chosen_subject_and_sealed_blob_and_fetch_it(server):
    client = CloudClient(server, "home", token="t0k")
    client.enroll(b"ct", b"label", "k1", subject="ab" * 16, sealed=b"\x00\xffsealed")
    headers = SEEN[-1][2]
    assert headers["X-Blindgate-Subject"] == "ab" * 16
    assert base64.b64decode(headers["X-Blindgate-Sealed"]) == b"\x00\xffsealed"
    assert client.sealed("ab" * 16) == b"\x00sealed"
    assert SEEN[-1][1] == f"/v1/sites/home/subjects/{'ab' * 16}/sealed"
    assert SEEN[-1][2]["Accept"] == "application/octet-stream"
    with pytest.raises(CloudError):
        client.sealed("big")  # more than a sealed template can be
    with pytest.raises(CloudError) as exc:
        CloudClient(server, "home", token="wrong").sealed("ab" * 16)
    assert exc.value.status == 404
