"""The guard's way to qemu-ga while libvirtd is down (cgsnap/drivers/agent_channel.py),
against a small qemu-ga stand-in on a real unix socket.  The real guest proves it
in tests/e2e/test_guard.py::test_libvirtd_down_past_the_deadline_guard_thaws_through_the_channel.
"""

import json
import socket
import threading
import time

import pytest

from cgsnap import exception, guard
from cgsnap.drivers import agent_channel

DOMAIN_XML = """<domain type='kvm'><name>g</name><devices>
  <channel type='unix'><source mode='bind' path='/run/other.0'/>
    <target type='virtio' name='org.qemu.spice.0'/></channel>
  <channel type='unix'><source mode='bind' path='{path}'/>
    <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>
</devices></domain>"""


class FakeAgent(threading.Thread):
    """qemu-ga's protocol on a unix socket: 0xFF resets the parser,
    guest-sync-delimited answers after a 0xFF, stale output may be pending."""

    def __init__(self, path, stale=b"", accept=True):
        super().__init__(daemon=True)
        self.path, self.stale, self.accept = path, stale, accept
        self.frozen = True
        self.commands = []
        self.sent = b""  # every byte answered (what the next client may read)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)

    def run(self):
        if not self.accept:  # libvirtd holds the channel: QEMU accepts no one else
            return
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.stale)
                buf = b""
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    buf += data.replace(b"\xff", b"")
                    while b"\n" in buf:
                        line, _, buf = buf.partition(b"\n")
                        conn.sendall(self.answer(json.loads(line)))

    def answer(self, cmd):
        out = self._answer(cmd)
        self.sent += out
        return out

    def _answer(self, cmd):
        self.commands.append(cmd["execute"])
        if cmd["execute"] == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"
        if cmd["execute"] == "guest-sync":
            return json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"
        if cmd["execute"] == "guest-fsfreeze-thaw":
            n, self.frozen = (4 if self.frozen else 0), False
            return json.dumps({"return": n}).encode() + b"\n"
        if cmd["execute"] == "guest-fsfreeze-status":
            return json.dumps({"return": "frozen" if self.frozen else "thawed"}).encode() + b"\n"
        return json.dumps({"error": {"class": "CommandNotFound", "desc": "no"}}).encode() + b"\n"

    def close(self):
        self.sock.close()


@pytest.fixture
def agent_path(tmp_path):
    return str(tmp_path / "org.qemu.guest_agent.0")


def test_the_agent_channel_is_found_in_the_domain_xml(agent_path):
    assert agent_channel.channel_path(DOMAIN_XML.format(path=agent_path)) == agent_path
    assert agent_channel.channel_path("<domain><devices/></domain>") is None


def test_a_call_skips_what_is_stale_on_the_channel(agent_path):
    agent = FakeAgent(agent_path, stale=b'{"return": 4}\n{"retu')  # libvirt's half-read answer
    agent.start()
    try:
        assert agent_channel.call(agent_path, "guest-fsfreeze-status") == "frozen"
        assert agent_channel.call(agent_path, "guest-fsfreeze-thaw") == 4
        assert agent_channel.call(agent_path, "guest-fsfreeze-status") == "thawed"
    finally:
        agent.close()


def test_what_the_agent_answers_cgsnap_is_json_libvirtd_can_parse(agent_path):
    """An answer cgsnap does not wait for (its call timed out, libvirtd came
    back) is read by libvirtd when it reconnects, and libvirtd parses every
    line as JSON: the 0xFF before a guest-sync-delimited answer made it log
    `cannot parse json \\xff{"return": ...}` and mark the guest's agent in
    error until the guest restarts (the chaos soak's rg_libvirtd_restart)."""
    agent = FakeAgent(agent_path)
    agent.start()
    try:
        assert agent_channel.call(agent_path, "guest-fsfreeze-thaw") == 4
        assert agent_channel.call(agent_path, "guest-fsfreeze-status") == "thawed"
    finally:
        agent.close()
    assert "guest-sync-delimited" not in agent.commands
    for line in agent.sent.splitlines():
        json.loads(line.decode("utf-8"))  # libvirtd's virJSONValueFromString


def test_a_channel_held_by_libvirtd_times_out_quickly(agent_path):
    agent = FakeAgent(agent_path, accept=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(agent_channel.ChannelError, match="no answer in time"):
            agent_channel.call(agent_path, "guest-fsfreeze-thaw", timeout=0.3)
        assert time.monotonic() - t0 < 1.0
    finally:
        agent.close()


def test_a_missing_channel_is_a_channel_error(agent_path):
    with pytest.raises(agent_channel.ChannelError):
        agent_channel.call(agent_path, "guest-fsfreeze-thaw", timeout=0.3)


class LibvirtdDown:
    """The libvirt driver while libvirtd is stopped: every call fails."""
    uri = "qemu:///system"

    def __init__(self, channel):
        self.channel = channel

    def agent_channel(self, _id):
        return self.channel

    def thaw(self, _id):
        raise exception.ConfigError("libvirt error: Failed to connect socket to "
                                    "'/var/run/libvirt/libvirt-sock': Connection refused")

    freeze_status = resume = is_paused = thaw


def _actions(monkeypatch, hyp):
    from cgsnap.drivers import libvirt_driver
    monkeypatch.setattr(libvirt_driver, "LibvirtHypervisor", lambda uri, timeout: hyp)
    return guard.Actions("qemu:///system", "id-1", 2)


def test_with_libvirtd_down_the_guard_thaws_through_the_agent_channel(agent_path, monkeypatch,
                                                                      tmp_path):
    agent = FakeAgent(agent_path)
    agent.start()
    try:
        machine = guard._Machine(_actions(monkeypatch, LibvirtdDown(agent_path)),
                                 str(tmp_path / "record.json"))
        machine.fire("deadline")
        assert not agent.frozen
        assert not machine.firing  # confirmed: no further attempt is scheduled
        record = json.loads((tmp_path / "record.json").read_text())
        assert record["confirmed"] and "agent channel" in record["status"]
        assert "guest-fsfreeze-thaw" in agent.commands
    finally:
        agent.close()


def test_with_libvirtd_down_and_no_channel_the_guard_keeps_trying(monkeypatch, tmp_path):
    machine = guard._Machine(_actions(monkeypatch, LibvirtdDown(None)),
                             str(tmp_path / "record.json"))
    machine.fire("deadline")
    assert machine.firing and machine.next_try is not None


def test_qemu_is_found_by_its_uuid_and_the_socket_through_its_own_root(agent_path):
    """A libvirtd in a mount namespace of its own (Kolla, tools/testguest) names a
    socket path the guard cannot see: it is reached through /proc/<qemu>/root."""
    import os
    import subprocess
    import sys
    uuid = "5e7c3a9e-1f00-4d2c-8a11-7a2b6f3c9d01"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                             "-name", "guest=g", "-uuid", uuid.upper()])
    try:
        # under a loaded machine the child's /proc entry may lag its start
        end = time.monotonic() + 10
        while agent_channel.qemu_pid(uuid) is None and time.monotonic() < end:
            time.sleep(0.05)
        assert agent_channel.qemu_pid(uuid) == proc.pid
    finally:
        proc.kill()
        proc.wait()
    assert agent_channel.qemu_pid("00000000-0000-4000-8000-000000000000") is None
    agent = FakeAgent(agent_path)
    agent.start()
    try:
        assert agent_channel.call(agent_path, "guest-fsfreeze-status", pid=os.getpid()) == \
            "frozen"
    finally:
        agent.close()
