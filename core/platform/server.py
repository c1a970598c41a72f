"""``mcp-agent serve``: the platform in one process under uvicorn."""

from __future__ import annotations

import errno
import logging
import socket

from ..config import LoadedConfig
from ..errors import ConfigError
from ..manager import load_plugin_manager


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {host}:{port}: the port is in use",
                                  hint="stop the process using it, or pick another with --listen HOST:PORT "
                                       "(or `listen:` in the config)") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def create_platform(loaded: LoadedConfig):
    from .service import Platform

    cfg = loaded.config
    pm = load_plugin_manager(disable=cfg.plugins.disable, require=cfg.plugins.require)
    platform = Platform(cfg, pm)
    # Resolve every selected name now so a typo fails before the port is bound.
    for kind, ref in (("registry", cfg.registry), ("packager", cfg.packager), ("builder", cfg.builder),
                      ("executor", cfg.executor), ("secrets", cfg.secrets)):
        spec = pm.get(kind, ref.name)
        pm.check_requires(spec)
        pm.validate_options(spec, ref.options, where=f" (config key {kind})")
    for name, options in cfg.builders.items():  # their dependencies are checked when a deploy first uses them
        pm.validate_options(pm.get("builder", name), options, where=f" (config key builders.{name})")
    for kind, refs in (("auth", cfg.auth), ("telemetry", cfg.telemetry)):
        for ref in refs:
            pm.validate_options(pm.get(kind, ref.name), ref.options, where=f" (config key {kind})")
    return platform


def run(loaded: LoadedConfig) -> None:
    import uvicorn

    from .app import build_app

    cfg = loaded.config
    platform = create_platform(loaded)
    check_port_free(cfg.host, cfg.port)
    app = build_app(platform)
    uv = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", lifespan="on",
                        timeout_graceful_shutdown=15)
    # A platform error at startup is the user's to fix (an unreachable database, a schema to migrate): it is
    # reported like any CLI error, once, instead of as uvicorn's traceback of the lifespan.
    quiet = logging.Filter()
    quiet.filter = lambda record: app.state.startup_error is None  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        uvicorn.Server(uv).run()
    except SystemExit:
        if app.state.startup_error is not None:
            raise app.state.startup_error from None
        raise
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)
