"""Imported by every Python process of a privacy test (its folder is put on PYTHONPATH, which
the notebooks' kernels, the app workers and the other environments' children inherit):
records each socket connect() and name lookup as one JSON line in $MEDWB_NET_AUDIT.
Outside those tests the variable is unset and this does nothing."""
import json
import os
import sys

_LOG = os.environ.get("MEDWB_NET_AUDIT")

if _LOG:
    def _record(event, args):
        if event == "socket.connect":
            sock, address = args[0], args[1]
            entry = {"event": "connect", "family": int(sock.family), "address": address}
        elif event == "socket.getaddrinfo":
            entry = {"event": "getaddrinfo", "host": args[0], "port": args[1]}
        else:
            return
        entry.update(pid=os.getpid(), argv=sys.argv[:3])
        with open(_LOG, "a", encoding="utf-8") as f:  # one short write per line: safe across processes
            f.write(json.dumps(entry, default=repr) + "\n")

    sys.addaudithook(_record)
