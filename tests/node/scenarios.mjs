// Calls a real dreamstream server from Node.js for tests/test_node_client.py, which starts
// the server and checks what this prints: one JSON object on stdout.
//   node tests/node/scenarios.mjs dream  TARGET PICTURE FINAL_FRAME_FILE
//   node tests/node/scenarios.mjs error  TARGET
//   node tests/node/scenarios.mjs cancel TARGET PICTURE
import fs from "node:fs";

import { connect, statusName } from "../../examples/node/dreamstream.mjs";

const SMALL = { max_size: 64, octaves: 3, steps_per_octave: 2 };

/** Every event of a small dream, in order, and the final frame written to `finalFile`. */
function dream(target, picture, finalFile) {
  return new Promise((resolve, reject) => {
    const events = [];
    const call = connect(target).Dream({ image: fs.readFileSync(picture), ...SMALL });
    call.on("data", (response) => {
      if (response.event === "progress") {
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

/** The status of a request the server must refuse: a layer the model does not have. */
function error(target) {
  return new Promise((resolve, reject) => {
    const call = connect(target).Dream({ width: 64, height: 64, layers: { "no-such-layer": 1 } });
    call.on("data", () => reject(new Error("the server dreamed on a layer that does not exist")));
    call.on("error", (failure) => resolve({ code: statusName(failure.code), message: failure.details }));
    call.on("end", () => reject(new Error("the stream ended without an error")));
  });
}

/** Cancels a long dream after its third step; the status the client sees. */
function cancel(target, picture) {
  return new Promise((resolve, reject) => {
    let steps = 0;
    const call = connect(target).Dream({
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

const SCENARIOS = { dream, error, cancel };
const [name, ...args] = process.argv.slice(2);
if (!(name in SCENARIOS)) {
  console.error(`usage: node scenarios.mjs ${Object.keys(SCENARIOS).join("|")} TARGET ...`);
  process.exit(2);
}
console.log(JSON.stringify(await SCENARIOS[name](...args)));
