"""One gRPC call to the appliance with Python's grpcio, as a tool nobody here wrote would make.

    grpc_call.py PROTO_ROOT TARGET METHOD REQUEST_JSON [--token T] [--ca CA.pem]
        [--cert CERT.pem --key KEY.pem] [--server-name NAME]

METHOD is /package.Service/Method; the request is JSON in protobuf's mapping. Prints one JSON
line: {"code": "OK", "response": {...}} or {"code": "PERMISSION_DENIED", "message": "..."}.
Streaming responses are read to the end (a list); a client stream sends the one request.
The stubs are generated from the repository's .proto files with grpc_tools at start.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc


def compile_protos(root: str, out: str) -> None:
    protos = []
    for folder, _, files in os.walk(os.path.join(root, "appliance", "v1")):
        protos += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith(".proto")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    status = protoc.main(["protoc", f"-I{root}", f"-I{include}", f"--python_out={out}", *protos])
    if status != 0:
        sys.exit(f"protoc failed on {protos}")


def method_types(method: str):
    _, service_path, name = method.split("/")
    package, service = service_path.rsplit(".", 1)
    for module_file in os.listdir(os.path.join(sys.path[0], *package.split("."))):
        if not module_file.endswith("_pb2.py"):
            continue
        module = importlib.import_module(f"{package}.{module_file[:-3]}")
        descriptor = module.DESCRIPTOR.services_by_name.get(service)
        if descriptor is None:
            continue
        found = descriptor.methods_by_name[name]
        classes = {}
        for message in (found.input_type, found.output_type):
            owner = importlib.import_module(
                f"{package}.{os.path.basename(message.file.name)[:-6]}_pb2"
            )
            classes[message.full_name] = getattr(owner, message.name)
        return (
            classes[found.input_type.full_name],
            classes[found.output_type.full_name],
            found.client_streaming,
            found.server_streaming,
        )
    sys.exit(f"no method {method}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("proto_root")
    parser.add_argument("target")
    parser.add_argument("method")
    parser.add_argument("request")
    parser.add_argument("--token")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--server-name")
    args = parser.parse_args()

    out = tempfile.mkdtemp()
    compile_protos(args.proto_root, out)
    sys.path.insert(0, out)
    request_type, response_type, client_streaming, server_streaming = method_types(args.method)
    request = json_format.Parse(args.request, request_type())

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    if args.ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key) if args.key else None,
            certificate_chain=read(args.cert) if args.cert else None,
        )
        channel = grpc.secure_channel(args.target, credentials, options)
    else:
        channel = grpc.insecure_channel(args.target, options)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    kind = ("stream" if client_streaming else "unary") + "_" + ("stream" if server_streaming else "unary")
    call = getattr(channel, kind)(
        args.method,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    try:
        payload = iter([request]) if client_streaming else request
        answer = call(payload, metadata=metadata, timeout=30)
        if server_streaming:
            response = [json_format.MessageToDict(message) for message in answer]
        else:
            response = json_format.MessageToDict(answer)
        print(json.dumps({"code": "OK", "response": response}))
    except grpc.RpcError as error:
        print(json.dumps({"code": error.code().name, "message": error.details()}))


if __name__ == "__main__":
    main()
