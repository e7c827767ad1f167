import json

import pytest

from sonicpi_gen.inventory import DATA_DIR, DEFAULT_SERVER_RUBY_ROOT, build_inventory, load_inventory


@pytest.mark.sonicpi
@pytest.mark.skipif(not DEFAULT_SERVER_RUBY_ROOT.exists(), reason="Sonic Pi server not installed")
def test_committed_inventory_is_what_the_installed_server_says():
    fresh = build_inventory()
    committed = json.loads((DATA_DIR / f"inventory-{fresh['sonic_pi_version']}.json").read_text())
    assert fresh == committed


def test_slide_times_are_in_the_inventory_with_their_rule():
    inventory = load_inventory()
    assert inventory.synths["tb303"]["cutoff_slide"]["checks"] == [{"args": [], "kind": "positive"}]
    assert "cutoff_slide_shape" not in inventory.synths["tb303"]


def test_missing_version_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match=r"no inventory for Sonic Pi 9.9.9; known: \['3.2.2'\]"):
        load_inventory("9.9.9")
