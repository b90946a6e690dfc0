"""A proxyless gRPC client for the tests: grpcio's own xDS resolver, no Envoy.

Usage: GRPC_XDS_BOOTSTRAP=bootstrap.json python proxyless_client.py xds:///voltha-grpc

It opens ONE channel to the target and keeps it for its whole life. Each line on stdin is a
command, answered by one line on stdout:

    call /voltha.HealthService/GetHealthStatus [header=value ...]
        -> "ok <x-voltha-core of the answer>"  or  "err <status code name> <details>"
    state   -> "state <channel connectivity>"
    quit

Requests are empty messages (every method called here takes one whose fields are optional);
the answer's `x-voltha-core` header names the fake core that served it.
"""

import sys

import grpc


def main():
    target = sys.argv[1]
    channel = grpc.insecure_channel(target)
    states = []
    channel.subscribe(lambda s: states.append(s), try_to_connect=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "state":
            print("state", states[-1].name if states else "NONE", flush=True)
            continue
        if words[0] != "call" or len(words) < 2:
            print("err BAD_COMMAND", flush=True)
            continue
        method = words[1]
        metadata = [tuple(w.split("=", 1)) for w in words[2:] if "=" in w]
        call = channel.unary_unary(
            method,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            _, info = call.with_call(b"", metadata=metadata, timeout=5, wait_for_ready=False)
            core = dict(info.initial_metadata()).get("x-voltha-core", "?")
            print("ok", core, flush=True)
        except grpc.RpcError as e:
            details = " ".join(str(e.details()).split())[:300]
            print("err", e.code().name, details, flush=True)
    channel.close()


if __name__ == "__main__":
    main()
