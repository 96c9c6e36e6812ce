"""Release folders named by Hub id (``org/name``), resolved through huggingface_hub's cache offline.

The cache is built here file by file as huggingface_hub lays it out:
``HF_HUB_CACHE/models--org--name/blobs/<etag>``, ``snapshots/<commit>/<file>`` -> relative symlink
to the blob, ``refs/main`` holding the commit. huggingface_hub reads HF_HUB_OFFLINE and
HF_HUB_CACHE when it is imported, so everything that resolves an id runs in a fresh process with
those variables set (and a working directory where ``org/name`` is not a folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corefm.cli import main
from corefm.errors import CheckpointError
from projects.openelm.config import tiny
from projects.openelm.convert import resolve_release, save_hf
from projects.openelm.model import OpenELM

ROOT = Path(__file__).resolve().parents[2]
REPO_ID = "apple-test/OpenELM-tiny"
COMMIT = hashlib.sha1(b"a commit").hexdigest()


def make_release(folder: Path, tokenizer: Path, seed: int = 0) -> OpenELM:
    torch.manual_seed(seed)
    cfg = tiny(vocab_size=300)  # the test tokenizer's 300 pieces
    model = OpenELM(cfg).eval()
    save_hf(model, cfg, folder, tokenizer_dir=tokenizer)
    return model


def put_in_hub_cache(cache: Path, repo_id: str, release: Path, commit: str = COMMIT) -> Path:
    """Place release's files in cache as huggingface_hub stores a downloaded snapshot; -> snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for f in sorted(p for p in release.rglob("*") if p.is_file()):
        data = f.read_bytes()
        # a blob is named by the file's etag: sha256 for LFS files (the weights), git's blob sha1 otherwise
        etag = (hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo / "blobs" / etag).write_bytes(data)
        link = snapshot / f.relative_to(release)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / etag, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory, lm_tokenizer):
    """(model, local release, cache dir, env for a fresh process, working dir) with REPO_ID cached."""
    tmp = tmp_path_factory.mktemp("hub")
    model = make_release(tmp / "release", lm_tokenizer)
    put_in_hub_cache(tmp / "cache", REPO_ID, tmp / "release")
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp / "cache"), HF_HOME=str(tmp / "hf_home"),
               HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    return model, tmp / "release", tmp / "cache", env, work


def run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_load_hf_and_the_lm_eval_model_take_a_hub_id(hub):
    model, _, cache, env, work = hub
    x = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    torch.save(x, work / "ids.pt")
    script = (
        "import torch\n"
        "from projects.openelm.convert import load_hf, resolve_release\n"
        "from projects.openelm.lm_eval_adapter import OpenELMLM\n"
        f"x = torch.load('ids.pt')\n"
        f"m, cfg = load_hf({REPO_ID!r})\n"
        f"lm = OpenELMLM({REPO_ID!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save({{'folder': str(resolve_release({REPO_ID!r})), 'logits': m(x), 'lm': lm.model(x),\n"
        "                'tok': lm.tok_encode('Romeo loves')}, 'out.pt')\n")
    r = run(["-c", script], env, work)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(work / "out.pt")
    assert Path(got["folder"]) == cache / "models--apple-test--OpenELM-tiny" / "snapshots" / COMMIT
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(got["logits"], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["lm"], want, atol=1e-6, rtol=0)
    assert got["tok"][0] == 1 and len(got["tok"]) > 2  # BOS + the cached tokenizer's pieces


def test_generate_and_convert_take_a_hub_id(hub, capsys):
    _, release, _, env, work = hub
    line = ["--prompt", "Romeo loves", "--max-new-tokens", "6"]
    r = run(["-m", "corefm.cli", "openelm", "generate", REPO_ID, *line], env, work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["openelm", "generate", str(release), *line]) == 0  # the same folder, by path
    assert r.stdout == capsys.readouterr().out and r.stdout.startswith("Romeo loves")
    r = run(["-m", "corefm.cli", "openelm", "convert", "--to-corenet", REPO_ID, "--out", "c.pt"], env, work)
    assert r.returncode == 0, r.stderr[-3000:]
    sd = torch.load(work / "c.pt", weights_only=True)
    assert "layers.3.attn.qkv_proj.weight" in sd and "token_embeddings.weight" in sd


def test_lm_eval_takes_a_hub_id(hub, tmp_path, monkeypatch):
    _, release, cache, env, work = hub
    docs = [{"q": "Romeo loves the", "choices": [" king", " storm sword"], "gold": 0},
            {"q": "Hamlet fears a", "choices": [" ghost", " Ophelia at"], "gold": 0}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'mc.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    r = run(["-m", "corefm.cli", "openelm", "lm-eval", REPO_ID, "--tasks", "tiny_mc", "--include-path", str(tmp_path)],
            env, work)
    assert r.returncode == 0, r.stderr[-3000:]
    # results go to the working directory, never into huggingface_hub's cache
    got = json.loads((work / "lm_eval_apple-test--OpenELM-tiny.json").read_text())
    assert got["release"] == REPO_ID and not list(cache.rglob("lm_eval*.json"))
    from projects.openelm.lm_eval_adapter import evaluate_release

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # evaluate_release sets these; monkeypatch restores them
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    local = evaluate_release(release, ["tiny_mc"], include_path=str(tmp_path))
    assert got["results"] == local["results"] and set(got["results"]["tiny_mc"]) >= {"acc"}


def test_an_id_not_in_the_cache_is_one_line_error(hub):
    _, _, cache, env, work = hub
    r = run(["-m", "corefm.cli", "openelm", "generate", "nobody/nothing", "--prompt", "hi"], env, work)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("corefm: error: nobody/nothing: no such local folder"), r.stderr
    assert f"the cache {cache} only (HF_HUB_OFFLINE=1)" in lines[0] and "LocalEntryNotFoundError" in lines[0]


def test_a_local_folder_wins_and_a_non_id_is_not_looked_up(hub, tmp_path, monkeypatch, lm_tokenizer):
    monkeypatch.chdir(tmp_path)
    make_release(tmp_path / REPO_ID, lm_tokenizer, seed=1)  # a folder named like the id
    assert resolve_release(REPO_ID) == Path(REPO_ID)
    for bad in ("no/such/folder", "./org/name", "not-an-id"):
        with pytest.raises(CheckpointError, match="no such folder \\(and not an org/name Hub id\\)"):
            resolve_release(bad)
