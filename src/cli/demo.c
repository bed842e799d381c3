/* demo.c — `graft demo`: a new task learned from K labelled images per class, from
 * scratch, by transfer and by fine-tuning, on Fashion-MNIST from Debian's package.
 *
 *     graft demo [--k 5] [--seed 0] [--sweep] [--out runs/demo]
 *
 * The tables go to stdout; what is being done goes to stderr (a refreshing line on a
 * terminal, one line per stage otherwise, nothing with --quiet). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "demo/demo.h"

#define DEFAULT_SOURCE "models/fashion-source.safetensors"
#define DEFAULT_OUT "runs/demo"

typedef struct ui {
    int quiet, tty, line_open;
    double last_draw;
    char stage[128];
} ui;

static void end_line(ui *u) {
    if (u->line_open) fputs("\r\033[K", stderr);
    u->line_open = 0;
}

static void on_stage(void *user, int64_t k, int method, const char *what) {
    ui *u = user;
    (void)k, (void)method;
    snprintf(u->stage, sizeof u->stage, "%s", what);
    if (u->quiet) return;
    end_line(u);
    if (u->tty) {
        fprintf(stderr, "%s", what);
        u->line_open = 1;
    } else {
        fprintf(stderr, "graft demo: %s\n", what);
    }
    fflush(stderr);
}

static void on_progress(void *user, const graft_train_progress *p) {
    ui *u = user;
    if (u->quiet || !u->tty) return;
    double t = graft_now_seconds();
    if (t - u->last_draw < 0.2 && p->step != p->steps) return;
    u->last_draw = t;
    if (!strcmp(p->phase, "eval"))
        fprintf(stderr, "\r%s  evaluating %lld/%lld  accuracy %.1f%%\033[K", u->stage, (long long)p->step,
                (long long)p->steps, 100 * p->accuracy);
    else
        fprintf(stderr, "\r%s  epoch %lld/%lld  step %lld/%lld  loss %.3f\033[K", u->stage, (long long)p->epoch,
                (long long)p->epochs, (long long)p->step, (long long)p->steps, isnan(p->loss) ? 0.0 : p->loss);
    u->line_open = 1;
    fflush(stderr);
}

static void on_log(int level, const char *message, void *user) {
    if (level == 0) return; /* "head freshly initialised" and the like: the demo says what it does */
    end_line(user);
    fprintf(stderr, "graft: warning: %s\n", message);
}

static void help(void) {
    puts("usage: graft demo [--k K] [--seed S] [--sweep] [--out DIR] [options]\n\n"
         "Learns T-shirt/top, Pullover, Dress, Coat and Shirt (Fashion-MNIST, Debian's\n"
         "dataset-fashion-mnist) from K labelled training images per class, three ways:\n"
         "(a) from scratch, (b) transfer: the source model's features frozen and a new head,\n"
         "(c) fine-tune: (b), then every layer at a lower rate.  The source model was\n"
         "trained by graft on Trouser, Sandal, Sneaker, Bag and Ankle boot\n"
         "(scripts/train_source_model.sh).  Each method is evaluated on the 5,000 test\n"
         "images of the target classes; DIR/report.html shows the results.\n\n"
         "  --k K                 labelled images per class (default 5)\n"
         "  --seed S              which images, the initialisation, the batch order (default 0)\n"
         "  --sweep               K = 1, 5, 20, 100: accuracy against labelled images\n"
         "  --sweep-k LIST        sweep these K instead (comma-separated, at most 8)\n"
         "  --out DIR             run folder (default " DEFAULT_OUT ")\n"
         "  --source FILE         source checkpoint (default " DEFAULT_SOURCE ",\n"
         "                        looked for in the current folder, then beside the graft binary)\n"
         "  --data SPEC           the dataset (default fashion-mnist)\n"
         "  --threads N  --quiet\n"
         "recipe (the defaults were chosen with --validate; see README)\n"
         "  --validate            evaluate on 1,000 held-out training images per class, not the test split\n"
         "  --epochs N            epochs of (a) (default 5)\n"
         "  --transfer-epochs N   epochs of (b) (default 20)\n"
         "  --finetune-epochs N   epochs of (c) (default 3)\n"
         "  --epoch-images N      augmented images per epoch, at least (default 320)\n"
         "  --batch-size N        default 32\n"
         "  --lr-scratch LR  --lr-transfer LR  --lr-finetune LR   Adam (default 1e-3, 1e-2, 1e-4)\n"
         "  --schedule S[,S,S]    constant|cosine learning rate for all, or for (a),(b),(c)\n"
         "                        (default constant,cosine,cosine)\n"
         "  --freeze features|trunk   what (b) freezes (default features)\n"
         "  --transform SPEC      training augmentation (default hflip)\n"
         "  --eval-limit N        evaluate on the first N evaluation images only (tests)");
}

static int parse_real(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v > lo && v <= hi))
        return cli_usage("demo", "%s: '%s' is not a number in (%g, %g]", flag, s, lo, hi);
    *out = v;
    return 0;
}

static int readable(const char *path) { return access(path, R_OK) == 0; }

/* The default source model: in the current folder, else beside the binary (build/graft
 * finds ../models). */
static const char *find_source(char *buf, size_t size) {
    if (readable(DEFAULT_SOURCE)) return DEFAULT_SOURCE;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return NULL;
    *slash = 0;
    snprintf(buf, size, "%s/../%s", exe, DEFAULT_SOURCE);
    return readable(buf) ? buf : NULL;
}

static void print_run(const graft_demo_result *r, const graft_demo_k_result *run, uint64_t seed) {
    printf("\nK = %lld labelled image%s per class, seed %llu; evaluated on %lld %s images\n\n", (long long)run->k,
           run->k == 1 ? "" : "s", (unsigned long long)seed, (long long)r->eval_n, r->eval_name);
    printf("%-16s %10s accuracy  %s\n", "method", r->eval_name, "training seconds");
    static const char *const LABELS[GRAFT_DEMO_METHODS] = {"(a) scratch", "(b) transfer", "(c) fine-tune"};
    for (int m = 0; m < GRAFT_DEMO_METHODS; m++)
        printf("%-16s %17.1f %%  %16.1f%s\n", LABELS[m], 100 * run->method[m].accuracy, run->method[m].train_seconds,
               m == 2 ? "  (after (b))" : "");
}

static void print_per_class(const graft_demo_result *r, const graft_demo_k_result *run) {
    int best = graft_demo_best_method(run);
    const graft_demo_method *m = &run->method[best];
    int64_t k = r->num_classes;
    printf("\nper-class accuracy of the best, %s:\n", graft_demo_method_name(best));
    for (int64_t c = 0; c < k; c++) {
        int64_t row = 0;
        for (int64_t p = 0; p < k; p++) row += m->confusion[c * k + p];
        printf("  %-14s %5.1f %%\n", r->classes[c], row ? 100.0 * (double)m->confusion[c * k + c] / (double)row : 0.0);
    }
}

enum {
    O_K = 256, O_SEED, O_SWEEP, O_SWEEP_K, O_OUT, O_SOURCE, O_DATA, O_THREADS, O_QUIET, O_VALIDATE, O_EPOCHS, O_FT_EPOCHS,
    O_EPOCH_IMAGES, O_BATCH, O_LR_SCRATCH, O_LR_TRANSFER, O_LR_FINETUNE, O_FREEZE, O_TRANSFORM, O_EVAL_LIMIT, O_SCHEDULE, O_TR_EPOCHS
};

int cmd_demo(int argc, char **argv) {
    static const struct option opts[] = {
        {"k", required_argument, 0, O_K}, {"seed", required_argument, 0, O_SEED}, {"sweep", no_argument, 0, O_SWEEP},
        {"sweep-k", required_argument, 0, O_SWEEP_K},
        {"out", required_argument, 0, O_OUT}, {"source", required_argument, 0, O_SOURCE},
        {"data", required_argument, 0, O_DATA}, {"threads", required_argument, 0, O_THREADS},
        {"quiet", no_argument, 0, O_QUIET}, {"validate", no_argument, 0, O_VALIDATE},
        {"epochs", required_argument, 0, O_EPOCHS}, {"finetune-epochs", required_argument, 0, O_FT_EPOCHS},
        {"epoch-images", required_argument, 0, O_EPOCH_IMAGES}, {"batch-size", required_argument, 0, O_BATCH},
        {"lr-scratch", required_argument, 0, O_LR_SCRATCH}, {"lr-transfer", required_argument, 0, O_LR_TRANSFER},
        {"lr-finetune", required_argument, 0, O_LR_FINETUNE}, {"freeze", required_argument, 0, O_FREEZE},
        {"transform", required_argument, 0, O_TRANSFORM}, {"eval-limit", required_argument, 0, O_EVAL_LIMIT},
        {"schedule", required_argument, 0, O_SCHEDULE},
        {"transfer-epochs", required_argument, 0, O_TR_EPOCHS},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    graft_demo_options o = graft_demo_defaults();
    o.out_dir = DEFAULT_OUT;
    ui u = {.tty = isatty(STDERR_FILENO)};
    int64_t v;
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_K:
            if (cli_parse_i64(optarg, 1, 5000, &o.k)) return cli_usage("demo", "--k: '%s' is not 1..5000", optarg);
            break;
        case O_SEED:
            if (cli_parse_i64(optarg, 0, INT64_MAX, &v)) return cli_usage("demo", "--seed: '%s' is not a non-negative integer", optarg);
            o.seed = (uint64_t)v;
            break;
        case O_SWEEP: o.sweep = 1; break;
        case O_SWEEP_K:
            if (!*optarg || strspn(optarg, "0123456789,") != strlen(optarg))
                return cli_usage("demo", "--sweep-k: '%s' is not a comma-separated list of K", optarg);
            o.sweep = 1;
            o.sweep_k = optarg;
            break;
        case O_OUT: o.out_dir = optarg; break;
        case O_SOURCE: o.source_model = optarg; break;
        case O_DATA: o.data = optarg; break;
        case O_THREADS:
            if (cli_parse_i64(optarg, 1, 256, &v)) return cli_usage("demo", "--threads: '%s' is not 1..256", optarg);
            o.threads = (int)v;
            break;
        case O_QUIET: u.quiet = 1; break;
        case O_VALIDATE: o.validate = 1; break;
        case O_EPOCHS:
            if (cli_parse_i64(optarg, 1, 100000, &o.epochs)) return cli_usage("demo", "--epochs: '%s' is not 1..100000", optarg);
            break;
        case O_TR_EPOCHS:
            if (cli_parse_i64(optarg, 1, 100000, &o.transfer_epochs))
                return cli_usage("demo", "--transfer-epochs: '%s' is not 1..100000", optarg);
            break;
        case O_FT_EPOCHS:
            if (cli_parse_i64(optarg, 1, 100000, &o.finetune_epochs))
                return cli_usage("demo", "--finetune-epochs: '%s' is not 1..100000", optarg);
            break;
        case O_EPOCH_IMAGES:
            if (cli_parse_i64(optarg, 1, 1 << 20, &o.epoch_images))
                return cli_usage("demo", "--epoch-images: '%s' is not 1..1048576", optarg);
            break;
        case O_BATCH:
            if (cli_parse_i64(optarg, 1, 4096, &o.batch_size)) return cli_usage("demo", "--batch-size: '%s' is not 1..4096", optarg);
            break;
        case O_LR_SCRATCH: if (parse_real("--lr-scratch", optarg, 0, 10, &o.lr_scratch)) return CLI_EXIT_USAGE; break;
        case O_LR_TRANSFER: if (parse_real("--lr-transfer", optarg, 0, 10, &o.lr_transfer)) return CLI_EXIT_USAGE; break;
        case O_LR_FINETUNE: if (parse_real("--lr-finetune", optarg, 0, 10, &o.lr_finetune)) return CLI_EXIT_USAGE; break;
        case O_FREEZE:
            if (strcmp(optarg, "features") && strcmp(optarg, "trunk"))
                return cli_usage("demo", "--freeze: '%s' is not 'features' or 'trunk'", optarg);
            o.freeze = optarg;
            break;
        case O_TRANSFORM: o.transform = optarg; break;
        case O_SCHEDULE: {
            bool cosine[GRAFT_DEMO_METHODS];
            if (graft_demo_parse_schedules(optarg, cosine)) return cli_usage("demo", "%s", graft_errmsg());
            o.schedule = optarg;
            break;
        }
        case O_EVAL_LIMIT:
            if (cli_parse_i64(optarg, 1, INT64_MAX, &o.eval_limit)) return cli_usage("demo", "--eval-limit: '%s' is not a positive integer", optarg);
            break;
        case 'h': help(); return 0;
        default: return cli_bad_option("demo", argv, optind);
        }
    }
    if (optind != argc) return cli_usage("demo", "unexpected argument '%s'", argv[optind]);
    char found[PATH_MAX + 64];
    if (!o.source_model && !(o.source_model = find_source(found, sizeof found)))
        return cli_fail("demo: no source model: %s is neither here nor beside the graft binary; give --source FILE",
                        DEFAULT_SOURCE);
    graft_set_log_callback(on_log, &u);
    graft_demo_callbacks cb = {on_stage, on_progress, &u};
    graft_demo_result r;
    double start = graft_now_seconds();
    graft_status s = graft_demo_run(&o, &cb, &r);
    double seconds = graft_now_seconds() - start;
    end_line(&u);
    if (s) {
        graft_demo_result_release(&r);
        return cli_fail("demo: %s", graft_errmsg());
    }
    printf("graft demo: learn %s", r.classes[0]);
    for (int64_t c = 1; c < r.num_classes; c++) printf(", %s", r.classes[c]);
    printf("\nfrom few labelled images, with a source model trained on %s", r.source_classes[0]);
    for (int64_t c = 1; c < r.source_num_classes; c++) printf(", %s", r.source_classes[c]);
    printf("\n(%s)\n", o.source_model);
    for (int64_t i = 0; i < r.nruns; i++) print_run(&r, &r.runs[i], o.seed);
    if (r.nruns > 1) {
        printf("\n%s accuracy against labelled images per class\n%6s %12s %12s %12s\n", r.eval_name, "K", "scratch",
               "transfer", "fine-tune");
        for (int64_t i = 0; i < r.nruns; i++)
            printf("%6lld %10.1f %% %10.1f %% %10.1f %%\n", (long long)r.runs[i].k, 100 * r.runs[i].method[0].accuracy,
                   100 * r.runs[i].method[1].accuracy, 100 * r.runs[i].method[2].accuracy);
    }
    print_per_class(&r, &r.runs[r.detail]);
    printf("\nreport: %s/report.html (runs, results.tsv beside it)\ntotal: %.1f s\n", o.out_dir, seconds);
    graft_demo_result_release(&r);
    return 0;
}
