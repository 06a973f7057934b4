"""``invoke seed``: put a template into CloudStack secondary storage (same meaning as ``systemvm-seed``)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from invoke import Context, task

from systemvm.errors import UserError
from systemvm.tasks import user_errors, whole_number


@task(
    auto_shortflags=False,  # -h is the hypervisor in cloud-install-sys-tmplt; keep --help for invoke
    help={
        "mount": "secondary storage mount point or directory (-m)",
        "hypervisor": "kvm, xenserver, vmware, hyperv or lxc (systemvm-seed's -h)",
        "file": "artifact file (-f)",
        "url": "artifact http(s) URL (-u)",
        "template_id": "template id (-t); default: newest SYSTEM template of the hypervisor in the database",
        "force": "replace an existing template directory atomically (-F)",
        "extension": "file extension (-e); default from the hypervisor",
        "nfs": "NFS export server:/path to mount for the run",
        "sha512": "expected sha512 (default: sha512sum.txt or metadata.ini next to the artifact)",
        "no_checksum": "seed even when no checksum is published",
        "db_host": "database host (-o)",
        "db_port": "database port (-p)",
        "db_user": "database user (-r)",
        "db_password": "database password (-d)",
        "db_properties": "CloudStack db.properties to read",
        "no_db": "do not touch the database (needs --template-id)",
        "quiet": "no progress bar",
    },
)
def seed(
    c: Context,
    hypervisor: str | None = None,
    mount: str | None = None,
    file: str | None = None,
    url: str | None = None,
    template_id: str | None = None,
    force: bool = False,
    extension: str | None = None,
    nfs: str | None = None,
    sha512: str | None = None,
    no_checksum: bool = False,
    db_host: str | None = None,
    db_port: str | None = None,
    db_user: str | None = None,
    db_password: str | None = None,
    db_properties: str = "/etc/cloudstack/management/db.properties",
    no_db: bool = False,
    quiet: bool = False,
) -> None:
    """Seed secondary storage with a System VM template: checksum-verified, atomic, safe to run twice."""
    import argparse

    from systemvm.seed.cli import build_parser, request_from_args
    from systemvm.seed.install import EXTENSION_OF
    from systemvm.seed.install import seed as seed_template

    with user_errors(), invoke_option_names():
        # systemvm-seed's own defaults, then what was given here (no argparse: its errors would print a
        # usage block and name systemvm-seed's short flags)
        values = vars(build_parser().parse_args(["-h", ""]))
        values.update(
            hypervisor=hypervisor or "",
            mount=mount,
            file=file,
            url=url,
            template_id=whole_number(template_id, "--template-id") if template_id is not None else None,
            force=force,
            extension=extension,
            nfs=nfs,
            sha512=sha512,
            no_checksum=no_checksum,
            db_host=db_host,
            db_port=whole_number(db_port, "--db-port") if db_port is not None else None,
            db_user=db_user,
            db_password=db_password,
            db_properties=db_properties or "",
            no_db=no_db,
            quiet=quiet,
        )
        if not values["hypervisor"]:
            raise UserError(f"give --hypervisor: one of {', '.join(EXTENSION_OF)}")
        result = seed_template(request_from_args(argparse.Namespace(**values)))
        print(f"seeded template {result.template_id}: {result.directory}/{result.filename}")


# systemvm-seed's flags (cloud-install-sys-tmplt's) -> this task's options, for the messages the seed gives
OPTION_OF = {"-m": "--mount", "-h": "--hypervisor", "-f": "--file", "-u": "--url", "-t": "--template-id",
             "-F": "--force", "-e": "--extension", "-o": "--db-host", "-p": "--db-port", "-r": "--db-user",
             "-d": "--db-password"}  # fmt: skip
_FLAG = re.compile(r"(?<![\w-])(-[A-Za-z])(?![\w-])")


@contextlib.contextmanager
def invoke_option_names() -> Iterator[None]:
    """The seed's one-line errors name systemvm-seed's flags (``-h``); here they name this task's options."""
    try:
        yield
    except UserError as exc:
        said = _FLAG.sub(lambda m: OPTION_OF.get(m.group(1), m.group(1)), str(exc))
        raise type(exc)(said) from None
