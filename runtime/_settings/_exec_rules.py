"""What an operator says about one granted command, and which commands are escalators.

An ``exec:<command>`` grant lets a plugin run ``<command>`` with arguments of its choosing,
which makes the grant exactly as powerful as the command: ``docker run --privileged -v /:/host``
is root on the host, ``git -c core.fsmonitor=...`` runs a shell. An operator narrows a grant
with argument patterns (TOML ``[plugins.<id>.exec.<command>] allow = [...]``).

Pattern grammar (each pattern is matched against ``argv[1:]``; the call is allowed when any
pattern matches):

* A pattern is split into tokens like a shell would (``shlex``: whitespace separates, quotes
  group, no expansion). ``""`` allows the command with no arguments at all.
* Tokens match arguments one for one, left to right. A token is a glob
  (:func:`fnmatch.fnmatchcase`: ``*`` any run of characters, ``?`` one, ``[..]`` a class),
  matched against the whole argument.
* A final token ``*`` on its own matches any number (zero or more) of remaining arguments.
* A token ending in ``...`` matches its glob zero or more times in a row: ``--env=*...``
  takes any number of ``--env=`` options, ``--detach...`` makes ``--detach`` optional. (For
  a literal trailing ``...`` write ``..[.]``.)
* **Options are never matched by a wildcard.** An argument that starts with ``-``, ``+`` or
  ``@`` (options, vi-style ``+cmd``, response files ``@file``) is matched only by a token that
  starts with the same character: write ``--all``, ``--namespace=*`` or ``-*`` explicitly.
  So ``ps *`` allows ``docker ps web`` but refuses ``docker ps --format ...``, and
  ``--namespace=*`` allows ``--namespace=dev`` and nothing but that option.
* ``--``: once a literal ``--`` token has matched an argument ``--``, the arguments after it
  are operands and wildcards match them whatever they start with (``rm -- *``).
* Without an ``allow`` list the grant is unnarrowed: any arguments.

Limits: patterns see arguments, not their meaning. A command that takes options without a
leading dash (``tar xf``, ``ps aux``), reads an option's value from the next argument
(``--namespace dev``: write ``--namespace *``), or lets an operand act like code
(``docker build <context>`` sends that directory to a root daemon) needs patterns written
with that in mind; the daemon such a CLI talks to (dockerd, the Kubernetes API) is never
under cordon's lock-down.

Standard input: a run's stdin is empty unless the operator sets ``input = true`` for the
command, and then only together with ``allow``. A command that reads stdin as a script or a
manifest (``sh``, ``python -``, ``kubectl apply -f -``, ``git am``) does with that text what
it would do with the same text in a file, so stdin is as powerful as the arguments that make
the command read it: ``allow`` must spell those arguments (config check refuses ``input``
without ``allow``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Final

import msgspec

__all__ = [
    "ESCALATORS",
    "ExecRule",
    "check_env_name",
    "check_pattern",
    "escalation_reason",
    "input_problem",
    "matches_any",
    "parse_pattern",
]

#: Argument prefixes that make an argument an option (or option-like) for the pattern rules.
OPTION_PREFIXES: Final = ("-", "+", "@")
#: Environment names a command's ``env`` table may set: the host owns these per run.
RESERVED_ENV: Final = frozenset({"HOME", "TMPDIR", "PWD", "OLDPWD", "GIT_CEILING_DIRECTORIES"})
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: A token ending in this matches its glob zero or more times in a row (``--env=*...``).
REPEAT: Final = "..."
#: A pattern is an operator's text, not a program; a bound keeps matching cheap.
MAX_PATTERN_TOKENS: Final = 64


class ExecRule(msgspec.Struct, frozen=True, kw_only=True):
    """The operator's narrowing of one granted command (``[plugins.<id>.exec.<command>]``).

    ``allow``: argument patterns (module docstring), ``None`` = any arguments.
    ``env``: extra environment variables, set to these values (nothing passes through from
    the host's own environment). ``write``: paths the command may write besides its fresh
    working directory (a repository a ``git`` grant works in, say). ``input``: a call may
    feed the command's stdin (``ctx.exec(..., input=...)``); only with ``allow``.
    """

    allow: tuple[str, ...] | None = None
    env: dict[str, str] = {}
    write: tuple[str, ...] = ()
    input: bool = False


def input_problem(command: str, rule: ExecRule) -> str | None:
    """Why ``rule`` cannot stand as configured (for config check), else ``None``: ``input``
    without ``allow`` would let stdin carry a script to whatever arguments read one."""
    if rule.input and rule.allow is None:
        return (
            f"input = true needs an allow list for {command}: a command reading stdin (`sh`, "
            "`python -`, `kubectl apply -f -`) runs what it is fed, so the arguments that make "
            "it read stdin must be spelled out"
        )
    return None


def parse_pattern(pattern: str) -> list[str]:
    """The tokens of ``pattern``; ``ValueError`` saying why it is not one."""
    if "\x00" in pattern:
        raise ValueError("contains NUL")
    try:
        tokens = shlex.split(pattern, comments=False, posix=True)
    except ValueError as exc:
        raise ValueError(f"cannot be split into arguments: {exc}") from None
    if len(tokens) > MAX_PATTERN_TOKENS:
        raise ValueError(f"has over {MAX_PATTERN_TOKENS} tokens")
    return tokens


def check_pattern(pattern: object) -> str | None:
    """``None`` when ``pattern`` is a valid argument pattern, else why not (for config)."""
    if not isinstance(pattern, str):
        return f"{pattern!r} is not a string"
    try:
        parse_pattern(pattern)
    except ValueError as exc:
        return f"{pattern!r} {exc}"
    return None


def check_env_name(name: str) -> str | None:
    if not _ENV_NAME.fullmatch(name):
        return f"{name!r} is not an environment variable name"
    if name in RESERVED_ENV:
        return f"{name} is set by the host for every run (a fresh directory), not by config"
    return None


def _is_option(arg: str) -> bool:
    return arg.startswith(OPTION_PREFIXES)


def _token_matches(token: str, arg: str, operands: bool) -> bool:
    if _is_option(arg) and not operands and token[:1] != arg[:1]:
        # A wildcard never stands for an option: the operator must write it.
        return False
    return token == arg or fnmatchcase(arg, token)


def matches(tokens: Sequence[str], args: Sequence[str]) -> bool:
    """Does ``args`` (``argv[1:]``) match the pattern ``tokens``? Memoised over (token,
    argument, operands): at most 64 x 257 x 2 steps, whatever the repeats."""
    memo: dict[tuple[int, int, bool], bool] = {}
    last = len(tokens) - 1

    def at(ti: int, ai: int, operands: bool) -> bool:
        key = (ti, ai, operands)
        hit = memo.get(key)
        if hit is not None:
            return hit
        if ti > last:
            found = ai == len(args)
        elif tokens[ti] == "*" and ti == last:
            found = all(operands or not _is_option(a) for a in args[ai:])
        elif len(tokens[ti]) > len(REPEAT) and tokens[ti].endswith(REPEAT):
            glob = tokens[ti][: -len(REPEAT)]
            found = at(ti + 1, ai, operands) or (
                ai < len(args)
                and _token_matches(glob, args[ai], operands)
                and at(ti, ai + 1, operands)
            )
        else:
            token = tokens[ti]
            found = (
                ai < len(args)
                and _token_matches(token, args[ai], operands)
                and at(ti + 1, ai + 1, operands or (token == "--" and args[ai] == "--"))
            )
        memo[key] = found
        return found

    return at(0, 0, False)


def matches_any(patterns: Sequence[str], args: Sequence[str]) -> bool:
    return any(matches(parse_pattern(p), args) for p in patterns)


#: Commands whose grant is, with free arguments, as good as a shell (or root) on the host.
#: Data, not code: ``cordon plugin info``, ``cordon doctor`` and ``cordon config check`` show
#: the reason next to any grant of one.
ESCALATORS: Final[Mapping[str, str]] = {
    "docker": "`docker run --privileged -v /:/host` is root on the host (the daemon is root)",
    "podman": "`podman run -v /:/host` gives the host's files to a container it controls",
    "nerdctl": "runs containers with host mounts, like docker",
    "kubectl": "runs code in the cluster (`exec`, `run`) and reads its secrets",
    "helm": "installs arbitrary workloads into the cluster",
    "git": "`-c core.fsmonitor=`/`core.sshCommand=`/`--upload-pack=` run any command",
    "ssh": "`-o ProxyCommand=` runs a local command; the remote side is a shell",
    "scp": "`-S`/`-o ProxyCommand=` run a local command",
    "sftp": "`-S`/`-o ProxyCommand=` run a local command",
    "rsync": "`-e`/`--rsh=` runs any command; it also writes any file it may",
    "sudo": "runs any command as root",
    "su": "a shell as another user",
    "doas": "runs any command as root",
    "pkexec": "runs any command as root",
    "runuser": "runs any command as another user",
    "env": "runs its arguments as a command",
    "xargs": "runs its arguments as a command",
    "find": "`-exec`/`-execdir` run any command",
    "nice": "runs its arguments as a command",
    "ionice": "runs its arguments as a command",
    "timeout": "runs its arguments as a command",
    "nohup": "runs its arguments as a command",
    "setsid": "runs its arguments as a command",
    "stdbuf": "runs its arguments as a command",
    "chroot": "runs its arguments as a command",
    "unshare": "runs its arguments as a command",
    "nsenter": "runs a command in other namespaces",
    "strace": "runs its arguments as a command (and traces others)",
    "gdb": "runs and debugs any program; `-ex shell`",
    "watch": "runs its argument through a shell",
    "make": "a Makefile (or `--eval`) runs any command",
    "awk": "`system()` runs a shell command",
    "gawk": "`system()` runs a shell command",
    "mawk": "`system()` runs a shell command",
    "sed": "GNU sed's `e` command runs a shell command",
    "tar": "`--to-command=`/`--checkpoint-action=exec=` run a command",
    "zip": "`-TT`/`--unzip-command` run a command",
    "vim": "`:!` runs a shell command",
    "vi": "`:!` runs a shell command",
    "less": "`!` runs a shell command",
    "man": "runs a pager and preprocessors",
    "curl": "writes any file (`-o`) and reaches any network host",
    "wget": "writes any file and reaches any network host",
    "pip": "installs and runs package code",
    "pip3": "installs and runs package code",
    "pipx": "installs and runs package code",
    "uv": "`uv run` runs any code",
    "poetry": "runs package scripts and build code",
    "gem": "installs and runs package code",
    "bundle": "`bundle exec` runs any command",
    "yarn": "runs package scripts",
    "pnpm": "runs package scripts",
    "composer": "runs package scripts",
    "mvn": "build plugins run code",
    "gradle": "build scripts run code",
    "ansible": "runs modules (`-m shell`) on hosts, localhost included",
    "ansible-playbook": "runs any task, localhost included",
    "terraform": "providers and `local-exec` run code",
    "ctr": "runs containers with host mounts",
    "crictl": "runs commands in containers (`exec`)",
    "lxc": "runs containers and commands in them",
    "virsh": "controls VMs and host devices",
    "mount": "mounts filesystems (as root)",
    "dd": "reads and writes any device it may open",
    "socat": "`EXEC:`/`SYSTEM:` addresses run commands",
    "nc": "`-e`/`-c` run a command (some builds)",
    "ncat": "`-e`/`-c` run a command",
    "script": "`-c` runs a shell command",
    "expect": "runs Tcl code",
    "flock": "runs its arguments as a command",
    "parallel": "runs its arguments as commands",
    "npm": "runs package scripts",
    "npx": "runs any package's code",
    "cargo": "build scripts run code",
    "go": "`go run`/`go generate` run code",
    "systemctl": "starts and stops host services",
    "systemd-run": "runs any command as a transient service",
    "crontab": "schedules any command",
    "at": "schedules any command",
}
_SHELLS: Final = ("sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox")
_INTERPRETERS: Final = (
    re.compile(r"python[0-9.]*"),
    re.compile(r"pypy[0-9.]*"),
    re.compile(r"perl[0-9.]*"),
    re.compile(r"ruby[0-9.]*"),
    re.compile(r"node(js)?"),
    re.compile(r"deno|bun"),
    re.compile(r"php[0-9.]*"),
    re.compile(r"lua(jit)?[0-9.]*"),
    re.compile(r"tclsh[0-9.]*|wish"),
    re.compile(r"R|Rscript|julia|java|osascript|pwsh|powershell"),
)


def escalation_reason(command: str) -> str | None:
    """Why a grant of ``command`` is as good as a shell on the host, or ``None`` when it is
    not a known escalator (which does not make it harmless: ``exec:X`` is as powerful as X)."""
    if command in ESCALATORS:
        return ESCALATORS[command]
    if command in _SHELLS:
        return "a shell: `-c` runs anything"
    if any(p.fullmatch(command) for p in _INTERPRETERS):
        return "an interpreter: `-c`/`-e` runs any code"
    return None


def describe_grant(command: str, rule: ExecRule | None) -> str:
    """One line for humans: what ``exec:<command>`` lets a plugin do."""
    reason = escalation_reason(command)
    if rule is not None and rule.allow is not None:
        shown = ", ".join(repr(p) for p in rule.allow) or "(none)"
        stdin = "; the plugin may feed its stdin (input = true)" if rule.input else ""
        return f"exec:{command} narrowed to argument patterns {shown}{stdin}" + (
            f" (escalator: {reason})" if reason else ""
        )
    base = f"exec:{command} is as powerful as {command} itself (any arguments)"
    if reason:
        return f"{base}; ESCALATOR: {reason}; narrow it with exec.{command}.allow"
    return base


def exec_grants(grants: Sequence[str], rules: Mapping[str, ExecRule]) -> list[dict[str, object]]:
    """For ``cordon plugin info``/``doctor``/``config check``: each exact ``exec:<command>``
    in ``grants`` with what it allows (patterns or everything) and, for a known escalator,
    why it is one."""
    out: list[dict[str, object]] = []
    for grant in grants:
        if not grant.startswith("exec:"):
            continue
        command = grant[len("exec:") :]
        rule = rules.get(command)
        out.append(
            {
                "command": command,
                "allow": None if rule is None or rule.allow is None else list(rule.allow),
                "input": rule is not None and rule.input,
                "escalator": escalation_reason(command),
                "summary": describe_grant(command, rule),
            }
        )
    return out
