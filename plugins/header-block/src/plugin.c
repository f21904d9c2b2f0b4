// header-block: a header-based request blocker, like a WAF rule set.
//
// Each rule names a header and a substring; a request with a value of that header that
// contains the substring (ASCII case-insensitively) is answered locally, never reaching
// the upstream:
//
//     <status> with content-type text/plain and the body
//     "blocked by header-block: <header-name> matched <substring>\n"
//
// and a warning is logged. The matching rule is also put in flow metadata
// `header-block` ("<header-name>: <substring>").
//
// Config:
//   rules   Newline-separated `header-name: substring`. The substring is everything after
//           the first colon, trimmed; `header-name: *` blocks whenever the header is present.
//           Blank lines and lines starting with `#` are ignored; malformed lines are logged
//           and skipped. Default (when `rules` is not set at all):
//               user-agent: sqlmap / user-agent: nikto / user-agent: masscan
//           An empty `rules` disables blocking.
//   status  The status of the block response, 100..=999 (default 403).
//
// Memory rules of the generated bindings (build/bindings/http_plugin.h): strings are
// (ptr, len) pairs, not NUL-terminated; what an import returns is ours to free; what a
// hook hands back through `ret` must be malloc'd (the bindings free it after the call).
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_plugin.h"

typedef http_plugin_string_t str_t;

#define DEFAULT_RULES "user-agent: sqlmap\nuser-agent: nikto\nuser-agent: masscan\n"
#define DEFAULT_STATUS 403

// ---- logging ---------------------------------------------------------------------------

static void log_fmt(flowgate_plugin_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_fmt(flowgate_plugin_log_level_t level, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  str_t message = {(uint8_t *)buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1};
  flowgate_plugin_log_log(level, &message);  // borrowed: the host copies it
}

// ---- config ----------------------------------------------------------------------------

// A NUL-terminated, malloc'd copy of a config value, or NULL when the key is not set.
static char *config_get(const char *key) {
  str_t k, v;
  http_plugin_string_set(&k, key);
  if (!flowgate_plugin_config_get(&k, &v)) return NULL;
  char *out = strndup((const char *)v.ptr, v.len);
  http_plugin_string_free(&v);
  return out;
}

typedef struct {
  char *header;     // header name as written in the config
  char *substring;  // NULL for `*` (presence)
} rule_t;

typedef struct {
  char *rules_text;  // the config the rules were parsed from (to notice changes)
  char *status_text;
  rule_t *rules;
  size_t count;
  uint16_t status;
} settings_t;

static settings_t settings;  // parsed lazily: this world has no configure hook

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *end = s + strlen(s);
  while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
  return s;
}

static int is_token_char(unsigned char c) {
  return isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void free_rules(void) {
  for (size_t i = 0; i < settings.count; i++) {
    free(settings.rules[i].header);
    free(settings.rules[i].substring);
  }
  free(settings.rules);
  settings.rules = NULL;
  settings.count = 0;
}

static void parse_rules(const char *text) {
  free_rules();
  char *copy = strdup(text);
  size_t line_no = 0;
  for (char *save = NULL, *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    line_no++;
    char *l = trim(line);
    if (*l == '\0' || *l == '#') continue;
    char *colon = strchr(l, ':');
    if (!colon) {
      log_fmt(FLOWGATE_PLUGIN_LOG_LEVEL_ERROR, "rules line %zu: expected `header-name: substring`, got \"%s\"",
              line_no, l);
      continue;
    }
    *colon = '\0';
    char *name = trim(l), *needle = trim(colon + 1);
    int valid_name = *name != '\0';
    for (char *p = name; *p; p++) valid_name &= is_token_char((unsigned char)*p);
    if (!valid_name || *needle == '\0') {
      log_fmt(FLOWGATE_PLUGIN_LOG_LEVEL_ERROR, "rules line %zu: %s; skipped", line_no,
              valid_name ? "empty substring (use * to match any value)" : "bad header name");
      continue;
    }
    rule_t *grown = realloc(settings.rules, (settings.count + 1) * sizeof(rule_t));
    if (!grown) break;
    settings.rules = grown;
    settings.rules[settings.count].header = strdup(name);
    settings.rules[settings.count].substring = strcmp(needle, "*") == 0 ? NULL : strdup(needle);
    settings.count++;
  }
  free(copy);
}

static uint16_t parse_status(const char *text) {
  if (!text) return DEFAULT_STATUS;
  char *end;
  long v = strtol(text, &end, 10);
  while (isspace((unsigned char)*end)) end++;
  if (end == text || *end != '\0' || v < 100 || v > 999) {
    log_fmt(FLOWGATE_PLUGIN_LOG_LEVEL_ERROR, "status \"%s\" is not a status code 100..999; using %d", text,
            DEFAULT_STATUS);
    return DEFAULT_STATUS;
  }
  return (uint16_t)v;
}

static int same(const char *a, const char *b) {
  return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

// Re-reads the config (cheap) and re-parses only when it changed.
static void load_settings(void) {
  char *rules = config_get("rules");
  char *status = config_get("status");
  if (settings.rules_text != NULL && same(rules, settings.rules_text) && same(status, settings.status_text)) {
    free(rules);
    free(status);
    return;
  }
  free(settings.rules_text);
  free(settings.status_text);
  settings.rules_text = rules ? rules : strdup(DEFAULT_RULES);
  settings.status_text = status;
  parse_rules(settings.rules_text);
  settings.status = parse_status(status);
}

// ---- matching --------------------------------------------------------------------------

// Whether `needle` (NUL-terminated) occurs in the (ptr, len) string, ignoring ASCII case.
static int contains_nocase(const str_t *hay, const char *needle) {
  size_t n = strlen(needle);
  if (n > hay->len) return 0;
  for (size_t i = 0; i + n <= hay->len; i++) {
    size_t j = 0;
    while (j < n && tolower(hay->ptr[i + j]) == tolower((unsigned char)needle[j])) j++;
    if (j == n) return 1;
  }
  return 0;
}

// The first rule the request matches, or NULL.
static const rule_t *match(flowgate_plugin_types_borrow_request_t request) {
  for (size_t i = 0; i < settings.count; i++) {
    const rule_t *rule = &settings.rules[i];
    str_t name;
    http_plugin_string_set(&name, rule->header);
    http_plugin_list_string_t values;
    flowgate_plugin_types_method_request_get_header(request, &name, &values);
    int hit = rule->substring == NULL ? values.len > 0 : 0;
    for (size_t v = 0; !hit && v < values.len; v++) hit = contains_nocase(&values.ptr[v], rule->substring);
    http_plugin_list_string_free(&values);
    if (hit) return rule;
  }
  return NULL;
}

// ---- the block response ------------------------------------------------------------------

static void respond_blocked(exports_flowgate_plugin_http_verdict_t *ret, const rule_t *rule) {
  const char *needle = rule->substring ? rule->substring : "*";
  int len = snprintf(NULL, 0, "blocked by header-block: %s matched %s\n", rule->header, needle);
  char *body = malloc((size_t)len + 1);  // owned by `ret` now: freed by the bindings
  snprintf(body, (size_t)len + 1, "blocked by header-block: %s matched %s\n", rule->header, needle);

  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_RESPOND;
  flowgate_plugin_types_local_response_t *r = &ret->val.respond;
  r->status = settings.status;
  r->headers.len = 1;
  r->headers.ptr = malloc(sizeof(flowgate_plugin_types_header_t));
  http_plugin_string_dup(&r->headers.ptr[0].name, "content-type");
  http_plugin_string_dup(&r->headers.ptr[0].value, "text/plain");
  r->body.ptr = (uint8_t *)body;
  r->body.len = (size_t)len;
}

static void note_in_metadata(flowgate_plugin_types_borrow_flow_t flow, const rule_t *rule) {
  char value[300];
  snprintf(value, sizeof value, "%s: %s", rule->header, rule->substring ? rule->substring : "*");
  str_t k, v;
  http_plugin_string_set(&k, "header-block");
  http_plugin_string_set(&v, value);
  flowgate_plugin_types_error_t err;
  if (!flowgate_plugin_types_method_flow_set_metadata(flow, &k, &v, &err)) {
    flowgate_plugin_types_error_free(&err);  // over max_state_bytes: the block still stands
  }
}

// ---- hooks -----------------------------------------------------------------------------

void exports_flowgate_plugin_http_request_headers(exports_flowgate_plugin_http_borrow_flow_t flow,
                                                  exports_flowgate_plugin_http_borrow_http_request_t request,
                                                  exports_flowgate_plugin_http_verdict_t *ret) {
  ret->tag = FLOWGATE_PLUGIN_TYPES_VERDICT_CONTINUE;
  load_settings();
  const rule_t *rule = match(request);
  if (!rule) return;

  str_t url;
  flowgate_plugin_types_method_request_url(request, &url);
  log_fmt(FLOWGATE_PLUGIN_LOG_LEVEL_WARN, "blocked %.*s: %s matched %s", (int)url.len, (const char *)url.ptr,
          rule->header, rule->substring ? rule->substring : "*");
  http_plugin_string_free(&url);
  note_in_metadata(flow, rule);
  respond_blocked(ret, rule);
}

void exports_flowgate_plugin_http_request_body_chunk(exports_flowgate_plugin_http_borrow_flow_t flow,
                                                     exports_flowgate_plugin_http_borrow_http_request_t request,
                                                     http_plugin_list_u8_t *chunk, bool end_of_stream,
                                                     http_plugin_list_u8_t *ret) {
  *ret = *chunk;  // never asked for (pass mode); hand the chunk back unchanged
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
  http_plugin_string_free(message);  // parameters of exports are ours
}

void exports_flowgate_plugin_http_http_connect(exports_flowgate_plugin_http_borrow_flow_t flow,
                                               exports_flowgate_plugin_http_borrow_http_request_t request,
                                               exports_flowgate_plugin_http_verdict_t *ret) {
  // Apply the rules to CONNECT too, so a scanner cannot tunnel past them.
  exports_flowgate_plugin_http_request_headers(flow, request, ret);
}
