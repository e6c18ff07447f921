/* torch_fixture.c: reference files from tests/torch scripts (see torch_fixture.h). */
#include "tests/unit/torch_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <cmocka.h>

#define PYTHON "/usr/bin/python3"

int torch_fixture_make(char *dir, size_t cap, const char *tag, const char *script)
{
    const char *root = getenv("TPV_SOURCE_ROOT");
    if (!root || access(PYTHON, X_OK) != 0)
        return -1;
    if ((size_t)snprintf(dir, cap, "/tmp/tpv-%s-XXXXXX", tag) >= cap || !mkdtemp(dir))
        return -1;
    char cmd[1024];
    if ((size_t)snprintf(cmd, sizeof cmd, PYTHON " '%s/tests/torch/%s' '%s' >/dev/null 2>&1", root,
                         script, dir) >= sizeof cmd)
        return -1;
    return system(cmd) == 0 ? 0 : -1;
}

int torch_fixture_remove(const char *dir)
{
    char cmd[512];
    if ((size_t)snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir) >= sizeof cmd)
        return -1;
    return system(cmd) == 0 ? 0 : -1;
}

void *torch_fixture_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}
