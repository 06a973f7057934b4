"""The CloudStack database side of seeding: connection settings and the ``cloud.vm_template`` row.

Settings follow ``cloud-install-sys-tmplt``: defaults localhost:3306 user root, then the ``db.cloud.*`` keys
of ``/etc/cloudstack/management/db.properties`` when that file exists, then the command-line options (which
win).
Encrypted passwords (``db.cloud.encryption.type`` = file/web, ``ENC(...)``) are not decrypted here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymysql.connections import Connection

from systemvm.errors import UserError

DB_PROPERTIES = Path("/etc/cloudstack/management/db.properties")
# our hypervisor name -> vm_template.hypervisor_type as CloudStack stores it
HYPERVISOR_TYPE = {
    "kvm": "KVM",
    "xenserver": "XenServer",
    "vmware": "VMware",
    "hyperv": "Hyperv",
    "lxc": "LXC",
}


@dataclasses.dataclass
class DbConfig:
    host: str = "localhost"
    port: int = 3306
    user: str = "root"
    password: str = ""
    name: str = "cloud"
    unix_socket: str | None = None

    def describe(self) -> str:
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.name}"


def read_db_properties(path: Path) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (comments skipped; the last value of a key wins)."""
    values: dict[str, str] = {}
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def db_config(
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    properties: Path | None = DB_PROPERTIES,
    unix_socket: str | None = None,
) -> DbConfig:
    config = DbConfig(unix_socket=unix_socket)
    if properties is not None and properties.is_file():
        values = read_db_properties(properties)
        config.host = values.get("db.cloud.host", config.host) or config.host
        port_text = values.get("db.cloud.port", "")
        if port_text:
            if not port_text.isdigit():
                raise UserError(
                    f"db.cloud.port '{port_text}' in {properties} is not a number: fix the file or give -p"
                )
            config.port = int(port_text)
        config.user = values.get("db.cloud.username", config.user) or config.user
        config.name = values.get("db.cloud.name", config.name) or config.name
        encryption = values.get("db.cloud.encryption.type", "none").lower()
        stored = values.get("db.cloud.password", "")
        if password is None:
            if encryption in ("file", "web") or stored.startswith("ENC("):
                raise UserError(
                    f"db.cloud.password in {properties} is encrypted ({encryption}), which systemvm-seed "
                    "does not decrypt: give the database password with -d"
                )
            config.password = stored
    if host is not None:
        config.host = host
    if port is not None:
        config.port = port
    if user is not None:
        config.user = user
    if password is not None:
        config.password = password
    return config


@contextlib.contextmanager
def connect(config: DbConfig) -> Iterator[Connection]:
    import pymysql
    from pymysql.constants import CLIENT

    try:
        connection = pymysql.connect(
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password,
            database=config.name,
            unix_socket=config.unix_socket,
            connect_timeout=10,
            autocommit=False,
            client_flag=CLIENT.FOUND_ROWS,
        )
    except pymysql.MySQLError as exc:
        raise UserError(
            f"cannot connect to the CloudStack database {config.describe()} ({exc.args[-1]}): "
            "check -o/-p/-r/-d or db.properties, or give -t and --no-db"
        ) from None
    try:
        yield connection
    finally:
        connection.close()


@contextlib.contextmanager
def reading(table: str = "vm_template") -> Iterator[None]:
    """A query of ``table`` that fails says so in one line (the database's reason and the way round it)."""
    import pymysql

    try:
        yield
    except pymysql.MySQLError as exc:
        raise UserError(
            f"cannot read cloud.{table} ({exc.args[-1]}): check the database, or give -t"
        ) from None


def _none_found(hypervisor: str, arch: str | None = None) -> UserError:
    what = f"{HYPERVISOR_TYPE[hypervisor]} {arch}" if arch else HYPERVISOR_TYPE[hypervisor]
    return UserError(
        f"unable to get a template id from the database: no SYSTEM template for {what} that is not removed; "
        "register one first or give -t"
    )


def newest_system_template(connection: Connection, hypervisor: str) -> int:
    """The id CloudStack's script picks: largest id of a SYSTEM template of the hypervisor, not removed."""
    with reading(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT MAX(id) FROM vm_template"
            " WHERE type = 'SYSTEM' AND hypervisor_type = %s AND removed IS NULL",
            (HYPERVISOR_TYPE[hypervisor],),
        )
        row = cursor.fetchone()
        found = row[0] if row else None
    if found is None:
        raise _none_found(hypervisor)
    return int(found)


def has_column(connection: Connection, column: str, table: str = "vm_template") -> bool:
    """Whether ``table`` has ``column`` (``vm_template.arch`` arrived with CloudStack 4.20's multi-arch)."""
    with reading(table), connection.cursor() as cursor:
        cursor.execute(f"SHOW COLUMNS FROM {table} LIKE %s", (column,))
        return cursor.fetchone() is not None


def system_template_for(connection: Connection, hypervisor: str, arch: str | None, name: str | None) -> int:
    """The template id to seed a template of ``arch`` named ``name`` into.

    CloudStack 4.20.1 and later register a system template per hypervisor and architecture, named
    ``systemvm-<hypervisor>-<version>-<arch>``, and keep the architecture in ``vm_template.arch``
    (``SystemVmTemplateRegistration.java``: ``findLatestTemplateByName(name, hypervisor, arch)``). So: the
    newest live SYSTEM template of that name, else the newest of the hypervisor and architecture; without an
    ``arch`` column (before 4.20) or a known architecture, what ``cloud-install-sys-tmplt`` picks
    (:func:`newest_system_template`).
    """
    if arch is None or not has_column(connection, "arch"):
        return newest_system_template(connection, hypervisor)
    where = "type = 'SYSTEM' AND hypervisor_type = %s AND arch = %s AND removed IS NULL"
    args: tuple[str, ...] = (HYPERVISOR_TYPE[hypervisor], arch)
    with reading(), connection.cursor() as cursor:
        found = None
        if name:
            cursor.execute(f"SELECT MAX(id) FROM vm_template WHERE {where} AND name = %s", (*args, name))
            found = (cursor.fetchone() or (None,))[0]
        if found is None:
            cursor.execute(f"SELECT MAX(id) FROM vm_template WHERE {where}", args)
            found = (cursor.fetchone() or (None,))[0]
    if found is None:
        raise _none_found(hypervisor, arch)
    return int(found)


def update_template(
    connection: Connection, template_id: int, uuid: str, url: str | None, checksum: str | None = None
) -> None:
    """Set the row's ``uuid`` (``url`` when seeding from a URL, ``checksum`` when the template's CloudStack
    line is known: the value that line's registration stores) inside the open transaction."""
    import pymysql

    columns = {"uuid": uuid, "url": url, "checksum": checksum}
    chosen = {column: value for column, value in columns.items() if value is not None}
    assignments = ", ".join(f"{column} = %s" for column in chosen)
    try:
        with connection.cursor() as cursor:
            count = cursor.execute(
                f"UPDATE vm_template SET {assignments} WHERE id = %s", (*chosen.values(), template_id)
            )
    except pymysql.MySQLError as exc:
        raise UserError(
            f"cannot update template {template_id} in cloud.vm_template ({exc.args[-1]}): check it"
        ) from None
    if count != 1:
        raise UserError(f"template id {template_id} is not in cloud.vm_template: give an existing id with -t")
