// A dreamstream client in Node.js, straight from proto/ with @grpc/proto-loader:
// no generated code to keep in step with the .proto.
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

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
