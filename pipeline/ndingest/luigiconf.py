"""Luigi's global configuration, changed here and nowhere else: `luigi_defaults()` for
every use of the tasks (`tasks` calls it at import: the Luigi way, `luigi --module
ndingest.tasks`, has no other hook), and `luigi_run_settings()` for a run ndingest starts
itself (`runner`). Its own module, so that `tasks` and `runner` do not import each other.
"""
from __future__ import annotations

import luigi.configuration

# Luigi's retcodes are 0 on failure unless configured; fill in what luigi.cfg leaves out.
LUIGI_DEFAULTS = {
    "retcode": {"already_running": "6", "missing_data": "3", "not_run": "1", "task_failed": "1",
                "scheduling_error": "1", "unhandled_exception": "1"},
    "worker": {"check_complete_on_run": "true"},
    "core": {"autoload_range": "false"},  # ndingest has no range tasks; silences Luigi's warning
}


def _set(section: str, name: str, value: str, *, keep_configured: bool) -> None:
    config = luigi.configuration.get_config()
    if not config.has_section(section):
        config.add_section(section)
    if not (keep_configured and config.has_option(section, name)):
        config.set(section, name, value)


def luigi_defaults() -> None:
    """Fill in `LUIGI_DEFAULTS` where no luigi.cfg sets them, so a failed run never exits 0."""
    for section, values in LUIGI_DEFAULTS.items():
        for name, value in values.items():
            _set(section, name, value, keep_configured=True)


def luigi_run_settings(scheduler_url: str | None) -> None:
    """What a run ndingest starts itself changes on top of the defaults."""
    from .scheduler import IDLE_RESCHEDULE

    _set("core", "no_configure_logging", "true", keep_configured=False)  # ours is set; luigi's prints tracebacks
    if not scheduler_url:  # alone, a failed task must end the run, not wait for Luigi's retry
        _set("worker", "keep_alive", "false", keep_configured=False)
    else:  # idle this long under luigid: leave Luigi's loop, release dead runs' tasks, schedule again
        _set("worker", "max_keep_alive_idle_duration", IDLE_RESCHEDULE, keep_configured=True)
