"""``invoke seed``: put a template into CloudStack secondary storage (same meaning as ``systemvm-seed``)."""

from __future__ import annotations

from invoke import task

from systemvm.tasks import user_errors


@task(
    auto_shortflags=False,  # -h is the hypervisor in cloud-install-sys-tmplt; keep --help for invoke
    help={
        "mount": "secondary storage mount point or directory (-m)",
        "hypervisor": "kvm, xenserver, vmware, hyperv or lxc (-h)",
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
    c,
    hypervisor=None,
    mount=None,
    file=None,
    url=None,
    template_id=None,
    force=False,
    extension=None,
    nfs=None,
    sha512=None,
    no_checksum=False,
    db_host=None,
    db_port=None,
    db_user=None,
    db_password=None,
    db_properties="/etc/cloudstack/management/db.properties",
    no_db=False,
    quiet=False,
):
    """Seed secondary storage with a System VM template: checksum-verified, atomic, safe to run twice."""
    from systemvm.seed.cli import build_parser, request_from_args
    from systemvm.seed.install import seed as seed_template

    argv = ["-h", hypervisor or "", "--db-properties", db_properties or ""]
    for flag, value in (
        ("-m", mount),
        ("-f", file),
        ("-u", url),
        ("-t", template_id),
        ("-e", extension),
        ("--nfs", nfs),
        ("--sha512", sha512),
        ("-o", db_host),
        ("-p", db_port),
        ("-r", db_user),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if db_password is not None:
        argv.append(f"-d{db_password}" if db_password else "-d")
    for flag, on in (("-F", force), ("--no-checksum", no_checksum), ("--no-db", no_db), ("--quiet", quiet)):
        if on:
            argv.append(flag)
    with user_errors():
        result = seed_template(request_from_args(build_parser().parse_args(argv)))
        print(f"seeded template {result.template_id}: {result.directory}/{result.filename}")
