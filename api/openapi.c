/* openapi.c: the OpenAPI 3.1 document of the REST API (DESIGN.md section 5), served at
 * /openapi.json.  Written independently of the route table in router.c; test_router checks that
 * the two list the same routes. */
#include "api/handlers.h"

#include <string.h>

struct op {
    const char *method; /* lower case, as OpenAPI spells it */
    const char *path;
    const char *id;
    const char *summary;
    const char *request;  /* schema name of a JSON body, "binary" for a raw body, or NULL */
    int ok;               /* success status */
    const char *response; /* schema name of the success body, or NULL */
    const char *errors;   /* error statuses, space separated */
};

static const struct op ops[] = {
    { "get", "/healthz", "healthz", "Liveness: the process answers", NULL, 200, "Status", "" },
    { "get", "/readyz", "readyz", "Readiness: database reachable and workers alive", NULL, 200,
      "Status", "503" },
    { "get", "/metrics", "metrics", "Prometheus metrics (text format)", NULL, 200, "text", "" },
    { "get", "/openapi.json", "openapi", "This document", NULL, 200, NULL, "" },
    { "put", "/v1/blobs", "putBlob", "Upload a blob (raw body, streamed to disk and hashed); 201 "
      "when new, 200 when it existed", "binary", 201, "Blob", "413 500 507" },
    { "put", "/v1/blobs/{digest}", "putBlobByDigest", "Upload a blob under its digest; 400 when "
      "the body hashes differently", "binary", 201, "Blob", "400 413 500 507" },
    { "head", "/v1/blobs/{digest}", "headBlob", "Whether a blob exists (X-Blob-Size header)",
      NULL, 200, NULL, "400 404" },
    { "delete", "/v1/blobs/{digest}", "deleteBlob", "Delete a blob; 409 failed_precondition "
      "naming the study, candidate or job that references it.  Unreferenced blobs are also "
      "collected after --blob-gc-grace", NULL, 204, NULL, "400 404 409" },
    { "post", "/v1/studies", "createStudy", "Create a study with its noise models "
      "(Idempotency-Key supported: identical requests, also concurrent ones, get the first "
      "answer; 413 when metadata is over --max-metadata-bytes)", "StudyCreate", 201, "Study",
      "400 409 413" },
    { "get", "/v1/studies", "listStudies", "List studies (page_size, page_token; a page also "
      "ends before --max-page-bytes, holding at least one item, and next_page_token continues "
      "there)", NULL, 200, "StudyList", "400" },
    { "get", "/v1/studies/{sid}", "getStudy", "A study", NULL, 200, "Study", "404" },
    { "delete", "/v1/studies/{sid}", "deleteStudy", "Delete a study with its input sets, "
      "candidates, scores and jobs (running ones canceled within a second); sends study.deleted "
      "to the webhook", NULL, 204, NULL, "404" },
    { "put", "/v1/studies/{sid}/inputs/{split}", "putInputs", "Set the fit or probe input set "
      "of a study to a blob (finite values only: 400 naming the first bad index).  Once the "
      "study has a candidate its input sets are fixed: another digest is 409 "
      "failed_precondition (the candidates were scored on the current inputs; create a new "
      "study for other inputs), the same digest again is a 200 that changes nothing",
      "InputsPut", 200, "Study", "400 404 409" },
    { "post", "/v1/studies/{sid}/candidates", "createCandidate", "Submit a candidate (model or "
      "Jacobian dumps); queues its score job (Idempotency-Key supported; 413 when metadata is "
      "over --max-metadata-bytes)", "CandidateCreate", 202,
      "CandidateAccepted", "400 404 409 413 429 507" },
    { "get", "/v1/studies/{sid}/candidates", "listCandidates", "List a study's candidates with "
      "their scores (page_size, page_token; bounded by --max-page-bytes like listStudies)", NULL,
      200, "CandidateList", "400 404" },
    { "get", "/v1/studies/{sid}/candidates/{cid}", "getCandidate", "A candidate with its scores "
      "per noise model and split", NULL, 200, "Candidate", "404" },
    { "post", "/v1/studies/{sid}/candidates/{cid}/jbr", "createJbr", "Queue JBR pruning scores "
      "for a model candidate", "JbrCreate", 202, "JobAccepted", "400 404 409 429" },
    { "delete", "/v1/studies/{sid}/candidates/{cid}", "deleteCandidate", "Delete a candidate "
      "with its scores and jobs (a running job is canceled within a second); bumps the study "
      "version, frees the name, sends candidate.deleted to the webhook", NULL, 204, NULL,
      "404" },
    { "post", "/v1/studies/{sid}/candidates/{cid}/retry", "retryCandidate", "Give a failed or "
      "canceled candidate a new score job; 409 failed_precondition in any other state", NULL,
      202, "JobAccepted", "404 409 429" },
    { "put", "/v1/studies/{sid}/candidates/{cid}/metrics", "putMetrics", "Merge labelled "
      "numbers the user has on a candidate (val_loss, ...): keys given replace, null removes a "
      "key, others stay (RFC 7396); values finite numbers, keys 1..64 printable ASCII bytes, at "
      "most 64 per candidate.  Answers the candidate; a change bumps the study version.  "
      "Idempotent by itself: no Idempotency-Key", "MetricsPut", 200, "Candidate",
      "400 404" },
    { "get", "/v1/studies/{sid}/agreement", "getAgreement", "How each noise model and split "
      "ranks against a metric (?metric=, required): over the candidates with both a score and "
      "the metric, n, Spearman (average ranks for ties), Kendall tau-b and a 95% percentile "
      "bootstrap interval of Spearman (2000 resamples of the candidates, fixed seed; null when "
      "n < 4).  Items in the study's noise model order, fit before probe, for each pair some "
      "candidate has a score for.  Lower TPV should go with lower loss, so positive is good; "
      "recommended is the item with the highest interval lower bound, null when none is above "
      "0.  404 (field metric) when no candidate has the metric, naming those the study has",
      NULL, 200, "Agreement", "400 404" },
    { "get", "/v1/studies/{sid}/ranking", "getRanking", "Candidates ranked by TPV (by, split, "
      "max_train_loss, wait with If-None-Match)", NULL, 200, "Ranking", "304 400 404 409" },
    { "get", "/v1/jobs/{jid}", "getJob", "A job with its state and progress; wait=s holds the "
      "request until the job is terminal or s seconds pass (at most --max-wait)", NULL, 200,
      "Job", "400 404" },
    { "delete", "/v1/jobs/{jid}", "cancelJob", "Cancel a job", NULL, 200, "Job", "404 409" },
    { "post", "/v1/tokens", "createToken", "Create an API token (admin); the secret is in this "
      "response only", "TokenCreate", 201, "TokenCreated", "400 409" },
    { "get", "/v1/tokens", "listTokens", "API tokens: names, roles, times, never secrets (admin)",
      NULL, 200, "TokenList", "" },
    { "delete", "/v1/tokens/{name}", "revokeToken", "Revoke an API token (admin)", NULL, 200,
      "TokenRevoked", "404 409" },
    { "get", "/ui/", "dashboard", "The built-in dashboard (HTML; its script reads this API with "
      "the token typed into it)", NULL, 200, "html", "" },
    { "get", "/ui/{page}", "dashboardPage", "The dashboard for any /ui/* path (the page picks "
      "its view from the path, e.g. /ui/studies/{sid}); /ui/assets/<name> are its script and "
      "style", NULL, 200, "html", "404" },
};
#define OP_COUNT (sizeof ops / sizeof ops[0])

static json_t *ref(const char *name)
{
    char buf[96];
    snprintf(buf, sizeof buf, "#/components/schemas/%s", name);
    return json_pack("{s:s}", "$ref", buf);
}

static json_t *json_content(json_t *schema)
{
    return json_pack("{s:{s:o}}", "application/json", "schema", schema);
}

static json_t *parameters(const char *path, const char *method)
{
    json_t *params = json_array();
    for (const char *p = strchr(path, '{'); p; p = strchr(p + 1, '{')) {
        const char *end = strchr(p, '}');
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)(end - p - 1), p + 1);
        json_array_append_new(params, json_pack("{s:s,s:s,s:b,s:{s:s}}", "name", name, "in",
                                                "path", "required", 1, "schema", "type", "string"));
    }
    if (strstr(path, "ranking")) {
        static const char *const q[][2] = { { "by", "string" }, { "split", "string" },
                                            { "wait", "integer" } };
        for (size_t i = 0; i < 3; i++)
            json_array_append_new(params, json_pack("{s:s,s:s,s:{s:s}}", "name", q[i][0], "in",
                                                    "query", "schema", "type", q[i][1]));
        json_array_append_new(params, json_pack(
            "{s:s,s:s,s:s,s:{s:[{s:s},{s:s,s:[s]}]}}", "name", "max_train_loss", "in", "query",
            "description", "candidates whose metadata.train_loss is above it are excluded "
            "(flag underfit); auto: the median train_loss of the candidates that report one",
            "schema", "oneOf", "type", "number", "type", "string", "enum", "auto"));
        json_array_append_new(params, json_pack("{s:s,s:s,s:{s:s}}", "name", "If-None-Match",
                                                "in", "header", "schema", "type", "string"));
    } else if (strstr(path, "/agreement")) {
        json_array_append_new(params, json_pack("{s:s,s:s,s:b,s:{s:s,s:i,s:i}}", "name",
                                                "metric", "in", "query", "required", 1,
                                                "schema", "type", "string", "minLength", 1,
                                                "maxLength", 64));
    } else if (strcmp(method, "get") == 0 && (strcmp(path, "/v1/studies") == 0 ||
                                              (strstr(path, "/candidates") &&
                                               !strstr(path, "{cid}")))) {
        json_array_append_new(params, json_pack("{s:s,s:s,s:{s:s}}", "name", "page_size", "in",
                                                "query", "schema", "type", "integer"));
        json_array_append_new(params, json_pack("{s:s,s:s,s:{s:s}}", "name", "page_token", "in",
                                                "query", "schema", "type", "string"));
    } else if (strcmp(method, "post") == 0 && !strstr(path, "jbr")) {
        json_array_append_new(params, json_pack("{s:s,s:s,s:{s:s}}", "name", "Idempotency-Key",
                                                "in", "header", "schema", "type", "string"));
    }
    return params;
}

static json_t *operation(const struct op *o)
{
    json_t *responses = json_object(), *ok = json_pack("{s:s}", "description", "success");
    char code[8];
    if (o->response && strcmp(o->response, "text") == 0)
        json_object_set_new(ok, "content", json_pack("{s:{s:{s:s}}}", "text/plain", "schema",
                                                      "type", "string"));
    else if (o->response && strcmp(o->response, "html") == 0)
        json_object_set_new(ok, "content", json_pack("{s:{s:{s:s}}}", "text/html", "schema",
                                                      "type", "string"));
    else if (o->response)
        json_object_set_new(ok, "content", json_content(ref(o->response)));
    snprintf(code, sizeof code, "%d", o->ok);
    json_object_set_new(responses, code, ok);
    for (const char *p = o->errors; *p;) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (!n)
            break;
        snprintf(code, sizeof code, "%.*s", (int)n, p);
        json_object_set_new(responses, code,
                            strcmp(code, "304") == 0
                                ? json_pack("{s:s}", "description", "not modified")
                                : json_pack("{s:s,s:o}", "description", "error", "content",
                                            json_content(ref("Error"))));
        p += n;
    }
    json_object_set_new(responses, "default", json_pack("{s:s,s:o}", "description", "error",
                                                        "content", json_content(ref("Error"))));
    /* Access control (README "Security"): open routes override the document's bearer default. */
    enum api_role role = api_route_role_of(o->method, o->path);
    if (role != API_ROLE_OPEN) {
        json_object_set_new(responses, "401", json_pack("{s:s,s:o}", "description",
                                                        "no, unknown or revoked bearer token",
                                                        "content", json_content(ref("Error"))));
        if (role > API_ROLE_READ)
            json_object_set_new(responses, "403",
                                json_pack("{s:s,s:o}", "description",
                                          "the token's role may not call this route", "content",
                                          json_content(ref("Error"))));
    }
    if (o->request && strcmp(o->request, "binary") != 0)
        json_object_set_new(responses, "415",
                            json_pack("{s:s,s:o}", "description",
                                      "a Content-Type other than application/json", "content",
                                      json_content(ref("Error"))));
    json_t *op = json_pack("{s:s,s:s,s:o,s:o,s:s}", "operationId", o->id, "summary", o->summary,
                           "parameters", parameters(o->path, o->method), "responses", responses,
                           "x-tpv-role", api_role_name(role));
    if (role == API_ROLE_OPEN)
        json_object_set_new(op, "security", json_array());
    if (o->request && strcmp(o->request, "binary") == 0)
        json_object_set_new(op, "requestBody",
                            json_pack("{s:b,s:{s:{s:{s:s,s:s}}}}", "required", 1, "content",
                                      "application/octet-stream", "schema", "type", "string",
                                      "format", "binary"));
    else if (o->request)
        json_object_set_new(op, "requestBody", json_pack("{s:b,s:o}", "required",
                                                         strcmp(o->request, "JbrCreate") != 0,
                                                         "content",
                                                         json_content(ref(o->request))));
    return op;
}

static json_t *obj_schema(const char *required_csv, json_t *props)
{
    json_t *s = json_pack("{s:s,s:o}", "type", "object", "properties", props);
    if (required_csv) {
        json_t *req = json_array();
        char buf[256];
        snprintf(buf, sizeof buf, "%s", required_csv);
        for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
            json_array_append_new(req, json_string(t));
        json_object_set_new(s, "required", req);
    }
    return s;
}

static json_t *schemas(void)
{
    json_t *str = json_pack("{s:s}", "type", "string"), *num = json_pack("{s:s}", "type", "number");
    json_t *obj = json_pack("{s:s}", "type", "object"), *integer = json_pack("{s:s}", "type", "integer");
    json_t *digest = json_pack("{s:s,s:s}", "type", "string", "pattern", "^sha256:[0-9a-f]{64}$");
    json_t *s = json_object();
    json_object_set_new(s, "Error", obj_schema("error", json_pack(
        "{s:{s:s,s:{s:O,s:O,s:O}}}", "error", "type", "object", "properties", "code", str,
        "message", str, "details", obj)));
    json_object_set_new(s, "Status", obj_schema("status", json_pack("{s:O}", "status", str)));
    json_object_set_new(s, "Blob", obj_schema("digest,size", json_pack("{s:O,s:O}", "digest",
                                                                      digest, "size", integer)));
    json_object_set_new(s, "NoiseModel", obj_schema("name,kind", json_pack(
        "{s:O,s:{s:s,s:[sssssss]}}", "name", str, "kind", "type", "string", "enum", "isotropic",
        "quantization", "sgd", "sgd_curvature", "label", "diagonal", "prune")));
    /* The estimators and the nonlinear check (core/empirical.h: forward passes of the perturbed
     * model, so models only). */
    json_t *nmp = json_object_get(json_object_get(s, "NoiseModel"), "properties");
    json_object_set_new(nmp, "estimator", json_pack(
        "{s:s,s:[sssss],s:s}", "type", "string", "enum", "auto", "exact", "hutchinson", "hutchpp",
        "empirical", "description", "empirical: the mean over inputs and draws of "
        "||f(w + dw, x) - f(w, x)||^2 by forward passes of the perturbed model (isotropic, sgd, "
        "quantization, prune; model candidates only), with a stderr over draws"));
    json_object_set_new(nmp, "check", json_pack(
        "{s:s,s:[s],s:s}", "type", "string", "enum", "empirical", "description",
        "the first-order score plus the empirical one beside it: details.empirical {value, "
        "stderr, samples}, details.ratio {value: first_order / empirical, ci: 95 % interval}, "
        "details.nonlinear, and the candidate flag nonlinear when the ratio leaves [0.8, 1.25]; "
        "isotropic, sgd, quantization, prune only (else 400), model candidates only (a "
        "Jacobian dump is a 400)"));
    json_object_set_new(s, "StudyCreate", obj_schema("name,noise_models", json_pack(
        "{s:O,s:O,s:{s:s,s:o},s:O,s:O,s:O}", "name", str, "description", str, "noise_models",
        "type", "array", "items", ref("NoiseModel"), "rank_by", str, "webhook_url", str,
        "metadata", obj)));
    json_object_set_new(s, "Study", obj_schema("id,name,noise_models,rank_by,version", json_pack(
        "{s:O,s:O,s:O,s:{s:s,s:o},s:O,s:O,s:O,s:O,s:O,s:O}", "id", str, "name", str,
        "description", str, "noise_models", "type", "array", "items", ref("NoiseModel"),
        "rank_by", str, "inputs", obj, "version", integer, "created_at", str, "metadata", obj,
        "webhook_url", str)));
    /* Shown once: in the creation response of a study with a webhook_url. */
    json_object_set_new(json_object_get(json_object_get(s, "Study"), "properties"),
                        "webhook_secret", json_pack("{s:s,s:s}", "type", "string", "description",
                                                    "HMAC-SHA256 key of the X-TPV-Signature "
                                                    "header; only in the POST response"));
    json_object_set_new(s, "StudyList", obj_schema("items", json_pack(
        "{s:{s:s,s:o},s:O}", "items", "type", "array", "items", ref("Study"), "next_page_token",
        str)));
    /* A blob digest, or a URL the server fetches from a --fetch-allow host. */
    json_object_set_new(s, "BlobRef", json_pack(
        "{s:[O,{s:s,s:[s],s:{s:{s:s,s:s},s:O}}],s:s}", "oneOf", digest, "type", "object",
        "required", "url", "properties", "url", "type", "string", "format", "uri", "digest", digest,
        "description", "sha256 digest of an uploaded blob, or {url, digest?} fetched by the "
        "server (403 unless the host is allowed by --fetch-allow)"));
    json_object_set_new(s, "InputsPut", obj_schema("blob", json_pack("{s:o}", "blob",
                                                                     ref("BlobRef"))));
    json_object_set_new(s, "CandidateCreate", obj_schema("name", json_pack(
        "{s:O,s:O,s:{s:s,s:s,s:{s:O,s:o,s:o,s:{s:s,s:O}}},s:{s:s,s:{s:o,s:o,s:{s:s,s:O}}},"
        "s:o}", "name", str,
        "metadata", obj, "model", "type", "object", "description",
        "a tpv.sequential/v1 checkpoint {spec, weights}, or an ONNX graph {onnx, parameters?} "
        "(parameters: the perturbed initializers; default the model's tpv.parameters metadata, "
        "else every float initializer but batch-norm statistics)",
        "properties", "spec", obj, "weights", ref("BlobRef"), "onnx", ref("BlobRef"),
        "parameters", "type", "array", "items", str, "jacobian", "type", "object", "properties",
        "fit", ref("BlobRef"), "probe", ref("BlobRef"), "layout", "type", "array", "items", str,
        "weights",
        ref("BlobRef"))));
    /* Confidence (DESIGN.md section 5): null for scores written before contributions were
     * stored, and for the paths that cannot split their sum by input. */
    json_t *se_in = json_pack("{s:[s,s],s:s}", "type", "number", "null", "description",
                              "standard error of the score's mean over its split's inputs (what "
                              "another draw of inputs would change); stderr is the estimator's");
    json_object_set_new(s, "Score", obj_schema("noise,split,value", json_pack(
        "{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "noise", str, "kind", str, "split", str,
        "value", num, "stderr", num, "stderr_inputs", se_in, "estimator", str, "samples",
        integer, "seed", integer, "details", obj)));
    json_object_set_new(s, "RankingItem", obj_schema("rank,candidate_id,value", json_pack(
        "{s:O,s:O,s:O,s:O,s:O,s:O,s:{s:[s,s],s:s},s:O,s:{s:s,s:O}}", "rank", integer,
        "candidate_id", str, "name", str, "value", num, "stderr", num, "stderr_inputs", se_in,
        "p_lower_than_next", "type", "number", "null", "description",
        "P(this TPV < the next item's) from the paired per-input differences (normal "
        "approximation of their mean); null on the last item and when the two were not scored "
        "on the same number of inputs", "metadata", obj, "flags", "type", "array", "items", str)));
    json_object_set_new(json_object_get(json_object_get(json_object_get(s, "RankingItem"),
                                                        "properties"), "flags"),
                        "description", json_string("underfit, no_train_loss, tpv_peak, "
                                                   "before_tpv_peak, nonlinear (the ranked "
                                                   "score's empirical check)"));
    json_decref(se_in);
    json_object_set_new(s, "Candidate", obj_schema("id,study_id,name,state", json_pack(
        "{s:O,s:O,s:O,s:O,s:o,s:O,s:{s:s,s:o},s:O,s:O,s:O}", "id", str, "study_id", str, "name",
        str, "metadata", obj, "source",
        json_pack("{s:s,s:[s,s,s]}", "type", "string", "enum", "model", "onnx", "jacobian"),
        "state", str, "scores", "type", "array", "items",
        ref("Score"), "stability", obj, "job_id", str, "created_at", str)));
    json_object_set_new(json_object_get(json_object_get(s, "Candidate"), "properties"),
                        "flags", json_pack("{s:s,s:{s:s},s:s}", "type", "array", "items",
                                           "type", "string", "description",
                                           "nonlinear: a score's empirical check found "
                                           "first_order / empirical outside [0.8, 1.25]"));
    json_object_set_new(json_object_get(json_object_get(s, "Candidate"), "properties"),
                        "jbr_jobs", json_pack(
                            "{s:s,s:o,s:s}", "type", "array", "items",
                            obj_schema("id,state,created_at",
                                       json_pack("{s:O,s:O,s:O}", "id", str, "state", str,
                                                 "created_at", str)),
                            "description", "the candidate's JBR jobs (POST .../jbr), newest "
                            "first; [] when none.  GET /v1/jobs/{id} gives a job's result"));
    /* Only when the candidate has some (PUT .../metrics). */
    json_object_set_new(json_object_get(json_object_get(s, "Candidate"), "properties"),
                        "metrics", json_pack("{s:s,s:{s:s},s:s}", "type", "object",
                                             "additionalProperties", "type", "number",
                                             "description", "labelled numbers the user put"));
    json_object_set_new(s, "MetricsPut", json_pack(
        "{s:s,s:{s:[ss]},s:i,s:s}", "type", "object", "additionalProperties", "type", "number",
        "null", "maxProperties", 64, "description", "metric name -> finite number, or null to "
        "remove it"));
    json_object_set_new(s, "Agreement", obj_schema("study_id,metric,items,recommended", json_pack(
        "{s:O,s:O,s:O,s:O,s:O,s:{s:s,s:o},s:{s:[ss],s:{s:O,s:O}},s:O}", "study_id", str, "metric",
        str, "version", integer, "candidates", integer, "candidates_with_metric", integer,
        "items", "type", "array", "items", obj_schema("noise,split,n,spearman,kendall,ci",
        json_pack("{s:O,s:O,s:O,s:{s:[ss]},s:{s:[ss]},s:{s:[ss],s:O,s:i,s:i},s:O}", "noise",
                  str, "split", str, "n", integer, "spearman", "type", "number", "null",
                  "kendall", "type", "number", "null", "ci", "type", "array", "null", "items",
                  num, "minItems", 2, "maxItems", 2, "resamples", integer)),
        "recommended", "type", "object", "null", "properties", "noise", str, "split", str,
        "bootstrap", obj)));
    json_object_set_new(s, "CandidateList", obj_schema("items", json_pack(
        "{s:{s:s,s:o},s:O}", "items", "type", "array", "items", ref("Candidate"),
        "next_page_token", str)));
    json_object_set_new(s, "Job", obj_schema("id,kind,state,progress", json_pack(
        "{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "id", str, "kind", str, "candidate_id",
        str, "state", str, "progress", num, "attempts", integer, "error", obj, "created_at", str,
        "started_at", str, "finished_at", str, "result", obj)));
    json_object_set_new(s, "CandidateAccepted", obj_schema("candidate,job", json_pack(
        "{s:o,s:o}", "candidate", ref("Candidate"), "job", ref("Job"))));
    json_object_set_new(s, "JobAccepted", obj_schema("job", json_pack("{s:o}", "job", ref("Job"))));
    json_object_set_new(s, "JbrCreate", obj_schema(NULL, json_pack(
        "{s:O,s:O}", "confidence", num, "batch_size", integer)));
    json_object_set_new(s, "Ranking", obj_schema("study_id,by,split,version,items", json_pack(
        "{s:O,s:O,s:O,s:O,s:{s:s,s:o},s:{s:s,s:O},s:{s:s,s:O},s:{s:s,s:O},s:{s:[ss]},"
        "s:{s:s}}", "study_id", str,
        "by", str, "split", str, "version", integer, "items", "type", "array", "items",
        ref("RankingItem"),
        "excluded", "type", "array", "items", obj, "pending", "type", "array", "items", obj,
        "trajectories", "type", "array", "items", obj, "max_train_loss", "type", "number",
        "null", "max_train_loss_rule", "type", "string")));
    json_object_set_new(s, "TokenCreate", obj_schema("name,role", json_pack(
        "{s:O,s:{s:s,s:[sss]}}", "name", str, "role", "type", "string", "enum", "read", "write",
        "admin")));
    json_object_set_new(s, "TokenCreated", obj_schema("name,role,token", json_pack(
        "{s:O,s:O,s:O}", "name", str, "role", str, "token", str)));
    json_object_set_new(s, "TokenList", obj_schema("items", json_pack(
        "{s:{s:s,s:O}}", "items", "type", "array", "items", obj)));
    json_object_set_new(s, "TokenRevoked", obj_schema("name,revoked", json_pack(
        "{s:O,s:{s:s}}", "name", str, "revoked", "type", "boolean")));
    json_decref(str);
    json_decref(num);
    json_decref(obj);
    json_decref(integer);
    json_decref(digest);
    return s;
}

json_t *api_openapi_document(void)
{
    json_t *paths = json_object();
    for (size_t i = 0; i < OP_COUNT; i++) {
        json_t *item = json_object_get(paths, ops[i].path);
        if (!item) {
            item = json_object();
            json_object_set_new(paths, ops[i].path, item);
        }
        json_object_set_new(item, ops[i].method, operation(&ops[i]));
    }
    return json_pack("{s:s,s:{s:s,s:s,s:s},s:o,s:{s:o,s:{s:{s:s,s:s,s:s}}},s:[{s:[]}]}",
                     "openapi", "3.1.0", "info", "title", "tpvd", "version", "1", "description",
                     "Label-free model selection by Test Prediction Variance (DESIGN.md section 5)",
                     "paths", paths, "components", "schemas", schemas(), "securitySchemes",
                     "bearer", "type", "http", "scheme", "bearer", "description",
                     "a token from `tpvd token create`; roles read < write < admin "
                     "(x-tpv-role of each operation)",
                     "security", "bearer");
}

void api_handle_openapi(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    (void)env;
    (void)req;
    json_t *doc = api_openapi_document();
    if (!doc) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        return;
    }
    api_reply_json(resp, 200, doc);
}
