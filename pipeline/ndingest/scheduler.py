"""What ndingest says to a luigid besides Luigi's own worker protocol: is it there, and
which of this spec's tasks it still holds as running although they are finished on disk."""
from __future__ import annotations

import json
import logging

from .errors import RemoteError

logger = logging.getLogger(__name__)

PROBE_SECONDS = 10.0
# A run waiting on tasks other runs hold leaves Luigi's worker loop after this long idle,
# so the CLI schedules again and releases what a run that died in between left behind.
IDLE_RESCHEDULE = "60 seconds"


def check_scheduler(url: str) -> None:
    """Raise RemoteError unless a luigid answers at `url`: before any work, so a wrong URL
    is one line at once, not Luigi's minute of retries and a traceback."""
    import requests

    probe = url.rstrip("/") + "/api/task_list"
    try:
        answer = requests.get(probe, params={"data": json.dumps({"status": "RUNNING", "upstream_status": "",
                                                                 "search": ""})}, timeout=PROBE_SECONDS)
    except requests.Timeout:
        raise RemoteError(f"--scheduler-url {url}: no answer in {PROBE_SECONDS:g} s; is luigid running there?")
    except requests.RequestException as exc:
        text = str(exc)
        reason = next((said for key, said in (("Connection refused", "connection refused"),
                                              ("Name or service not known", "host name not found"),
                                              ("NameResolution", "host name not found"),
                                              ("No route to host", "no route to host")) if key in text),
                      type(exc).__name__)
        raise RemoteError(f"--scheduler-url {url}: cannot reach luigid ({reason}); start it, or run without "
                          f"--scheduler-url") from exc
    if answer.status_code != 200 or "response" not in answer.text:
        raise RemoteError(f"--scheduler-url {url}: answered HTTP {answer.status_code} to {probe}, "
                          f"not as luigid does; check the URL")


def release_finished(url: str, spec: str, spec_id: str) -> list[str]:
    """Mark DONE in luigid this spec's tasks (by `spec_id`, whichever host's copy of the
    spec at `spec` added them) it shows RUNNING that are complete; return their ids.

    A run killed after a task finished but before it told luigid (a reboot at the wrong
    moment, or luigid's state file from then) leaves the task RUNNING under a dead worker.
    A new run finds it complete and reports DONE, which luigid ignores for a task it thinks
    running; once the dead worker is pruned luigid fails it and makes it pending again,
    with no run left that would take it, and every run waits on it for ever. Completeness
    here is what `complete()` reads from the markers, so this never finishes unfinished work.
    """
    from luigi.rpc import RemoteScheduler
    from luigi.task_register import Register, TaskClassException

    remote = RemoteScheduler(url)
    running = remote.task_list(status="RUNNING", upstream_status="", limit=False)
    released = []
    for task_id, shown in running.items():
        params = shown.get("params") or {}
        if params.get("spec_id") != spec_id:
            continue
        try:  # with this host's copy of the spec: another host's path need not exist here
            task = Register.get_task_cls(shown["name"]).from_str_params({**params, "spec": spec})
        except (TaskClassException, KeyError, ValueError):
            continue  # another program's task that happens to take a `spec`
        if task.complete():
            remote.mark_as_done(task_id=task_id)
            logger.info("luigid held %s as running although it is finished; marked it done", task_id)
            released.append(task_id)
    return released
