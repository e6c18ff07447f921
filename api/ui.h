/* ui.h: the built-in dashboard (DESIGN.md section 5, GET /ui/ and every path under it): static
 * files compiled into the binary by api/ui_embed.py, served with a Content-Security-Policy that
 * allows only the daemon itself.  The page reads the REST API like any other client, with the
 * same bearer token. */
#ifndef TPV_API_UI_H
#define TPV_API_UI_H

#include <stddef.h>

struct ui_asset {
    const char *name; /* base name under /ui/assets/ ("app.js"); "index.html" is the page */
    const char *content_type;
    const unsigned char *data;
    size_t len;
};

/* Generated table (ui_assets.c, built from api/ui_assets/). */
extern const struct ui_asset ui_assets[];
extern const size_t ui_asset_count;

/* The asset called `name`, or NULL. */
const struct ui_asset *ui_asset_find(const char *name);

#endif
