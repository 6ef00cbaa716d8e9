"""What `--model` names: bundled, catalog name (pulled or not), path, hub id."""

from __future__ import annotations

from pathlib import Path

from axchat.models import catalog, resolve, store


def fake_pulled(root: Path, directory: str) -> Path:
    path = root / directory
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192}')
    return path


def test_no_model_is_the_bundled_one_with_a_hint(tmp_path: Path) -> None:
    got = resolve.resolve(None, tmp_path)
    assert got.source == str(catalog.BUNDLED_DIR) and got.aliases == ("axchat-mini",)
    assert got.note is not None and "axchat pull" in got.note and "--model" in got.note
    assert resolve.resolve("axchat-mini", tmp_path).source == str(catalog.BUNDLED_DIR)


def test_catalog_name_is_the_store_copy_once_pulled_else_the_hub_id(tmp_path: Path) -> None:
    entry = catalog.CATALOG["smollm2-360m"]
    before = resolve.resolve("smollm2-360m", tmp_path)
    assert before.source == entry.hub_id and before.note is not None and "axchat pull smollm2-360m" in before.note
    pulled = fake_pulled(tmp_path, "smollm2-360m")
    for spelling in ("smollm2-360m", entry.hub_id):
        got = resolve.resolve(spelling, tmp_path)
        assert got.source == str(pulled)
        assert {"smollm2-360m", entry.hub_id} <= set(got.aliases)  # generate requests may name either


def test_hub_id_outside_the_catalog_and_paths(tmp_path: Path) -> None:
    assert resolve.resolve("someorg/some-model", tmp_path).source == "someorg/some-model"
    pulled = fake_pulled(tmp_path, "someorg--some-model")
    assert resolve.resolve("someorg/some-model", tmp_path).source == str(pulled)
    assert resolve.resolve(str(pulled), tmp_path).source == str(pulled)
    assert resolve.resolve("/no/such/dir", tmp_path).source == "/no/such/dir"  # the loader says it is missing
    assert store.dir_name("someorg/some-model") == "someorg--some-model"
