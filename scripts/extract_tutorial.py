#!/usr/bin/env python3
"""Extract the code blocks of Sonic Pi's tutorial (Debian's sonic-pi-server-doc) as .rb files.

    python scripts/extract_tutorial.py --out work/tutorial/blocks
    sonicpi-gen templatize work/tutorial/blocks --out work/tutorial/templates
"""

from pathlib import Path

import click

from sonicpi_gen.tutorial import TUTORIAL_HTML, extract_tutorial


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("work/tutorial/blocks"), show_default=True)
@click.option("--html", "html_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=TUTORIAL_HTML, show_default=True, help="The tutorial page.")
def main(out: Path, html_path: Path) -> None:
    """Write each distinct tutorial code block as <out>/<section>_<k>.rb, with index.json."""
    try:
        index = extract_tutorial(out, html_path)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {len(index['files'])} blocks to {out} ({index['blocks']} in the tutorial, "
               f"{index['repeats_left_out']} exact repeats left out; licence {index['license']})")


if __name__ == "__main__":
    main()
