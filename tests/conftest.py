import os

import pytest

from invmm.families import build_tiny
from invmm.zoo.tiny import build_tiny_pixel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_pixel(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """tiny_family(name) -> the folder of that family's tiny pipeline (the families' tiny_variants), built once a
    session."""
    built = {}

    def path(name):
        if name not in built:
            built[name] = build_tiny(name, tmp_path_factory.mktemp(name) / "m")
        return built[name]

    return path


@pytest.fixture(scope="session")
def toy_model():
    from invmm.zoo import shipped_digits_model

    return shipped_digits_model()


@pytest.fixture(scope="session")
def toy_images(tmp_path_factory, toy_model):
    """Two images of each group of the shipped toy model as PNGs: {id: (path, entry)}."""
    from invmm.zoo.digits import demo_images, export_images, load_manifest

    manifest = load_manifest(toy_model)
    chosen = demo_images(manifest, 2)
    out = tmp_path_factory.mktemp("toy-images")
    paths = export_images(manifest, out, ids=[e["id"] for e in chosen])
    return {p.stem: (p, e) for p, e in zip(paths, chosen)}
