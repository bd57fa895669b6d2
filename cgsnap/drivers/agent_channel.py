"""The guest agent's own channel: how the thaw guard reaches qemu-ga while
libvirtd is down.

libvirt talks to qemu-ga through a unix socket that QEMU listens on (the
domain's ``<channel type='unix'>`` whose target is ``org.qemu.guest_agent.0``).
QEMU serves one client at a time, and that client is libvirtd.  When libvirtd
stops (a restart, a crash, an upgrade) QEMU and the frozen guest keep
running, the socket is free, and nobody can thaw through libvirt until
libvirtd is back and has reconnected.  The guard reads the socket's path
while libvirtd is still up and, only when a thaw through libvirt fails, speaks
the agent's protocol on the socket itself:

* a 0xFF byte first, which makes qemu-ga drop any half-read command;
* ``guest-sync`` with a random id; everything before its answer is stale
  and skipped.  Never ``guest-sync-delimited``: its answer starts with a
  0xFF, and an answer the guard stops waiting for is read by libvirtd when
  it reconnects; libvirtd cannot parse it as JSON and marks the guest's
  agent in error (``QEMU guest agent is not available due to an error``)
  until the guest restarts;
* then the command (``guest-fsfreeze-thaw`` or ``guest-fsfreeze-status``).

The connection is closed at once after each call, so a libvirtd that comes
back is never kept from its agent for longer than one call.  While libvirtd
holds the socket, QEMU does not accept a second client: the connect succeeds
into the listen backlog, no answer comes, and the call times out harmlessly.

The path in the domain XML is the one libvirtd and QEMU see.  A libvirtd in a
mount namespace of its own (a container, as in Kolla; the test libvirtd of
tools/testguest) sees other directories than the guard does, so the socket
is reached through QEMU's own view of the file system, ``/proc/<qemu
pid>/root``; the directory is opened first and the socket named relative to
it, which keeps the address short (a unix socket path has 107 bytes).
"""

import json
import os
import random
import re
import socket
import time
import xml.etree.ElementTree as ET

AGENT_TARGET = "org.qemu.guest_agent.0"


class ChannelError(Exception):
    """The channel did not answer (busy with libvirtd, gone, or garbled)."""


def channel_path(domain_xml):
    """The unix socket of the domain's guest-agent channel, or None."""
    root = ET.fromstring(domain_xml)
    for ch in root.findall("./devices/channel"):
        target, source = ch.find("target"), ch.find("source")
        if (ch.get("type") == "unix" and target is not None
                and target.get("name") == AGENT_TARGET
                and source is not None and source.get("path")):
            return source.get("path")
    return None


def qemu_pid(instance_uuid, proc="/proc"):
    """The pid of the QEMU process running domain ``instance_uuid`` (libvirt
    starts it with ``-uuid <uuid>``), or None."""
    want = instance_uuid.lower().encode()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a == b"-uuid" and b.lower() == want for a, b in zip(argv, argv[1:])):
            return int(entry)
    return None


def call(path, execute, timeout=1.0, pid=None):
    """One agent command on the channel at ``path`` (as QEMU process ``pid``
    sees it, if given); returns its ``return`` value.  Raises ChannelError
    when nobody answers within ``timeout``."""
    deadline = time.monotonic() + timeout
    sync_id = random.randrange(1, 2**31)
    directory = (f"/proc/{pid}/root" if pid else "") + os.path.dirname(path)
    try:
        dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        raise ChannelError(f"agent channel {path}: {e}") from None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
            # 0xFF resets qemu-ga's parser (a half-written command before us);
            # plain guest-sync, never guest-sync-delimited: an answer we stop
            # waiting for is read by libvirtd when it reconnects, and the 0xFF
            # a delimited answer starts with is JSON libvirtd cannot parse: it
            # then marks the guest's agent in error ("not available due to an
            # error") until the guest restarts.
            s.sendall(b"\xff" + _command("guest-sync", {"id": sync_id}))
            reader = _Reader(s, deadline)
            reader.until_sync(sync_id)
            s.sendall(_command(execute))
            return reader.answer()
    except (OSError, ValueError) as e:
        raise ChannelError(f"agent channel {path}: {e}") from None
    finally:
        os.close(dirfd)


def _command(execute, arguments=None):
    cmd = {"execute": execute}
    if arguments is not None:
        cmd["arguments"] = arguments
    return json.dumps(cmd).encode() + b"\n"


class _Reader:
    """Line reader over the socket, bounded by one deadline."""

    def __init__(self, sock, deadline):
        self.sock, self.deadline, self.buf = sock, deadline, b""

    def _more(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ChannelError("no answer in time (libvirtd may hold the channel)")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise ChannelError("no answer in time (libvirtd may hold the channel)") from None
        if not data:
            raise ChannelError("the channel closed")
        self.buf += data

    def _line(self):
        while b"\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\n")
        return line.strip(b"\xff \r\t")

    def until_sync(self, sync_id):
        """Skip what is stale on the channel (half-read answers, an answer to
        the 0xFF reset) up to guest-sync's answer with ``sync_id``."""
        # (found inside a line too: the tail of an answer someone else half
        # read may run into it)
        answer = re.compile(rb'\{\s*"return"\s*:\s*%d\s*\}' % sync_id)
        while not answer.search(self._line()):
            pass

    def answer(self):
        """The next JSON answer's ``return``; an ``error`` answer raises."""
        while True:
            line = self._line()
            if not line:
                continue
            msg = json.loads(line)
            if "error" in msg:
                raise ChannelError(f"qemu-ga: {msg['error'].get('desc', msg['error'])}")
            if "return" in msg:
                return msg["return"]
