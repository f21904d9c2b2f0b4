// {{name}}: a flowgate plugin in JavaScript, built with componentize-js.
//
// Blocks requests under config.blocked_path with a 403 and adds an x-greeting header
// (config.greeting) to every response. Each hook of the exported `http` interface must
// be present; the ones this plugin does not need just let the flow continue.
import { get as configGet } from "flowgate:plugin/config@0.2.1";
import { log } from "flowgate:plugin/log@0.2.1";

const CONTINUE = { tag: "continue" };
const encoder = new TextEncoder();

export const http = {
  requestHeaders(flow, request) {
    const blocked = configGet("blocked_path") ?? "/blocked";
    if (request.path().startsWith(blocked)) {
      log("info", `blocked ${request.url()}`);
      return {
        tag: "respond",
        val: {
          status: 403,
          headers: [{ name: "content-type", value: "text/plain" }],
          body: encoder.encode("blocked by {{name}}\n"),
        },
      };
    }
    return CONTINUE;
  },
  requestBodyChunk(flow, request, chunk, endOfStream) {
    return chunk;
  },
  request(flow, request) {
    return CONTINUE;
  },
  responseHeaders(flow, request, response) {
    // Host calls that can fail throw; the error's payload says why.
    try {
      response.setHeader("x-greeting", configGet("greeting") ?? "hello");
    } catch (e) {
      log("error", `cannot set x-greeting: ${JSON.stringify(e.payload ?? e)}`);
    }
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
