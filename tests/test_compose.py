"""The container setup (Dockerfile, docker-compose.yml) agrees with notifier itself.

Docker need not run here: these tests read the files and check them against the real CLI,
the contract's settings, the example config and the actors' time limit, so a renamed
command or variable, or a too-short grace period, fails here rather than in production.
When the ``docker compose`` plugin is installed, the file is also checked by Compose.
"""

from __future__ import annotations

import http.server
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from notifier.actors import TIME_LIMIT_MS
from notifier.cli import cli
from notifier.config import load_config, token_variable

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NOTIFIER_SERVICES = ("scheduler", "worker", "web")
#: The contract's settings, plus notifier's documented extensions.
CONTRACT_SETTINGS = {
    "NOTIFIER_CONFIG",
    "NOTIFIER_DATA_DIR",
    "NOTIFIER_REDIS_URL",
    "NOTIFIER_SMTP_URL",
    "NOTIFIER_PUBLIC_URL",
    "NOTIFIER_WEB_BIND",
    "NOTIFIER_SECRET_KEY",
    "NOTIFIER_GRACE_HOURS",
    "NOTIFIER_RETRY_BASE_SECONDS",
    "NOTIFIER_MAX_ATTEMPTS",
    "NOTIFIER_ADMIN_TOKEN",
    "NOTIFIER_DATABASE_URL",
    "NOTIFIER_RETENTION_DAYS",
}
TOKEN_PLATFORMS = ("x", "facebook", "mastodon", "bluesky")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (YAML anchors and ``<<`` merges resolved)."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "no command"
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def seconds(duration: str | int) -> float:
    """A Compose duration (``5m``, ``1m30s``, ``300s``) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


# ---------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert {"redis", "mailpit", "scheduler", "worker", "web"} <= set(services)


@pytest.mark.parametrize("name", NOTIFIER_SERVICES)
def test_each_notifier_service_runs_a_real_notifier_command(name: str, services: dict[str, Any]) -> None:
    words = command_words(services[name])
    command, args = words[0], words[1:]
    assert command in cli.commands, (
        f"service {name!r} runs `notifier {' '.join(words)}` but the CLI has no {command!r} "
        f"command (it has: {', '.join(sorted(cli.commands))})"
    )
    try:
        cli.commands[command].make_context(command, list(args))
    except click.ClickException as exc:
        pytest.fail(f"service {name!r}: `notifier {' '.join(words)}` does not parse: {exc.format_message()}")


def test_the_service_commands_are_the_intended_ones(services: dict[str, Any]) -> None:
    assert command_words(services["scheduler"]) == ["scheduler"]
    assert command_words(services["worker"])[0] == "worker"
    assert command_words(services["web"]) == ["web"]


def _interpolated(value: str) -> list[str]:
    return re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", value)


def test_every_notifier_variable_is_one_the_contract_defines(services: dict[str, Any]) -> None:
    config = load_config(ROOT / "config")
    token_names = {token_variable(account): account for account in config.accounts}
    used: set[str] = set()
    for service in services.values():
        for key, value in environment(service).items():
            used |= {key, *_interpolated(value)}
    notifier_names = {n for n in used if n.startswith("NOTIFIER_")}
    assert notifier_names, "compose sets no NOTIFIER_* variable"
    for name in sorted(notifier_names):
        if name.endswith("_TOKEN") and name not in CONTRACT_SETTINGS:
            assert name in token_names, (
                f"{name} names no account in config/notifier.yaml "
                f"(token variables there: {', '.join(sorted(token_names))})"
            )
        else:
            assert name in CONTRACT_SETTINGS, f"{name} is not a setting notifier reads"


def test_every_account_that_needs_a_token_gets_it_passed_through(services: dict[str, Any]) -> None:
    # Otherwise adding a token to the host's environment would silently leave it in outbox mode.
    config = load_config(ROOT / "config")
    needed = {token_variable(a.id) for a in config.accounts.values() if a.platform in TOKEN_PLATFORMS}
    assert {"NOTIFIER_PCC_X_TOKEN", "NOTIFIER_PCC_FACEBOOK_TOKEN"} <= needed
    for name in NOTIFIER_SERVICES:
        env = environment(services[name])
        for variable in sorted(needed):
            assert variable in env, f"{name}: {variable} is not passed through"
            assert _interpolated(env[variable]) == [variable], f"{name}: {variable} must come from the host"


@pytest.mark.parametrize("name", NOTIFIER_SERVICES)
def test_notifier_services_share_the_settings(name: str, services: dict[str, Any]) -> None:
    env = environment(services[name])
    assert env["NOTIFIER_REDIS_URL"] == "redis://redis:6379/0"
    assert "smtp://mailpit:1025" in env["NOTIFIER_SMTP_URL"]
    assert env["NOTIFIER_CONFIG"] == "/app/config"
    assert env["NOTIFIER_DATA_DIR"] == "/data"
    assert "NOTIFIER_PUBLIC_URL" in env
    # Required from the host: Compose refuses to start without it, and it is never written here.
    assert re.fullmatch(r"\$\{NOTIFIER_SECRET_KEY:\?[^}]+\}", env["NOTIFIER_SECRET_KEY"])


@pytest.mark.parametrize("name", NOTIFIER_SERVICES)
def test_notifier_services_mount_config_read_only_and_wait_for_redis(name: str, services: dict[str, Any]) -> None:
    service = services[name]
    volumes = [str(v) for v in service["volumes"]]
    assert "./config:/app/config:ro" in volumes
    assert "./templates:/app/templates:ro" in volumes
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", NOTIFIER_SERVICES)
def test_stop_grace_period_outlasts_the_longest_delivery(name: str, services: dict[str, Any]) -> None:
    # Docker sends SIGTERM, waits stop_grace_period, then SIGKILL: a delivery in progress
    # (at most TIME_LIMIT_MS) must be able to finish in between.
    grace = seconds(services[name]["stop_grace_period"])
    assert grace > TIME_LIMIT_MS / 1000


def test_redis_keeps_everything(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = command_words(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "ports" not in redis, "Redis has no password here: keep it off the host's network"


def test_the_record_is_postgresql_migrated_before_any_notifier_service_starts(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:")
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "ports" not in postgres, "keep the database off the host's network"
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", environment(postgres)["POSTGRES_PASSWORD"])
    assert command_words(services["migrate"]) == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in NOTIFIER_SERVICES:
        env = environment(services[name])
        assert env["NOTIFIER_DATABASE_URL"].startswith("postgresql://notifier:${POSTGRES_PASSWORD:?")
        assert env["NOTIFIER_DATABASE_URL"].endswith("@postgres/notifier")
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_worker_scales_and_scheduler_is_single(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    scheduler = services["scheduler"]
    assert scheduler.get("deploy", {}).get("replicas", 1) == 1
    assert "container_name" not in services["web"]


def test_mailpit_takes_smtp_and_shows_its_ui_locally(services: dict[str, Any]) -> None:
    mailpit = services["mailpit"]
    assert str(mailpit["image"]).startswith("axllent/mailpit")
    assert "127.0.0.1:8025:8025" in [str(p) for p in mailpit["ports"]]


def test_web_publishes_8080_and_checks_its_health(services: dict[str, Any]) -> None:
    web = services["web"]
    assert "8080:8080" in [str(p) for p in web["ports"]]
    test = web["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "/healthz" in test[3]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_the_web_healthcheck_command_passes_on_200_and_fails_on_503(
    services: dict[str, Any], health_server: tuple[http.server.HTTPServer, type[_Health]]
) -> None:
    server, handler = health_server
    code = services["web"]["healthcheck"]["test"][3]
    assert "127.0.0.1:8080" in code
    local = code.replace("127.0.0.1:8080", f"127.0.0.1:{server.server_address[1]}")

    def run() -> int:
        return subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=30).returncode

    assert run() == 0
    handler.status = 503
    assert run() != 0
    server.shutdown()
    server.server_close()
    assert run() != 0, "no answer at all must fail too"


def _docker_compose() -> bool:
    try:
        found = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
        return found.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _docker_compose(), reason="the docker compose plugin is not installed")
def test_docker_compose_accepts_the_file_and_requires_the_secret_key() -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(ROOT)}
    ok = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        env={**env, "NOTIFIER_SECRET_KEY": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert "NOTIFIER_SECRET_KEY" in missing.stderr


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


def test_dockerfile_uses_a_slim_base_and_a_non_root_user() -> None:
    steps = dockerfile()
    bases = [args for op, args in steps if op == "FROM"]
    assert bases[-1].split()[0] == "python:3.11-slim"
    users = [args for op, args in steps if op == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # The last USER comes after every RUN, so nothing later runs as root either.
    last_user = max(i for i, (op, _) in enumerate(steps) if op == "USER")
    assert all(i < last_user for i, (op, _) in enumerate(steps) if op == "RUN")


def test_dockerfile_installs_the_package_without_dev_extras_and_runs_notifier() -> None:
    steps = dockerfile()
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert installs
    assert not any("[" in args or "-e " in args for args in installs), "no extras, no editable install"
    assert ("ENTRYPOINT", '["notifier"]') in steps
    assert any(op == "EXPOSE" and "8080" in args.split() for op, args in steps)
    env = " ".join(args for op, args in steps if op == "ENV")
    for setting in "NOTIFIER_CONFIG=/app/config", "NOTIFIER_DATA_DIR=/data", "NOTIFIER_WEB_BIND=0.0.0.0:8080":
        assert setting in env.split()


def test_everything_the_dockerfile_copies_exists_and_reaches_the_build() -> None:
    # `pip install` needs pyproject.toml, the package and the README that pyproject names.
    ignore = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore should allow-list, so no secrets or venvs reach the build"
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    for op, args in dockerfile():
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _target = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if readme:
        assert readme.group(1) in allowed, "pyproject.toml names a readme the build will not see"
