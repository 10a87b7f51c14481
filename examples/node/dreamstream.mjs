// A dreamstream client in Node.js, straight from proto/ with @grpc/proto-loader:
// no generated code to keep in step with the .proto.
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protoFiles from "google-proto-files";
import protobuf from "protobufjs";

const PROTO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");

// Frames of a large picture are several MB, well over gRPC's 4 MB default.
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

// keepCase: fields keep the .proto's names (steps_per_octave); oneofs: a response says
// which event it holds in `event` ("progress" or "frame").
const definition = protoLoader.loadSync("dreamstream/v1/dream.proto", {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { DreamService } = grpc.loadPackageDefinition(definition).dreamstream.v1;

/** A DreamService client of the server at `target` ("host:port"), without TLS. */
export function connect(target) {
  return new DreamService(target, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  });
}

/** The name of a gRPC status code (3 -> "INVALID_ARGUMENT"). */
export function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);
}

// google.rpc.Status and the detail messages the server attaches to every error
// (see "Errors" at the top of dream.proto), from the googleapis .proto files.
const rpcTypes = new protobuf.Root().loadSync(
  [protoFiles.getProtoPath("rpc", "status.proto"), protoFiles.getProtoPath("rpc", "error_details.proto")],
  { keepCase: true },
);
const RpcStatus = rpcTypes.lookupType("google.rpc.Status");

/**
 * The details of a failed call, decoded from its `grpc-status-details-bin` trailer:
 * { "google.rpc.ErrorInfo": { reason, domain, metadata }, "google.rpc.BadRequest": {...}, ... },
 * keyed by each detail's full type name; {} when the status has none.
 */
export function statusDetails(error) {
  const [encoded] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!encoded) return {};
  const details = {};
  for (const any of RpcStatus.decode(encoded).details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = rpcTypes.lookupType(typeName);
    details[typeName] = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
  }
  return details;
}

/** The seconds RetryInfo asks a caller to wait before retrying, or null when the error has none. */
export function retryDelaySeconds(details) {
  const delay = details["google.rpc.RetryInfo"]?.retry_delay;
  return delay ? Number(delay.seconds) + delay.nanos / 1e9 : null;
}

/** Call metadata that names the request: the server uses the id in its logs, DreamStarted and errors. */
export function withRequestId(requestId) {
  const metadata = new grpc.Metadata();
  metadata.set("x-request-id", requestId);
  return metadata;
}
