"""A small Hugging Face Hub look-alike on loopback, enough for the unmodified huggingface_hub client (2.4) and diffusers.

Standard library only (plus PyYAML for validate-yaml, which huggingface_hub already requires). Model repos only, one
branch (`main`), every file stored inline ("regular" upload mode, base64 in the commit's NDJSON), content-addressed
blobs plus one manifest per commit, so any commit sha resolves.

Endpoints: GET /api/whoami-v2, GET /api/agent-harnesses (404), POST /api/repos/create, POST /api/validate-yaml,
POST /api/models/{id}/preupload/{rev}, POST /api/models/{id}/commit/{rev}, GET /api/models/{id}[/revision/{rev}],
GET /api/models/{id}/tree/{rev}[/{path}], HEAD/GET /{id}/resolve/{rev}/{path}.

Auth like the Hub: writes need a known token (401 otherwise) for the token's own namespace (403 otherwise); private
repos are invisible (404 RepoNotFound) to anyone but their owner. `python -m tests.hub_server` serves until ^C.

    with HubServer(tmp_path, tokens={"hf_alice_token": "alice"}) as server:
        os.environ["HF_ENDPOINT"] = server.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self, root: str | Path, tokens: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens or {})
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "commits": [sha...], "owner": str}
        self.manifests: dict[str, dict[str, str]] = {}  # commit sha -> {path: blob id}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for debugging
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> HubServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- storage
    def head(self, repo_id: str) -> str | None:
        commits = self.repos[repo_id]["commits"]
        return commits[-1] if commits else None

    def resolve(self, repo_id: str, rev: str) -> str | None:
        """The commit sha of a revision (`main` or a sha of this repo), or None."""
        rev = unquote(rev)
        if rev == "main":
            return self.head(repo_id) or "0" * 40
        return rev if rev in self.repos[repo_id]["commits"] or rev == "0" * 40 else None

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision, for tests."""
        sha = self.resolve(repo_id, rev)
        return {path: self.blob(blob) for path, blob in self.manifests.get(sha, {}).items()}

    def blob(self, blob_id: str) -> bytes:
        return (self.root / "blobs" / blob_id).read_bytes()

    def commit(self, repo_id: str, message: str, added: dict[str, bytes], deleted: list[str]) -> str:
        with self.lock:
            parent = self.head(repo_id)
            manifest = dict(self.manifests.get(parent, {}))
            for path in deleted:
                manifest = {
                    p: b for p, b in manifest.items() if p != path and not p.startswith(path.rstrip("/") + "/")
                }
            for path, data in added.items():
                blob = git_blob_id(data)
                (self.root / "blobs" / blob).write_bytes(data)
                manifest[path] = blob
            sha = hashlib.sha1(f"{repo_id}\n{parent}\n{message}\n{time.time_ns()}".encode()).hexdigest()
            sha += hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
            sha = hashlib.sha1(sha.encode()).hexdigest()
            self.manifests[sha] = manifest
            self.repos[repo_id]["commits"].append(sha)
            return sha


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

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

    def send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None, head=False):
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json" if raw is None else "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        self.hub.requests.append((self.command, urlparse(self.path).path, status))

    def error(self, status: int, message: str, code: str | None = None, head=False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self.send(status, {"error": message}, headers=headers, head=head)

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

    def visible_repo(self, repo_id: str, head=False) -> bool:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo["private"] and self.user() != repo["owner"]):
            self.error(404, "Repository not found", "RepoNotFound", head=head)
            return False
        return True

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
        try:
            for pattern, handler_method, name in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and method in handler_method:
                    return getattr(self, name)(method, query, **match.groupdict())
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

    def model_info(self, method, query, repo, rev="main"):
        if not self.visible_repo(repo):
            return
        sha = self.hub.resolve(repo, rev)
        if sha is None:
            return self.error(404, "Revision not found", "RevisionNotFound")
        info = self.hub.repos[repo]
        manifest = self.hub.manifests.get(sha, {})
        self.send(
            200,
            {
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": sha,
                "private": info["private"],
                "disabled": False,
                "gated": False,
                "tags": [],
                "library_name": "diffusers",
                "siblings": [{"rfilename": path} for path in sorted(manifest)],
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
            },
        )

    def tree(self, method, query, repo, rev, subpath=None):
        if not self.visible_repo(repo):
            return
        sha = self.hub.resolve(repo, rev)
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
                    entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "path": folder, "size": 0})
            if recursive or len(rest) == 1:
                size = len(self.hub.blob(blob))
                entries[path] = {"type": "file", "oid": blob, "path": path, "size": size}
        if prefix and not entries:
            return self.error(404, "Entry not found", "EntryNotFound")
        self.send(200, list(entries.values()))

    def resolve_file(self, method, query, repo, rev, filename):
        head = method == "HEAD"
        if not self.visible_repo(repo, head=head):
            return
        sha = self.hub.resolve(repo, rev)
        if sha is None:
            return self.error(404, "Revision not found", "RevisionNotFound", head=head)
        filename = unquote(filename)
        blob = self.hub.manifests.get(sha, {}).get(filename)
        if blob is None:
            return self.error(404, "Entry not found", "EntryNotFound", head=head)
        data = self.hub.blob(blob)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob}"', "Accept-Ranges": "bytes"}
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and not head:
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        status = 206 if start else 200
        if head:
            self.send(200, headers=headers, raw=data, head=True)
        else:
            self.send(status, headers=headers, raw=data[start:])


ROUTES = [
    (r"/api/whoami-v2", ("GET",), "whoami"),
    (r"/api/agent-harnesses", ("GET",), "agent_harnesses"),
    (r"/api/repos/create", ("POST",), "create_repo"),
    (r"/api/validate-yaml", ("POST",), "validate_yaml"),
    (rf"/api/models/{REPO}/preupload/{REV}", ("POST",), "preupload"),
    (rf"/api/models/{REPO}/commit/{REV}", ("POST",), "commit"),
    (rf"/api/models/{REPO}/tree/{REV}(?P<subpath>/.*)?", ("GET",), "tree"),
    (rf"/api/models/{REPO}/revision/{REV}", ("GET",), "model_info"),
    (rf"/api/models/{REPO}", ("GET",), "model_info"),
    (rf"/{REPO}/resolve/{REV}/(?P<filename>.+)", ("GET", "HEAD"), "resolve_file"),
]


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
