#!/usr/bin/env python3
"""A gRPC server for the services a protoset defines, with or without server reflection.

  grpc_reflect_server.py --protoset FILE [--port P] [--no-reflection]
      Serves every service in FILE (a serialized FileDescriptorSet with its imports) on
      127.0.0.1:P (P=0 picks a port and prints "PORT n" first), then prints READY.
      Each unary method answers with its response message whose string field `message`
      (if it has one) holds the request as compact JSON: proto field names, sorted keys
      (int64 as strings, bytes as base64, enums by name: the proto3 JSON mapping).
      Streaming methods are not served.
      Unless --no-reflection, grpc.reflection.v1alpha.ServerReflection describes the
      services (grpcio-reflection serves v1alpha only).
      Exits 0 on SIGTERM or SIGINT.

Used by crates/weft-load/tests/grpc_message.rs. Needs grpcio and grpcio-reflection.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def load_pool(path: str) -> tuple[descriptor_pool.DescriptorPool, list[str]]:
    """A descriptor pool with every file of the protoset, and the files' names."""
    with open(path, "rb") as f:
        fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    pending = list(fds.file)
    added: set[str] = set()
    # Files must be added after their imports; the set may list them in any order.
    while pending:
        ready = [f for f in pending if all(d in added for d in f.dependency)]
        if not ready:
            missing = sorted({d for f in pending for d in f.dependency if d not in added})
            raise SystemExit(f"protoset {path} lacks imported files: {', '.join(missing)}")
        for f in ready:
            pool.AddSerializedFile(f.SerializeToString())
            added.add(f.name)
            pending.remove(f)
    return pool, [f.name for f in fds.file]


def echo_as_json(output_class):
    def handle(request, _context):
        reply = output_class()
        if "message" in reply.DESCRIPTOR.fields_by_name:
            as_dict = json_format.MessageToDict(request, preserving_proto_field_name=True)
            reply.message = json.dumps(as_dict, sort_keys=True, separators=(",", ":"))
        return reply

    return handle


def handlers(pool, file_names: list[str]):
    """One generic handler per service, and the services' full names."""
    out, names = [], []
    for file_name in file_names:
        for service in pool.FindFileByName(file_name).services_by_name.values():
            methods = {}
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue
                input_class = message_factory.GetMessageClass(method.input_type)
                output_class = message_factory.GetMessageClass(method.output_type)
                methods[method.name] = grpc.unary_unary_rpc_method_handler(
                    echo_as_json(output_class),
                    request_deserializer=input_class.FromString,
                    response_serializer=output_class.SerializeToString,
                )
            out.append(grpc.method_handlers_generic_handler(service.full_name, methods))
            names.append(service.full_name)
    return out, names


def serve(protoset: str, port: int, reflection: bool) -> int:
    pool, file_names = load_pool(protoset)
    generic, names = handlers(pool, file_names)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers(tuple(generic))
    if reflection:
        from grpc_reflection.v1alpha import reflection as grpc_reflection

        grpc_reflection.enable_server_reflection(
            (*names, grpc_reflection.SERVICE_NAME), server, pool=pool
        )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        print(f"cannot bind 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    if port == 0:
        print(f"PORT {bound}", flush=True)
    print("READY", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=0.5).wait()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protoset", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-reflection", action="store_true")
    args = parser.parse_args()
    return serve(args.protoset, args.port, not args.no_reflection)


if __name__ == "__main__":
    sys.exit(main())
