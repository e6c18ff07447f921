/* tpvctl: command-line client of tpvd (libcurl).  Server URL and token from --url/--token or
 * TPV_URL/TPV_TOKEN; errors are the server's JSON errors; exit codes in ctl_http.h and --help. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "clients/tpvctl/ctl_http.h"

/* Output switches, accepted before the command and after it (see take_output_flags). */
static bool json_output, csv_output;

/* One section of --help per command; `tpvctl study` alone prints its section. */
static const struct {
    const char *group, *text;
} command_help[] = {
    { "study",
      "  study create -n NAME -m MODEL [-m MODEL]... [-r RANK_BY] [-d DESCRIPTION] [--webhook URL]\n"
      "      (-n --name, -m --noise, -r --rank-by, -d --description)\n"
      "      MODEL is JSON ('{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.01}') or\n"
      "      key=value pairs (name=iso,kind=isotropic,sigma=0.01); prints the study id\n"
      "      (and, with --webhook, the signing secret on stderr: it is shown only once)\n"
      "  study list | study get SID\n"
      "  study delete SID         the study with its inputs, candidates, scores and jobs\n" },
    { "inputs",
      "  inputs put SID fit|probe FILE              upload an input set (.npy/.safetensors)\n" },
    { "candidate",
      "  candidate add SID -n NAME (-s SPEC.json -W WEIGHTS | --onnx MODEL.onnx [--parameters a,b,..]\n"
      "               | -f JACOBIAN_FIT [-p JACOBIAN_PROBE] [-l a,b,..] [-W WEIGHTS])\n"
      "               [-L TRAIN_LOSS] [-e EPOCH] [-r RUN] [-M k=v]... [-w [-T SECONDS]]\n"
      "      (-n --name, -s --spec, -W --weights, -f --jacobian-fit, -p --jacobian-probe,\n"
      "       -l --layout, -L --train-loss, -e --epoch, -r --run, -M --meta, -w --wait,\n"
      "       -T --timeout); uploads files the server lacks (HEAD first), prints the job id\n"
      "  candidate list SID       id, name, state and the score the study ranks by\n"
      "  candidate get SID CID\n"
      "  candidate delete SID CID  its scores and jobs too (a running job stops); the name is free\n"
      "  candidate retry SID CID [-w [-T SECONDS]]  a new score job for a failed or canceled\n"
      "      candidate; prints the job id, or with -w waits for it\n" },
    { "job",
      "  job get JID | job cancel JID | job wait JID [-T SECONDS]\n" },
    { "ranking",
      "  ranking SID [-b BY] [-s fit|probe] [-x MAX_TRAIN_LOSS] [--csv]\n"
      "      (-b --by, -s --split, -x --max-train-loss); --csv prints rank,candidate_id,name,\n"
      "      value,stderr,stderr_inputs,p_lower_than_next,flags,<metadata keys>\n" },
    { "metrics",
      "  metrics put SID CID KEY=VALUE... | metrics put SID CID --json FILE (or --file FILE)\n"
      "      merges validation numbers into the candidate's metrics (VALUE a number, or null\n"
      "      to remove KEY; FILE a JSON object, - for stdin); prints the merged metrics\n" },
    { "agreement",
      "  agreement SID -m METRIC   (-m --metric)  how each noise model and split ranks\n"
      "      against METRIC: n, Spearman, Kendall, 95% bootstrap interval, and the\n"
      "      recommended noise model (the highest interval lower bound above 0)\n" },
    { "jbr",
      "  jbr SID CID [--confidence C] [--batch-size B] [-w [-T SECONDS]]\n"
      "      prints the job id, or with -w (--wait) the units, lowest score first\n" },
    { "blob",
      "  blob put FILE            prints the digest alone on stdout (also when already there)\n"
      "  blob delete sha256:HEX   refused (exit 1) while a study, candidate or job uses it\n" },
};

static void usage(FILE *out)
{
    fprintf(out,
        "Usage: tpvctl [-u URL] [-t TOKEN] [-j] [-q] [--csv] [--max-response BYTES] COMMAND ...\n"
        "  -u --url URL        server (default $TPV_URL, else http://127.0.0.1:8080)\n"
        "  -t --token TOKEN    bearer token (default $TPV_TOKEN)\n"
        "  -j --json           print the server's JSON documents\n"
        "  -q --quiet          no progress bars or notes on stderr\n"
        "     --csv            ranking as CSV\n"
        "  -j, -q and --csv may also follow the command.\n"
        "\n");
    for (size_t i = 0; i < sizeof command_help / sizeof command_help[0]; i++)
        fputs(command_help[i].text, out);
    fprintf(out,
        "\n"
        "FILE arguments may also be a digest sha256:<hex> or an http(s):// URL that the server\n"
        "fetches itself (only from hosts its operator allows with tpvd --fetch-allow).\n"
        "\n"
        "--max-response caps one response body (default 268435456, 256 MiB); a larger one\n"
        "ends the command with exit code 3.\n"
        "Environment: TPV_URL (default http://127.0.0.1:8080), TPV_TOKEN.\n"
        "Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 server unreachable (or a\n"
        "            response over --max-response), 4 job failed or canceled, 5 timeout,\n"
        "            6 local error (a file cannot be read, out of memory).\n");
}

/* The section of one command, for `tpvctl study` without a verb or with a wrong one: exit 2. */
static int command_usage(const char *group)
{
    for (size_t i = 0; i < sizeof command_help / sizeof command_help[0]; i++)
        if (strcmp(command_help[i].group, group) == 0) {
            fprintf(stderr, "Usage: tpvctl [options] %s ...\n%s(see tpvctl --help)\n", group,
                    command_help[i].text);
            return CTL_ERR_USAGE;
        }
    return -1;
}

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tpvctl: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see tpvctl --help)\n");
    va_end(ap);
    return CTL_ERR_USAGE;
}

static const char *str_or(const json_t *j, const char *fallback)
{
    const char *s = json_string_value(j);
    return s ? s : fallback;
}

static void print_json(const json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (text)
        puts(text);
    free(text);
}

/* "3", "0.5", "true" become numbers/booleans, anything else a string. */
static json_t *scalar_from_text(const char *v)
{
    char *end;
    double d = strtod(v, &end);
    if (*v && *end == '\0' && isfinite(d)) {
        long long i = strtoll(v, &end, 10);
        return *end == '\0' ? json_integer(i) : json_real(d);
    }
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
        return json_boolean(v[0] == 't');
    return json_string(v);
}

/* Adds "k=v,k=v" pairs to obj; returns 0 or -1 on a pair without '='. */
static int add_pairs(json_t *obj, const char *text, char sep)
{
    char *copy = strdup(text), *save = NULL;
    char delims[2] = { sep, '\0' };
    int rc = 0;
    for (char *tok = strtok_r(copy, delims, &save); tok; tok = strtok_r(NULL, delims, &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            rc = -1;
            break;
        }
        *eq = '\0';
        json_object_set_new(obj, tok, scalar_from_text(eq + 1));
    }
    free(copy);
    return rc;
}

static json_t *noise_from_arg(const char *arg)
{
    if (arg[0] == '{')
        return json_loads(arg, 0, NULL);
    json_t *obj = json_object();
    if (add_pairs(obj, arg, ',') != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* --- study ------------------------------------------------------------------------------- */

static int cmd_study_create(const struct ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        { "name", required_argument, 0, 'n' }, { "noise", required_argument, 0, 'm' },
        { "rank-by", required_argument, 0, 'r' }, { "description", required_argument, 0, 'd' },
        { "webhook", required_argument, 0, 'H' }, { 0, 0, 0, 0 } };
    json_t *body = json_object(), *models = json_array();
    int opt, rc = CTL_OK;
    optind = 1;
    while (rc == CTL_OK && (opt = getopt_long(argc, argv, "n:m:r:d:", opts, NULL)) != -1) {
        switch (opt) {
        case 'n': json_object_set_new(body, "name", json_string(optarg)); break;
        case 'r': json_object_set_new(body, "rank_by", json_string(optarg)); break;
        case 'd': json_object_set_new(body, "description", json_string(optarg)); break;
        case 'H': json_object_set_new(body, "webhook_url", json_string(optarg)); break;
        case 'm': {
            json_t *m = noise_from_arg(optarg);
            if (!m)
                rc = usage_error("--noise '%s' is neither JSON nor key=value pairs", optarg);
            else
                json_array_append_new(models, m);
            break;
        }
        default: rc = CTL_ERR_USAGE;
        }
    }
    if (rc == CTL_OK && (!json_object_get(body, "name") || json_array_size(models) == 0))
        rc = usage_error("study create needs --name and at least one --noise");
    json_t *resp = NULL;
    if (rc == CTL_OK) {
        if (!json_object_get(body, "rank_by"))
            json_object_set(body, "rank_by", json_object_get(json_array_get(models, 0), "name"));
        json_object_set(body, "noise_models", models);
        rc = ctl_call(c, "POST", "/v1/studies", body, NULL, NULL, NULL, &resp);
    }
    if (rc == CTL_OK) {
        const char *secret = json_string_value(json_object_get(resp, "webhook_secret"));
        if (json_output)
            print_json(resp);
        else
            printf("%s\n", json_string_value(json_object_get(resp, "id")));
        /* Shown once by the server: without --json it goes to stderr, so that
         * SID=$(tpvctl study create ...) still captures the id alone. */
        if (secret && !json_output)
            fprintf(stderr, "webhook secret (shown only now; receivers verify X-TPV-Signature "
                            "with it): %s\n", secret);
    }
    json_decref(resp);
    json_decref(models);
    json_decref(body);
    return rc;
}

/* The value of the score of `item` under noise model `noise` on `split`, or NAN. */
static double score_value(const json_t *item, const char *noise, const char *split)
{
    size_t i;
    json_t *sc;
    json_array_foreach(json_object_get(item, "scores"), i, sc) {
        if (strcmp(str_or(json_object_get(sc, "noise"), ""), noise) == 0 &&
            strcmp(str_or(json_object_get(sc, "split"), ""), split) == 0 &&
            json_is_number(json_object_get(sc, "value")))
            return json_number_value(json_object_get(sc, "value"));
    }
    return NAN;
}

/* Which score a candidate list shows: the study's rank_by on the split its ranking uses by
 * default (probe when the study has a probe set). */
struct score_column {
    char noise[256];
    const char *split;
};

/* Fetches every page of a list route and prints items (JSON) or their id, name and state, and
 * with `col` that score. */
static int list_all(const struct ctl *c, const char *route, const struct score_column *col)
{
    json_t *all = json_array();
    char *token = NULL;
    int rc;
    do {
        char path[1024];
        snprintf(path, sizeof path, "%s?page_size=100%s%s", route, token ? "&page_token=" : "",
                 token ? token : "");
        free(token);
        token = NULL;
        json_t *page = NULL;
        rc = ctl_call(c, "GET", path, NULL, NULL, NULL, NULL, &page);
        if (rc == CTL_OK) {
            json_array_extend(all, json_object_get(page, "items"));
            const char *next = json_string_value(json_object_get(page, "next_page_token"));
            token = next ? curl_easy_escape(NULL, next, 0) : NULL;
        }
        json_decref(page);
    } while (rc == CTL_OK && token);
    if (rc == CTL_OK && json_output) {
        print_json(all);
    } else if (rc == CTL_OK) {
        size_t i;
        json_t *item;
        if (col) {
            char head[300];
            snprintf(head, sizeof head, "%s/%s", col->noise, col->split);
            printf("%-24s %-24s %-10s %s\n", "id", "name", "state", head);
        }
        json_array_foreach(all, i, item) {
            printf("%-24s %-24s %-10s", str_or(json_object_get(item, "id"), ""),
                   str_or(json_object_get(item, "name"), ""),
                   str_or(json_object_get(item, "state"), ""));
            double v = col ? score_value(item, col->noise, col->split) : NAN;
            if (col && !isnan(v))
                printf(" %.6g", v);
            else if (col)
                printf(" -");
            putchar('\n');
        }
    }
    curl_free(token);
    json_decref(all);
    return rc;
}

static int candidate_list(const struct ctl *c, const char *sid)
{
    char path[512];
    snprintf(path, sizeof path, "/v1/studies/%s", sid);
    json_t *study = NULL;
    struct score_column col = { .split = "fit" };
    int rc = json_output ? CTL_OK : ctl_call(c, "GET", path, NULL, NULL, NULL, NULL, &study);
    if (rc != CTL_OK)
        return rc;
    if (study) {
        snprintf(col.noise, sizeof col.noise, "%s", str_or(json_object_get(study, "rank_by"), ""));
        if (json_is_object(json_object_get(json_object_get(study, "inputs"), "probe")))
            col.split = "probe";
    }
    snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
    rc = list_all(c, path, study ? &col : NULL);
    json_decref(study);
    return rc;
}

static int get_and_print(const struct ctl *c, const char *path)
{
    json_t *resp = NULL;
    int rc = ctl_call(c, "GET", path, NULL, NULL, NULL, NULL, &resp);
    if (rc == CTL_OK)
        print_json(resp);
    json_decref(resp);
    return rc;
}

/* --- jobs -------------------------------------------------------------------------------- */

static void draw_job_progress(const json_t *job, bool final)
{
    double p = json_number_value(json_object_get(job, "progress"));
    int filled = (int)(p * 30);
    fprintf(stderr, "\rjob %-20.20s %-9s [%.*s%*s] %3.0f%%%s",
            json_string_value(json_object_get(job, "id")),
            json_string_value(json_object_get(job, "state")), filled,
            "##############################", 30 - filled, "", p * 100, final ? "\n" : "");
}

/* Polls the job until it ends.  With `final` the caller gets the ended, succeeded job and prints
 * it; without, a success prints "JID succeeded" (or the job with --json).  A failure prints the
 * job's error and returns CTL_ERR_JOB. */
static int job_wait(const struct ctl *c, const char *jid, double timeout_s, json_t **final)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/jobs/%s", jid);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        json_t *job = NULL;
        int rc = ctl_call(c, "GET", path, NULL, NULL, NULL, NULL, &job);
        if (rc != CTL_OK)
            return rc;
        const char *state = json_string_value(json_object_get(job, "state"));
        bool done = state && (!strcmp(state, "succeeded") || !strcmp(state, "failed") ||
                              !strcmp(state, "canceled"));
        if (c->progress)
            draw_job_progress(job, done);
        if (done) {
            rc = strcmp(state, "succeeded") == 0 ? CTL_OK : CTL_ERR_JOB;
            if (final && rc == CTL_OK) {
                *final = job;
                return rc;
            }
            if (json_output)
                print_json(job);
            else if (rc == CTL_OK)
                printf("%s succeeded\n", jid);
            if (rc != CTL_OK) {
                const json_t *e = json_object_get(job, "error");
                fprintf(stderr, "tpvctl: job %s %s: %s: %s\n", jid, state,
                        str_or(json_object_get(e, "code"), "-"),
                        str_or(json_object_get(e, "message"), "-"));
            }
            json_decref(job);
            return rc;
        }
        json_decref(job);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (timeout_s > 0 && (double)(now.tv_sec - start.tv_sec) > timeout_s) {
            if (c->progress)
                fputc('\n', stderr);
            fprintf(stderr, "tpvctl: job %s not finished after %.0f s\n", jid, timeout_s);
            return CTL_ERR_TIMEOUT;
        }
        struct timespec pause = { 0, 250 * 1000000L };
        nanosleep(&pause, NULL);
    }
}

/* --- candidates ---------------------------------------------------------------------------- */

struct candidate_args {
    const char *name, *spec, *weights, *jac_fit, *jac_probe, *layout, *onnx, *params;
    json_t *metadata;
    bool wait;
    double timeout;
};

/* A comma-separated list of names as a JSON array (new reference). */
static json_t *name_list(const char *text)
{
    json_t *names = json_array();
    char *copy = strdup(text), *save = NULL;
    for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
        json_array_append_new(names, json_string(t));
    free(copy);
    return names;
}

static int candidate_body(const struct ctl *c, const struct candidate_args *a, json_t **out)
{
    json_t *body = json_pack("{s:s,s:O}", "name", a->name, "metadata", a->metadata);
    int rc = CTL_OK;
    if (a->onnx) {
        json_t *ref = ctl_blob_ref(c, a->onnx, &rc);
        if (rc == CTL_OK) {
            json_t *model = json_pack("{s:o}", "onnx", ref);
            if (a->params)
                json_object_set_new(model, "parameters", name_list(a->params));
            json_object_set_new(body, "model", model);
        }
    } else if (a->jac_fit) {
        json_t *jac = json_object();
        json_object_set_new(body, "jacobian", jac);
        json_t *ref = ctl_blob_ref(c, a->jac_fit, &rc);
        if (ref)
            json_object_set_new(jac, "fit", ref);
        if (rc == CTL_OK && a->jac_probe && (ref = ctl_blob_ref(c, a->jac_probe, &rc)))
            json_object_set_new(jac, "probe", ref);
        if (a->layout)
            json_object_set_new(jac, "layout", name_list(a->layout));
        if (rc == CTL_OK && a->weights && (ref = ctl_blob_ref(c, a->weights, &rc)))
            json_object_set_new(body, "weights", ref);
    } else {
        json_error_t jerr;
        bool remote = strncmp(a->spec, "http://", 7) == 0 || strncmp(a->spec, "https://", 8) == 0;
        json_t *spec = strncmp(a->spec, "sha256:", 7) == 0 ? json_string(a->spec)
                       : remote ? json_pack("{s:s}", "url", a->spec)
                                : json_load_file(a->spec, 0, &jerr);
        if (!spec) {
            fprintf(stderr, "tpvctl: %s: %s (line %d)\n", a->spec, jerr.text, jerr.line);
            rc = CTL_ERR_LOCAL;
        }
        json_t *weights = rc == CTL_OK ? ctl_blob_ref(c, a->weights, &rc) : NULL;
        if (rc == CTL_OK)
            json_object_set_new(body, "model", json_pack("{s:o,s:o}", "spec", spec, "weights", weights));
        else
            json_decref(spec), json_decref(weights);
    }
    if (rc != CTL_OK) {
        json_decref(body);
        return rc;
    }
    *out = body;
    return CTL_OK;
}

static int cmd_candidate_add(const struct ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        { "name", required_argument, 0, 'n' }, { "spec", required_argument, 0, 's' },
        { "weights", required_argument, 0, 'W' }, { "jacobian-fit", required_argument, 0, 'f' },
        { "jacobian-probe", required_argument, 0, 'p' }, { "layout", required_argument, 0, 'l' },
        { "train-loss", required_argument, 0, 'L' }, { "epoch", required_argument, 0, 'e' },
        { "run", required_argument, 0, 'r' }, { "meta", required_argument, 0, 'M' },
        { "wait", no_argument, 0, 'w' }, { "timeout", required_argument, 0, 'T' },
        { "onnx", required_argument, 0, 'O' }, { "parameters", required_argument, 0, 'P' },
        { 0, 0, 0, 0 } };
    if (argc < 2)
        return usage_error("candidate add needs a study id");
    const char *sid = argv[1];
    struct candidate_args a = { .metadata = json_object() };
    int opt, rc = CTL_OK;
    optind = 2;
    while (rc == CTL_OK &&
           (opt = getopt_long(argc, argv, "n:s:W:f:p:l:L:e:r:M:wT:", opts, NULL)) != -1) {
        switch (opt) {
        case 'n': a.name = optarg; break;
        case 's': a.spec = optarg; break;
        case 'W': a.weights = optarg; break;
        case 'f': a.jac_fit = optarg; break;
        case 'p': a.jac_probe = optarg; break;
        case 'l': a.layout = optarg; break;
        case 'O': a.onnx = optarg; break;
        case 'P': a.params = optarg; break;
        case 'L': json_object_set_new(a.metadata, "train_loss", json_real(atof(optarg))); break;
        case 'e': json_object_set_new(a.metadata, "epoch", json_integer(atoll(optarg))); break;
        case 'r': json_object_set_new(a.metadata, "run", json_string(optarg)); break;
        case 'M':
            if (add_pairs(a.metadata, optarg, '\x01') != 0)
                rc = usage_error("--meta '%s' is not key=value", optarg);
            break;
        case 'w': a.wait = true; break;
        case 'T': a.timeout = atof(optarg); break;
        default: rc = CTL_ERR_USAGE;
        }
    }
    if (rc == CTL_OK && (!a.name || (!a.onnx && !a.jac_fit && (!a.spec || !a.weights))))
        rc = usage_error("candidate add needs --name and one of --spec with --weights, --onnx "
                         "or --jacobian-fit");
    if (rc == CTL_OK && a.onnx && (a.spec || a.weights || a.jac_fit))
        rc = usage_error("--onnx carries its weights: give it without --spec, --weights and "
                         "--jacobian-fit");
    if (rc == CTL_OK && a.params && !a.onnx)
        rc = usage_error("--parameters goes with --onnx");
    json_t *body = NULL, *resp = NULL;
    if (rc == CTL_OK)
        rc = candidate_body(c, &a, &body);
    if (rc == CTL_OK) {
        char path[256];
        snprintf(path, sizeof path, "/v1/studies/%s/candidates", sid);
        rc = ctl_call(c, "POST", path, body, NULL, NULL, NULL, &resp);
    }
    if (rc == CTL_OK) {
        const char *jid = json_string_value(json_object_get(json_object_get(resp, "job"), "id"));
        if (json_output && !a.wait)
            print_json(resp);
        else if (!a.wait)
            printf("%s\n", jid ? jid : "");
        if (a.wait && jid)
            rc = job_wait(c, jid, a.timeout, NULL);
    }
    json_decref(resp);
    json_decref(body);
    json_decref(a.metadata);
    return rc;
}

/* --- ranking ------------------------------------------------------------------------------- */

static void print_ranking_table(const json_t *r)
{
    size_t i;
    json_t *item;
    printf("%-5s %-28s %-14s %-12s %s\n", "rank", "candidate", "tpv", "stderr", "flags");
    json_array_foreach(json_object_get(r, "items"), i, item) {
        char flags[256] = "";
        size_t j;
        json_t *f;
        json_array_foreach(json_object_get(item, "flags"), j, f) {
            size_t used = strlen(flags);
            snprintf(flags + used, sizeof flags - used, "%s%s", j ? "," : "", json_string_value(f));
        }
        printf("%-5lld %-28.28s %-14.6g %-12.3g %s\n",
               (long long)json_integer_value(json_object_get(item, "rank")),
               json_string_value(json_object_get(item, "name")),
               json_number_value(json_object_get(item, "value")),
               json_number_value(json_object_get(item, "stderr")), flags);
    }
    size_t nex = json_array_size(json_object_get(r, "excluded"));
    printf("by %s on the %s split, study version %lld%s", json_string_value(json_object_get(r, "by")),
           json_string_value(json_object_get(r, "split")),
           (long long)json_integer_value(json_object_get(r, "version")), nex ? "; " : "\n");
    if (nex)
        printf("%zu candidate(s) excluded by --max-train-loss\n", nex);
}

/* --- CSV ---------------------------------------------------------------------------------- */

/* One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. */
static void csv_field(FILE *out, const char *text)
{
    if (!strpbrk(text, ",\"\r\n")) {
        fputs(text, out);
        return;
    }
    fputc('"', out);
    for (const char *p = text; *p; p++) {
        if (*p == '"')
            fputc('"', out);
        fputc(*p, out);
    }
    fputc('"', out);
}

/* The shortest %g spelling that reads back to the same double, as the server writes numbers. */
static void format_double(double v, char out[32])
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* A JSON value as one CSV cell: strings as they are, numbers shortest, null or absent empty,
 * arrays of strings joined with ';', anything else compact JSON. */
static void csv_value(FILE *out, const json_t *v)
{
    char num[32];
    if (!v || json_is_null(v)) {
        return;
    } else if (json_is_string(v)) {
        csv_field(out, json_string_value(v));
    } else if (json_is_integer(v)) {
        fprintf(out, "%lld", (long long)json_integer_value(v));
    } else if (json_is_real(v)) {
        format_double(json_real_value(v), num);
        fputs(num, out);
    } else if (json_is_boolean(v)) {
        fputs(json_is_true(v) ? "true" : "false", out);
    } else {
        char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        csv_field(out, text ? text : "");
        free(text);
    }
}

static void csv_flags(FILE *out, const json_t *flags)
{
    size_t n = 0, i;
    json_t *f;
    json_array_foreach(flags, i, f)
        n += strlen(str_or(f, "")) + 1;
    char *joined = calloc(n + 1, 1);
    if (!joined)
        return;
    json_array_foreach(flags, i, f) {
        if (i)
            strcat(joined, ";");
        strcat(joined, str_or(f, ""));
    }
    csv_field(out, joined);
    free(joined);
}

/* The header DESIGN section 5 gives the server's CSV ranking; tpvctl writes the same from JSON. */
static const char *const csv_columns[] = { "rank", "candidate_id", "name", "value", "stderr",
                                           "stderr_inputs", "p_lower_than_next", "flags" };

/* Writes a JSON ranking as CSV: the fixed columns, then every metadata key of any item (sorted). */
static void ranking_csv(FILE *out, const json_t *ranking)
{
    const json_t *items = json_object_get(ranking, "items");
    json_t *keys = json_object(); /* used as a set */
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) {
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(item, "metadata"), k, v)
            json_object_set_new(keys, k, json_null());
    }
    json_t *sorted = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(keys, k, v)
        json_array_append_new(sorted, json_string(k));
    /* json_object_foreach has no order: sort the names (insertion sort, a handful of keys) */
    for (size_t a = 1; a < json_array_size(sorted); a++)
        for (size_t b = a; b > 0 && strcmp(json_string_value(json_array_get(sorted, b - 1)),
                                           json_string_value(json_array_get(sorted, b))) > 0; b--) {
            json_t *tmp = json_incref(json_array_get(sorted, b));
            json_array_set(sorted, b, json_array_get(sorted, b - 1));
            json_array_set_new(sorted, b - 1, tmp);
        }
    for (size_t c = 0; c < sizeof csv_columns / sizeof csv_columns[0]; c++)
        fprintf(out, "%s%s", c ? "," : "", csv_columns[c]);
    json_t *key;
    json_array_foreach(sorted, i, key) {
        fputc(',', out);
        csv_field(out, json_string_value(key));
    }
    fputs("\r\n", out);
    json_array_foreach(items, i, item) {
        for (size_t c = 0; c < sizeof csv_columns / sizeof csv_columns[0]; c++) {
            if (c)
                fputc(',', out);
            if (strcmp(csv_columns[c], "flags") == 0)
                csv_flags(out, json_object_get(item, "flags"));
            else
                csv_value(out, json_object_get(item, csv_columns[c]));
        }
        size_t j;
        json_array_foreach(sorted, j, key) {
            fputc(',', out);
            csv_value(out, json_object_get(json_object_get(item, "metadata"),
                                           json_string_value(key)));
        }
        fputs("\r\n", out);
    }
    json_decref(sorted);
    json_decref(keys);
}

/* --csv: asks for CSV; a server that answers JSON anyway gets the same columns written here. */
static int ranking_print_csv(const struct ctl *c, const char *path)
{
    struct ctl_text text;
    int rc = ctl_get_text(c, path, "text/csv, application/json;q=0.5", &text);
    if (rc != CTL_OK)
        return rc;
    if (!text.is_json) {
        fwrite(text.data, 1, text.len, stdout);
    } else {
        json_error_t jerr;
        json_t *r = json_loadb(text.data, text.len, 0, &jerr);
        if (!r) {
            fprintf(stderr, "tpvctl: the ranking is not JSON: %s\n", jerr.text);
            rc = CTL_ERR_SERVER;
        } else {
            ranking_csv(stdout, r);
        }
        json_decref(r);
    }
    free(text.data);
    return rc;
}

static int cmd_ranking(const struct ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        { "by", required_argument, 0, 'b' }, { "split", required_argument, 0, 's' },
        { "max-train-loss", required_argument, 0, 'x' }, { 0, 0, 0, 0 } };
    if (argc < 2 || argv[1][0] == '-')
        return command_usage("ranking");
    char path[1024];
    int len = snprintf(path, sizeof path, "/v1/studies/%s/ranking?", argv[1]);
    int opt;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "b:s:x:", opts, NULL)) != -1) {
        const char *key = opt == 'b' ? "by" : opt == 's' ? "split" : opt == 'x' ? "max_train_loss" : NULL;
        if (!key)
            return command_usage("ranking");
        char *esc = curl_easy_escape(NULL, optarg, 0);
        len += snprintf(path + len, sizeof path - (size_t)len, "%s=%s&", key, esc);
        curl_free(esc);
        if ((size_t)len >= sizeof path)
            return usage_error("arguments too long");
    }
    path[len - 1] = '\0'; /* the trailing '&' or '?' */
    if (csv_output)
        return ranking_print_csv(c, path);
    json_t *resp = NULL;
    int rc = ctl_call(c, "GET", path, NULL, NULL, NULL, NULL, &resp);
    if (rc == CTL_OK) {
        if (json_output)
            print_json(resp);
        else
            print_ranking_table(resp);
    }
    json_decref(resp);
    return rc;
}

/* --- JBR ------------------------------------------------------------------------------------ */

/* The units of a JBR result in its order (lowest score first: the first to prune). */
static void print_jbr_units(const json_t *result)
{
    const json_t *units = json_object_get(result, "units"), *order = json_object_get(result, "order");
    size_t n = json_array_size(order) ? json_array_size(order) : json_array_size(units);
    printf("%-6s %-32s %-7s %s\n", "order", "layer", "index", "score");
    for (size_t i = 0; i < n; i++) {
        size_t u = json_array_size(order) ? (size_t)json_integer_value(json_array_get(order, i)) : i;
        const json_t *unit = json_array_get(units, u);
        if (!unit)
            continue;
        printf("%-6zu %-32.32s %-7lld %.6g\n", i + 1, str_or(json_object_get(unit, "layer"), ""),
               (long long)json_integer_value(json_object_get(unit, "index")),
               json_number_value(json_object_get(unit, "score")));
    }
}

static int cmd_jbr(const struct ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        { "confidence", required_argument, 0, 'C' }, { "batch-size", required_argument, 0, 'B' },
        { "wait", no_argument, 0, 'w' }, { "timeout", required_argument, 0, 'T' },
        { 0, 0, 0, 0 } };
    if (argc < 3 || argv[1][0] == '-' || argv[2][0] == '-')
        return command_usage("jbr");
    json_t *body = json_object();
    bool wait = false;
    double timeout = 0;
    int opt;
    optind = 3;
    while ((opt = getopt_long(argc, argv, "wT:", opts, NULL)) != -1) {
        switch (opt) {
        case 'C': json_object_set_new(body, "confidence", json_real(atof(optarg))); break;
        case 'B': json_object_set_new(body, "batch_size", json_integer(atoll(optarg))); break;
        case 'w': wait = true; break;
        case 'T': timeout = atof(optarg); break;
        default: json_decref(body); return command_usage("jbr");
        }
    }
    char path[512];
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/jbr", argv[1], argv[2]);
    json_t *resp = NULL, *job = NULL;
    int rc = ctl_call(c, "POST", path, body, NULL, NULL, NULL, &resp);
    json_decref(body);
    const char *jid = json_string_value(json_object_get(json_object_get(resp, "job"), "id"));
    if (rc == CTL_OK && wait && jid) {
        rc = job_wait(c, jid, timeout, &job);
        if (rc == CTL_OK && json_output)
            print_json(json_object_get(job, "result"));
        else if (rc == CTL_OK)
            print_jbr_units(json_object_get(job, "result"));
    } else if (rc == CTL_OK && json_output) {
        print_json(resp);
    } else if (rc == CTL_OK) {
        printf("%s\n", jid ? jid : "");
    }
    json_decref(job);
    json_decref(resp);
    return rc;
}

/* --- metrics and agreement ----------------------------------------------------------------- */

/* KEY=VALUE with VALUE a finite number or null, into obj.  Prints and returns false otherwise. */
static bool metric_arg(json_t *obj, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) {
        usage_error("'%s' is not KEY=VALUE", arg);
        return false;
    }
    char key[128];
    snprintf(key, sizeof key, "%.*s", (int)(eq - arg), arg);
    const char *v = eq + 1;
    if (strcmp(v, "null") == 0)
        return json_object_set_new(obj, key, json_null()) == 0;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (!v[0] || *end || errno == ERANGE || !isfinite(d)) {
        usage_error("metric %s: '%s' is not a finite number (or null)", key, v);
        return false;
    }
    return json_object_set_new(obj, key, json_real(d)) == 0;
}

/* A JSON object from FILE ("-": stdin); prints and returns NULL (with *rc) when it is not one. */
static json_t *load_object_file(const char *file, int *rc)
{
    json_error_t jerr;
    json_t *j = strcmp(file, "-") == 0 ? json_loadf(stdin, JSON_REJECT_DUPLICATES, &jerr)
                                      : json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    if (!j || !json_is_object(j)) {
        fprintf(stderr, "tpvctl: %s: %s\n", file, j ? "not a JSON object" : jerr.text);
        json_decref(j);
        *rc = CTL_ERR_LOCAL;
        return NULL;
    }
    return j;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* KEY=VALUE lines in byte order of the keys (a stable output for scripts). */
static void print_metrics_sorted(const json_t *m)
{
    size_t n = json_object_size(m), i = 0;
    const char **keys = calloc(n ? n : 1, sizeof *keys);
    const char *k;
    json_t *v;
    char num[32];
    if (!keys)
        return;
    json_object_foreach((json_t *)m, k, v)
        keys[i++] = k;
    qsort(keys, n, sizeof *keys, cmp_str);
    for (i = 0; i < n; i++) {
        format_double(json_number_value(json_object_get(m, keys[i])), num);
        printf("%s=%s\n", keys[i], num);
    }
    free(keys);
}

/* `metrics put SID CID (KEY=VALUE... | --json FILE)`; argv[0] is "put". */
static int cmd_metrics_put(const struct ctl *c, int argc, char **argv)
{
    if (argc < 4 || argv[1][0] == '-' || argv[2][0] == '-')
        return command_usage("metrics");
    json_t *body = NULL;
    int rc = CTL_OK;
    if (strcmp(argv[3], "--json") == 0 || strcmp(argv[3], "--file") == 0) {
        if (argc != 5)
            return command_usage("metrics");
        if (!(body = load_object_file(argv[4], &rc)))
            return rc;
    } else {
        body = json_object();
        for (int i = 3; i < argc; i++)
            if (!body || !metric_arg(body, argv[i])) {
                json_decref(body);
                return body ? CTL_ERR_USAGE : CTL_ERR_NOMEM;
            }
    }
    char path[512];
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/metrics", argv[1], argv[2]);
    json_t *resp = NULL;
    rc = ctl_call(c, "PUT", path, body, NULL, NULL, NULL, &resp);
    if (rc == CTL_OK) {
        const json_t *m = json_object_get(resp, "metrics");
        if (json_output) {
            print_json(resp);
        } else if (!m || json_object_size(m) == 0) {
            printf("(no metrics)\n");
        } else {
            print_metrics_sorted(m);
        }
    }
    json_decref(body);
    json_decref(resp);
    return rc;
}

static void print_cell(const json_t *v, int width)
{
    if (json_is_number(v))
        printf(" %*.3f", width, json_number_value(v));
    else
        printf(" %*s", width, "-");
}

/* The report as a table, one line per noise model and split, then the recommendation. */
static void print_agreement(const json_t *r)
{
    size_t i;
    json_t *it;
    printf("metric %s: %lld of %lld candidates have it\n",
           str_or(json_object_get(r, "metric"), ""),
           (long long)json_integer_value(json_object_get(r, "candidates_with_metric")),
           (long long)json_integer_value(json_object_get(r, "candidates")));
    printf("%-24s %-6s %5s %9s %9s %17s\n", "noise", "split", "n", "spearman", "kendall",
           "95% interval");
    json_array_foreach(json_object_get(r, "items"), i, it) {
        const json_t *ci = json_object_get(it, "ci");
        printf("%-24.24s %-6s %5lld", str_or(json_object_get(it, "noise"), ""),
               str_or(json_object_get(it, "split"), ""),
               (long long)json_integer_value(json_object_get(it, "n")));
        print_cell(json_object_get(it, "spearman"), 9);
        print_cell(json_object_get(it, "kendall"), 9);
        if (json_array_size(ci) == 2)
            printf("   [%6.3f, %6.3f]\n", json_number_value(json_array_get(ci, 0)),
                   json_number_value(json_array_get(ci, 1)));
        else
            printf(" %17s\n", "-");
    }
    const json_t *rec = json_object_get(r, "recommended");
    if (json_is_object(rec))
        printf("recommended: rank by %s on %s (tpvctl ranking SID -b %s -s %s)\n",
               str_or(json_object_get(rec, "noise"), ""), str_or(json_object_get(rec, "split"), ""),
               str_or(json_object_get(rec, "noise"), ""), str_or(json_object_get(rec, "split"), ""));
    else
        printf("recommended: none (no interval lies above 0: more candidates with the metric, "
               "or no noise model tracks it)\n");
}

static int cmd_agreement(const struct ctl *c, int argc, char **argv)
{
    static const struct option opts[] = { { "metric", required_argument, 0, 'm' },
                                          { 0, 0, 0, 0 } };
    if (argc < 2 || argv[1][0] == '-')
        return command_usage("agreement");
    const char *metric = NULL;
    int opt;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "m:", opts, NULL)) != -1) {
        if (opt != 'm')
            return command_usage("agreement");
        metric = optarg;
    }
    if (!metric || optind != argc)
        return command_usage("agreement");
    char path[1024];
    char *esc = curl_easy_escape(NULL, metric, 0);
    if (!esc)
        return CTL_ERR_NOMEM;
    int len = snprintf(path, sizeof path, "/v1/studies/%s/agreement?metric=%s", argv[1], esc);
    curl_free(esc);
    if (len < 0 || (size_t)len >= sizeof path)
        return usage_error("arguments too long");
    json_t *resp = NULL;
    int rc = ctl_call(c, "GET", path, NULL, NULL, NULL, NULL, &resp);
    if (rc == CTL_OK) {
        if (json_output)
            print_json(resp);
        else
            print_agreement(resp);
    }
    json_decref(resp);
    return rc;
}

/* --- lifecycle ----------------------------------------------------------------------------- */

/* DELETE of a study, candidate or blob: 204, silent but for a note on stderr. */
static int delete_resource(const struct ctl *c, const char *path, const char *what)
{
    int rc = ctl_call(c, "DELETE", path, NULL, NULL, NULL, NULL, NULL);
    if (rc == CTL_OK && !c->quiet)
        fprintf(stderr, "deleted %s\n", what);
    return rc;
}

/* `candidate retry SID CID [-w [-T S]]`: the new job's id, or its end with --wait. */
static int cmd_candidate_retry(const struct ctl *c, int argc, char **argv)
{
    static const struct option opts[] = { { "wait", no_argument, 0, 'w' },
                                          { "timeout", required_argument, 0, 'T' },
                                          { 0, 0, 0, 0 } };
    bool wait = false;
    double timeout = 0;
    int opt;
    optind = 3;
    while ((opt = getopt_long(argc, argv, "wT:", opts, NULL)) != -1) {
        if (opt == 'w')
            wait = true;
        else if (opt == 'T')
            timeout = atof(optarg);
        else
            return command_usage("candidate");
    }
    if (optind != argc)
        return command_usage("candidate");
    char path[512];
    json_t *resp = NULL;
    snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s/retry", argv[1], argv[2]);
    int rc = ctl_call(c, "POST", path, NULL, NULL, NULL, NULL, &resp);
    if (rc == CTL_OK) {
        const char *jid = json_string_value(json_object_get(json_object_get(resp, "job"), "id"));
        if (json_output && !wait)
            print_json(resp);
        else if (!wait)
            printf("%s\n", jid ? jid : "");
        if (wait && jid)
            rc = job_wait(c, jid, timeout, NULL);
    }
    json_decref(resp);
    return rc;
}

/* --- dispatch ------------------------------------------------------------------------------ */

/* `job wait JID [-T S]`. */
static int cmd_job_wait(const struct ctl *c, int argc, char **argv)
{
    static const struct option opts[] = { { "timeout", required_argument, 0, 'T' }, { 0, 0, 0, 0 } };
    double timeout = 0;
    int opt;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "T:", opts, NULL)) != -1) {
        if (opt != 'T')
            return command_usage("job");
        timeout = atof(optarg);
    }
    return job_wait(c, argv[1], timeout, NULL);
}

static int cmd_blob_put(const struct ctl *c, const char *file)
{
    char digest[72];
    bool uploaded;
    int rc = ctl_blob_put(c, file, digest, &uploaded);
    if (rc != CTL_OK)
        return rc;
    /* stdout is the digest alone, so that D=$(tpvctl blob put F) works whether or not the
     * server had the blob; what happened goes to stderr. */
    printf("%s\n", digest);
    if (!c->quiet)
        fprintf(stderr, "%s: %s\n", file, uploaded ? "uploaded" : "already on the server");
    return CTL_OK;
}

static int dispatch(const struct ctl *c, int argc, char **argv)
{
    char path[512];
    const char *group = argv[0], *verb = argc > 1 ? argv[1] : "";
#define IS(g, v) (strcmp(group, g) == 0 && strcmp(verb, v) == 0)
    if (IS("study", "create"))
        return cmd_study_create(c, argc - 1, argv + 1);
    if (IS("study", "list") && argc == 2)
        return list_all(c, "/v1/studies", NULL);
    if (IS("study", "get") && argc == 3) {
        snprintf(path, sizeof path, "/v1/studies/%s", argv[2]);
        return get_and_print(c, path);
    }
    if (IS("study", "delete") && argc == 3) {
        snprintf(path, sizeof path, "/v1/studies/%s", argv[2]);
        return delete_resource(c, path, argv[2]);
    }
    if (IS("inputs", "put") && argc == 5) {
        int rc;
        json_t *ref = ctl_blob_ref(c, argv[4], &rc);
        if (!ref)
            return rc;
        json_t *body = json_pack("{s:o}", "blob", ref), *resp = NULL;
        snprintf(path, sizeof path, "/v1/studies/%s/inputs/%s", argv[2], argv[3]);
        rc = ctl_call(c, "PUT", path, body, NULL, NULL, NULL, &resp);
        if (rc == CTL_OK && json_output)
            print_json(resp);
        json_decref(body);
        json_decref(resp);
        return rc;
    }
    if (IS("candidate", "add") && argc > 2)
        return cmd_candidate_add(c, argc - 1, argv + 1);
    if (IS("candidate", "list") && argc == 3)
        return candidate_list(c, argv[2]);
    if (IS("candidate", "get") && argc == 4) {
        snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", argv[2], argv[3]);
        return get_and_print(c, path);
    }
    if (IS("candidate", "delete") && argc == 4) {
        snprintf(path, sizeof path, "/v1/studies/%s/candidates/%s", argv[2], argv[3]);
        return delete_resource(c, path, argv[3]);
    }
    if (IS("candidate", "retry") && argc >= 4)
        return cmd_candidate_retry(c, argc - 1, argv + 1);
    if (IS("job", "get") && argc == 3) {
        snprintf(path, sizeof path, "/v1/jobs/%s", argv[2]);
        return get_and_print(c, path);
    }
    if (IS("job", "cancel") && argc == 3) {
        snprintf(path, sizeof path, "/v1/jobs/%s", argv[2]);
        json_t *resp = NULL;
        int rc = ctl_call(c, "DELETE", path, NULL, NULL, NULL, NULL, &resp);
        if (rc == CTL_OK && json_output)
            print_json(resp);
        json_decref(resp);
        return rc;
    }
    if (IS("job", "wait") && argc > 2)
        return cmd_job_wait(c, argc - 1, argv + 1);
    if (strcmp(group, "ranking") == 0)
        return cmd_ranking(c, argc, argv);
    if (strcmp(group, "jbr") == 0)
        return cmd_jbr(c, argc, argv);
    if (IS("metrics", "put"))
        return cmd_metrics_put(c, argc - 1, argv + 1);
    if (strcmp(group, "agreement") == 0)
        return cmd_agreement(c, argc, argv);
    if (IS("blob", "put") && argc == 3)
        return cmd_blob_put(c, argv[2]);
    if (IS("blob", "delete") && argc == 3) {
        snprintf(path, sizeof path, "/v1/blobs/%s", argv[2]);
        return delete_resource(c, path, argv[2]);
    }
#undef IS
    /* A known command with a missing or wrong verb or arguments: that command's usage. */
    int rc = command_usage(group);
    return rc >= 0 ? rc : usage_error("unknown command '%s'", group);
}

/* Takes -j/--json, --csv and -q/--quiet out of the arguments after the command (up to a "--"),
 * so that `tpvctl ranking SID --csv` means what `tpvctl --csv ranking SID` does.  Compacts argv;
 * returns the new argc. */
static int take_output_flags(int argc, char **argv, bool *quiet)
{
    int kept = 0, i = 0;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *a = argv[i];
        /* `metrics put SID CID --json FILE`: there --json names the body's file. */
        bool body_file = !strcmp(argv[0], "metrics") && !strcmp(a, "--json") && i + 1 < argc &&
                         !strchr(argv[i + 1], '=');
        if (body_file)
            argv[kept++] = argv[i];
        else if (!strcmp(a, "--json") || !strcmp(a, "-j"))
            json_output = true;
        else if (!strcmp(a, "--csv"))
            csv_output = true;
        else if (!strcmp(a, "--quiet") || !strcmp(a, "-q"))
            *quiet = true;
        else
            argv[kept++] = argv[i];
    }
    for (; i < argc; i++)
        argv[kept++] = argv[i];
    return kept;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "url", required_argument, 0, 'u' }, { "token", required_argument, 0, 't' },
        { "json", no_argument, 0, 'j' },      { "quiet", no_argument, 0, 'q' },
        { "csv", no_argument, 0, 'c' },       { "help", no_argument, 0, 'h' },
        { "max-response", required_argument, 0, 'm' },
        { 0, 0, 0, 0 } };
    struct ctl c = { .url = getenv("TPV_URL"), .token = getenv("TPV_TOKEN") };
    bool quiet = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "+u:t:jqh", opts, NULL)) != -1) {
        switch (opt) {
        case 'u': c.url = optarg; break;
        case 't': c.token = optarg; break;
        case 'j': json_output = true; break;
        case 'q': quiet = true; break;
        case 'c': csv_output = true; break;
        case 'h': usage(stdout); return CTL_OK;
        case 'm': {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-' || n == 0 || n > SIZE_MAX / 2)
                return usage_error("--max-response '%s' is not a positive number of bytes", optarg);
            c.max_response = (size_t)n;
            break;
        }
        default: usage(stderr); return CTL_ERR_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return CTL_ERR_USAGE;
    }
    int cmd_argc = take_output_flags(argc - optind, argv + optind, &quiet);
    char url[2048];
    snprintf(url, sizeof url, "%s", c.url && c.url[0] ? c.url : "http://127.0.0.1:8080");
    for (size_t n = strlen(url); n > 0 && url[n - 1] == '/'; n--)
        url[n - 1] = '\0';
    c.url = url;
    if (c.token && !c.token[0])
        c.token = NULL;
    c.progress = !quiet && isatty(STDERR_FILENO);
    c.quiet = quiet;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = dispatch(&c, cmd_argc, argv + optind);
    curl_global_cleanup();
    return rc;
}
