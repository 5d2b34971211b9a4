"""`uld` commands without the start-up: one python imports the package's stack once, then runs each command
in a fork of itself, so a command costs its work only (the fault tests run hundreds of short commands).

Run as a script by :class:`ForkedUld`; it reads one JSON request a line (``argv``, ``env``, ``log``) and
answers each with the command's exit status. The fork is the command: it sets the request's environment,
writes its output to ``log`` and exits with ``uld``'s status, or with 137 where a fault point kills it
(``uld.io``), exactly as the command line would. This process itself runs no model, so no thread pool
exists yet when it forks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

FAULT_VARS = ("ULD_FAULT_AT", "ULD_FAULT_LOG")


def _child(request: dict) -> int:
    signal.alarm(600)  # a hung command ends (status -14) instead of stalling the tests
    for key in FAULT_VARS:
        os.environ.pop(key, None)
    os.environ.update(request["env"])
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from uld.cli import main

    try:
        return main(request["argv"])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the command's own crash: its traceback goes to the log, as on the command line
        import traceback

        traceback.print_exc()
        return 1


def serve() -> None:
    import uld.cli  # noqa: F401  the stack every stage needs, imported once before any fork
    import uld.pipeline  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


class ForkedUld:
    """The client: ``run(argv, log, **env)`` gives the exit status of ``uld <argv>`` run in a fork."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=cwd)

    def run(self, argv: list[str], log: Path, **env: str) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fork server exited (rc {self.proc.wait()})")
        return json.loads(answer)["rc"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
