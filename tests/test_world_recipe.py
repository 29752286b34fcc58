"""The shapes recipe's primitives options are the world's own: its palette, its positions, its size bands."""
from clipstudio.recipes import recipe_settings
from clipstudio.worlds.shapes.render import FREE_SIZE, PALETTE, POSITIONS, SIZE_BANDS


def _primitives_options(generator: str | None = None) -> dict:
    if generator is None:
        return recipe_settings("shapes")["generator_options"]
    return recipe_settings("shapes", {"generator": generator})["layout_options"]


def test_palette_is_the_renderers_exactly():
    palette = _primitives_options()["palette"].split(",")
    assert palette == ["#%02x%02x%02x" % rgb for rgb in PALETTE.values()]


def test_grid_holds_every_position_of_the_spec():
    grid = list(_primitives_options()["grid"])
    coordinates = sorted({c for xy in POSITIONS.values() for c in xy})
    assert grid == coordinates  # the 3x3 grid is exactly the spec's coordinates, each position a grid point


def test_search_sizes_cover_the_size_bands():
    sizes = list(_primitives_options()["search_sizes"])
    for low, high in SIZE_BANDS.values():  # each band's middle is a size the search tries
        assert any(abs(size - (low + high) / 2) < 1e-9 for size in sizes), (low, high, sizes)
    assert all(FREE_SIZE[0] <= size <= FREE_SIZE[1] for size in sizes)
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_every_layout_uses_the_same_primitives_options():
    for generator in ("pixels", "latent", "vqgan"):
        assert _primitives_options(generator) == _primitives_options()


def test_a_run_from_noise_gets_heavy_cutout_noise_and_a_refining_run_does_not():
    for generator in ("pixels", "latent"):
        from_noise = recipe_settings("shapes", {"generator": generator, "layout": "none"})
        refining = recipe_settings("shapes", {"generator": generator})
        assert from_noise["cut_noise"] == 0.6 and "cut_noise" not in refining and refining["layout"] == "primitives"
