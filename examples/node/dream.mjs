// Dreams on a picture through a dreamstream server and writes one PNG per octave:
//   node examples/node/dream.mjs localhost:50051 samples/coffee.jpg out/node
import fs from "node:fs";
import path from "node:path";

import { connect, statusName } from "./dreamstream.mjs";

const [target, picture, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node dream.mjs HOST:PORT PICTURE OUT_DIR");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

const call = connect(target).Dream({ image: fs.readFileSync(picture), octaves: 3, steps_per_octave: 5 });
call.on("data", (response) => {
  if (response.event === "progress") {
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
  console.error(`${statusName(error.code)}: ${error.details}`);
  process.exitCode = 1;
});
