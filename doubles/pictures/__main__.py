"""`python -m doubles.pictures [--out docs/img]`: play what members see against the doubles and draw each message
(docs/img/README.md tells what is drawn and how)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import Picture, make_pictures


def main(argv: list[str] | None = None) -> list[Picture]:
    parser = argparse.ArgumentParser(prog="python -m doubles.pictures", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="where to write the PNGs (docs/img)")
    parser.add_argument("--scale", type=int, default=2, help="pixels per CSS pixel (2: sharp at README width)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pictures = make_pictures(args.out, scale=args.scale)
    for picture in pictures:
        print(f"{picture.path}  {picture.drawing.size[0]}x{picture.drawing.size[1]}")
    return pictures


if __name__ == "__main__":
    main()
