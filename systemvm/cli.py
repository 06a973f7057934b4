"""``systemvm`` console command: checkers usable on any artifact (``systemvm vhd check FILE``).

Exit status: 0 the file passes, 1 the check found a defect (one line naming it), 2 no such file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from systemvm.errors import EXIT_FAILED, EXIT_INPUT, UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="systemvm", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("vhd", "ova"):
        p = sub.add_parser(kind, help=f"{kind.upper()} tools")
        p.add_argument("action", choices=["check"])
        p.add_argument("file")
    args = parser.parse_args(argv)
    if not Path(args.file).is_file():
        print(f"error: {args.file} is not a file: give the path of a .{args.kind} file", file=sys.stderr)
        return EXIT_INPUT
    try:
        if args.kind == "vhd":
            from systemvm.export.formats.vhd import check_vhd

            info = check_vhd(args.file)
        else:
            from systemvm.export.formats.ova import check_ova

            info = check_ova(args.file)
    except UserError as exc:  # whatever the check finds wrong with the file is a defect of the file
        said = str(exc)
        print(said if said.startswith(args.file) else f"{args.file}: {said}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(info, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
