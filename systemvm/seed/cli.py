"""``systemvm-seed``: install a System VM template into CloudStack secondary storage.

Options keep the meaning of CloudStack's ``cloud-install-sys-tmplt`` (``-m -h -f -u -t -F -e -o -r -d -p``);
``-h`` is the hypervisor there, so help is ``--help``. Additions: ``--nfs``, ``--sha512``, ``--no-checksum``,
``--db-properties``, ``--no-db``, ``--uuid``, ``--retries``, ``--quiet``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from systemvm.errors import UserError

if TYPE_CHECKING:
    from systemvm.seed.install import SeedRequest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="systemvm-seed",
        description="Seed CloudStack secondary storage with a System VM template (cloud-install-sys-tmplt).",
        add_help=False,
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    where = parser.add_argument_group("where")
    where.add_argument("-m", dest="mount", metavar="DIR", help="secondary storage mount point (or directory)")
    where.add_argument(
        "--nfs", metavar="SERVER:/EXPORT", help="mount this NFS export for the run (on -m if given)"
    )
    what = parser.add_argument_group("what")
    what.add_argument(
        "-h", dest="hypervisor", metavar="HYPERVISOR", required=True, help="kvm|xenserver|vmware|hyperv|lxc"
    )
    what.add_argument(
        "-f", dest="file", metavar="FILE", help="template artifact file (.qcow2.bz2, .vhd.bz2, .ova, ...)"
    )
    what.add_argument(
        "-u", dest="url", metavar="URL", help="template artifact http(s) URL (also stored in the database)"
    )
    what.add_argument(
        "-t", dest="template_id", metavar="ID", type=int, help="template id (default: from the database)"
    )
    what.add_argument(
        "-F", dest="force", action="store_true", help="replace an existing template directory atomically"
    )
    what.add_argument(
        "-e", dest="extension", metavar="EXT", help="file extension (default: from the hypervisor)"
    )
    what.add_argument(
        "--uuid", dest="template_uuid", help="uuid for the file and the database row (default: derived)"
    )
    check = parser.add_argument_group("checksum")
    check.add_argument(
        "--sha512",
        metavar="HEX",
        help="expected sha512 of the artifact (default: sha512sum.txt/metadata.ini)",
    )
    check.add_argument("--no-checksum", action="store_true", help="seed even when no checksum is published")
    db = parser.add_argument_group("database (cloud.vm_template)")
    db.add_argument("-o", dest="db_host", metavar="HOST", help="database host")
    db.add_argument("-r", dest="db_user", metavar="USER", help="database user")
    db.add_argument(
        "-d", dest="db_password", metavar="PASSWORD", nargs="?", const="", help="database password"
    )
    db.add_argument("-p", dest="db_port", metavar="PORT", type=int, help="database port")
    db.add_argument("-s", dest="ms_key", metavar="KEY", help=argparse.SUPPRESS)
    db.add_argument("--db-name", default=None, help="database name (default: db.cloud.name or cloud)")
    db.add_argument("--db-socket", default=None, help="database unix socket instead of host:port")
    db.add_argument(
        "--db-properties",
        default="/etc/cloudstack/management/db.properties",
        help="CloudStack db.properties to read",
    )
    db.add_argument("--no-db", action="store_true", help="do not touch the database (needs -t)")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--retries", type=int, default=5, help="resume a broken download this many times (default 5)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def request_from_args(args: argparse.Namespace) -> SeedRequest:
    from systemvm.seed.db import db_config
    from systemvm.seed.install import SeedRequest

    if args.ms_key is not None:
        raise UserError(
            "-s (management server key) decrypts an encrypted db.properties password, which "
            "systemvm-seed does not do: give the plain database password with -d"
        )
    properties = Path(args.db_properties) if args.db_properties else None
    db_options = any(
        v is not None for v in (args.db_host, args.db_user, args.db_password, args.db_port, args.db_socket)
    )
    use_db: bool | None = False if args.no_db else (True if db_options else None)
    if args.no_db and db_options:
        raise UserError("--no-db and database options (-o/-r/-d/-p) contradict each other: drop one")
    db = None
    if use_db is not False and (
        db_options or args.template_id is None or (properties and properties.is_file())
    ):
        db = db_config(
            host=args.db_host,
            port=args.db_port,
            user=args.db_user,
            password=args.db_password,
            properties=properties,
            unix_socket=args.db_socket,
        )
        if args.db_name:
            db.name = args.db_name
    return SeedRequest(
        mount=Path(args.mount) if args.mount else None,
        hypervisor=args.hypervisor,
        file=args.file,
        url=args.url,
        template_id=args.template_id,
        force=args.force,
        extension=args.extension,
        sha512=args.sha512,
        verify=not args.no_checksum,
        use_db=use_db,
        db=db,
        db_properties=properties,
        nfs=args.nfs,
        template_uuid=args.template_uuid,
        progress=not args.quiet,
        retries=args.retries,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from systemvm.seed.install import seed

        result = seed(request_from_args(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; secondary storage was left as it was", file=sys.stderr)
        return 130
    print(
        f"Successfully installed system VM template {result.filename} (id {result.template_id}) "
        f"to {result.directory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
