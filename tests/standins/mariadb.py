"""A throwaway MariaDB server (Debian's real ``mariadbd``) with the part of CloudStack's ``cloud`` schema that
seeding touches: ``cloud.vm_template`` (columns as in CloudStack's ``create-schema.sql``, with ``arch`` as
``schema-41910to42000.sql`` adds it, the unused ones left out). Listens on a unix socket and on 127.0.0.1
at a free port; everything lives in one temporary directory.

    with running_mariadb() as db:
        db.execute("INSERT INTO vm_template ...")
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql

VM_TEMPLATE_DDL = """
CREATE TABLE vm_template (
  id bigint unsigned NOT NULL AUTO_INCREMENT,
  unique_name varchar(255) NOT NULL,
  name varchar(255) NOT NULL,
  uuid varchar(40) UNIQUE,
  public int(1) unsigned NOT NULL DEFAULT 0,
  featured int(1) unsigned NOT NULL DEFAULT 0,
  type varchar(32) DEFAULT NULL,
  hvm int(1) unsigned NOT NULL DEFAULT 1,
  bits int(6) unsigned NOT NULL DEFAULT 64,
  url varchar(255) DEFAULT NULL,
  format varchar(32) NOT NULL,
  created datetime NOT NULL DEFAULT CURRENT_TIMESTAMP,
  removed datetime DEFAULT NULL,
  account_id bigint unsigned NOT NULL DEFAULT 1,
  checksum varchar(255) DEFAULT NULL,
  display_text varchar(4096) DEFAULT NULL,
  hypervisor_type varchar(32) DEFAULT NULL,
  state varchar(255) DEFAULT NULL,
  arch varchar(8) DEFAULT 'x86_64',
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8
"""

USER = "cloud"
PASSWORD = "cloud-seed-test"


@dataclasses.dataclass
class MariaDb:
    directory: Path
    socket: str
    port: int
    user: str = USER
    password: str = PASSWORD
    host: str = "127.0.0.1"
    database: str = "cloud"

    def connect(self, **extra: object) -> pymysql.connections.Connection:
        return pymysql.connect(
            unix_socket=self.socket, user="root", database=self.database, autocommit=True, **extra
        )

    def execute(self, sql: str, args: object = None) -> list[tuple]:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def reset(self) -> None:
        self.execute("DELETE FROM vm_template")
        self.execute("ALTER TABLE vm_template AUTO_INCREMENT = 1")

    def add_template(
        self,
        hypervisor_type: str,
        *,
        type: str = "SYSTEM",
        removed: bool = False,
        id: int | None = None,
        name: str | None = None,
        arch: str = "x86_64",
    ) -> int:
        fmt = {"KVM": "QCOW2", "LXC": "QCOW2", "VMware": "OVA"}.get(hypervisor_type, "VHD")
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO vm_template"
                " (id, unique_name, name, uuid, type, format, hypervisor_type, url, removed, arch)"
                " VALUES (%s, %s, %s, UUID(), %s, %s, %s, 'http://old.example/x', IF(%s, NOW(), NULL), %s)",
                (
                    id,
                    f"routing-{hypervisor_type}",
                    name or f"systemvm-{hypervisor_type}",
                    type,
                    fmt,
                    hypervisor_type,
                    removed,
                    arch,
                ),
            )
            return int(cursor.lastrowid)

    def row(self, template_id: int) -> dict[str, object]:
        with (
            self.connect(cursorclass=pymysql.cursors.DictCursor) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT * FROM vm_template WHERE id = %s", (template_id,))
            return dict(cursor.fetchone() or {})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_mariadb(timeout: float = 60.0) -> Iterator[MariaDb]:
    """Start mariadbd in a temporary directory with ``cloud.vm_template`` and a password user; stop after."""
    for tool in ("mariadbd", "mariadb-install-db"):
        if not (shutil.which(tool) or Path("/usr/sbin", tool).exists()):
            raise RuntimeError(f"{tool} missing: apt-get install mariadb-server")
    directory = Path(tempfile.mkdtemp(prefix="seed-mariadb-"))
    data, sock, port = directory / "data", str(directory / "mysqld.sock"), _free_port()
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}",
         "--auth-root-authentication-method=socket", "--skip-test-db", *user],
        check=True, capture_output=True,
    )  # fmt: skip
    log = open(directory / "mariadbd.log", "wb")
    server = subprocess.Popen(
        ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--pid-file={directory / 'mariadbd.pid'}", "--skip-log-bin",
         "--innodb-buffer-pool-size=16M", "--skip-name-resolve", *user],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        db = MariaDb(directory=directory, socket=sock, port=port, database="mysql")
        deadline = time.monotonic() + timeout
        while True:
            try:
                db.execute("SELECT 1")
                break
            except pymysql.MySQLError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mariadbd did not start: {(directory / 'mariadbd.log').read_text()[-2000:]}"
                    ) from exc
                time.sleep(0.2)
        db.execute("CREATE DATABASE cloud")
        db.database = "cloud"
        db.execute(VM_TEMPLATE_DDL)
        for host in ("127.0.0.1", "localhost"):
            db.execute(f"CREATE USER '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'")
            db.execute(f"GRANT ALL ON cloud.* TO '{USER}'@'{host}'")
        yield db
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
