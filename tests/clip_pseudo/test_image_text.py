"""Image-text shard builders: folders, CSV/TSV/JSONL (paths and real HTTP URLs), Fashion-MNIST."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from corefm.data import DataError, load_manifest
from corefm.data.shards import iter_shard
from projects.clip_pseudo.data.image_text import build


def _png(color, size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _samples(split_dir) -> list[dict]:
    manifest = load_manifest(split_dir)
    return [s for shard in manifest.shards for s in iter_shard(str(split_dir / shard.name))]


def _rejects(out) -> dict[str, str]:
    return {json.loads(l)["source"]: json.loads(l)["reason"] for l in (out / "rejects.jsonl").read_text().splitlines()}


def test_folder_with_sidecars_and_folder_names(tmp_path):
    root = tmp_path / "imgs"
    (root / "red_ball").mkdir(parents=True)
    (root / "red_ball" / "a.png").write_bytes(_png("red"))
    (root / "red_ball" / "a.txt").write_text("  a red   ball\n")
    (root / "red_ball" / "b.jpg").write_bytes(_jpg())  # no sidecar: caption from the folder name
    (root / "red_ball" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "red_ball" / "broken.txt").write_text("looks fine")
    (root / "red_ball" / "blank.png").write_bytes(_png("blue"))
    (root / "red_ball" / "blank.txt").write_text("   \n")
    (root / "red_ball" / "latin.png").write_bytes(_png("green"))
    (root / "red_ball" / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    out = tmp_path / "out"
    report = build(f"folder:{root}", out, caption_template="a photo of a {}", val_fraction=0.0)
    assert report["train"] == 2 and report["rejected"] == 3
    rejects = _rejects(out)
    assert rejects["red_ball/broken.png"].startswith("undecodable image")
    assert rejects["red_ball/blank.png"] == "bad caption: empty"
    assert rejects["red_ball/latin.png"] == "bad caption: not UTF-8"
    captions = {json.loads(s["json"])["source"]: s["txt"].decode() for s in _samples(out / "train")}
    assert captions == {"red_ball/a.png": "a red ball", "red_ball/b.jpg": "a photo of a red ball"}
    # original bytes kept under their own format
    assert any("jpg" in s for s in _samples(out / "train"))


@pytest.fixture()
def http_root(tmp_path):
    """A real HTTP server on localhost serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_csv_paths_urls_and_bad_rows(tmp_path, http_root):
    www, base = http_root
    (www / "cat.png").write_bytes(_png("gray"))
    (tmp_path / "local.jpg").write_bytes(_jpg())
    rows = [("filepath", "title"), ("local.jpg", "a local photo"), (f"{base}/cat.png", "a cat from the web"),
            (f"{base}/missing.png", "a 404"), ("nowhere.png", "no file"), ("local.jpg", "nan"), ("local.jpg", "")]
    (tmp_path / "pairs.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    out = tmp_path / "out"
    report = build(f"csv:{tmp_path / 'pairs.csv'}", out, val_fraction=0.0, workers=4)
    assert report["train"] == 2 and report["rejected"] == 4
    assert report["reasons"] == {"download failed": 1, "unreadable image file": 1, "bad caption": 2}
    got = sorted(s["txt"].decode() for s in _samples(out / "train"))
    assert got == ["a cat from the web", "a local photo"]


def test_jsonl_and_tsv(tmp_path):
    (tmp_path / "x.png").write_bytes(_png("white", (300, 200)))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "x.png", "caption": "white"}) + "\n{oops\n"
                                          + json.dumps({"image": "x.png", "caption": 7}) + "\n")
    out = tmp_path / "j"
    report = build(f"jsonl:{tmp_path / 'pairs.jsonl'}", out, val_fraction=0.0, max_size=64)
    assert report["train"] == 1 and report["reasons"] == {"bad row": 1, "bad caption": 1}
    (sample,) = _samples(out / "train")
    assert max(Image.open(io.BytesIO(sample["png"])).size) == 64  # --max-size downscales
    (tmp_path / "pairs.tsv").write_text("path\tcaption\nx.png\ta white image\n")
    assert build(f"tsv:{tmp_path / 'pairs.tsv'}", tmp_path / "t", val_fraction=0.0)["train"] == 1
    with pytest.raises(DataError, match="no caption column"):
        build(f"tsv:{tmp_path / 'pairs.tsv'}", tmp_path / "t2", caption_column="text")
    (tmp_path / "bad.csv").write_text("filepath,title\nnowhere.png,x\n")
    with pytest.raises(DataError, match="no usable image-text pairs"):
        build(f"csv:{tmp_path / 'bad.csv'}", tmp_path / "t3")
    with pytest.raises(DataError, match="unknown source"):
        build("parquet:x", tmp_path / "t4")


def test_fashion_mnist_captions_and_classes(fashion_it):
    train = _samples(fashion_it / "train")
    assert len(train) == 384 and all({"png", "txt", "cls", "json"} <= set(s) for s in train)
    manifest = load_manifest(fashion_it / "train")
    assert manifest.producer["classes"][9] == "ankle boot" and len(manifest.shards) == 8
    captions = {s["txt"].decode() for s in train}
    assert len(captions) > 40  # varied templates and synonyms, not one caption per class
    for s in train[:50]:
        meta = json.loads(s["json"])
        assert meta["class"] == manifest.producer["classes"][int(s["cls"])]


SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"><metadata><rdf:RDF>
<cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
<dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata>
<rect width="{n}" height="10"/></svg>"""


def test_openclipart_titles_and_keywords(tmp_path):
    """The Debian openclipart layout (svg/ + png/ trees, RDF metadata), built here in miniature."""
    def add(rel, title, keywords, creator="Jane Roe", n=1, png=True):
        svg = tmp_path / "svg" / rel
        svg.parent.mkdir(parents=True, exist_ok=True)
        words = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
        svg.write_text(SVG.format(title=title, keywords=words, creator=creator, n=n))
        if png:
            out = (tmp_path / "png" / rel).with_suffix(".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(_png((200, 10, 10)))

    add("animals/birds/eagle.svg", "Acquila", ["jane roe", "bird"])
    add("animals/eagle_copy.svg", "Acquila", ["jane roe", "bird"])  # identical drawing elsewhere: kept once
    add("food/pizza.svg", "Clipart by Jane Roe - pepperoni_pizza", ["food", "unsorted"], n=2)
    for i in range(5):  # a collection name shared by many drawings is not a caption
        add(f"office/icon{i}.svg", "Part of the flat icon collection", ["office", "icon"] if i else [], n=10 + i)
    add("shapes/star.svg", "star", ["shape"], n=3)  # shape folders are dropped
    add("food/lost.svg", "Lost", ["food"], n=4, png=False)
    out = tmp_path / "out"
    report = build(f"openclipart:{tmp_path}", out, val_fraction=0.0)
    captions = sorted(s["txt"].decode() for s in _samples(out / "train"))
    assert captions == ["Acquila: bird", "office, icon", "office, icon", "office, icon", "office, icon",
                        "pepperoni pizza: food"]
    assert report["reasons"] == {"bad caption": 1, "unreadable image file": 1}
