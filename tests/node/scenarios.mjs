// Calls a real dreamstream server from Node.js for tests/test_node_client.py, which starts
// the server and checks what this prints: one JSON object on stdout.
//   node tests/node/scenarios.mjs dream  TARGET REQUEST_ID PICTURE FINAL_FRAME_FILE
//   node tests/node/scenarios.mjs refuse TARGET REQUEST_ID REQUEST_JSON
//   node tests/node/scenarios.mjs cancel TARGET REQUEST_ID PICTURE
import fs from "node:fs";

import {
  connect,
  retryDelaySeconds,
  statusDetails,
  statusName,
  withRequestId,
} from "../../examples/node/dreamstream.mjs";

const SMALL = { max_size: 64, octaves: 3, steps_per_octave: 2 };

/** Starts a Dream call carrying `requestId` as x-request-id metadata. */
function startDream(target, requestId, request) {
  return connect(target).Dream(request, withRequestId(requestId));
}

/** Every event of a small dream, in order, and the final frame written to `finalFile`. */
function dream(target, requestId, picture, finalFile) {
  return new Promise((resolve, reject) => {
    const events = [];
    const call = startDream(target, requestId, { image: fs.readFileSync(picture), seed: "5", ...SMALL });
    call.on("data", (response) => {
      if (response.event === "started") {
        const { request_id, model, layers, octave_sizes, seed, steps_per_octave } = response.started;
        events.push({ event: "started", request_id, model, layers, octave_sizes, seed, steps_per_octave });
      } else if (response.event === "progress") {
        const { octave, step, octaves, steps_per_octave } = response.progress;
        events.push({ event: "progress", octave, step, octaves, steps_per_octave });
      } else {
        const { octave, octaves, width, height, format, final, image } = response.frame;
        events.push({ event: "frame", octave, octaves, width, height, format, final, bytes: image.length });
        if (final) fs.writeFileSync(finalFile, image);
      }
    });
    call.on("error", reject);
    call.on("end", () => resolve({ events }));
  });
}

/** The status and decoded details of a request (JSON) the server must refuse. */
function refuse(target, requestId, requestJson) {
  return new Promise((resolve, reject) => {
    const call = startDream(target, requestId, JSON.parse(requestJson));
    call.on("data", () => reject(new Error("the server accepted the request")));
    call.on("error", (failure) => {
      const details = statusDetails(failure);
      resolve({
        code: statusName(failure.code),
        message: failure.details,
        details,
        retry_delay_seconds: retryDelaySeconds(details),
      });
    });
    call.on("end", () => reject(new Error("the stream ended without an error")));
  });
}

/** Cancels a long dream after its third step; the status the client sees. */
function cancel(target, requestId, picture) {
  return new Promise((resolve, reject) => {
    let steps = 0;
    const call = startDream(target, requestId, {
      image: fs.readFileSync(picture),
      max_size: 64,
      octaves: 1,
      steps_per_octave: 1000,
    });
    call.on("data", (response) => {
      if (response.event === "progress" && ++steps === 3) call.cancel();
    });
    call.on("error", (failure) => resolve({ code: statusName(failure.code), steps_seen: steps }));
    call.on("end", () => reject(new Error("the dream ran to its end: the cancel did not reach the server")));
  });
}

const SCENARIOS = { dream, refuse, cancel };
const [name, ...args] = process.argv.slice(2);
if (!(name in SCENARIOS)) {
  console.error(`usage: node scenarios.mjs ${Object.keys(SCENARIOS).join("|")} TARGET REQUEST_ID ...`);
  process.exit(2);
}
console.log(JSON.stringify(await SCENARIOS[name](...args)));
