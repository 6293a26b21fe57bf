import os

import pytest

from invmm.families import build_tiny
from invmm.zoo.tiny import build_tiny_pixel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Two tiers. `pytest` runs the fast one: the math against its references, the contract and the matrix's cells on
# every family's tiny pipeline, one short run per behaviour. `pytest --slow` (or INVMM_SLOW=1, or `-m slow`) adds
# the tests marked slow: end-to-end runs through the commands on every family, kill -9 and resume, Ray, long toy
# inversions, simulations of coverage and level. CI (.ci/run) runs both. Beyond them, tests marked `covered` run a
# toy's full budget to check what a benchmark measures on many more images (benchmarks/, docs/benchmarks/); CI
# leaves them to the benchmark, `pytest --covered` (or INVMM_COVERED=1) runs them.
def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow tier (end-to-end runs; CI runs it)")
    parser.addoption("--covered", action="store_true", help="also run the full-budget tests a benchmark covers")


def pytest_collection_modifyitems(config, items):
    covered = config.getoption("--covered") or os.environ.get("INVMM_COVERED") == "1"
    slow = covered or config.getoption("--slow") or os.environ.get("INVMM_SLOW") == "1" or \
        "slow" in (config.option.markexpr or "")
    for item in items:
        if "covered" in item.keywords and not covered:
            item.add_marker(pytest.mark.skip(reason="covered by a benchmark: run with `pytest --covered`"))
        elif "slow" in item.keywords and not slow:
            item.add_marker(pytest.mark.skip(reason="slow tier: run with `pytest --slow` (CI runs it)"))


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
