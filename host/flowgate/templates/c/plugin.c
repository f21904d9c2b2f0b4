// {{name}}: a flowgate plugin in C, built with wit-bindgen's C generator, clang and
// wasi-libc (`flowgate plugin build` does all three).
//
// Blocks requests under config.blocked_path with a 403 and adds an x-greeting header
// (config.greeting) to every response. The bindings (build/bindings/http_plugin.h) are
// generated from wit/ at each build. Every hook of the exported `http` interface must be
// defined. Strings are (pointer, length) pairs, not NUL-terminated; what a hook returns
// through `ret` must be malloc'd (the bindings free it after the call).
#include <stdlib.h>
#include <string.h>

#include "http_plugin.h"

typedef http_plugin_string_t str_t;

// The value of a config key as a NUL-terminated copy, or a copy of `fallback`.
static char *config_or(const char *key, const char *fallback) {
  str_t k, v;
  http_plugin_string_set(&k, key);
  if (flowgate_plugin_config_get(&k, &v)) {
    char *out = strndup((const char *)v.ptr, v.len);
    http_plugin_string_free(&v);
    return out;
  }
  return strdup(fallback);
}

static void log_line(flowgate_plugin_log_level_t level, const char *text) {
  str_t message;
  http_plugin_string_set(&message, text);
  flowgate_plugin_log_log(level, &message);
}

static void respond_text(flowgate_plugin_types_verdict_t *ret, uint16_t status, const char *text) {
  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_RESPOND;
  flowgate_plugin_types_local_response_t *r = &ret->val.respond;
  r->status = status;
  r->headers.len = 1;
  r->headers.ptr = malloc(sizeof(flowgate_plugin_types_header_t));
  http_plugin_string_dup(&r->headers.ptr[0].name, "content-type");
  http_plugin_string_dup(&r->headers.ptr[0].value, "text/plain");
  r->body.len = strlen(text);
  r->body.ptr = (uint8_t *)strdup(text);
}

void exports_flowgate_plugin_http_request_headers(exports_flowgate_plugin_http_borrow_flow_t flow,
                                                  exports_flowgate_plugin_http_borrow_http_request_t request,
                                                  exports_flowgate_plugin_http_verdict_t *ret) {
  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_CONTINUE;
  char *blocked = config_or("blocked_path", "/blocked");
  str_t path;
  flowgate_plugin_types_method_request_path(request, &path);
  size_t n = strlen(blocked);
  if (path.len >= n && memcmp(path.ptr, blocked, n) == 0) {
    log_line(FLOWGATE_PLUGIN_LOG_LEVEL_INFO, "blocked a request");
    respond_text(ret, 403, "blocked by {{name}}\n");
  }
  http_plugin_string_free(&path);
  free(blocked);
}

void exports_flowgate_plugin_http_request_body_chunk(exports_flowgate_plugin_http_borrow_flow_t flow,
                                                     exports_flowgate_plugin_http_borrow_http_request_t request,
                                                     http_plugin_list_u8_t *chunk, bool end_of_stream,
                                                     http_plugin_list_u8_t *ret) {
  *ret = *chunk;  // hand the chunk back unchanged (ownership moves to the return value)
}

void exports_flowgate_plugin_http_request(exports_flowgate_plugin_http_borrow_flow_t flow,
                                          exports_flowgate_plugin_http_borrow_http_request_t request,
                                          exports_flowgate_plugin_http_verdict_t *ret) {
  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_CONTINUE;
}

void exports_flowgate_plugin_http_response_headers(exports_flowgate_plugin_http_borrow_flow_t flow,
                                                   exports_flowgate_plugin_http_borrow_http_request_t request,
                                                   exports_flowgate_plugin_http_borrow_http_response_t response,
                                                   exports_flowgate_plugin_http_verdict_t *ret) {
  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_CONTINUE;
  char *greeting = config_or("greeting", "hello");
  str_t name, value;
  http_plugin_string_set(&name, "x-greeting");
  http_plugin_string_set(&value, greeting);
  flowgate_plugin_types_error_t err;
  if (!flowgate_plugin_types_method_response_set_header(response, &name, &value, &err)) {
    log_line(FLOWGATE_PLUGIN_LOG_LEVEL_ERROR, "cannot set x-greeting");
    flowgate_plugin_types_error_free(&err);
  }
  free(greeting);
}

void exports_flowgate_plugin_http_response_body_chunk(exports_flowgate_plugin_http_borrow_flow_t flow,
                                                      exports_flowgate_plugin_http_borrow_http_request_t request,
                                                      exports_flowgate_plugin_http_borrow_http_response_t response,
                                                      http_plugin_list_u8_t *chunk, bool end_of_stream,
                                                      http_plugin_list_u8_t *ret) {
  *ret = *chunk;
}

void exports_flowgate_plugin_http_response(exports_flowgate_plugin_http_borrow_flow_t flow,
                                           exports_flowgate_plugin_http_borrow_http_request_t request,
                                           exports_flowgate_plugin_http_borrow_http_response_t response,
                                           exports_flowgate_plugin_http_verdict_t *ret) {
  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_CONTINUE;
}

void exports_flowgate_plugin_http_error(exports_flowgate_plugin_http_borrow_flow_t flow,
                                        exports_flowgate_plugin_http_borrow_http_request_t request,
                                        http_plugin_string_t *message) {
  http_plugin_string_free(message);
}

void exports_flowgate_plugin_http_http_connect(exports_flowgate_plugin_http_borrow_flow_t flow,
                                               exports_flowgate_plugin_http_borrow_http_request_t request,
                                               exports_flowgate_plugin_http_verdict_t *ret) {
  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_CONTINUE;
}
