"""A small Hugging Face Hub look-alike on loopback, enough for the unmodified huggingface_hub (2.4), datasets (5.2) and
diffusers clients.

Standard library only (plus PyYAML for validate-yaml, which huggingface_hub already requires). One branch (`main`),
content-addressed blobs plus one manifest per commit, so any commit sha resolves.

Model repos are written through the API: every file inline ("regular" upload mode, base64 in the commit's NDJSON).
Dataset repos are made by the test (`add_dataset`) and only read: their parquet, arrow and image files are answered
as LFS files (`X-Linked-Etag`: sha256, `X-Linked-Size`, `lfs` in the tree), served directly instead of through a
CDN redirect.

Endpoints: GET /api/whoami-v2, GET /api/agent-harnesses (404), POST /api/repos/create, POST /api/validate-yaml,
POST /api/models/{id}/preupload/{rev}, POST /api/models/{id}/commit/{rev}; for models and datasets
(`/api/{models,datasets}/...`): GET {id}[/revision/{rev}], GET {id}/tree/{rev}[/{path}], POST {id}/paths-info/{rev},
GET {id}/auth-check; HEAD/GET /{id}/resolve/{rev}/{path} and /datasets/{id}/resolve/{rev}/{path}, with single
`Range`s (`a-b`, `a-`, `-n`) answered 206 + `Content-Range`, 416 past the end.

Auth like the Hub: writes need a known token (401 otherwise) for the token's own namespace (403 otherwise); private
repos are invisible (404 RepoNotFound) to anyone but their owner; a gated repo's info and file list are public but
its files (and auth-check) answer 401 `X-Error-Code: GatedRepo` without a token and 403 GatedRepo to a user who has
not been granted access (`grant`).

Faults, for outage tests: `fail_next(n, mode, match=...)` spoils the next n matching requests ("drop": the headers
and half the body, then the connection closes; "reset": the connection is reset before any answer; "503"; "429"
with `Retry-After`; "500"); `outage(seconds, mode)` spoils every request for a while ("refuse" closes the listening
socket, so connections are refused, and resets the open ones); `heal()` ends both. `log` records every request
(method, path, status or fault, Range, user). `python -m tests.hub_server` serves until ^C.

    with HubServer(tmp_path, tokens={"hf_alice_token": "alice"}) as server:
        server.add_dataset("alice/faces", {"data/train-00000-of-00001.parquet": data}, private=True)
        os.environ["HF_ENDPOINT"] = server.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"
KINDS = ("model", "dataset")
LFS_SUFFIXES = (".parquet", ".arrow", ".jpg", ".jpeg", ".png", ".webp", ".zip", ".tar", ".gz", ".bin", ".safetensors")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores bigger files in LFS whatever their name
FAULTS = ("drop", "reset", "503", "429", "500")
OUTAGES = ("refuse", "reset", "503", "429", "500")
EMPTY_TREE = "0" * 40


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(kind: str, path: str, size: int) -> bool:
    """Whether the Hub would keep this file in LFS: dataset files with a binary suffix or of 10 MB and more."""
    return kind == "dataset" and (path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE)


@dataclass
class Fault:
    mode: str
    remaining: int
    match: re.Pattern | None = None
    retry_after: int = 1


class HubServer:
    def __init__(self, root: str | Path, tokens: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens or {})
        self.repos: dict[str, dict] = {}  # model repos: repo_id -> {"private": bool, "commits": [sha...], "owner"}
        self.datasets: dict[str, dict] = {}  # dataset repos: the same plus "gated" (False/"auto"/"manual"), "granted"
        self.manifests: dict[str, dict[str, str]] = {}  # commit sha -> {path: blob id}
        self.requests: list[tuple[str, str, int | str]] = []  # (method, path, status or fault) for debugging
        self.log: list[dict] = []  # the same with the Range header and the user
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.outage_until: float | None = None
        self.outage_mode: str | None = None
        self.armed: tuple[float, str, re.Pattern, bool] | None = None  # outage_mid_file, outage_at_first_request
        self.cut_reads: list[tuple[str, int, int, int]] = []  # the reads that started one: (path, start, end, size)
        self._reopen: threading.Timer | None = None
        self.host, self.port = host, port  # 0: any free port
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self._bind()
        self.url = f"http://{host}:{self.port}"

    # ---------------------------------------------------------------------------------------------- lifecycle
    def _bind(self) -> None:
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer((self.host, self.port), handler)  # allow_reuse_address: rebinds at once
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def _serve(self) -> None:
        httpd = self.httpd
        self.thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.05), name="hub-server", daemon=True
        )
        self.thread.start()

    def _close(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def start(self) -> HubServer:
        self._serve()
        return self

    def stop(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        self._close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- faults
    def fail_next(self, n: int = 1, mode: str = "503", match: str | None = None, retry_after: int = 1) -> None:
        """Spoil the next `n` requests whose path matches the regex `match` (all requests when None)."""
        if mode not in FAULTS:
            raise ValueError(f"mode must be one of {FAULTS}, got {mode!r}")
        with self.lock:
            self.faults.append(Fault(mode, n, re.compile(match) if match else None, retry_after))

    def outage(self, seconds: float, mode: str = "refuse") -> None:
        """Every request fails for `seconds` ("refuse": the port is closed, open connections are reset)."""
        if mode not in OUTAGES:
            raise ValueError(f"mode must be one of {OUTAGES}, got {mode!r}")
        with self.lock:
            self.outage_until, self.outage_mode = time.monotonic() + seconds, mode
        if mode == "refuse":
            self._close()
            self._reopen = threading.Timer(seconds, self._end_outage)
            self._reopen.daemon = True
            self._reopen.start()

    def outage_mid_file(self, seconds: float, mode: str = "refuse", match: str = r"\.parquet$") -> None:
        """Arm an outage of `seconds` that begins with the first read from the middle of a matching file (a Range
        starting past byte 0 and ending before the last byte: neither the header nor the footer), which fails."""
        if mode not in OUTAGES:
            raise ValueError(f"mode must be one of {OUTAGES}, got {mode!r}")
        with self.lock:
            self.armed = (seconds, mode, re.compile(match), True)

    def outage_at_first_request(self, seconds: float, mode: str = "refuse", match: str = "") -> None:
        """Arm an outage of `seconds` that begins with the next matching request, which fails: a Hub that is down
        when a run first calls it, however long the run takes to start."""
        if mode not in OUTAGES:
            raise ValueError(f"mode must be one of {OUTAGES}, got {mode!r}")
        with self.lock:
            self.armed = (seconds, mode, re.compile(match), False)

    def _start_armed_outage(self, seconds: float, mode: str) -> None:
        threading.Thread(target=self.outage, args=(seconds, mode), daemon=True).start()  # not from a handler

    def cut_mid_file(self, path: str, start: int, end: int, size: int) -> bool:
        """Whether this read starts the armed mid-file outage (then the caller resets the connection)."""
        with self.lock:
            if self.armed is None or not self.armed[3]:
                return False
            seconds, mode, match, _ = self.armed
            if not (0 < start and end < size - 1) or not match.search(path):
                return False
            self.armed = None
            self.cut_reads.append((path, start, end, size))
        self._start_armed_outage(seconds, mode)
        return True

    def _end_outage(self) -> None:
        with self.lock:
            self.outage_until = self.outage_mode = None
            if self.httpd is None:  # the same port listens again
                self._bind()
                self._serve()

    def heal(self) -> None:
        """End any outage now and forget the faults not yet served."""
        if self._reopen is not None:
            self._reopen.cancel()
        with self.lock:
            self.faults.clear()
            self.armed = None
        self._end_outage()

    def take_fault(self, path: str) -> tuple[str, int] | None:
        """The fault (mode, Retry-After) this request suffers, if any; counts it down."""
        with self.lock:
            if self.outage_until is not None:
                if time.monotonic() < self.outage_until:
                    return ("reset" if self.outage_mode == "refuse" else self.outage_mode), 1
                self.outage_until = self.outage_mode = None
            if self.armed is not None and not self.armed[3] and self.armed[2].search(path):
                seconds, mode, _, _ = self.armed
                self.armed = None
                self.outage_until, self.outage_mode = time.monotonic() + seconds, mode  # until the thread closes
                self._start_armed_outage(seconds, mode)
                return ("reset" if mode == "refuse" else mode), 1
            for fault in self.faults:
                if fault.remaining > 0 and (fault.match is None or fault.match.search(path)):
                    fault.remaining -= 1
                    return fault.mode, fault.retry_after
            return None

    # ---------------------------------------------------------------------------------------------- storage
    def table(self, kind: str = "model") -> dict[str, dict]:
        return self.datasets if kind == "dataset" else self.repos

    def head(self, repo_id: str, kind: str = "model") -> str | None:
        commits = self.table(kind)[repo_id]["commits"]
        return commits[-1] if commits else None

    def resolve(self, repo_id: str, rev: str, kind: str = "model") -> str | None:
        """The commit sha of a revision (`main` or a sha of this repo), or None."""
        rev = unquote(rev)
        if rev == "main":
            return self.head(repo_id, kind) or EMPTY_TREE
        return rev if rev in self.table(kind)[repo_id]["commits"] or rev == EMPTY_TREE else None

    def files(self, repo_id: str, rev: str = "main", kind: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision, for tests."""
        sha = self.resolve(repo_id, rev, kind)
        return {path: self.blob(blob) for path, blob in self.manifests.get(sha, {}).items()}

    def blob(self, blob_id: str) -> bytes:
        return (self.root / "blobs" / blob_id).read_bytes()

    def blob_size(self, blob_id: str) -> int:
        return (self.root / "blobs" / blob_id).stat().st_size

    def sha256(self, blob_id: str) -> str:
        path = self.root / "blobs" / f"{blob_id}.sha256"
        if not path.exists():
            path.write_text(hashlib.sha256(self.blob(blob_id)).hexdigest())
        return path.read_text()

    def commit(
        self, repo_id: str, message: str, added: dict[str, bytes], deleted: list[str], kind: str = "model"
    ) -> str:
        with self.lock:
            parent = self.head(repo_id, kind)
            manifest = dict(self.manifests.get(parent, {}))
            for path in deleted:
                manifest = {
                    p: b for p, b in manifest.items() if p != path and not p.startswith(path.rstrip("/") + "/")
                }
            for path, data in added.items():
                blob = git_blob_id(data)
                (self.root / "blobs" / blob).write_bytes(data)
                manifest[path] = blob
            sha = hashlib.sha1(f"{kind}\n{repo_id}\n{parent}\n{message}\n{time.time_ns()}".encode()).hexdigest()
            sha += hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
            sha = hashlib.sha1(sha.encode()).hexdigest()
            self.manifests[sha] = manifest
            self.table(kind)[repo_id]["commits"].append(sha)
            return sha

    def add_dataset(
        self,
        repo_id: str,
        files: dict[str, bytes],
        private: bool = False,
        gated: bool | str = False,
        granted: Iterable[str] = (),
        owner: str | None = None,
        message: str = "Upload dataset",
    ) -> str:
        """A dataset repo holding `files` (path -> bytes), or a new commit of them over it; returns the commit sha.

        `gated`: True or "auto"/"manual"; `granted`: users (token owners) who may read a gated repo's files; the
        owner (default: the namespace) always may.
        """
        gated = "auto" if gated is True else (gated or False)
        with self.lock:
            repo = self.datasets.setdefault(
                repo_id, {"private": private, "commits": [], "owner": owner or repo_id.split("/")[0]}
            )
            repo.update(private=private, gated=gated, granted=set(granted) | repo.get("granted", set()))
        return self.commit(repo_id, message, files, [], kind="dataset")

    def grant(self, repo_id: str, user: str) -> None:
        """`user` may now read the gated dataset `repo_id`."""
        self.datasets[repo_id]["granted"].add(user)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    drop_body = False  # set per request by a "drop" fault

    def log_message(self, format, *args):  # quiet; requests are kept in hub.requests
        pass

    # ---------------------------------------------------------------------------------------------- helpers
    def user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.hub.tokens.get(auth[len("Bearer ") :].strip())
        return None

    def has_token(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def record(self, status: int | str) -> None:
        path = urlparse(self.path).path
        self.hub.requests.append((self.command, path, status))
        self.hub.log.append(
            {"method": self.command, "path": path, "status": status, "range": self.headers.get("Range"),
             "user": self.user()}
        )  # fmt: skip

    def send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None, head=False):
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json" if raw is None else "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.record("drop" if self.drop_body else status)  # before the client can see the answer
        self.end_headers()
        if self.drop_body:  # the connection breaks mid-body
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif not head:
            self.wfile.write(data)

    def error(self, status: int, message: str, code: str | None = None, head=False, headers: dict | None = None):
        headers = {"X-Error-Message": message, **(headers or {})}
        if code:
            headers["X-Error-Code"] = code
        self.send(status, {"error": message}, headers=headers, head=head)

    def reset(self) -> None:
        """Close the connection with a TCP reset, before any answer."""
        self.record("reset")
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def check_write(self, repo_id: str) -> bool:
        """401 without a valid token, 403 for another namespace; True when the write may go ahead."""
        user = self.user()
        if user is None:
            if self.has_token():
                self.error(401, "Invalid credentials in Authorization header")
            else:
                self.error(401, "You must be authenticated to write")
            return False
        if repo_id.split("/")[0] != user:
            self.error(403, f"You don't have the rights to write to {repo_id}")
            return False
        return True

    def visible_repo(self, repo_id: str, head=False, kind: str = "model") -> bool:
        repo = self.hub.table(kind).get(repo_id)
        if repo is None or (repo["private"] and self.user() != repo["owner"]):
            self.error(404, "Repository not found", "RepoNotFound", head=head)
            return False
        return True

    def may_read_files(self, repo_id: str, head=False, kind: str = "model") -> bool:
        """A gated repo's files: 401 GatedRepo without a token, 403 GatedRepo without access, as the Hub answers."""
        repo = self.hub.table(kind)[repo_id]
        user = self.user()
        if not repo.get("gated") or user == repo["owner"] or user in repo.get("granted", ()):
            return True
        what = f"{kind} {repo_id}"
        if user is None:
            message = f"Access to {what} is restricted. You must have access to it and be authenticated to access it. Please log in."  # fmt: skip
            self.error(401, message, "GatedRepo", head=head)
        else:
            page = f"{self.hub.url}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
            message = f"Access to {what} is restricted and you are not in the authorized list. Visit {page} to ask for access."  # fmt: skip
            self.error(403, message, "GatedRepo", head=head)
        return False

    # ---------------------------------------------------------------------------------------------- routing
    def do_HEAD(self):
        self.route("HEAD")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method: str):
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        self.drop_body = False
        fault = self.hub.take_fault(path)
        if fault is not None:
            mode, retry_after = fault
            if mode == "reset":
                return self.reset()
            if mode == "drop":
                self.drop_body = True
            else:
                message = {"503": "Service Unavailable", "429": "Too Many Requests", "500": "Internal Error"}[mode]
                headers = {"Retry-After": str(retry_after)} if mode in ("429", "503") else None
                return self.error(int(mode), message, head=method == "HEAD", headers=headers)
        try:
            for pattern, handler_method, name, extra in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and method in handler_method:
                    return getattr(self, name)(method, query, **match.groupdict(), **extra)
            self.error(404, f"No route for {method} {path}")
        except Exception as exc:  # pragma: no cover - a server bug: say so instead of hanging the client
            self.error(500, f"hub_server error: {type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------------------------------------- endpoints
    def whoami(self, method, query):
        user = self.user()
        if user is None:
            return self.error(401, "Invalid credentials in Authorization header")
        self.send(200, {"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def agent_harnesses(self, method, query):
        self.error(404, "Not found")

    def create_repo(self, method, query):
        payload = json.loads(self.body() or b"{}")
        user = self.user()
        if user is None:
            return self.check_write("-/-")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if not self.check_write(repo_id):
            return
        if payload.get("type", "model") != "model":
            return self.error(400, "This test server creates model repos only (datasets: HubServer.add_dataset)")
        private = payload.get("private")
        if "visibility" in payload:
            private = payload["visibility"] == "private"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                message = "You already created this model repo"  # the Hub's 409 carries the url too
                url = f"{self.hub.url}/{repo_id}"
                return self.send(409, {"error": message, "url": url}, headers={"X-Error-Message": message})
            self.hub.repos[repo_id] = {"private": bool(private), "commits": [], "owner": user}
        self.send(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self, method, query):
        import yaml

        payload = json.loads(self.body() or b"{}")
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, flags=re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return self.send(400, raw=f"Invalid YAML: {exc}".encode(), headers={"Content-Type": "text/plain"})
        if not isinstance(metadata, dict) or (match and not isinstance(metadata.get("license", ""), str)):
            return self.send(400, raw=b"Invalid metadata", headers={"Content-Type": "text/plain"})
        self.send(200, {"errors": [], "warnings": []})

    def preupload(self, method, query, repo, rev):
        if not self.check_write(repo) or not self.visible_repo(repo):
            return
        payload = json.loads(self.body() or b"{}")
        current = self.hub.manifests.get(self.hub.resolve(repo, rev), {})
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": current.get(f["path"])}
            for f in payload.get("files", [])
        ]
        self.send(200, {"files": files, "commitOid": self.hub.head(repo)})

    def commit(self, method, query, repo, rev):
        if not self.check_write(repo) or not self.visible_repo(repo):
            return
        if query.get("create_pr"):
            return self.error(400, "This test server does not support pull requests")
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        added, deleted = {}, []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    return self.error(400, "Only base64 file content is supported")
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            elif key == "lfsFile":
                return self.error(400, "LFS uploads are not supported by this test server")
        sha = self.hub.commit(repo, header.get("summary", ""), added, deleted)
        self.send(200, {"commitUrl": f"{self.hub.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def repo_info(self, method, query, repo, rev="main", kind="model"):
        if not self.visible_repo(repo, kind=kind):
            return
        sha = self.hub.resolve(repo, rev, kind)
        if sha is None:
            return self.error(404, "Revision not found", "RevisionNotFound")
        info = self.hub.table(kind)[repo]
        manifest = self.hub.manifests.get(sha, {})
        payload = {
            "_id": hashlib.sha1(f"{kind}/{repo}".encode()).hexdigest()[:24],
            "id": repo,
            "author": repo.split("/")[0],
            "sha": sha,
            "private": info["private"],
            "disabled": False,
            "gated": info.get("gated", False),
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(manifest)],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
        }
        if kind == "model":
            payload.update(modelId=repo, library_name="diffusers")
        else:
            payload["usedStorage"] = sum(self.hub.blob_size(blob) for blob in manifest.values())
        self.send(200, payload)

    def entry(self, kind: str, path: str, blob: str) -> dict:
        size = self.hub.blob_size(blob)
        entry = {"type": "file", "oid": blob, "size": size, "path": path}
        if is_lfs(kind, path, size):
            entry["lfs"] = {"oid": self.hub.sha256(blob), "size": size, "pointerSize": 134}
        return entry

    def tree(self, method, query, repo, rev, subpath=None, kind="model"):
        if not self.visible_repo(repo, kind=kind):
            return
        sha = self.hub.resolve(repo, rev, kind)
        if sha is None:
            return self.error(404, "Revision not found", "RevisionNotFound")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = unquote(subpath or "").strip("/")
        prefix = prefix + "/" if prefix else ""
        entries: dict[str, dict] = {}
        for path, blob in sorted(self.hub.manifests.get(sha, {}).items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):  # the folders on the way
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": EMPTY_TREE, "path": folder, "size": 0})
            if recursive or len(rest) == 1:
                entries[path] = self.entry(kind, path, blob)
        if prefix and not entries:
            return self.error(404, "Entry not found", "EntryNotFound")
        self.send(200, list(entries.values()))

    def paths_info(self, method, query, repo, rev, kind="model"):
        if not self.visible_repo(repo, kind=kind):
            return
        sha = self.hub.resolve(repo, rev, kind)
        if sha is None:
            return self.error(404, "Revision not found", "RevisionNotFound")
        form = parse_qs(self.body().decode())
        manifest = self.hub.manifests.get(sha, {})
        found = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in manifest:
                found.append(self.entry(kind, path, manifest[path]))
            elif any(p.startswith(path + "/") for p in manifest):
                found.append({"type": "directory", "oid": EMPTY_TREE, "path": path, "size": 0})
        self.send(200, found)

    def auth_check(self, method, query, repo, kind="model"):
        if self.visible_repo(repo, kind=kind) and self.may_read_files(repo, kind=kind):
            self.send(200, {"ok": True})

    def resolve_file(self, method, query, repo, rev, filename, kind="model"):
        head = method == "HEAD"
        if not self.visible_repo(repo, head=head, kind=kind) or not self.may_read_files(repo, head=head, kind=kind):
            return
        sha = self.hub.resolve(repo, rev, kind)
        if sha is None:
            return self.error(404, "Revision not found", "RevisionNotFound", head=head)
        filename = unquote(filename)
        blob = self.hub.manifests.get(sha, {}).get(filename)
        if blob is None:
            return self.error(404, "Entry not found", "EntryNotFound", head=head)
        size = self.hub.blob_size(blob)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob}"', "Accept-Ranges": "bytes"}
        if is_lfs(kind, filename, size):
            headers.update({"X-Linked-Etag": f'"{self.hub.sha256(blob)}"', "X-Linked-Size": str(size)})
        headers["Content-Type"] = "application/octet-stream"
        if head:  # HEAD ignores Range, as huggingface_hub only asks HEAD for the metadata
            return self.send_blob(200, headers, blob, 0, size - 1, head=True)
        wanted = self.headers.get("Range")
        start, end = 0, size - 1
        if wanted:
            span = byte_range(wanted, size)
            if span is None:
                headers["Content-Range"] = f"bytes */{size}"
                return self.error(416, "Requested Range Not Satisfiable", headers=headers)
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            if self.hub.cut_mid_file(filename, start, end, size):
                return self.reset()
        self.send_blob(206 if wanted else 200, headers, blob, start, end)

    def send_blob(self, status: int, headers: dict, blob: str, start: int, end: int, head=False, chunk=1 << 20):
        """Bytes start..end of a blob, read and written a chunk at a time: a client that reads one row group of a
        parquet file and hangs up (as streaming does) costs the server no more than that."""
        length = end - start + 1
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.record("drop" if self.drop_body else status)
        self.end_headers()
        if head:
            return
        if self.drop_body:
            length //= 2
            self.close_connection = True
        with open(self.hub.root / "blobs" / blob, "rb") as f:
            f.seek(start)
            while length > 0:
                data = f.read(min(chunk, length))
                if not data:
                    break
                try:
                    self.wfile.write(data)
                except OSError:  # the client has read what it wanted
                    self.close_connection = True
                    return
                length -= len(data)
        if self.drop_body:
            self.wfile.flush()


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """A single `Range: bytes=...` as (first, last) byte, both included; None when it cannot be satisfied."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or not (match.group(1) or match.group(2)):
        return None
    first, last = match.groups()
    if not first:  # the last n bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start < size and start <= end else None


def _routes() -> list[tuple[str, tuple[str, ...], str, dict]]:
    routes = [
        (r"/api/whoami-v2", ("GET",), "whoami", {}),
        (r"/api/agent-harnesses", ("GET",), "agent_harnesses", {}),
        (r"/api/repos/create", ("POST",), "create_repo", {}),
        (r"/api/validate-yaml", ("POST",), "validate_yaml", {}),
        (rf"/api/models/{REPO}/preupload/{REV}", ("POST",), "preupload", {}),
        (rf"/api/models/{REPO}/commit/{REV}", ("POST",), "commit", {}),
    ]
    for kind in KINDS:
        api = f"/api/{kind}s/{REPO}"
        routes += [
            (rf"{api}/tree/{REV}(?P<subpath>/.*)?", ("GET",), "tree", {"kind": kind}),
            (rf"{api}/paths-info/{REV}", ("POST",), "paths_info", {"kind": kind}),
            (rf"{api}/auth-check", ("GET",), "auth_check", {"kind": kind}),
            (rf"{api}/revision/{REV}", ("GET",), "repo_info", {"kind": kind}),
            (rf"{api}", ("GET",), "repo_info", {"kind": kind}),
        ]
    routes += [  # datasets first: a model repo cannot be called "datasets"
        (rf"/datasets/{REPO}/resolve/{REV}/(?P<filename>.+)", ("GET", "HEAD"), "resolve_file", {"kind": "dataset"}),
        (rf"/{REPO}/resolve/{REV}/(?P<filename>.+)", ("GET", "HEAD"), "resolve_file", {"kind": "model"}),
    ]
    return routes


ROUTES = _routes()


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys
    import tempfile

    root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="hub-server-")
    with HubServer(root, tokens={"hf_local_test_token": "me"}) as server:
        print(f"HF_ENDPOINT={server.url} HF_TOKEN=hf_local_test_token (user 'me'), data in {root}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
