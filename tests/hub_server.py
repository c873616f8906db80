"""A local stand-in for the Hugging Face Hub HTTP API: offline upload + download tests with the real client.

Standard library only; written against huggingface_hub 1.33.0, whose unmodified ``HfApi(endpoint=...)`` can
create repos and branches, commit regular and LFS files (preupload, LFS batch, PUT, verify, NDJSON commit) and
list them, and whose ``hf_hub_download`` / ``snapshot_download`` can fetch them. Model and dataset repos, ids
``namespace/name``. Not served: Xet storage (the client uses hf_xet for LFS uploads whenever it is installed:
set HF_HUB_DISABLE_XET=1 before import, or ``constants.HF_HUB_DISABLE_XET = True``), pull requests, tags,
pagination, multipart LFS. Auth: writes and private repos need an Authorization header, any token will do.

    with HubStandIn(tmp_path / "hub") as hub:
        HfApi(endpoint=hub.endpoint, token="dummy").create_repo("user/model")
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".ckpt", ".pth.tar", ".pt", ".bin", ".safetensors")
LFS_MIN_SIZE = 10 * 1024 * 1024
# The real Hub starts every repo with a commit holding a .gitattributes file.
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES)
API_TYPES = {"models": "model", "datasets": "dataset"}  # /api/{models,datasets}/{repo_id}/...
URL_PREFIX = {"model": "", "dataset": "datasets/"}  # /{prefix}{repo_id}/resolve/..., .git/info/lfs/...


def git_oid(data: bytes) -> str:
    """Git blob sha1: the `oid` the Hub reports for a regular file (and for an LFS file, that of its pointer)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (sha256.encode(), size)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())  # the one format the client parses


class HubError(Exception):
    """An error answer: status, message, X-Error-Code (which the client maps to its exception class), other
    headers, and extra JSON body fields."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


class HubStandIn:
    """Context manager serving on 127.0.0.1 (a free port) from a daemon thread; ``requests`` logs (method, path).

    ``root/state.json`` holds repos, branches and commits (each with its full file list); file contents are in
    ``root/blobs`` (regular) and ``root/lfs`` (uploaded LFS objects), named by sha256.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("blobs", "lfs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        state = self.root / "state.json"
        self._state = json.loads(state.read_text()) if state.exists() else {"repos": {}, "commits": {}}
        self._pending: dict[str, int] = {}  # LFS oid -> size announced by a batch request, awaiting its PUT
        self._lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        self.endpoint = ""

    def __enter__(self) -> HubStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)  # quick stop
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def file_bytes(self, repo_id: str, filename: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """What the server holds for ``filename`` at ``revision`` (branch or commit sha). KeyError for an unknown
        repo or file, HubError for an unknown revision."""
        with self._lock:
            return self._read(self._files(f"{repo_type}/{repo_id}", revision)[1][filename])

    def _read(self, f: dict) -> bytes:
        return (self.root / ("lfs" if f["lfs"] else "blobs") / f["sha256"]).read_bytes()

    def _files(self, key: str, revision: str) -> tuple[str, dict]:
        """Branch or commit sha -> (commit sha, {path: file record}); 404 RevisionNotFound otherwise."""
        repo = self._state["repos"][key]
        sha = repo["branches"].get(revision) or (revision if revision in repo["commits"] else None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha, self._state["commits"][sha]["files"]

    def _commit(self, key: str, branch: str, files: dict, title: str, message: str = "") -> str:
        """Record a commit with the full file list ``files`` on ``branch``; returns its new sha."""
        repo = self._state["repos"][key]
        parent = repo["branches"].get(branch)
        sha = hashlib.sha1(f"{key}:{branch}:{parent}:{time.time_ns()}".encode() + os.urandom(8)).hexdigest()
        self._state["commits"][sha] = {"parent": parent, "title": title, "message": message, "date": _now(),
                                       "files": files}
        repo["commits"].append(sha)
        repo["branches"][branch] = sha
        self._save()
        return sha

    def _save(self) -> None:
        (self.root / "state.json.tmp").write_text(json.dumps(self._state, indent=1))
        os.replace(self.root / "state.json.tmp", self.root / "state.json")

    def _store_regular(self, data: bytes) -> dict:
        sha256 = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / sha256).write_bytes(data)
        return {"sha256": sha256, "size": len(data), "lfs": False, "oid": git_oid(data)}

    def _url(self, key: str) -> str:
        repo_type, repo_id = key.split("/", 1)
        return f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"


def _file_entry(path: str, f: dict) -> dict:
    """A file as the tree and paths-info endpoints list it (a RepoFile to the client; `lfs.oid` is the sha256)."""
    entry = {"type": "file", "oid": f["oid"], "size": f["size"], "path": path}
    if f["lfs"]:
        entry["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": len(lfs_pointer(f["sha256"], f["size"]))}
    return entry


def _folder_entry(path: str, sha: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(f"{sha}:{path}".encode()).hexdigest(), "size": 0, "path": path}


def _folders(files: dict) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


class _Handler(BaseHTTPRequestHandler):
    """One request (HTTP/1.0: a connection each, so no keep-alive connection outlives the server)."""

    hub: HubStandIn  # set by HubStandIn.__enter__

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((self.command, url.path))
        self.body, self.query = self._read_body(), parse_qs(url.query)
        try:
            with self.hub._lock:
                self._route([unquote(s) for s in url.path.split("/")[1:]])
        except HubError as e:
            message = e.message.encode("ascii", "replace").decode()
            headers = {"X-Error-Message": message, **({"X-Error-Code": e.code} if e.code else {}), **e.headers}
            self._send(e.status, {"error": e.message, **e.body}, headers)
        except (KeyError, ValueError, TypeError, IndexError) as e:  # malformed request: a 400, as 5xx get retried
            self._send(400, {"error": f"Bad request to the Hub stand-in: {e!r}"})

    do_HEAD = do_POST = do_PUT = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # httpx may stream an upload so
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body=b"", headers: dict | None = None, content_type="application/json") -> None:
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")  # httpx sends True as "true"

    def _open(self, key: str, write: bool) -> dict:
        """The repo if the caller may see it: 404 RepoNotFound if missing, 401 RepoNotFound without a token for a
        write or a private repo (the client raises RepositoryNotFoundError for both, as with the real Hub)."""
        repo = self.hub._state["repos"].get(key)
        if repo is None or (not self.headers.get("Authorization") and (write or repo["private"])):
            raise HubError(404 if repo is None else 401, "Repository not found", "RepoNotFound")
        return repo

    def _route(self, segs: list[str]) -> None:
        m = self.command
        if m == "POST" and segs == ["api", "repos", "create"]:
            return self.create_repo()
        if m == "POST" and segs == ["api", "validate-yaml"]:  # create_commit checks a README.md's metadata
            return self._send(200, {"errors": [], "warnings": []})
        if m == "GET" and segs == ["api", "agent-harnesses"]:  # user-agent telemetry (reached via HF_ENDPOINT)
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        if any(s.startswith("xet-") for s in segs):  # hf_xet asking for a token: the client still has Xet on
            raise HubError(400, "The Hub stand-in has no Xet storage: set HF_HUB_DISABLE_XET=1")
        if m == "PUT" and len(segs) == 2 and segs[0] == "lfs-upload":
            return self.lfs_put(segs[1])
        if segs[0] == "api" and len(segs) >= 4 and segs[1] in API_TYPES:
            key, action, rest = f"{API_TYPES[segs[1]]}/{segs[2]}/{segs[3]}", "/".join(segs[4:5]), segs[5:]
            handler, write = {
                ("GET", ""): (self.repo_info, False), ("GET", "revision"): (self.repo_info, False),
                ("GET", "refs"): (self.refs, False), ("GET", "tree"): (self.tree, False),
                ("GET", "commits"): (self.commits, False), ("POST", "paths-info"): (self.paths_info, False),
                ("POST", "preupload"): (self.preupload, True), ("POST", "commit"): (self.commit, True),
                ("POST", "branch"): (self.create_branch, True),
            }.get((m, action), (None, False))
            if handler is not None and (bool(rest) == (action not in ("", "refs"))):  # a revision iff one is due
                self._open(key, write)
                return handler(key, rest)
        repo_type = "dataset" if segs[0] == "datasets" else "model"
        segs = segs[1:] if repo_type == "dataset" else segs
        if m == "POST" and len(segs) == 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]:
            key = f"{repo_type}/{segs[0]}/{segs[1][:-4]}"
            self._open(key, write=True)
            if segs[5] in ("batch", "verify"):
                return self.lfs_batch(key) if segs[5] == "batch" else self.lfs_verify()
        if m in ("GET", "HEAD") and len(segs) >= 5 and segs[2] == "resolve":
            key = f"{repo_type}/{segs[0]}/{segs[1]}"
            self._open(key, write=False)
            return self.resolve(key, segs[3], "/".join(segs[4:]))
        raise HubError(404, f"Sorry, we can't find the page you are looking for: {m} {self.path}")

    # --- endpoints, each named after the client calls it serves -------------------------------------------------

    def create_repo(self) -> None:
        """POST /api/repos/create -- HfApi.create_repo; 409 (with the `url` the client reads) if it exists."""
        req = json.loads(self.body)
        repo_type, repo_id = req.get("type") or "model", f"{req.get('organization') or 'user'}/{req['name']}"
        key = f"{repo_type}/{repo_id}"
        if not self.headers.get("Authorization"):
            raise HubError(401, "Invalid credentials in Authorization header")
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"The Hub stand-in serves no {repo_type} repos")
        if key in self.hub._state["repos"]:
            raise HubError(409, f"You already created this {repo_type} repo", url=self.hub._url(key))
        self.hub._state["repos"][key] = {"private": req.get("visibility") == "private", "created": _now(),
                                         "branches": {}, "commits": []}
        self.hub._commit(key, "main", {".gitattributes": self.hub._store_regular(GITATTRIBUTES)}, "initial commit")
        self._send(200, {"url": self.hub._url(key), "name": repo_id})

    def create_branch(self, key: str, rest: list[str]) -> None:
        """POST /api/{type}s/{repo}/branch/{branch} -- HfApi.create_branch; 409 if it exists."""
        branches = self.hub._state["repos"][key]["branches"]
        if rest[0] in branches:
            raise HubError(409, "Reference already exists")
        start = json.loads(self.body or b"{}").get("startingPoint") or "main"
        branches[rest[0]] = self.hub._files(key, start)[0]
        self.hub._save()
        self._send(200, {})

    def refs(self, key: str, rest: list[str]) -> None:
        """GET /api/{type}s/{repo}/refs -- HfApi.list_repo_refs (branches only)."""
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
                    for b, sha in self.hub._state["repos"][key]["branches"].items()]
        self._send(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def repo_info(self, key: str, rest: list[str]) -> None:
        """GET /api/{type}s/{repo}[/revision/{rev}] -- repo_info, model_info, dataset_info, snapshot_download
        (`siblings` carry size, blobId and lfs with ?blobs=true, i.e. files_metadata=True)."""
        repo, (sha, files) = self.hub._state["repos"][key], self.hub._files(key, rest[0] if rest else "main")
        siblings = []
        for path, f in sorted(files.items()):
            lfs = None if not f["lfs"] else {"size": f["size"], "sha256": f["sha256"],
                                             "pointerSize": len(lfs_pointer(f["sha256"], f["size"]))}
            siblings.append({"rfilename": path, **({"size": f["size"], "blobId": f["oid"], "lfs": lfs}
                                                   if self._flag("blobs") else {})})
        repo_id = key.split("/", 1)[1]
        self._send(200, {"id": repo_id, **({"modelId": repo_id} if key.startswith("model/") else {}),
                         "author": repo_id.split("/")[0], "sha": sha, "private": repo["private"], "gated": False,
                         "disabled": False, "lastModified": self.hub._state["commits"][sha]["date"],
                         "createdAt": repo["created"], "downloads": 0, "likes": 0, "tags": [], "siblings": siblings})

    def commits(self, key: str, rest: list[str]) -> None:
        """GET /api/{type}s/{repo}/commits/{rev} -- HfApi.list_repo_commits (newest first, one page)."""
        sha, out = self.hub._files(key, rest[0])[0], []
        while sha:
            c = self.hub._state["commits"][sha]
            out.append({"id": sha, "authors": [{"user": "user"}], "date": c["date"], "title": c["title"],
                        "message": c["message"]})
            sha = c["parent"]
        self._send(200, out)

    def tree(self, key: str, rest: list[str]) -> None:
        """GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive= -- list_repo_tree, list_repo_files."""
        sha, files = self.hub._files(key, rest[0])
        path, folders = "/".join(rest[1:]).strip("/"), _folders(files)
        if path and path not in folders:
            raise HubError(404, f"{path} does not exist on {rest[0]}", "EntryNotFound", {"X-Repo-Commit": sha})
        prefix = path + "/" if path else ""
        listed = [p for p in [*sorted(folders), *sorted(files)]
                  if p.startswith(prefix) and (self._flag("recursive") or "/" not in p[len(prefix):])]
        self._send(200, [_file_entry(p, files[p]) if p in files else _folder_entry(p, sha) for p in listed])

    def paths_info(self, key: str, rest: list[str]) -> None:
        """POST /api/{type}s/{repo}/paths-info/{rev} (form paths=...) -- HfApi.get_paths_info; unknown paths are
        left out, as by the real Hub."""
        sha, files = self.hub._files(key, rest[0])
        paths, folders = parse_qs(self.body.decode()).get("paths", []), _folders(files)
        self._send(200, [_file_entry(p, files[p]) if p in files else _folder_entry(p.strip("/"), sha)
                         for p in paths if p in files or p.strip("/") in folders])

    def preupload(self, key: str, rest: list[str]) -> None:
        """POST /api/{type}s/{repo}/preupload/{rev} -- create_commit asks "lfs" or "regular" per file; the `oid`
        of a file already there (sha256 if LFS, else git sha1) lets the client skip unchanged files."""
        sha, files = self.hub._files(key, rest[0])
        out = []
        for f in json.loads(self.body)["files"]:
            old = files.get(f["path"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": old and (old["sha256"] if old["lfs"] else old["oid"])})
        self._send(200, {"files": out, "commitOid": sha})

    def lfs_batch(self, key: str) -> None:
        """POST /{repo}.git/info/lfs/objects/batch -- upload instructions (basic transfer): a PUT to this server,
        then a verify. Objects already stored get no actions, and the client skips their upload."""
        req, objects = json.loads(self.body), []
        if req.get("operation") != "upload":
            raise HubError(400, "The Hub stand-in only takes LFS uploads")
        for obj in req["objects"]:
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and re.fullmatch("[0-9a-f]{64}", oid) and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else -1,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
            elif (self.hub.root / "lfs" / oid).exists():
                objects.append({"oid": oid, "size": size})
            else:
                self.hub._pending[oid] = size
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{oid}"},
                    "verify": {"href": f"{self.hub._url(key)}.git/info/lfs/objects/verify"}}})
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid: str) -> None:
        """PUT /lfs-upload/{oid} -- the bytes of an LFS object (the client's basic upload, no auth, like a signed
        storage URL): 403 if no batch announced it, 400 unless its size and sha256 are the announced ones."""
        if oid not in self.hub._pending:
            raise HubError(403, f"No upload of {oid} was announced")
        if len(self.body) != self.hub._pending[oid] or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded bytes do not match oid {oid} and size {self.hub._pending[oid]}")
        (self.hub.root / "lfs" / f"{oid}.tmp").write_bytes(self.body)
        os.replace(self.hub.root / "lfs" / f"{oid}.tmp", self.hub.root / "lfs" / oid)
        del self.hub._pending[oid]
        self._send(200)

    def lfs_verify(self) -> None:
        """POST /{repo}.git/info/lfs/objects/verify -- the client's check after its PUT; 404 if not stored."""
        req = json.loads(self.body)
        stored = self.hub.root / "lfs" / str(req["oid"])
        if not stored.is_file() or stored.stat().st_size != req["size"]:
            raise HubError(404, f"LFS object {req['oid']} of size {req['size']} not found")
        self._send(200, {"success": True})

    def commit(self, key: str, rest: list[str]) -> None:
        """POST /api/{type}s/{repo}/commit/{branch} (NDJSON) -- create_commit, upload_file, upload_folder,
        delete_file(s). Lines: header, then file (base64), lfsFile (an uploaded oid, else 400), deletedFile,
        deletedFolder. Answers the new commit's sha; the branch moves to it."""
        branch = rest[0]
        if self._flag("create_pr"):
            raise HubError(400, "The Hub stand-in does not do pull requests")
        if branch not in self.hub._state["repos"][key]["branches"]:  # the real Hub takes branches only, too
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head, files = self.hub._files(key, branch)
        files = dict(files)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "A commit payload starts with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, f"A commit has happened since {header['parentCommit']}: {branch} is at {head}")
        for line in lines[1:]:
            kind, value = line["key"], line["value"]
            path = value["path"]
            if kind == "file":
                files[path] = self.hub._store_regular(base64.b64decode(value["content"]))
            elif kind == "lfsFile":
                oid, stored = value["oid"], self.hub.root / "lfs" / str(value["oid"])
                size = stored.stat().st_size if stored.is_file() else None
                if size is None or value.get("size", size) != size:
                    raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that does"
                                        f" not exist: {path} (oid {oid})")
                files[path] = {"sha256": oid, "size": size, "lfs": True, "oid": git_oid(lfs_pointer(oid, size))}
            elif kind == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif kind == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                raise HubError(400, f"Unknown commit operation {kind}")
        sha = self.hub._commit(key, branch, files, header.get("summary", ""), header.get("description", ""))
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.hub._url(key)}/commit/{sha}",
                         "pullRequestUrl": None})

    def resolve(self, key: str, revision: str, filename: str) -> None:
        """HEAD/GET /{repo}/resolve/{rev}/{path} -- hf_hub_download, snapshot_download, file_exists. Served directly
        (no redirect) with X-Repo-Commit, ETag (the git sha1; the sha256 for LFS files, which also get X-Linked-Etag
        and X-Linked-Size) and Content-Length; `Range: bytes=N-` (a resumed download) gets a 206."""
        sha, files = self.hub._files(key, revision)
        if (f := files.get(filename)) is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        etag = f'"{f["sha256"] if f["lfs"] else f["oid"]}"'
        headers = {"X-Repo-Commit": sha, "ETag": etag, "Accept-Ranges": "bytes"}
        if f["lfs"]:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(f["size"])})
        data, status = self.hub._read(f), 200
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            headers["Content-Range"] = f"bytes {match[1]}-{len(data) - 1}/{len(data)}"
            data, status = data[int(match[1]):], 206
        self._send(status, data, headers, content_type="application/octet-stream")
