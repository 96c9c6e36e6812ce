"""`corefm release --push`: the real huggingface_hub client against a local stand-in for the Hub API.

The stand-in answers the three calls an upload makes (create repo, pre-upload, commit) and records
them, so the test sees the repository, every uploaded file and its bytes, and the token.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save_file

from corefm.errors import CorefmError
from corefm.hub.release import release


class _FakeHub(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, str, bytes]] = []  # (method, path, authorization, body)
    endpoint = ""

    def log_message(self, *args) -> None:
        pass

    def _reply(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path, self.headers.get("authorization", ""), b""))
        self._reply({})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append(("POST", self.path, self.headers.get("authorization", ""), body))
        if self.path == "/api/repos/create":
            req = json.loads(body)
            self._reply({"url": f"{self.endpoint}/{req['organization']}/{req['name']}"})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif "/commit/" in self.path:
            self._reply({"commitUrl": f"{self.endpoint}/org/name/commit/{'a' * 40}", "commitOid": "a" * 40})
        else:
            self._reply({})


@pytest.fixture
def hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _FakeHub.calls = []
    _FakeHub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", _FakeHub.endpoint)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", _FakeHub.endpoint)
    yield _FakeHub
    server.shutdown()


@pytest.fixture
def finished_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recipe = {"model": {"name": "vit_classifier", "width": 8}, "task": {"name": "classification"},
              "train": {"micro_batch_size": 4}, "data": {"train": "shards/train"}}
    (run / "recipe.json").write_text(json.dumps(recipe))
    (run / "final.json").write_text(json.dumps({"step": 10, "loss": 0.5, "eval": {"accuracy": 0.75}}))
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(run / "model.safetensors"))
    return run


def test_push_uploads_every_release_file_with_the_token(hub, finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "release"
    files = release(finished_run, out, push="org/name")
    printed = capsys.readouterr()
    assert "hf_not_a_real_token" not in printed.out + printed.err
    assert "pushed 4 files to https://huggingface.co/org/name" in printed.out
    posts = [c for c in hub.calls if c[0] == "POST"]  # (the client also asks the Hub to validate the card's YAML)
    order = ["/api/repos/create", "/api/models/org/name/preupload/main", "/api/models/org/name/commit/main"]
    calls = {p[1]: p for p in posts}
    assert [p[1] for p in posts if p[1] in order] == order
    assert all(p[2] == "Bearer hf_not_a_real_token" for p in posts)
    assert json.loads(calls[order[0]][3]) | {"visibility": "public"} == {"name": "name", "organization": "org", "visibility": "public"}
    lines = [json.loads(line) for line in calls[order[2]][3].decode().splitlines()]
    uploaded = {v["value"]["path"]: base64.b64decode(v["value"]["content"]) for v in lines if v["key"] == "file"}
    assert sorted(uploaded) == sorted(f.name for f in files)
    for f in files:
        assert uploaded[f.name] == f.read_bytes()
    assert "accuracy | 0.7500" in uploaded["README.md"].decode()


def test_push_without_a_token_stops_before_any_request(hub, finished_run, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(CorefmError, match="--push needs a token in HF_TOKEN"):
        release(finished_run, tmp_path / "release", push="org/name")
    assert hub.calls == []


def test_dry_run_lists_the_files_and_sends_nothing(hub, finished_run, tmp_path, capsys):
    release(finished_run, tmp_path / "release")
    out = capsys.readouterr().out
    assert "dry run (add --push org/name to upload)" in out
    assert all(name in out for name in ("model.safetensors", "config.json", "recipe.json", "README.md"))
    assert hub.calls == []
