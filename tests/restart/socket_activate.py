#!/usr/bin/env python3
"""Run a program with listening sockets passed as systemd does (LISTEN_FDS), for tests without systemd.

    socket_activate.py FD[,FD...] PROGRAM [ARGS...]

The fds (inherited from the caller) become 3, 4, ... in order; LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (this
pid, which exec keeps) are set; then PROGRAM replaces this process. The caller keeps its copies of the sockets
open, so the socket path exists and accepts connections while PROGRAM is restarted: what a .socket unit does.
"""

from __future__ import annotations

import fcntl
import os
import sys


def main(argv: list[str]) -> None:
    fds = [int(x) for x in argv[1].split(",")]
    # Copy them above the target numbers first (a target number may be one of the sources), then into place.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(moved):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()),
                      LISTEN_FDNAMES=":".join("vhost" for _ in fds))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv)
