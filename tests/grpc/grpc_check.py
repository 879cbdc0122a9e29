#!/usr/bin/env python3
"""Standalone gRPC echo server and checking client, grpcio only (no codegen).

Messages are raw bytes: no protobuf, no serializers.

  grpc_check.py server --port P [--name NAME]
      Serves on 127.0.0.1:P (P=0 picks a port and prints "PORT n" first), then prints READY.
      /weft.test.Echo/Unary   echoes the request; trailer x-echo-trailer: unary-<len>
      /weft.test.Echo/Stream  request is ASCII N; replies msg-0..msg-(N-1); trailer stream-<N>
      /weft.test.Echo/Fail    RESOURCE_EXHAUSTED "quota gone"; trailer x-echo-trailer: fail
      With --name, every reply also carries the trailer x-server-name: NAME.
      Exits 0 on SIGTERM or SIGINT.

  grpc_check.py client --target HOST:PORT [--authority NAME] [--count K]
      Runs the checks, prints one JSON line, exits 0 only if everything matched.

  grpc_check.py who --target HOST:PORT [--method Unary|Stream] [--count K]
      Makes K calls of one method and prints one JSON line counting the x-server-name
      trailers (servers started with --name): {"counts": {NAME: n}, "errors": [...]}.
      Exits 0 only if every call succeeded.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "weft.test.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
FAIL = f"/{SERVICE}/Fail"
TRAILER = "x-echo-trailer"
NAME_TRAILER = "x-server-name"
FAIL_DETAILS = "quota gone"
STREAM_N = 50
MAX_PAYLOAD = 64 * 1024


# --------------------------------------------------------------------------- server


def _unary(request: bytes, context: grpc.ServicerContext, name: tuple = ()) -> bytes:
    context.set_trailing_metadata(((TRAILER, f"unary-{len(request)}"),) + name)
    return request


def _stream(request: bytes, context: grpc.ServicerContext, name: tuple = ()):
    try:
        n = int(request.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request must be an ASCII integer")
    context.set_trailing_metadata(((TRAILER, f"stream-{n}"),) + name)
    for i in range(n):
        yield f"msg-{i}".encode("ascii")


def _fail(request: bytes, context: grpc.ServicerContext, name: tuple = ()) -> bytes:
    context.set_trailing_metadata(((TRAILER, "fail"),) + name)
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, FAIL_DETAILS)


def serve(port: int, host: str, name: str | None = None) -> int:
    # With a name, every reply says which server sent it.
    extra = ((NAME_TRAILER, name),) if name else ()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: _unary(r, c, extra)),
            "Stream": grpc.unary_stream_rpc_method_handler(lambda r, c: _stream(r, c, extra)),
            "Fail": grpc.unary_unary_rpc_method_handler(lambda r, c: _fail(r, c, extra)),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        print(f"cannot bind {host}:{port}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    if port == 0:
        print(f"PORT {bound}", flush=True)
    print("READY", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=0.5).wait()
    return 0


# --------------------------------------------------------------------------- client


def _trailer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == TRAILER:
            return value.decode() if isinstance(value, bytes) else value
    return None


def run_client(target: str, authority: str | None, count: int, timeout: float, seed: int | None) -> int:
    rng = random.Random(seed)
    options = [
        ("grpc.max_receive_message_length", 4 * MAX_PAYLOAD),
        ("grpc.max_send_message_length", 4 * MAX_PAYLOAD),
    ]
    if authority:
        options.append(("grpc.default_authority", authority))
    errors: list[str] = []
    result: dict = {
        "ok": False,
        "target": target,
        "authority": authority,
        "unary": 0,
        "unary_expected": count,
        "unary_bytes": 0,
        "stream_messages": 0,
        "stream_trailer": None,
        "fail_code": None,
        "fail_details": None,
        "fail_trailer": None,
    }
    started = time.monotonic()
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            errors.append(f"channel to {target} not ready after {timeout}s")
        if not errors:
            _check_unary(channel, rng, count, timeout, result, errors)
            _check_stream(channel, timeout, result, errors)
            _check_fail(channel, timeout, result, errors)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    result["ok"] = not errors
    if errors:
        result["errors"] = errors
        for e in errors:
            print(f"MISMATCH: {e}", file=sys.stderr)
    print(json.dumps(result), flush=True)
    return 0 if not errors else 1


def _check_unary(channel, rng, count, timeout, result, errors):
    call = channel.unary_unary(UNARY)
    first_errors = len(errors)
    for i in range(count):
        if len(errors) - first_errors >= 5:
            errors.append(f"unary: stopped after 5 failures ({i} of {count} calls made)")
            break
        payload = rng.randbytes(rng.randint(1, MAX_PAYLOAD))
        try:
            response, info = call.with_call(payload, timeout=timeout)
        except grpc.RpcError as e:
            errors.append(f"unary #{i} ({len(payload)} B): {e.code().name}: {e.details()}")
            continue
        if response != payload:
            errors.append(f"unary #{i}: sent {len(payload)} B, got {len(response)} B that differ")
            continue
        want = f"unary-{len(payload)}"
        got = _trailer(info.trailing_metadata())
        if got != want:
            errors.append(f"unary #{i}: trailer {TRAILER}={got!r}, want {want!r}")
            continue
        result["unary"] += 1
        result["unary_bytes"] += len(payload)


def _check_stream(channel, timeout, result, errors):
    call = channel.unary_stream(STREAM)
    got: list[bytes] = []
    responses = call(str(STREAM_N).encode("ascii"), timeout=timeout)
    try:
        for msg in responses:
            got.append(msg)
    except grpc.RpcError as e:
        errors.append(f"stream: {e.code().name}: {e.details()} after {len(got)} messages")
    result["stream_messages"] = len(got)
    want = [f"msg-{i}".encode("ascii") for i in range(STREAM_N)]
    if got != want:
        bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        errors.append(
            f"stream: got {len(got)} messages, want {STREAM_N}; first difference at #{bad}: "
            f"{got[bad] if bad < len(got) else None!r} vs {want[bad] if bad < len(want) else None!r}"
        )
    if responses.code() != grpc.StatusCode.OK:
        errors.append(f"stream: status {responses.code().name}, want OK")
    trailer = _trailer(responses.trailing_metadata())
    result["stream_trailer"] = trailer
    if trailer != f"stream-{STREAM_N}":
        errors.append(f"stream: trailer {TRAILER}={trailer!r}, want 'stream-{STREAM_N}'")


def _check_fail(channel, timeout, result, errors):
    call = channel.unary_unary(FAIL)
    try:
        call.with_call(b"x", timeout=timeout)
        errors.append("fail: call succeeded, want RESOURCE_EXHAUSTED")
        return
    except grpc.RpcError as e:
        code, details, trailer = e.code(), e.details(), _trailer(e.trailing_metadata())
    result["fail_code"] = code.name
    result["fail_details"] = details
    result["fail_trailer"] = trailer
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        errors.append(f"fail: status {code.name} ({details!r}), want RESOURCE_EXHAUSTED")
    if details != FAIL_DETAILS:
        errors.append(f"fail: details {details!r}, want {FAIL_DETAILS!r}")
    if trailer != "fail":
        errors.append(f"fail: trailer {TRAILER}={trailer!r}, want 'fail'")


def run_who(target: str, method: str, count: int, timeout: float) -> int:
    """Counts which named server answered each of `count` calls of `method`."""
    counts: dict[str, int] = {}
    errors: list[str] = []
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            errors.append(f"channel to {target} not ready after {timeout}s")
        for i in range(count if not errors else 0):
            try:
                if method == "Stream":
                    responses = channel.unary_stream(STREAM)(b"3", timeout=timeout)
                    for _ in responses:
                        pass
                    trailers = responses.trailing_metadata()
                else:
                    _, info = channel.unary_unary(UNARY).with_call(b"who", timeout=timeout)
                    trailers = info.trailing_metadata()
            except grpc.RpcError as e:
                errors.append(f"call #{i}: {e.code().name}: {e.details()}")
                if len(errors) >= 5:
                    break
                continue
            name = next((v for k, v in trailers or () if k == NAME_TRAILER), "?")
            counts[name] = counts.get(name, 0) + 1
    print(json.dumps({"target": target, "method": method, "counts": counts, "errors": errors}), flush=True)
    return 0 if not errors else 1


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server", help="run the echo server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--name", help="sent back in the x-server-name trailer of every reply")
    c = sub.add_parser("client", help="run the checks against a server or a proxy in front of one")
    c.add_argument("--target", required=True, help="HOST:PORT")
    c.add_argument("--authority", help="value for :authority (grpc.default_authority)")
    c.add_argument("--count", type=int, default=20, help="number of unary calls (default 20)")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds per call and for connecting")
    c.add_argument("--seed", type=int, help="seed for the payload sizes and bytes")
    w = sub.add_parser("who", help="count which named server answers calls of one method")
    w.add_argument("--target", required=True, help="HOST:PORT or xds:///NAME")
    w.add_argument("--method", choices=["Unary", "Stream"], default="Unary")
    w.add_argument("--count", type=int, default=100)
    w.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.mode == "server":
        return serve(args.port, args.host, args.name)
    if args.mode == "who":
        return run_who(args.target, args.method, args.count, args.timeout)
    return run_client(args.target, args.authority, args.count, args.timeout, args.seed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
