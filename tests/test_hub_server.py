"""The Hub stand-in (tests/hub_server.py) speaks the protocol of the real huggingface_hub client.

Publishing (create_repo, upload_folder with a regular and an LFS file, a branch and a commit to it) and
downloading (hf_hub_download online, then offline from the cache with the server stopped) go through the
unmodified client; nothing may leave 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from tests.hub_server import HubStandIn

REPO = "user/nvc-model"
CKPT = "model-abcd1234.ckpt"


@pytest.fixture
def client_env(monkeypatch, tmp_path):
    """The client as tests must configure it: no Xet (the stand-in has none), no telemetry (whose agent lookup
    goes to huggingface.co whatever `endpoint=` says), online. Constants are read at import, so they are
    patched here and set in the environment for subprocesses. Returns the hosts the process connects to."""
    for name, value in (("HF_HUB_DISABLE_XET", True), ("HF_HUB_DISABLE_TELEMETRY", True), ("HF_HUB_OFFLINE", False)):
        monkeypatch.setattr(constants, name, value)
        monkeypatch.setenv(name, "1" if value else "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hosts: list[str] = []
    create_connection = socket.create_connection

    def recording(address, *args, **kwargs):
        hosts.append(address[0])
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    return hosts


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_publish_and_download_round_trip(tmp_path, client_env):
    folder = tmp_path / "export"
    folder.mkdir()
    readme = b"# nvc model\n"
    (folder / "README.md").write_bytes(readme)
    weights = random.Random(0).randbytes(1 << 20)
    (folder / CKPT).write_bytes(weights)
    weights_sha256 = hashlib.sha256(weights).hexdigest()
    cache = tmp_path / "cache"

    with HubStandIn(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.endpoint, token="dummy")
        assert api.create_repo(REPO, private=True, exist_ok=True).repo_id == REPO
        api.create_repo(REPO, private=True, exist_ok=True)
        with pytest.raises(HfHubHTTPError) as conflict:
            api.create_repo(REPO)
        assert conflict.value.response.status_code == 409

        main = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="export v1")
        assert ("PUT", f"/lfs-upload/{weights_sha256}") in hub.requests  # the checkpoint went through LFS
        info = {f.path: f for f in api.get_paths_info(REPO, ["README.md", CKPT])}
        assert info[CKPT].lfs is not None and info[CKPT].lfs.sha256 == weights_sha256
        assert info[CKPT].size == len(weights) and info["README.md"].lfs is None
        assert set(api.list_repo_files(REPO)) == {".gitattributes", "README.md", CKPT}

        api.create_branch(REPO, branch="v2", exist_ok=True)
        api.create_branch(REPO, branch="v2", exist_ok=True)
        v2 = api.upload_file(path_or_fileobj=b"# nvc model v2\n", path_in_repo="README.md", repo_id=REPO,
                             revision="v2", commit_message="v2 card")
        assert v2.oid != main.oid and len(v2.oid) == 40
        assert {r.name: r.target_commit for r in api.list_repo_refs(REPO).branches} == {"main": main.oid,
                                                                                         "v2": v2.oid}
        assert api.model_info(REPO, revision="v2").sha == v2.oid
        assert hub.file_bytes(REPO, "README.md", "v2") == b"# nvc model v2\n"
        assert hub.file_bytes(REPO, CKPT, "v2") == weights  # files of earlier commits persist on the branch
        assert hub.file_bytes(REPO, "README.md") == readme

        def download(filename, revision="main"):
            path = hf_hub_download(REPO, filename, revision=revision, cache_dir=cache, endpoint=hub.endpoint,
                                   token="dummy")
            return Path(path).read_bytes()

        assert download(CKPT) == weights
        assert download("README.md") == readme
        assert download("README.md", "v2") == b"# nvc model v2\n"
        with pytest.raises(EntryNotFoundError):
            download("missing.txt")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("user/no-such-repo", CKPT, cache_dir=cache, endpoint=hub.endpoint, token="dummy")
        with pytest.raises(RepositoryNotFoundError):  # private: any token reads it, none does not
            HfApi(endpoint=hub.endpoint, token=False).model_info(REPO)

        # HF_ENDPOINT alone (read at import) configures both HfApi() and hf_hub_download.
        online = _python(
            "from huggingface_hub import HfApi, hf_hub_download\n"
            f"print(sorted(HfApi(token='dummy').list_repo_files({REPO!r}, revision='v2')))\n"
            f"print(open(hf_hub_download({REPO!r}, 'README.md', revision='v2', token='dummy',"
            f" cache_dir={str(tmp_path / 'cache2')!r})).read().strip())",
            HF_ENDPOINT=hub.endpoint)
        assert online.returncode == 0, online.stderr
        assert online.stdout.splitlines() == [repr(sorted([".gitattributes", "README.md", CKPT])), "# nvc model v2"]
        port = int(hub.endpoint.rsplit(":", 1)[1])

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    offline = _python(
        "import json\nfrom huggingface_hub import hf_hub_download\n"
        f"print(json.dumps([hf_hub_download({REPO!r}, f, revision=r, cache_dir={str(cache)!r},"
        f" endpoint={hub.endpoint!r}) for f, r in [({CKPT!r}, 'main'), ('README.md', 'v2')]]))",
        HF_HUB_OFFLINE="1", HF_ENDPOINT=hub.endpoint)
    assert offline.returncode == 0, offline.stderr
    ckpt_path, readme_path = json.loads(offline.stdout)
    assert Path(ckpt_path).read_bytes() == weights
    assert Path(readme_path).read_bytes() == b"# nvc model v2\n"
    assert set(client_env) == {"127.0.0.1"}


def test_lfs_content_is_checked(tmp_path, client_env):
    """Bytes not matching the announced oid and size are refused, and so is a commit of an oid never uploaded."""
    import httpx

    data = b"weights"
    oid = hashlib.sha256(data).hexdigest()
    http = httpx.Client(headers={"Authorization": "Bearer dummy"})
    with HubStandIn(tmp_path / "hub") as hub, http:
        HfApi(endpoint=hub.endpoint, token="dummy").create_repo(REPO)
        batch = http.post(f"{hub.endpoint}/{REPO}.git/info/lfs/objects/batch",
                          json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]})
        upload = batch.json()["objects"][0]["actions"]["upload"]["href"]
        assert http.put(upload, content=b"weightz").status_code == 400
        assert http.put(upload, content=data + b"!").status_code == 400

        def commit(lfs_oid: str) -> int:
            lines = [{"key": "header", "value": {"summary": "add"}},
                     {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": lfs_oid, "size": len(data)}}]
            return http.post(f"{hub.endpoint}/api/models/{REPO}/commit/main",
                             content=b"".join(json.dumps(line).encode() + b"\n" for line in lines)).status_code

        assert commit(oid) == 400
        assert http.put(upload, content=data).status_code == 200
        assert commit(oid) == 200
        assert hub.file_bytes(REPO, "w.bin") == data
    assert set(client_env) == {"127.0.0.1"}
