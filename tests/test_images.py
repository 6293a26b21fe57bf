import numpy as np
import pytest
from PIL import Image

from invmm.data.images import collect_images, load_image
from invmm.functional import to_uint8


def test_modes_sizes_and_resize_flag(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((20, 30, 3), [255, 0, 0], np.uint8)).save(rgb)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(gray)
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(rgba)  # fully transparent: composited onto white

    items = {it.id: it for it in collect_images([str(tmp_path)])}
    a = load_image(items["rgb.png"], mode="L", size=8)
    assert a.error is None and a.resized and a.original_size == (30, 20)
    assert a.pixels.shape == (1, 8, 8)
    expected = Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0)) / 127.5 - 1
    assert a.pixels.mean().item() == pytest.approx(expected, abs=0.01)

    g = load_image(items["gray.png"], mode="RGB", size=8)
    assert not g.resized and g.pixels.shape == (3, 8, 8)
    assert g.pixels.min().item() == -1.0 and g.pixels.max().item() == pytest.approx(252 / 127.5 - 1)
    np.testing.assert_array_equal(to_uint8(g.pixels[None])[0, ..., 0], np.asarray(Image.open(gray)))

    t = load_image(items["alpha.png"], mode="L", size=8)
    assert t.pixels.min().item() == 1.0


def test_every_bad_input_gets_a_message_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    text_as_png = tmp_path / "fake.png"
    text_as_png.write_text("not a png at all")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:40])  # header survives, image data is cut
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(sixteen)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()

    items = collect_images([str(text_as_png), str(corrupt), str(tmp_path / "missing.png"), str(empty_dir),
                            str(sixteen), str(good)])
    loaded = [load_image(it, mode="L", size=8) for it in items]
    errors = {it.path: it.error for it in loaded}
    assert "not an image" in errors[str(text_as_png)] and str(text_as_png) in errors[str(text_as_png)]
    assert "corrupt" in errors[str(corrupt)]
    assert "no such file" in errors[str(tmp_path / "missing.png")]
    assert "no image files" in errors[str(empty_dir)]
    assert "cannot take" in errors[str(sixteen)] and "8-bit" in errors[str(sixteen)]
    assert errors[str(good)] is None


def test_duplicate_names_get_distinct_ids(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / d / "x.png")
    items = collect_images([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")])
    assert [it.id for it in items] == ["x.png", "x.png#1"]
    nested = collect_images([str(tmp_path)])
    assert [it.id for it in nested] == ["a/x.png", "b/x.png"]
