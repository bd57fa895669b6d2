"""Base class for cgsnap tasks."""

from oslo_log import log as logging
from taskflow import task
from taskflow.types import failure

from cgsnap import drivers as drivers_mod
from cgsnap import faults

LOG = logging.getLogger(__name__)


class CgsnapTask(task.Task):
    """A task whose drivers are looked up, not stored in the flow."""

    def __init__(self, drivers=None, **kwargs):
        kwargs.setdefault("name", type(self).__name__)
        super().__init__(**kwargs)
        self._drivers = drivers

    @property
    def drivers(self):
        return self._drivers or drivers_mod.get()

    def fault_point(self, suffix="execute"):
        faults.point(f"task.{self.name}.{suffix}" if suffix != "execute" else f"task.{self.name}")


def is_failure(result):
    return isinstance(result, failure.Failure)


def failure_reason(flow_failures, default="the operation failed"):
    """A one-line reason from TaskFlow's ``flow_failures`` mapping."""
    for fail in (flow_failures or {}).values():
        text = fail.exception_str or ""
        if text:
            return text.splitlines()[0]
        return fail.exception_type_names[0] if fail.exception_type_names else default
    return default
