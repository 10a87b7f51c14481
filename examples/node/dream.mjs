// Dreams on a picture through a dreamstream server and writes one PNG per octave:
//   node examples/node/dream.mjs localhost:50051 samples/coffee.jpg out/node
import fs from "node:fs";
import path from "node:path";

import { connect, retryDelaySeconds, statusDetails, statusName } from "./dreamstream.mjs";

const [target, picture, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node dream.mjs HOST:PORT PICTURE OUT_DIR");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

const call = connect(target).Dream({ image: fs.readFileSync(picture), octaves: 3, steps_per_octave: 5 });
call.on("data", (response) => {
  if (response.event === "started") {
    const { request_id, model, seed, octave_sizes } = response.started;
    const sizes = octave_sizes.map(({ width, height }) => `${width}x${height}`).join(", ");
    console.log(`dream ${request_id}: model ${model}, seed ${seed}, octaves ${sizes}`);
  } else if (response.event === "progress") {
    const { octave, step, loss } = response.progress;
    console.log(`octave ${octave} step ${step} loss ${loss.toFixed(1)}`);
  } else if (response.event === "frame") {
    const { octave, width, height, image } = response.frame;
    const file = path.join(outDir, `octave-${octave}.png`);
    fs.writeFileSync(file, image);
    console.log(`octave ${octave}: ${width}x${height} -> ${file}`);
  }
});
call.on("error", (error) => {
  const details = statusDetails(error);
  const reason = details["google.rpc.ErrorInfo"]?.reason ?? "no reason given";
  const retry = retryDelaySeconds(details);
  console.error(`${statusName(error.code)} (${reason}): ${error.details}${retry === null ? "" : `; retry in ${retry} s`}`);
  process.exitCode = 1;
});
