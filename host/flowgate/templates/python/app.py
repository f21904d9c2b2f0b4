"""{{name}}: a flowgate plugin in Python, built with componentize-py.

Blocks requests under config.blocked_path with a 403 and adds an x-greeting header
(config.greeting) to every response. The `wit_world` package is generated from the WIT
at build time (`componentize-py -d wit -w http-plugin bindings .` writes it out if your
editor wants to see it). Every hook of the exported `http` interface must be defined.
"""

from wit_world import exports
from wit_world.imports import config, log, types
from componentize_py_types import Err

CONTINUE = types.Verdict_Continue()


class Http(exports.Http):
    def request_headers(self, flow, request):
        blocked = config.get("blocked_path") or "/blocked"
        if request.path().startswith(blocked):
            log.log(log.Level.INFO, f"blocked {request.url()}")
            return types.Verdict_Respond(
                types.LocalResponse(
                    status=403,
                    headers=[types.Header(name="content-type", value="text/plain")],
                    body=b"blocked by {{name}}\n",
                )
            )
        return CONTINUE

    def request_body_chunk(self, flow, request, chunk, end_of_stream):
        return chunk

    def request(self, flow, request):
        return CONTINUE

    def response_headers(self, flow, request, response):
        # Host calls that return result<_, error> raise Err on failure.
        try:
            response.set_header("x-greeting", config.get("greeting") or "hello")
        except Err as e:
            log.log(log.Level.ERROR, f"cannot set x-greeting: {e.value}")
        return CONTINUE

    def response_body_chunk(self, flow, request, response, chunk, end_of_stream):
        return chunk

    def response(self, flow, request, response):
        return CONTINUE

    def error(self, flow, request, message):
        pass

    def http_connect(self, flow, request):
        return CONTINUE
