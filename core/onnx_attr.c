/* onnx_attr.c: typed attribute access for the ONNX runtime (onnx_attr.h). */
#include "core/onnx_attr.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "onnx.pb-c.h"

static const Onnx__AttributeProto *find(const struct tpv_onnx_node *nd, const char *name)
{
    const Onnx__NodeProto *p = nd->proto;
    for (size_t i = 0; i < p->n_attribute; i++)
        if (p->attribute[i]->name && strcmp(p->attribute[i]->name, name) == 0)
            return p->attribute[i];
    return NULL;
}

static int wrong_type(const struct tpv_onnx_node *nd, const char *name, const char *want,
                      struct tpv_err *err)
{
    return tpv_err_set(err, TPV_EINVAL, nd->name, "node '%s' (%s): attribute '%s' must be %s",
                       nd->name, nd->op_type, name, want);
}

bool tpv_onnx_attr_has(const struct tpv_onnx_node *nd, const char *name)
{
    return find(nd, name) != NULL;
}

int tpv_onnx_attr_int(const struct tpv_onnx_node *nd, const char *name, int64_t def, int64_t *out,
                      struct tpv_err *err)
{
    const Onnx__AttributeProto *a = find(nd, name);
    *out = def;
    if (!a)
        return TPV_OK;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT)
        return wrong_type(nd, name, "an int", err);
    *out = a->i;
    return TPV_OK;
}

int tpv_onnx_attr_float(const struct tpv_onnx_node *nd, const char *name, double def, double *out,
                        struct tpv_err *err)
{
    const Onnx__AttributeProto *a = find(nd, name);
    *out = def;
    if (!a)
        return TPV_OK;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
        return wrong_type(nd, name, "a float", err);
    *out = a->f;
    return TPV_OK;
}

int tpv_onnx_attr_ints(const struct tpv_onnx_node *nd, const char *name, int64_t *out, size_t max,
                       size_t *n, struct tpv_err *err)
{
    const Onnx__AttributeProto *a = find(nd, name);
    *n = 0;
    if (!a)
        return TPV_OK;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS)
        return wrong_type(nd, name, "a list of ints", err);
    if (a->n_ints > max)
        return tpv_onnx_attr_unsupported(err, nd, name, "%zu entries (at most %zu)", a->n_ints, max);
    memcpy(out, a->ints, a->n_ints * sizeof *out);
    *n = a->n_ints;
    return TPV_OK;
}

int tpv_onnx_attr_str_is(const struct tpv_onnx_node *nd, const char *name, const char *want,
                         bool def_is_want, bool *eq, struct tpv_err *err)
{
    const Onnx__AttributeProto *a = find(nd, name);
    *eq = def_is_want;
    if (!a)
        return TPV_OK;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING)
        return wrong_type(nd, name, "a string", err);
    size_t len = strlen(want);
    *eq = a->s.len == len && memcmp(a->s.data, want, len) == 0;
    return TPV_OK;
}

int tpv_onnx_attr_str(const struct tpv_onnx_node *nd, const char *name, char *out, size_t cap,
                      struct tpv_err *err)
{
    const Onnx__AttributeProto *a = find(nd, name);
    out[0] = 0;
    if (!a)
        return TPV_OK;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING)
        return wrong_type(nd, name, "a string", err);
    if (a->s.len >= cap || memchr(a->s.data, 0, a->s.len))
        return tpv_onnx_attr_unsupported(err, nd, name, "longer than %zu characters", cap - 1);
    memcpy(out, a->s.data, a->s.len);
    out[a->s.len] = 0;
    return TPV_OK;
}

const void *tpv_onnx_attr_tensor(const struct tpv_onnx_node *nd, const char *name)
{
    const Onnx__AttributeProto *a = find(nd, name);
    if (!a || a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR)
        return NULL;
    return a->t;
}

int tpv_onnx_attr_unsupported(struct tpv_err *err, const struct tpv_onnx_node *nd, const char *name,
                              const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tpv_err_set(err, TPV_EINVAL, nd->name,
                       "node '%s' (%s): unsupported value of attribute '%s': %s", nd->name,
                       nd->op_type, name, what);
}
