/* report.c — report.html for `graft demo`: one self-contained page (inline CSS, inline
 * SVG charts, the images as PNG data: URIs; no script and nothing fetched), so it can be
 * mailed, archived or opened offline.
 *
 * Element ids the tests look for: results, curves, sweep (only when swept), per-class,
 * confusion, grid. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/strbuf.h"
#include "demo/demo.h"
#include "demo/png.h"
#include "io/atomic_file.h"

/* chart geometry, in SVG user units (CSS pixels) */
#define CHART_W 640
#define CHART_H 300
#define MARGIN_L 56
#define MARGIN_R 150 /* the legend sits here */
#define MARGIN_T 16
#define MARGIN_B 44
#define CELL 64      /* confusion matrix cell */
#define GRID_SCALE 3 /* image grid: 28 px images shown at 84 px */

static const char *const COLORS[GRAFT_DEMO_METHODS] = {"#7f7f7f", "#1f77b4", "#d62728"};

static void escape(graft_strbuf *sb, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': graft_strbuf_append(sb, "&amp;"); break;
        case '<': graft_strbuf_append(sb, "&lt;"); break;
        case '>': graft_strbuf_append(sb, "&gt;"); break;
        case '"': graft_strbuf_append(sb, "&quot;"); break;
        default: graft_strbuf_appendn(sb, s, 1);
        }
    }
}

static const char *letter_name(int m) {
    static const char *const NAMES[GRAFT_DEMO_METHODS] = {"(a) scratch", "(b) transfer", "(c) fine-tune"};
    return NAMES[m];
}

/* ---- charts ------------------------------------------------------------------------------ */

typedef struct series {
    const char *name, *color;
    const double *x, *y; /* x NULL: 1, 2, 3, ... plus x_offset */
    double x_offset;
    int64_t n;
    int markers;
} series;

typedef struct axes {
    double x0, x1, y0, y1;
    int logx;
} axes;

static double px(const axes *a, double x) {
    double t = a->logx ? (log(x) - log(a->x0)) / (log(a->x1) - log(a->x0)) : (x - a->x0) / (a->x1 - a->x0);
    return MARGIN_L + t * (CHART_W - MARGIN_L - MARGIN_R);
}

static double py(const axes *a, double y) {
    return CHART_H - MARGIN_B - (y - a->y0) / (a->y1 - a->y0) * (CHART_H - MARGIN_T - MARGIN_B);
}

/* A step of 1, 2 or 5 times a power of ten giving about `ticks` intervals over span. */
static double nice_step(double span, int ticks) {
    double raw = span / ticks, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

static void chart_open(graft_strbuf *sb, const char *id, const char *label) {
    graft_strbuf_printf(sb, "<svg id=\"%s\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
                        "height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"", id, CHART_W, CHART_H, CHART_W,
                        CHART_H);
    escape(sb, label);
    graft_strbuf_append(sb, "\">\n");
}

/* Axes, grid lines and tick labels; xticks/nx: explicit x ticks (else nice ones). */
static void chart_axes(graft_strbuf *sb, const axes *a, const char *xlabel, const char *ylabel, const double *xticks,
                       int nx, const char *yfmt) {
    double ystep = nice_step(a->y1 - a->y0, 5);
    for (double y = ceil(a->y0 / ystep) * ystep; y <= a->y1 + 1e-9; y += ystep) {
        graft_strbuf_printf(sb, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>", MARGIN_L,
                            CHART_W - MARGIN_R, py(a, y), py(a, y));
        graft_strbuf_printf(sb, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" class=\"tick\">", MARGIN_L - 6,
                            py(a, y) + 4);
        graft_strbuf_printf(sb, yfmt, y);
        graft_strbuf_append(sb, "</text>\n");
    }
    double auto_ticks[16];
    if (!xticks) {
        double xstep = nice_step(a->x1 - a->x0, 6);
        nx = 0;
        for (double x = ceil(a->x0 / xstep) * xstep; x <= a->x1 + 1e-9 && nx < 16; x += xstep) auto_ticks[nx++] = x;
        xticks = auto_ticks;
    }
    for (int i = 0; i < nx; i++)
        graft_strbuf_printf(sb, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" class=\"tick\">%g</text>\n",
                            px(a, xticks[i]), CHART_H - MARGIN_B + 16, xticks[i]);
    graft_strbuf_printf(sb, "<path d=\"M%d %d V%d H%d\" fill=\"none\" stroke=\"#333\"/>\n", MARGIN_L, MARGIN_T,
                        CHART_H - MARGIN_B, CHART_W - MARGIN_R);
    graft_strbuf_printf(sb, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                        (MARGIN_L + CHART_W - MARGIN_R) / 2, CHART_H - 8, xlabel);
    graft_strbuf_printf(sb, "<text transform=\"translate(14 %d) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
                        (MARGIN_T + CHART_H - MARGIN_B) / 2, ylabel);
}

static void chart_series(graft_strbuf *sb, const axes *a, const series *s, int ns) {
    for (int i = 0; i < ns; i++) {
        graft_strbuf_printf(sb, "<g class=\"series\" data-name=\"%s\"><polyline fill=\"none\" stroke=\"%s\" "
                            "stroke-width=\"2\" points=\"", s[i].name, s[i].color);
        for (int64_t j = 0; j < s[i].n; j++) {
            double x = s[i].x ? s[i].x[j] : s[i].x_offset + (double)(j + 1);
            graft_strbuf_printf(sb, "%s%.1f,%.1f", j ? " " : "", px(a, x), py(a, s[i].y[j]));
        }
        graft_strbuf_append(sb, "\"/>");
        for (int64_t j = 0; s[i].markers && j < s[i].n; j++)
            graft_strbuf_printf(sb, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>", px(a, s[i].x[j]),
                                py(a, s[i].y[j]), s[i].color);
        graft_strbuf_append(sb, "</g>\n");
        int ly = MARGIN_T + 10 + 22 * i;
        graft_strbuf_printf(sb, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>"
                            "<text x=\"%d\" y=\"%d\">%s</text>\n", CHART_W - MARGIN_R + 12, CHART_W - MARGIN_R + 32,
                            ly, ly, s[i].color, CHART_W - MARGIN_R + 38, ly + 4, s[i].name);
    }
}

/* Training loss of every step; fine-tune continues where transfer stopped. */
static void curves(graft_strbuf *sb, const graft_demo_k_result *run) {
    series s[GRAFT_DEMO_METHODS];
    axes a = {.x0 = 0, .x1 = 1, .y0 = 0, .y1 = 0};
    for (int m = 0; m < GRAFT_DEMO_METHODS; m++) {
        const graft_demo_method *r = &run->method[m];
        s[m] = (series){.name = letter_name(m), .color = COLORS[m], .y = r->step_loss, .n = r->steps,
                        .x_offset = m == 2 ? (double)run->method[1].steps : 0};
        if (s[m].x_offset + (double)r->steps > a.x1) a.x1 = s[m].x_offset + (double)r->steps;
        for (int64_t j = 0; j < r->steps; j++)
            if (r->step_loss[j] > a.y1) a.y1 = r->step_loss[j];
    }
    if (!(a.y1 > 0)) a.y1 = 1;
    chart_open(sb, "curves", "training loss per step for the three methods");
    chart_axes(sb, &a, "training step (batch)", "training loss", NULL, 0, "%g");
    chart_series(sb, &a, s, GRAFT_DEMO_METHODS);
    graft_strbuf_append(sb, "</svg>\n");
}

/* Accuracy against K, log-scaled K. */
static void sweep_chart(graft_strbuf *sb, const graft_demo_result *r) {
    double ks[GRAFT_DEMO_MAX_RUNS], acc[GRAFT_DEMO_METHODS][GRAFT_DEMO_MAX_RUNS];
    axes a = {.x0 = 1e30, .x1 = 0, .y0 = 100, .y1 = 0, .logx = 1};
    for (int64_t i = 0; i < r->nruns; i++) {
        ks[i] = (double)r->runs[i].k;
        a.x0 = fmin(a.x0, ks[i]);
        a.x1 = fmax(a.x1, ks[i]);
        for (int m = 0; m < GRAFT_DEMO_METHODS; m++) {
            acc[m][i] = 100 * r->runs[i].method[m].accuracy;
            a.y0 = fmin(a.y0, acc[m][i]);
            a.y1 = fmax(a.y1, acc[m][i]);
        }
    }
    /* a little room around the points; the accuracy axis is in whole tens */
    a.x0 /= 1.3;
    a.x1 *= 1.3;
    a.y0 = fmax(0, floor(a.y0 / 10) * 10);
    a.y1 = fmin(100, ceil(a.y1 / 10) * 10);
    if (a.y1 <= a.y0) a.y1 = a.y0 + 10;
    series s[GRAFT_DEMO_METHODS];
    for (int m = 0; m < GRAFT_DEMO_METHODS; m++)
        s[m] = (series){.name = letter_name(m), .color = COLORS[m], .x = ks, .y = acc[m], .n = r->nruns, .markers = 1};
    chart_open(sb, "sweep", "accuracy against labelled images per class");
    chart_axes(sb, &a, "labelled training images per class (K, log scale)", "accuracy (%)", ks, (int)r->nruns, "%g");
    chart_series(sb, &a, s, GRAFT_DEMO_METHODS);
    graft_strbuf_append(sb, "</svg>\n");
}

/* Rows: true class; columns: predicted; colour: the row's fraction. */
static void confusion(graft_strbuf *sb, const graft_demo_result *r, const graft_demo_method *m) {
    int64_t k = r->num_classes;
    int left = 110, top = 90, w = left + (int)k * CELL + 10, h = top + (int)k * CELL + 10;
    graft_strbuf_printf(sb, "<svg id=\"confusion\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                        "viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"confusion matrix\">\n", w, h, w, h);
    graft_strbuf_printf(sb, "<text x=\"%d\" y=\"14\" text-anchor=\"middle\">predicted</text>\n", left + (int)k * CELL / 2);
    graft_strbuf_printf(sb, "<text transform=\"translate(12 %d) rotate(-90)\" text-anchor=\"middle\">true</text>\n",
                        top + (int)k * CELL / 2);
    for (int64_t c = 0; c < k; c++) {
        graft_strbuf_printf(sb, "<text transform=\"translate(%d %d) rotate(-40)\" class=\"tick\">",
                            left + (int)c * CELL + CELL / 2 - 6, top - 6);
        escape(sb, r->classes[c]);
        graft_strbuf_printf(sb, "</text><text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"tick\">", left - 6,
                            top + (int)c * CELL + CELL / 2 + 4);
        escape(sb, r->classes[c]);
        graft_strbuf_append(sb, "</text>\n");
    }
    for (int64_t t = 0; t < k; t++) {
        int64_t row = 0;
        for (int64_t p = 0; p < k; p++) row += m->confusion[t * k + p];
        for (int64_t p = 0; p < k; p++) {
            int64_t n = m->confusion[t * k + p];
            double f = row ? (double)n / (double)row : 0;
            /* white to a dark blue (8, 48, 107) */
            int cr = (int)lround(255 - f * (255 - 8)), cg = (int)lround(255 - f * (255 - 48)),
                cb = (int)lround(255 - f * (255 - 107));
            graft_strbuf_printf(sb, "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
                                "fill=\"rgb(%d,%d,%d)\" stroke=\"#fff\"><title>%lld of %lld</title></rect>"
                                "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"%s\">%lld</text>\n",
                                left + (int)p * CELL, top + (int)t * CELL, CELL, CELL, cr, cg, cb, (long long)n,
                                (long long)row, left + (int)p * CELL + CELL / 2, top + (int)t * CELL + CELL / 2 + 5,
                                f > 0.5 ? "#fff" : "#000", (long long)n);
        }
    }
    graft_strbuf_append(sb, "</svg>\n");
}

static graft_status image_grid(graft_strbuf *sb, const graft_demo_result *r, const graft_demo_method *m) {
    graft_strbuf_append(sb, "<div id=\"grid\">\n");
    for (int64_t i = 0; i < r->grid_n; i++) {
        uint8_t *png;
        size_t bytes;
        graft_status s = graft_png_encode(r->grid_pixels + (size_t)i * (size_t)(r->grid_h * r->grid_w), r->grid_h,
                                          r->grid_w, 1, &png, &bytes);
        if (s) return s;
        char *b64 = graft_base64(png, bytes);
        free(png);
        if (!b64) return graft_error(GRAFT_ERR_NOMEM, "out of memory");
        int64_t truth = r->grid_label[i], pred = m->predicted[r->grid_index[i]];
        graft_strbuf_printf(sb, "<figure class=\"%s\"><img width=\"%d\" height=\"%d\" alt=\"\" "
                            "src=\"data:image/png;base64,%s\"><figcaption>",
                            truth == pred ? "right" : "wrong", r->grid_w * GRID_SCALE, r->grid_h * GRID_SCALE, b64);
        free(b64);
        escape(sb, r->classes[truth]);
        if (truth != pred) {
            graft_strbuf_append(sb, "<br><b>&#x2717; ");
            escape(sb, r->classes[pred]);
            graft_strbuf_append(sb, "</b>");
        }
        graft_strbuf_append(sb, "</figcaption></figure>\n");
    }
    graft_strbuf_append(sb, "</div>\n");
    return GRAFT_OK;
}

static void names_list(graft_strbuf *sb, char *const *names, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        graft_strbuf_append(sb, i == 0 ? "" : i + 1 == n ? " and " : ", ");
        escape(sb, names[i]);
    }
}

static const char STYLE[] =
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.45}\n"
    "h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}\n"
    "table{border-collapse:collapse}th,td{padding:4px 12px;border-bottom:1px solid #e3e3e3;text-align:right}"
    "th:first-child,td:first-child{text-align:left}\n"
    "tr.best td{font-weight:bold}\n"
    "svg text{font-size:13px;font-family:inherit}svg .tick{font-size:12px;fill:#555}\n"
    "#grid{display:grid;grid-template-columns:repeat(8,max-content);gap:6px}\n"
    "#grid figure{margin:0;padding:3px;border:3px solid transparent;text-align:center;font-size:11px;width:90px}\n"
    "#grid figure.wrong{border-color:#d62728;background:#fdecea}\n"
    "#grid img{image-rendering:pixelated;display:block;margin:auto}\n"
    ".note{color:#555;font-size:.92em}\n";

graft_status graft_demo_write_report(const graft_demo_result *r, const graft_demo_options *o, const char *path) {
    const graft_demo_k_result *run = &r->runs[r->detail];
    int best = graft_demo_best_method(run);
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    graft_strbuf_printf(&sb, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                        "<title>graft demo: transfer learning from %lld labelled images per class</title>\n"
                        "<style>\n%s</style>\n</head>\n<body>\n", (long long)run->k, STYLE);
    graft_strbuf_printf(&sb, "<h1>Learning a new task from %lld labelled image%s per class</h1>\n", (long long)run->k,
                        run->k == 1 ? "" : "s");
    graft_strbuf_append(&sb, "<p>Source model <code>");
    escape(&sb, r->source_arch);
    graft_strbuf_append(&sb, "</code>, trained from scratch by graft on ");
    names_list(&sb, r->source_classes, r->source_num_classes);
    graft_strbuf_append(&sb, ". Target task: ");
    names_list(&sb, r->classes, r->num_classes);
    graft_strbuf_printf(&sb, ", learned from K = %lld labelled training image%s per class (seed %llu), three ways. "
                        "Every method is evaluated once, after its last epoch, on the %lld %s images of the target "
                        "classes.</p>\n", (long long)run->k, run->k == 1 ? "" : "s", (unsigned long long)o->seed,
                        (long long)r->eval_n, r->eval_name);

    graft_strbuf_printf(&sb, "<h2>Results</h2>\n<table id=\"results\">\n<tr><th>method</th><th>%s accuracy</th>"
                        "<th>training seconds</th></tr>\n", r->eval_name);
    for (int m = 0; m < GRAFT_DEMO_METHODS; m++)
        graft_strbuf_printf(&sb, "<tr%s><td>%s</td><td>%.1f %%</td><td>%.1f</td></tr>\n",
                            m == best ? " class=\"best\"" : "", letter_name(m), 100 * run->method[m].accuracy,
                            run->method[m].train_seconds);
    graft_strbuf_printf(&sb, "</table>\n<p class=\"note\">(a) the same architecture, freshly initialised; (b) the "
                        "source weights with <code>%s</code> frozen and a new %lld-way head; (c) (b)'s weights with "
                        "every layer trainable (its seconds come on top of (b)'s). Adam at learning rates %g / %g / "
                        "%g with the schedules %s, batch %lld, augmentation <code>%s</code>; %lld / %lld / %lld epochs "
                        "of at least %lld images.</p>\n", o->freeze, (long long)r->num_classes,
                        o->lr_scratch, o->lr_transfer, o->lr_finetune, o->schedule, (long long)o->batch_size,
                        o->transform, (long long)o->epochs, (long long)o->transfer_epochs, (long long)o->finetune_epochs,
                        (long long)o->epoch_images);

    graft_strbuf_append(&sb, "<h2>Learning curves</h2>\n");
    curves(&sb, run);
    graft_strbuf_append(&sb, "<p class=\"note\">Training loss of each step (batch). Transfer starts from features "
                        "that already separate clothing; fine-tune continues from transfer's last step.</p>\n");

    if (r->nruns > 1) {
        graft_strbuf_append(&sb, "<h2>Accuracy against labelled images per class</h2>\n");
        sweep_chart(&sb, r);
        graft_strbuf_printf(&sb, "<table id=\"sweep-table\">\n<tr><th>K</th>");
        for (int m = 0; m < GRAFT_DEMO_METHODS; m++) graft_strbuf_printf(&sb, "<th>%s</th>", letter_name(m));
        graft_strbuf_append(&sb, "</tr>\n");
        for (int64_t i = 0; i < r->nruns; i++) {
            graft_strbuf_printf(&sb, "<tr><td>%lld</td>", (long long)r->runs[i].k);
            for (int m = 0; m < GRAFT_DEMO_METHODS; m++)
                graft_strbuf_printf(&sb, "<td>%.1f %%</td>", 100 * r->runs[i].method[m].accuracy);
            graft_strbuf_append(&sb, "</tr>\n");
        }
        graft_strbuf_append(&sb, "</table>\n");
    }

    const graft_demo_method *bm = &run->method[best];
    int64_t k = r->num_classes;
    graft_strbuf_printf(&sb, "<h2>Per class: %s</h2>\n<table id=\"per-class\">\n<tr><th>class</th><th>images</th>"
                        "<th>accuracy</th></tr>\n", letter_name(best));
    for (int64_t c = 0; c < k; c++) {
        int64_t row = 0;
        for (int64_t p = 0; p < k; p++) row += bm->confusion[c * k + p];
        graft_strbuf_append(&sb, "<tr><td>");
        escape(&sb, r->classes[c]);
        graft_strbuf_printf(&sb, "</td><td>%lld</td><td>%.1f %%</td></tr>\n", (long long)row,
                            row ? 100.0 * (double)bm->confusion[c * k + c] / (double)row : 0.0);
    }
    graft_strbuf_append(&sb, "</table>\n<h2>Confusion matrix</h2>\n");
    confusion(&sb, r, bm);
    graft_strbuf_printf(&sb, "<h2>%s images and %s's predictions</h2>\n<p class=\"note\">The first %d %s images of "
                        "each class, one row per true class; a red frame marks a wrong prediction, named under the "
                        "image.</p>\n", r->eval_name[0] == 't' ? "Test" : "Validation", letter_name(best),
                        GRAFT_DEMO_GRID_PER_CLASS, r->eval_name);
    graft_status s = image_grid(&sb, r, bm);
    graft_strbuf_printf(&sb, "<p class=\"note\">Made by graft %s (<code>graft demo</code>).</p>\n</body>\n</html>\n",
                        GRAFT_VERSION);
    if (!s && sb.failed) s = graft_error(GRAFT_ERR_NOMEM, "out of memory");
    if (!s) s = graft_atomic_write_file(path, sb.data, sb.len);
    graft_strbuf_free(&sb);
    return s;
}
