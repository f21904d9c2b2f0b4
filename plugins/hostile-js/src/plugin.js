// hostile-js: a deliberately hostile plugin, to prove that flowgate's sandbox contains it.
//
// In request-headers it misbehaves as config `behaviour` says:
//   loop    (default) never returns: an endless loop. The host's hook timeout
//           (hook_timeout_ms in plugin.toml) must interrupt it.
//   memory  allocates without bound, keeping every block reachable from a global, until
//           the allocation fails. The memory limit (limits.memory) must stop it.
//   trap    throws an uncaught exception.
//   other   (any other value) behaves: the flow continues.
//
// With failure = "fail-open" every one of these must end with the flow going on upstream
// as if the plugin were not there, and with the proxy still serving.
import { get as configGet } from "flowgate:plugin/config@0.2.1";
import { log } from "flowgate:plugin/log@0.2.1";

const CONTINUE = { tag: "continue" };

// Kept reachable forever, so the garbage collector cannot help.
const hoard = [];

function misbehave(behaviour) {
  switch (behaviour) {
    case "loop": {
      log("info", "hostile-js: looping forever");
      let spins = 0;
      for (;;) {
        spins++; // the counter keeps the loop from being trivially empty
      }
    }
    case "memory": {
      log("info", "hostile-js: allocating until something gives");
      for (let i = 0; ; i++) {
        // 4 MiB per block, written to so the pages are really used.
        hoard.push(new Uint8Array(4 << 20).fill(i & 0xff));
      }
    }
    case "trap":
      throw new Error("hostile-js: deliberate uncaught exception");
    default:
      return;
  }
}

export const http = {
  requestHeaders(flow, request) {
    misbehave((configGet("behaviour") ?? "loop").trim());
    return CONTINUE;
  },
  requestBodyChunk(flow, request, chunk, endOfStream) {
    return chunk;
  },
  request(flow, request) {
    return CONTINUE;
  },
  responseHeaders(flow, request, response) {
    return CONTINUE;
  },
  responseBodyChunk(flow, request, response, chunk, endOfStream) {
    return chunk;
  },
  response(flow, request, response) {
    return CONTINUE;
  },
  error(flow, request, message) {},
  httpConnect(flow, request) {
    return CONTINUE;
  },
};
