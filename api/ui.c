/* ui.c: serves the dashboard (see ui.h).  Every path under /ui/ answers the same page, whose script
 * reads the path to pick its view; only /ui/assets/<name> answers a file of its own.  Nothing here
 * touches the store: the page gets its data through the REST API with the caller's token, so the
 * page itself is open (it has to be, to show the token prompt). */
#include "api/handlers.h"
#include "api/ui.h"

#include <stdlib.h>
#include <string.h>

#define UI_ASSET_PREFIX "/ui/assets/"

/* Only the daemon itself: scripts, styles and fetches from this origin, no inline script or
 * style attribute, no framing (the token prompt must not be clickjacked), no plugins. */
static const char ui_csp[] =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'";

const struct ui_asset *ui_asset_find(const char *name)
{
    for (size_t i = 0; i < ui_asset_count; i++)
        if (strcmp(ui_assets[i].name, name) == 0)
            return &ui_assets[i];
    return NULL;
}

static void reply_asset(struct api_response *resp, const struct ui_asset *a)
{
    /* The response owns its body (api_response_free): a copy, small and once per page load. */
    char *body = malloc(a->len ? a->len : 1);
    if (!body) {
        api_reply_errorf(resp, TPV_ENOMEM, NULL, "out of memory");
        return;
    }
    memcpy(body, a->data, a->len);
    resp->status = 200;
    resp->body = body;
    resp->body_len = a->len;
    resp->content_type = a->content_type;
    /* A failed add marks the reply incomplete: the router then answers 500, never a page
     * without its policy. */
    api_response_add_header(resp, "Content-Security-Policy", ui_csp);
    api_response_add_header(resp, "X-Content-Type-Options", "nosniff");
    api_response_add_header(resp, "Referrer-Policy", "no-referrer");
    api_response_add_header(resp, "Cache-Control", "no-cache");
}

void api_handle_ui(const struct api_env *env, struct api_request *req, struct api_response *resp)
{
    (void)env;
    const char *name = "index.html";
    if (strncmp(req->path, UI_ASSET_PREFIX, strlen(UI_ASSET_PREFIX)) == 0) {
        name = req->path + strlen(UI_ASSET_PREFIX);
        if (strcmp(name, "index.html") == 0)
            name = "";
    }
    const struct ui_asset *a = ui_asset_find(name);
    if (!a) {
        api_reply_errorf(resp, TPV_ENOTFOUND, "path", "no dashboard file %s", req->path);
        return;
    }
    reply_asset(resp, a);
}
