/* module.c — the generic part of the module tree: ownership, names, printing,
 * freezing and state-dict traversal. */
#include "nn/module.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

graft_module *graft_module_new(const graft_module_type *type, void *cfg) {
    graft_module *m = calloc(1, sizeof *m);
    if (!m) {
        graft_error(GRAFT_ERR_NOMEM, "out of memory creating %s", type->name);
        return NULL;
    }
    m->type = type;
    m->cfg = cfg;
    m->name = strdup("");
    graft_tensor_init(&m->out, GRAFT_F32);
    graft_tensor_init(&m->dx, GRAFT_F32);
    if (!m->name) {
        free(m);
        graft_error(GRAFT_ERR_NOMEM, "out of memory creating %s", type->name);
        return NULL;
    }
    return m;
}

void graft_module_free(graft_module *m) {
    if (!m) return;
    for (int i = 0; i < m->nchildren; i++) graft_module_free(m->children[i]);
    free(m->children);
    for (int i = 0; i < m->nparams; i++) {
        graft_tensor_release(&m->params[i].value);
        graft_tensor_release(&m->params[i].grad);
    }
    for (int i = 0; i < m->nbuffers; i++) graft_tensor_release(&m->buffers[i].value);
    graft_tensor_release(&m->out);
    graft_tensor_release(&m->dx);
    if (m->type->destroy) m->type->destroy(m);
    free(m->name);
    free(m);
}

graft_status graft_module_add(graft_module *m, const char *name, graft_module *child) {
    if (!child) return GRAFT_ERR_NOMEM; /* the constructor already set the message */
    char *copy = strdup(name);
    graft_module **grown = realloc(m->children, (size_t)(m->nchildren + 1) * sizeof *grown);
    if (!copy || !grown) {
        free(copy);
        if (grown) m->children = grown;
        graft_module_free(child);
        return graft_error(GRAFT_ERR_NOMEM, "out of memory adding module %s", name);
    }
    m->children = grown;
    free(child->name);
    child->name = copy;
    child->parent = m;
    child->training = m->training;
    m->children[m->nchildren++] = child;
    return GRAFT_OK;
}

void graft_module_replace_child(graft_module *m, int i, graft_module *child) {
    graft_module *old = m->children[i];
    free(child->name);
    child->name = old->name;
    old->name = NULL;
    child->parent = m;
    child->training = m->training;
    m->children[i] = child;
    graft_module_free(old);
}

static graft_status init_tensor(graft_tensor *t, graft_dtype dtype, int ndim, const int64_t *shape) {
    graft_tensor_init(t, dtype);
    return graft_tensor_resize(t, ndim, shape);
}

graft_status graft_module_add_param(graft_module *m, const char *name, graft_dtype dtype,
                                    int ndim, const int64_t *shape) {
    if (m->nparams >= GRAFT_MAX_PARAMS)
        return graft_error(GRAFT_ERR_INVALID, "%s has too many parameters", m->type->name);
    graft_param *p = &m->params[m->nparams];
    memset(p, 0, sizeof *p);
    p->name = name;
    graft_tensor_init(&p->grad, dtype);
    graft_status s = init_tensor(&p->value, dtype, ndim, shape);
    if (s) return s;
    m->nparams++;
    return GRAFT_OK;
}

graft_status graft_module_add_buffer(graft_module *m, const char *name, graft_dtype dtype,
                                     int ndim, const int64_t *shape) {
    if (m->nbuffers >= GRAFT_MAX_BUFFERS)
        return graft_error(GRAFT_ERR_INVALID, "%s has too many buffers", m->type->name);
    graft_buffer *b = &m->buffers[m->nbuffers];
    b->name = name;
    graft_status s = init_tensor(&b->value, dtype, ndim, shape);
    if (s) return s;
    m->nbuffers++;
    return GRAFT_OK;
}

graft_param *graft_module_param(graft_module *m, const char *name) {
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

graft_buffer *graft_module_buffer(graft_module *m, const char *name) {
    for (int i = 0; i < m->nbuffers; i++)
        if (strcmp(m->buffers[i].name, name) == 0) return &m->buffers[i];
    return NULL;
}

void graft_module_path(const graft_module *m, char *buf, size_t size) {
    /* Collect the chain root..m, then join with dots. */
    const graft_module *chain[64];
    int depth = 0;
    for (const graft_module *p = m; p && p->parent && depth < 64; p = p->parent) chain[depth++] = p;
    size_t len = 0;
    buf[0] = 0;
    for (int i = depth - 1; i >= 0 && len < size; i--)
        len += (size_t)snprintf(buf + len, size - len, "%s%s", i == depth - 1 ? "" : ".",
                                chain[i]->name);
}

graft_module *graft_module_find(graft_module *root, const char *path) {
    graft_module *m = root;
    const char *p = path;
    while (m && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        graft_module *next = NULL;
        for (int i = 0; i < m->nchildren; i++)
            if (strlen(m->children[i]->name) == n && strncmp(m->children[i]->name, p, n) == 0) {
                next = m->children[i];
                break;
            }
        m = next;
        p += n;
        if (*p == '.') {
            p++;
            if (!*p) return NULL; /* trailing dot */
        }
    }
    return m;
}

static void indent(graft_strbuf *sb, int n) {
    for (int i = 0; i < n; i++) graft_strbuf_append(sb, " ");
}

/* nn.Module.__repr__: one line when there are no children, else one line per
 * extra_repr line and per child, each child's own lines indented by two more. */
static void repr_at(const graft_module *m, graft_strbuf *sb, int depth) {
    graft_strbuf extra;
    graft_strbuf_init(&extra);
    if (m->type->extra_repr) m->type->extra_repr(m, &extra);
    graft_strbuf_append(sb, m->type->name);
    graft_strbuf_append(sb, "(");
    if (m->nchildren == 0) {
        if (extra.len) graft_strbuf_append(sb, extra.data);
    } else {
        if (extra.len) {
            graft_strbuf_append(sb, "\n");
            indent(sb, depth + 2);
            graft_strbuf_append(sb, extra.data);
        }
        for (int i = 0; i < m->nchildren; i++) {
            graft_strbuf_append(sb, "\n");
            indent(sb, depth + 2);
            graft_strbuf_printf(sb, "(%s): ", m->children[i]->name);
            repr_at(m->children[i], sb, depth + 2);
        }
        graft_strbuf_append(sb, "\n");
        indent(sb, depth);
    }
    graft_strbuf_append(sb, ")");
    graft_strbuf_free(&extra);
}

void graft_module_repr(const graft_module *m, graft_strbuf *sb) { repr_at(m, sb, 0); }

static int visit(graft_module *m, char *prefix, size_t len, size_t cap, graft_state_visit_fn fn,
                 void *user) {
    int r;
    for (int i = 0; i < m->nparams; i++) {
        snprintf(prefix + len, cap - len, "%s", m->params[i].name);
        if ((r = fn(user, prefix, m, &m->params[i], NULL))) return r;
    }
    for (int i = 0; i < m->nbuffers; i++) {
        snprintf(prefix + len, cap - len, "%s", m->buffers[i].name);
        if ((r = fn(user, prefix, m, NULL, &m->buffers[i]))) return r;
    }
    for (int i = 0; i < m->nchildren; i++) {
        int n = snprintf(prefix + len, cap - len, "%s.", m->children[i]->name);
        if (n < 0 || len + (size_t)n >= cap) continue; /* absurdly deep; never in practice */
        if ((r = visit(m->children[i], prefix, len + (size_t)n, cap, fn, user))) return r;
    }
    prefix[len] = 0;
    return 0;
}

int graft_module_visit_state(graft_module *m, graft_state_visit_fn fn, void *user) {
    char prefix[1024] = "";
    return visit(m, prefix, 0, sizeof prefix, fn, user);
}

void graft_module_set_training(graft_module *m, bool training) {
    m->training = training;
    for (int i = 0; i < m->nchildren; i++) graft_module_set_training(m->children[i], training);
}

static void set_own_frozen(graft_module *m, bool frozen) {
    for (int i = 0; i < m->nparams; i++) {
        m->params[i].frozen = frozen;
        if (frozen) graft_tensor_release(&m->params[i].grad); /* frozen layers hold no gradient */
    }
}

void graft_module_set_frozen(graft_module *m, bool frozen) {
    set_own_frozen(m, frozen);
    for (int i = 0; i < m->nchildren; i++) graft_module_set_frozen(m->children[i], frozen);
}

void graft_module_set_frozen_except(graft_module *m, const graft_module *skip, bool frozen) {
    if (m == skip) return;
    const graft_module *a = skip;
    while (a && a != m) a = a->parent;
    if (!a) { /* skip is not below m */
        graft_module_set_frozen(m, frozen);
        return;
    }
    set_own_frozen(m, frozen);
    for (int i = 0; i < m->nchildren; i++) graft_module_set_frozen_except(m->children[i], skip, frozen);
}

bool graft_module_own_params_frozen(const graft_module *m) {
    for (int i = 0; i < m->nparams; i++)
        if (!m->params[i].frozen) return false;
    return true;
}

bool graft_module_has_trainable(const graft_module *m) {
    if (!graft_module_own_params_frozen(m)) return true;
    for (int i = 0; i < m->nchildren; i++)
        if (graft_module_has_trainable(m->children[i])) return true;
    return false;
}

graft_status graft_module_error(const graft_module *m, graft_status status, const char *fmt, ...) {
    char path[512], msg[1024];
    graft_module_path(m, path, sizeof path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return graft_error(status, "%s (%s): %s", path[0] ? path : "model", m->type->name, msg);
}

graft_status graft_module_forward(graft_module *m, graft_ctx *ctx, graft_tensor *in,
                                  graft_tensor **out) {
    m->in = in;
    return m->type->forward(m, ctx, in, out);
}

graft_status graft_module_backward(graft_module *m, graft_ctx *ctx, graft_tensor *dy,
                                   graft_tensor **dx) {
    *dx = NULL;
    if (!m->in) return graft_module_error(m, GRAFT_ERR_INVALID, "backward before forward");
    if (m->nchildren == 0) ctx->backward_ops++;
    return m->type->backward(m, ctx, dy, dx);
}

graft_status graft_param_grad_for_write(graft_param *p, float **grad, bool *overwrite) {
    *overwrite = p->grad_stale;
    if (!p->grad.data || !graft_tensor_same_shape(&p->grad, &p->value)) {
        graft_status s = graft_tensor_resize(&p->grad, p->value.ndim, p->value.shape);
        if (s) return s;
        *overwrite = true;
    }
    p->grad_stale = false;
    p->grad_sunk = false;
    *grad = p->grad.data;
    return GRAFT_OK;
}

graft_status graft_param_grad(graft_param *p, float **grad) {
    bool overwrite;
    graft_status s = graft_param_grad_for_write(p, grad, &overwrite);
    if (!s && overwrite) graft_tensor_zero(&p->grad);
    return s;
}

void graft_param_zero_grad_lazy(graft_param *p) {
    if (p->grad.data) p->grad_stale = true;
    p->grad_sunk = false;
}

bool graft_param_may_sink(const graft_param *p) {
    return p->sink && !p->frozen && !p->grad_sunk && (p->grad_stale || !p->grad.data);
}

void graft_param_grad_settle(graft_param *p) {
    if (!p->grad_stale || p->grad_sunk) return;
    if (p->grad.data) graft_tensor_zero(&p->grad);
    p->grad_stale = false;
}
