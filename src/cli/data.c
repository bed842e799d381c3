/* data.c — `graft data SPEC`: what a dataset holds and what the model will see.
 *
 * Prints where the data was found, the split sizes, a table of classes with their
 * counts per split, and the input shape after the transforms; --dump writes the first
 * N samples of a split after the transforms to a safetensors file ("images" float32
 * [N, C, H, W], "labels" int64 [N]) for comparison with torchvision. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/strbuf.h"
#include "data/loader.h"
#include "data/spec.h"
#include "data/transforms.h"

static void help(void) {
    puts("usage: graft data SPEC [--transform T] [--classes LIST] [--per-class K] [--seed S]\n"
         "                  [--strict] [--split train|test] [--dump N OUT.safetensors]\n\n"
         "Prints the splits of a dataset with their sizes, the classes with their counts and\n"
         "the input shape after the transforms.\n\n"
         "SPEC (also --data SPEC):\n"
         "  cifar10[:ROOT] | cifar100[:ROOT]  binary or torchvision's python version under ROOT\n"
         "                                    (default $GRAFT_DATA, else ~/.cache/graft/datasets)\n"
         "  mnist:ROOT | fashion-mnist[:ROOT] IDX files (default /usr/share/datasets/fashion-mnist)\n"
         "  folder:ROOT                       ROOT/CLASS/*.{png,jpg,jpeg,bmp}; ROOT/train and\n"
         "                                    ROOT/test (or ROOT/val) when present\n"
         "  tensors:FILE.safetensors          'images' and 'labels' (+ 'test_images', 'test_labels')\n\n"
         "  --transform T     e.g. resize=64,centercrop=56,hflip,normalize=imagenet (docs/data.md)\n"
         "  --classes LIST    keep these classes (indices or names), relabelled 0..k-1 in order\n"
         "  --per-class K     K training samples per class, drawn with --seed\n"
         "  --seed S          seed for --per-class and the random transforms (default 0)\n"
         "  --strict          an unreadable image file is an error (default: reported, skipped)\n"
         "  --split NAME      the split --dump reads: train (default) or test\n"
         "  --dump N OUT      write the first N samples after the transforms to OUT");
}

/* The widest class name, for the table. */
static int name_width(const graft_source *s) {
    int w = 4; /* "name" */
    for (int64_t k = 0; k < graft_source_num_classes(s); k++) {
        int n = (int)strlen(graft_source_class_name(s, k));
        if (n > w) w = n;
    }
    return w > 40 ? 40 : w;
}

/* The "input:" line: the shape after the transforms, or why samples differ.  A transform
 * that fits no sample is an error (returned, nothing printed yet). */
static int input_line(const graft_source *tr, const graft_transforms *tf, char *line, size_t size) {
    if (tf && graft_source_kind(tr) == GRAFT_SAMPLE_IMAGE) {
        int c, h, wd, chw[3];
        graft_source_shape(tr, 0, &c, &h, &wd);
        if (graft_transforms_output_shape(tf, h, wd, c, chw)) return cli_fail("%s", graft_errmsg());
    }
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = 1;
    o.workers = 0;
    graft_loader *l;
    graft_status s = graft_loader_create(tr, tf, &o, &l);
    if (s == GRAFT_ERR_SHAPE) { /* samples of several sizes: worth knowing, the summary stands */
        snprintf(line, size, "input: not one size: %s", graft_errmsg());
        return 0;
    }
    if (s) return cli_fail("%s", graft_errmsg());
    int chw[3];
    graft_loader_sample_shape(l, chw);
    graft_loader_free(l);
    const char *spec = tf ? graft_transforms_spec(tf) : "";
    snprintf(line, size, "input: %dx%dx%d (after transforms%s%s)", chw[0], chw[1], chw[2],
             *spec ? ": " : "", spec);
    return 0;
}

static int print_summary(const graft_data *d, const graft_transforms *tf) {
    const graft_source *tr = d->train, *te = d->test;
    int64_t k = graft_source_num_classes(tr);
    char input[2048];
    int rc = input_line(tr, tf, input, sizeof input);
    if (rc) return rc;
    int64_t *ctr = calloc((size_t)k, sizeof *ctr), *cte = calloc((size_t)k, sizeof *cte);
    if (!ctr || !cte) {
        free(ctr);
        free(cte);
        return cli_fail("out of memory");
    }
    printf("data: %s\n", d->where);
    if (te)
        printf("train: %lld images, %s: %lld images\n", (long long)graft_source_len(tr), d->test_name,
               (long long)graft_source_len(te));
    else
        printf("train: %lld images (no test split)\n", (long long)graft_source_len(tr));
    graft_source_class_counts(tr, ctr);
    if (te) graft_source_class_counts(te, cte);
    int w = name_width(tr);
    printf("classes: %lld\n", (long long)k);
    printf("%7s  %-*s  %8s", "label", w, "name", "train");
    if (te) printf("  %8s", d->test_name);
    putchar('\n');
    for (int64_t c = 0; c < k; c++) {
        printf("%7lld  %-*s  %8lld", (long long)c, w, graft_source_class_name(tr, c), (long long)ctr[c]);
        if (te) printf("  %8lld", (long long)cte[c]);
        putchar('\n');
    }
    free(ctr);
    free(cte);
    int64_t skipped = graft_source_skipped(tr) + (te ? graft_source_skipped(te) : 0);
    if (skipped) printf("skipped: %lld unreadable files\n", (long long)skipped);
    puts(input);
    return 0;
}

static int dump(const graft_data *d, const char *split, const graft_transforms *tf, int64_t n,
                const char *out, uint64_t seed, bool strict, const char *spec) {
    const graft_source *src = !strcmp(split, "train") ? d->train : d->test;
    if (!src) return cli_fail("%s: no %s split", spec, split);
    if (n > graft_source_len(src)) n = graft_source_len(src);
    graft_loader_options o = graft_loader_defaults();
    o.batch_size = n;
    o.workers = 0;
    o.seed = seed;
    o.strict = strict;
    graft_loader *l;
    if (graft_loader_create(src, tf, &o, &l)) return cli_fail("%s", graft_errmsg());
    const graft_tensor *x, *y;
    int done;
    graft_status s = graft_loader_start_epoch(l, 0);
    if (!s) s = graft_loader_next(l, &x, &y, &done);
    graft_tensor_map *m = NULL;
    if (!s) s = graft_tensor_map_create(&m);
    if (!s) s = graft_tensor_map_put_copy(m, "images", x);
    if (!s) s = graft_tensor_map_put_copy(m, "labels", y);
    graft_strbuf names;
    graft_strbuf_init(&names);
    for (int64_t c = 0; c < graft_source_num_classes(src); c++) {
        if (c) graft_strbuf_append(&names, "\n");
        graft_strbuf_append(&names, graft_source_class_name(src, c));
    }
    if (!s && names.failed) s = GRAFT_ERR_NOMEM;
    if (!s) s = graft_tensor_map_set_meta(m, "classes", names.data ? names.data : "");
    if (!s) s = graft_tensor_map_set_meta(m, "data", spec);
    if (!s) s = graft_tensor_map_set_meta(m, "split", split);
    if (!s) s = graft_tensor_map_set_meta(m, "transform", tf ? graft_transforms_spec(tf) : "");
    if (!s) s = graft_safetensors_save(out, m);
    graft_strbuf_free(&names);
    graft_tensor_map_free(m);
    int64_t skipped = graft_loader_skipped(l);
    graft_loader_free(l);
    if (s) return cli_fail("%s", graft_errmsg());
    printf("wrote %lld %s samples to %s\n", (long long)n, split, out);
    if (skipped) printf("skipped: %lld unreadable files\n", (long long)skipped);
    return 0;
}

/* Everything but --dump N OUT, which cmd_data has taken out of argv already. */
static int run(int argc, char **argv, const char *dump_n, const char *dump_out) {
    static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                         {"transform", required_argument, 0, 't'},
                                         {"classes", required_argument, 0, 'c'},
                                         {"per-class", required_argument, 0, 'k'},
                                         {"seed", required_argument, 0, 's'},
                                         {"strict", no_argument, 0, 'S'},
                                         {"split", required_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *spec = NULL, *transform = NULL, *split = "train";
    graft_data_options o = {0};
    int64_t v;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': spec = optarg; break;
        case 't': transform = optarg; break;
        case 'c': o.classes = optarg; break;
        case 'k':
            if (cli_parse_i64(optarg, 1, INT64_MAX, &v))
                return cli_usage("data", "--per-class takes a count >= 1, not '%s'", optarg);
            o.per_class = v;
            break;
        case 's':
            if (cli_parse_i64(optarg, 0, INT64_MAX, &v))
                return cli_usage("data", "--seed takes an integer >= 0, not '%s'", optarg);
            o.seed = (uint64_t)v;
            break;
        case 'S': o.strict = true; break;
        case 'p': split = optarg; break;
        case 'h': help(); return 0;
        default: return cli_bad_option("data", argv, optind);
        }
    }
    int64_t dump_count = 0;
    if (dump_n && cli_parse_i64(dump_n, 1, INT64_MAX, &dump_count))
        return cli_usage("data", "--dump takes a count >= 1 and a file, not '%s %s'", dump_n, dump_out);
    if (!spec && optind < argc) spec = argv[optind++];
    if (optind < argc) return cli_usage("data", "unexpected argument '%s'", argv[optind]);
    if (!spec) return cli_usage("data", "expected a dataset SPEC");
    if (strcmp(split, "train") && strcmp(split, "test"))
        return cli_usage("data", "--split is train or test, not '%s'", split);

    cli_log_to_stderr();
    graft_transforms *tf = NULL;
    if (transform && graft_transforms_parse(transform, &tf)) return cli_fail("--transform: %s", graft_errmsg());
    graft_data *d;
    if (graft_data_open(spec, &o, &d)) {
        graft_transforms_free(tf);
        return cli_fail("%s", graft_errmsg());
    }
    int rc = dump_out ? dump(d, split, tf, dump_count, dump_out, o.seed, o.strict, spec)
                      : print_summary(d, tf);
    graft_data_free(d);
    graft_transforms_free(tf);
    return rc;
}

int cmd_data(int argc, char **argv) {
    /* --dump takes two words, which getopt cannot express: take them out first */
    const char *dump_n = NULL, *dump_out = NULL;
    char **args = malloc((size_t)(argc + 1) * sizeof *args);
    if (!args) return cli_fail("out of memory");
    int nargs = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "--dump")) {
            if (i + 2 >= argc) {
                free(args);
                return cli_usage("data", "--dump needs a count and an output file");
            }
            dump_n = argv[++i];
            dump_out = argv[++i];
        } else {
            args[nargs++] = argv[i];
        }
    }
    args[nargs] = NULL;
    int rc = run(nargs, args, dump_n, dump_out);
    free(args);
    return rc;
}
