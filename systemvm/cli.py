"""``systemvm`` console command: checkers usable on any artifact (``systemvm vhd check FILE``)."""

from __future__ import annotations

import argparse
import json
import sys

from systemvm.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="systemvm", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("vhd", "ova"):
        p = sub.add_parser(kind, help=f"{kind.upper()} tools")
        p.add_argument("action", choices=["check"])
        p.add_argument("file")
    args = parser.parse_args(argv)
    try:
        if args.kind == "vhd":
            from systemvm.export.formats.vhd import check_vhd

            info = check_vhd(args.file)
        else:
            from systemvm.export.formats.ova import check_ova

            info = check_ova(args.file)
    except UserError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
