"""The lab as labgrid describes it: the environment file of ``pytest --lg-env lab.yaml`` (labgrid's own pytest plugin
reads it; the harness takes the ``Environment`` it made) turned into the session's boards.

Each target of the environment is one board: its ``NetworkService`` (directly, or through a ``RemotePlace`` that the
coordinator resolves) gives the address, port and user, its ``SSHDriver`` the key and the master connection every
ssh and rsync of the harness then multiplexes over. Places are held (reserved, then acquired) by the session that
runs pytest before any target is touched (``certify.lab.places.hold_places``); the targets' optional ``options``
say where the board's Python and cache are::

    targets:
      nuc1:
        resources:
          RemotePlace: {name: nuc1}
        drivers:
          SSHDriver: {keyfile: ~/.ssh/lab_ed25519}
        options: {certify_python: /usr/bin/python3, certify_cache: /var/cache/edge-certify}
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from certify.errors import CertifyError, first_line
from certify.lab.board import Board
from certify.lab.fleet import Lab, LabBoard, detect

PYTHON_OPTION, CACHE_OPTION = "certify_python", "certify_cache"


def labgrid_environment(config: Any) -> Any | None:
    """The labgrid ``Environment`` of this pytest session (``--lg-env`` or ``$LG_ENV``), None without one."""
    try:
        from labgrid.pytestplugin.hooks import LABGRID_ENV_KEY  # type: ignore[import-untyped]
    except ImportError:
        return None
    return config.stash.get(LABGRID_ENV_KEY, None)


def coordinator_address(env: Any) -> str:
    """Where the coordinator is, as labgrid finds it (its plugin stores ``--lg-coordinator`` into the env's options)."""
    from certify.lab.places import coordinator_address as address

    return address(None, env.config.get_option("coordinator_address", None))


def place_names(env: Any) -> dict[str, str]:
    """Target name -> the coordinator place it stands for (targets with a ``RemotePlace`` resource; labgrid takes a
    target's resources as a mapping or as a list of one-entry mappings)."""
    places = {}
    for name, target in env.config.get_targets().items():
        resources = (target or {}).get("resources") or {}
        for entry in resources if isinstance(resources, list) else [resources]:
            if isinstance(entry, dict) and "RemotePlace" in entry:
                places[name] = str((entry["RemotePlace"] or {}).get("name", name))
    return places


def open_lab(env: Any, waits: dict[str, float]) -> Lab:
    """Every target of ``env`` as a board, detected on the board itself (in parallel). ``waits``: target name ->
    the seconds its place's reservation took (from the session that holds them)."""
    boards = [_lab_board(env, name, waits.get(name, 0.0)) for name in env.config.get_targets()]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(boards)))) as pool:
        detected = list(pool.map(lambda b: detect(b) if not b.refused else b, boards))
    return Lab(detected)


def _lab_board(env: Any, name: str, wait_s: float) -> LabBoard:
    """One target as a board, not yet detected; a target labgrid cannot resolve is a refused board (its reason)."""
    from certify.lab.places import target_parts

    settings = {"python": str(env.config.get_target_option(name, PYTHON_OPTION, "python3")),
                "cache_dir": str(env.config.get_target_option(name, CACHE_OPTION, Board.cache_dir))}
    try:
        service, driver, tags, place = target_parts(env.get_target(name))
    except Exception as exc:  # ours, or labgrid's own (a place not acquired, a driver that cannot bind)
        why = exc.message if isinstance(exc, CertifyError) else first_line(str(exc)) or type(exc).__name__
        return LabBoard(name, Board(name=name, host="?"), refused=f"labgrid could not resolve it: {why}")
    board = Board.from_labgrid(name, service, driver, **settings)
    return LabBoard(name, board, place=place, tags=dict(tags), wait_s=wait_s)
