"""What the installed Sonic Pi accepts: synths, fx, samples, scales, chords and option ranges.

The inventory is generated from the server's own Ruby files by `inventory_dump.rb`
(run `sonicpi-gen inventory`) and committed as data, one file per Sonic Pi version,
so grammars can be checked on machines without Sonic Pi.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_VERSION = "3.2.2"
# Where Debian's sonic-pi-server package puts the server's Ruby code.
DEFAULT_SERVER_RUBY_ROOT = Path("/usr/lib/sonic-pi/app/server/ruby")


@dataclass(frozen=True)
class Inventory:
    """The names and option ranges one Sonic Pi version accepts."""

    sonic_pi_version: str
    synths: dict  # synth name -> {option: {"default", "checks"}}
    fx: dict  # fx name (without the fx_ prefix) -> {option: {...}}
    sample_options: dict
    samples: dict  # sample name -> group
    scales: list
    chords: list

    def options_for(self, kind: str, name: str) -> dict:
        """Options of a synth, fx or sample (kind is 'synth', 'fx' or 'sample')."""
        if kind == "sample":
            return self.sample_options
        table = self.synths if kind == "synth" else self.fx
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted({"synth": self.synths, "fx": self.fx, "sample": self.samples,
                       "scale": self.scales, "chord": self.chords}[kind])


def build_inventory(server_ruby_root: Path = DEFAULT_SERVER_RUBY_ROOT) -> dict:
    """Run `inventory_dump.rb` against an installed server and return the inventory dict."""
    if not (server_ruby_root / "lib/sonicpi/synths/synthinfo.rb").exists():
        raise FileNotFoundError(
            f"no Sonic Pi server Ruby code under {server_ruby_root}: install Debian's "
            "sonic-pi-server (scripts/setup.sh does) or pass its app/server/ruby folder")
    script = Path(__file__).parent / "inventory_dump.rb"
    out = subprocess.run(["ruby", str(script), str(server_ruby_root)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def write_inventory(server_ruby_root: Path = DEFAULT_SERVER_RUBY_ROOT,
                    data_dir: Path = DATA_DIR) -> Path:
    """Generate the inventory and write it as data/inventory-<version>.json."""
    inventory = build_inventory(server_ruby_root)
    path = data_dir / f"inventory-{inventory['sonic_pi_version']}.json"
    path.write_text(json.dumps(inventory, indent=1, sort_keys=True) + "\n")
    return path


@lru_cache(maxsize=None)
def load_inventory(version: str = DEFAULT_VERSION) -> Inventory:
    """Load the committed inventory of one Sonic Pi version."""
    path = DATA_DIR / f"inventory-{version}.json"
    if not path.exists():
        known = sorted(p.stem.removeprefix("inventory-") for p in DATA_DIR.glob("inventory-*.json"))
        raise FileNotFoundError(
            f"no inventory for Sonic Pi {version}; known: {known}. "
            "Generate one with `sonicpi-gen inventory` on a machine with that server.")
    raw = json.loads(path.read_text())
    return Inventory(**{k: raw[k] for k in Inventory.__dataclass_fields__})


def violated_check(checks: list[dict], value) -> str | None:
    """Return Sonic Pi's rule that `value` breaks, or None when it passes all of them.

    `checks` is the list stored per option: {"kind": "between_inclusive", "args": [0, 1]}.
    Non-numeric values (symbols, lists) are only checked by `one_of`.
    """
    for check in checks:
        kind, args = check["kind"], check["args"]
        if kind == "one_of":
            if value not in args[0]:
                return f"one of {args[0]}"
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        ok = {
            "positive": lambda: value >= 0,
            "positive_not_zero": lambda: value > 0,
            "between_inclusive": lambda: args[0] <= value <= args[1],
            "between_exclusive": lambda: args[0] < value < args[1],
            "less_than": lambda: value < args[0],
            "less_than_oet": lambda: value <= args[0],
            "greater_than": lambda: value > args[0],
            "greater_than_oet": lambda: value >= args[0],
            "not_zero": lambda: value != 0,
            # sum rules involve two options; checked where both are known
            "sum_less_than_oet": lambda: True,
        }[kind]()
        if not ok or (isinstance(value, float) and math.isnan(value)):
            return describe_checks([check])
    return None


def describe_checks(checks: list[dict]) -> str:
    """Human-readable form of an option's rules, for error messages."""
    words = {
        "positive": ">= 0", "positive_not_zero": "> 0", "not_zero": "!= 0",
        "between_inclusive": "between {0} and {1} inclusive",
        "between_exclusive": "between {0} and {1} exclusive",
        "less_than": "< {0}", "less_than_oet": "<= {0}",
        "greater_than": "> {0}", "greater_than_oet": ">= {0}",
        "one_of": "one of {0}", "sum_less_than_oet": "{0} plus it <= {1}",
    }
    parts = [words[c["kind"]].format(*c["args"]) for c in checks]
    return " and ".join(parts) or "any value"
