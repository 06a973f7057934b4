"""A model of CloudStack's CsNetfilter: how a router's ``update_config.py`` reads the rules in the kernel,
compares them with the rules its handlers want, and which iptables commands it runs.

Facts from ``systemvm/debian/opt/cloud/bin/cs/CsNetfilter.py`` (apache/cloudstack, the Python 3 version that
keeps the current rules in a list; the research notes' section 6):

- the current rules come from ``iptables-save``: ``*table`` names the table, ``:CHAIN`` declares a chain
  (and resets its rule count: the count is kept per chain *name*, across tables), each ``-A`` line is a rule
  with its position in its chain;
- a rule becomes a dict through a few string rewrites (``! -`` to ``!_-``, ``-p all`` dropped, one pass of
  double spaces to single, ``bootpc`` to ``68``, ``--checksum-fill`` split in two, ``-m state`` to
  ``-m2 state``, ``ESTABLISHED,RELATED`` to ``RELATED,ESTABLISHED``) and by pairing the words two by two
  (key, value): a repeated key keeps its last value, a flag without a value shifts every later pair;
- two rules are equal when table, chain and dict are;
- a rule is rebuilt from its dict with a fixed key list (:data:`REBUILD_KEYS`); every other option is
  dropped, which is why a ``-m conntrack --ctstate ...`` rule can never be deleted (``-D ... -m conntrack
  -j ACCEPT`` is refused with exit 2);
- :func:`compare` is ``CsNetfilters.compare``: chains created, missing rules added (``-A``, ``-I`` for
  "front", ``-I CHAIN n`` for a position), then every current rule that no desired rule matched and that
  the role's ``/etc/iptables/iptables-<role>`` does not list (``del_standard``) deleted with the rebuilt
  ``-D``. CloudStack runs these one by one and only logs a failure; so does whoever runs the commands.

A desired rule is CloudStack's ``[table, position, rule]`` entry of ``CsConfig.fw``: table ``""`` means
filter, position ``""`` (append), ``"front"`` (insert first) or an int (insert there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

Position = str | int
Desired = tuple[str, Position, str]  # (table, position, rule): one entry of CloudStack's CsConfig.fw

# CsNetfilter.to_str's keys, in the order it prints them; nothing else survives a rebuild.
REBUILD_KEYS = (
    "-A", "-s", "-d", "!_-d", "-i", "!_-i", "-p", "-m", "-m2", "--icmp-type", "--state", "--dport",
    "--destination-port", "-o", "!_-o", "-j", "--set-xmark", "--checksum", "--to-source",
    "--to-destination", "--mark",
)  # fmt: skip
# Chains whose rules with a position go just before the chain's last rule (the VPC ACLs' DROP).
ACL_CHAIN_PREFIXES = ("ACL_INBOUND", "ACL_OUTBOUND")


def rule_dict(rule: str) -> dict[str, str]:
    """A rule's text as CsNetfilter's dict (its string rewrites, then the words paired as key, value)."""
    text = rule.lstrip()
    for old, new in (
        ("! -", "!_-"),
        ("-p all", ""),
        ("  ", " "),
        ("bootpc", "68"),
        ("--checksum-fill", "--checksum fill"),
        ("-m state", "-m2 state"),
        ("ESTABLISHED,RELATED", "RELATED,ESTABLISHED"),
    ):
        text = text.replace(old, new)
    words = text.split(" ")
    return dict(zip(words[0::2], words[1::2], strict=False))


def rebuild(spec: dict[str, str], verb: str = "-A") -> str:
    """A rule's text rebuilt from its dict as CsNetfilter.to_str does; ``verb`` replaces ``-A`` (``-D``
    is ``to_str(delete=True)``; ``-C`` asks iptables whether the rebuilt rule names a rule in the kernel)."""
    parts = []
    for key in REBUILD_KEYS:
        if key in spec:
            printable = key.replace("-m2", "-m").replace("!_-", "! -")
            if key == "-A":
                printable = verb
            parts.append(f"{printable} {spec[key]}")
    return " ".join(parts).replace("--checksum fill", "--checksum-fill")


def table_name(table: str) -> str:
    return table or "filter"


@dataclasses.dataclass
class Rule:
    """One rule as CsNetfilter holds it: table, chain, dict, position in its chain, whether a desired
    rule matched it; ``text`` is the line it was parsed from."""

    table: str
    chain: str
    spec: dict[str, str]
    count: int = 0
    text: str = ""
    seen: bool = False

    def same(self, other: Rule) -> bool:
        """CsNetfilter's equality: the same table, chain and dict (the position does not count)."""
        return (self.table, self.chain, self.spec) == (other.table, other.chain, other.spec)

    def rebuilt(self, verb: str = "-D") -> str:
        """The iptables command CloudStack would run on this rule: ``iptables -t <table> <rebuilt>``."""
        return f"iptables -t {self.table} {rebuild(self.spec, verb)}"


def parse_rule(rule: str, table: str) -> Rule:
    """A desired rule (or a line of the role's rules file) as CsNetfilter parses it: the chain is the
    ``-A`` value; a rule given with ``-I``, ``-D`` or ``-P`` has none."""
    spec = rule_dict(rule)
    return Rule(table_name(table), spec.get("-A", ""), spec, text=rule)


@dataclasses.dataclass
class Chains:
    """CsChain: the chains seen per table, and one rule count per chain name (reset when a chain is
    declared after another one, as CloudStack's is)."""

    by_table: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    last: str = ""

    def add(self, table: str, chain: str) -> None:
        self.by_table.setdefault(table, []).append(chain)
        if self.last != chain:
            self.last = chain
            self.counts[chain] = 0

    def has(self, table: str, chain: str) -> bool:
        return chain in self.by_table.get(table, [])


@dataclasses.dataclass
class Netfilter:
    """What CsNetfilters read from ``iptables-save``: the tables, the chains and the rules."""

    tables: list[str]
    chains: Chains
    rules: list[Rule]


def parse_save(save: str) -> Netfilter:
    """``iptables-save`` output read as CsNetfilters.get_all_rules reads it."""
    tables: list[str] = []
    last_table = ""
    chains = Chains()
    rules: list[Rule] = []
    for line in save.splitlines():
        if line.startswith("*"):
            if line[1:] not in tables:
                tables.append(line[1:])
                last_table = line[1:]
        if line.startswith(":"):
            chains.add(last_table, line[1:].split(" ")[0])
        if line.startswith("-A"):
            chain = line.split()[1]
            chains.counts[chain] += 1
            rules.append(Rule(table_name(last_table), chain, rule_dict(line), chains.counts[chain], line))
    return Netfilter(tables, chains, rules)


def protected_rules(role_rules: str | None) -> list[Rule]:
    """The rules of the role's ``/etc/iptables/iptables-<role>`` that del_standard keeps from deletion:
    its ``-A`` lines, each in the table of the ``*table`` line above it (``-I`` lines are not kept)."""
    table = ""
    rules = []
    for line in (role_rules or "").splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        if line.startswith("-A"):
            rules.append(parse_rule(line.strip(), table))
    return rules


@dataclasses.dataclass(frozen=True)
class Command:
    """One command CsNetfilters.compare runs: ``kind`` is ``chain`` (-N), ``add`` or ``delete``."""

    kind: str
    command: str


def compare(current_save: str, desired: Sequence[Desired], role_rules: str | None = None) -> list[Command]:
    """The commands ``CsNetfilters().compare(fw)`` runs on a router whose ``iptables-save`` is
    ``current_save``, for the handlers' rules ``desired``, with ``role_rules`` the text of the role's
    /etc/iptables/iptables-<role> (None: the file is missing and nothing is protected)."""
    current = parse_save(current_save)
    commands: list[Command] = []
    for table, _, text in desired:  # pass 1: every chain a desired rule names
        rule = parse_rule(text, table)
        if not current.chains.has(rule.table, rule.chain):
            if rule.chain:
                commands.append(Command("chain", f"iptables -t {rule.table} -N {rule.chain}"))
            current.chains.add(rule.table, rule.chain)
    added: set[tuple[str, Position, str]] = set()
    for table, position, text in desired:  # pass 2: the rules that are not there yet
        if (table, position, text) in added:
            continue
        rule = parse_rule(text, table)
        if isinstance(position, int):
            rule.count = position
        if _match(current.rules, rule):
            continue
        command = text
        if position == "front":
            command = command.replace("-A", "-I")
        if isinstance(position, int):
            where: int = position
            if rule.chain.startswith(ACL_CHAIN_PREFIXES):
                where = current.chains.counts[rule.chain] or 1
            command = command.replace(f"-A {rule.chain}", f"-I {rule.chain} {where}")
        commands.append(Command("add", f"iptables -t {rule.table} {command}"))
        added.add((table, position, text))
        current.chains.counts[rule.chain] = current.chains.counts.get(rule.chain, 0) + 1
    keep = protected_rules(role_rules)  # del_standard
    left = [r for r in current.rules if not any(r.same(p) for p in keep)]
    commands += [Command("delete", r.rebuilt("-D")) for r in left if not r.seen]  # get_unseen
    return commands


def _match(current: Iterable[Rule], rule: Rule) -> bool:
    """CsNetfilters.has_rule: the first equal current rule is marked seen; a rule with a position never
    matches (it is always inserted)."""
    for existing in current:
        if rule.same(existing):
            if rule.count > 0:
                continue
            existing.seen = True
            return True
    return False


def rewrite_candidates(save: str, desired: Sequence[Desired]) -> list[Rule]:
    """The rules of ``save`` no desired rule equals: CloudStack can only ever remove them with their
    rebuilt ``-D`` (whether that names the kernel's rule, ``iptables -C`` with :meth:`Rule.rebuilt`
    tells)."""
    wanted = [parse_rule(text, table) for table, _, text in desired]
    return [rule for rule in parse_save(save).rules if not any(rule.same(w) for w in wanted)]
