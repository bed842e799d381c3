/* bench.c — `graft bench`: how fast graft runs the recipe's pieces, in numbers a script
 * can read.
 *
 *     graft bench features --model vgg16 [--size 32] [--batch 64] [--iters 10] [--threads T]
 *     graft bench eval --model vgg16 --num-classes 10 ...
 *     graft bench train-step --model vgg16 --num-classes 10 ...
 *     graft bench recipe --epochs 1 --train 50000 --test 10000 [--no-feature-cache]
 *     graft bench gemm [--size 4096] [--iters 5] [--threads T]
 *
 * The contract (bench/compare.py relies on it): informational lines first, then the
 * result alone on the last line of stdout — "images_per_s <number>" for the first three,
 * "seconds <number>" for recipe, "gflops_per_s <number>" for gemm.  The line before it
 * is "peak_rss_mb <number>".
 *
 * gemm times the SGEMM graft itself calls (ops/gemm.h: OpenBLAS, split over graft's
 * pool) on square float matrices: the machine's practical peak, which the kernels'
 * speed is compared with in docs/performance.md.
 *
 * features, eval and train-step run on random inputs and a randomly initialised model
 * (the speed of float arithmetic does not depend on the values, as long as they are
 * normal numbers); each iteration is timed alone and the median is reported, after
 * --warmup untimed iterations that size every buffer.  train-step is one step of the
 * recipe: train mode, the --freeze prefix frozen (default "features"), cross-entropy,
 * backward, SGD (lr 0.001, momentum 0.9).
 *
 * recipe writes a synthetic CIFAR-10 in its binary format (random pixels and labels
 * 0..9 with a fixed seed; N train and M test images) to a temporary folder and runs
 * graft_train on it as the recipe does (--data cifar10:DIR): ToTensor and
 * Normalize(ImageNet's mean and std) per sample, vgg16, --freeze features,
 * --num-classes 10, SGD lr 0.001 momentum 0.9, batch 64.  It times
 * graft_train as a whole (model creation, data, every epoch with its evaluation and
 * checkpoints), then removes the temporary folder. */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "core/rng.h"
#include "nn/model.h"
#include "ops/gemm.h"
#include "train/optim.h"

#define MAX_ITERS 100000
/* The recipe's optimiser (the PyTorch tutorial this project mirrors). */
#define RECIPE_LR 0.001
#define RECIPE_MOMENTUM 0.9
#define RECIPE_CLASSES 10
#define CIFAR_SIZE 32
#define GEMM_DEFAULT_SIZE 4096 /* large enough for BLAS's best speed, 200 MB of matrices */

static void help(void) {
    puts("usage: graft bench features|eval|train-step --model ARCH [--num-classes N] [--size S]\n"
         "                   [--batch B] [--iters I] [--warmup W] [--threads T] [--freeze PREFIX]\n"
         "       graft bench recipe --epochs E --train N --test M [--no-feature-cache]\n"
         "                   [--batch B] [--threads T] [--workers W] [--model ARCH]\n"
         "       graft bench gemm [--size N] [--iters I] [--threads T]\n\n"
         "Times graft on random data and prints the result last: 'images_per_s N' (the median\n"
         "iteration), for recipe 'seconds N' (graft_train end to end), for gemm 'gflops_per_s N'.\n\n"
         "  features      forward through every step but the head (VGG: features, avgpool,\n"
         "                flatten; the part a frozen trunk's feature cache computes)\n"
         "  eval          forward through the whole model in eval mode\n"
         "  train-step    train mode: forward, cross-entropy, backward, SGD step (lr 0.001,\n"
         "                momentum 0.9) with --freeze PREFIX frozen (default 'features';\n"
         "                'none' trains everything)\n"
         "  recipe        the recipe (vgg16, frozen features, 10 classes, SGD) on a synthetic\n"
         "                CIFAR-10 (random pixels, binary format) in a temporary folder\n"
         "                (--train N >= 5, default 50000; --test M >= 1, default 10000)\n"
         "  gemm          graft's SGEMM on N x N matrices (default 4096): 'gflops_per_s N'\n\n"
         "  --size S      input height and width (default 32)     --batch B   (default 64)\n"
         "  --iters I     timed iterations (default 10)           --warmup W  (default 2)\n"
         "  --threads T   graft's threads (default GRAFT_NUM_THREADS or the cores)");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports kilobytes */
}

static void fill_uniform(graft_rng *r, float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)graft_rng_uniform(r);
}

typedef struct options {
    const char *arch;
    int64_t num_classes, size, batch, iters, warmup, threads, workers;
    int64_t epochs, ntrain, ntest;
    const char *freeze;
    int feature_cache;
} options;

/* ---- features, eval, train-step ------------------------------------------------- */

typedef enum mode { MODE_FEATURES, MODE_EVAL, MODE_TRAIN_STEP } mode;

static const char *mode_name(mode md) {
    return md == MODE_FEATURES ? "features" : md == MODE_EVAL ? "eval" : "train-step";
}

/* One iteration of the mode on x (and labels for train-step). */
static graft_status run_once(mode md, graft_model *m, graft_optim *opt, graft_tensor *x,
                             const graft_tensor *labels, graft_tensor *dlogits) {
    graft_status s;
    if (md == MODE_FEATURES) {
        graft_tensor *out;
        return graft_model_forward_steps(m, NULL, 0, 0, graft_model_nsteps(m) - 1, x, &out); /* all but the head */
    }
    const graft_tensor *logits;
    if ((s = graft_model_forward(m, x, &logits))) return s;
    if (md == MODE_EVAL) return GRAFT_OK;
    double loss;
    if ((s = graft_cross_entropy(logits, labels, &loss, dlogits))) return s;
    graft_model_zero_grad_lazy(m); /* as the trainer does */
    if ((s = graft_model_backward(m, dlogits, NULL))) return s;
    return graft_optim_step(opt);
}

static int bench_model(mode md, const options *o) {
    int rc = CLI_EXIT_FAILURE;
    graft_model *m = NULL;
    graft_optim *opt = NULL;
    graft_tensor *x = NULL, *labels = NULL, *dlogits = NULL;
    double *times = NULL;
    graft_model_options mo = graft_model_defaults();
    mo.num_classes = o->num_classes;
    if (graft_set_num_threads((int)o->threads)) return cli_fail_status("--threads");
    if (graft_model_create(o->arch, &mo, &m)) {
        rc = cli_fail_status("--model");
        goto done;
    }
    int64_t channels = graft_model_in_channels(m);
    int64_t shape[4] = {o->batch, channels > 0 ? channels : 3, o->size, o->size};
    int64_t lshape[1] = {o->batch};
    if (graft_tensor_create(GRAFT_F32, 4, shape, &x) || graft_tensor_create(GRAFT_I64, 1, lshape, &labels)) {
        rc = cli_fail_status("input");
        goto done;
    }
    graft_rng rng;
    graft_rng_seed(&rng, 1);
    fill_uniform(&rng, graft_tensor_f32(x), graft_tensor_numel(x), -2.0f, 2.0f);
    int64_t k = graft_model_num_classes(m);
    for (int64_t i = 0; i < o->batch; i++) graft_tensor_i64(labels)[i] = (int64_t)(graft_rng_u64(&rng) % (uint64_t)k);
    if (md == MODE_TRAIN_STEP) {
        if (o->freeze && *o->freeze && strcmp(o->freeze, "none") && graft_model_freeze(m, o->freeze, 1)) {
            rc = cli_fail_status("--freeze");
            goto done;
        }
        graft_model_set_training(m, 1);
        int64_t dshape[2] = {o->batch, k};
        graft_optim_options oo = graft_optim_defaults(GRAFT_OPTIM_SGD);
        oo.lr[0] = RECIPE_LR;
        oo.momentum = RECIPE_MOMENTUM;
        if (graft_tensor_create(GRAFT_F32, 2, dshape, &dlogits) || graft_optim_create_for_model(m, &oo, NULL, &opt)) {
            rc = cli_fail_status("train-step");
            goto done;
        }
        graft_optim_fuse_linear(opt, m); /* as the trainer does */
        graft_model_hold_frozen_weights(m, true); /* as the trainer does */
    } else {
        graft_model_hold_weights(m, true); /* as graft_classifier does */
    }
    times = malloc((size_t)o->iters * sizeof *times);
    if (!times) {
        rc = cli_fail("out of memory");
        goto done;
    }
    for (int64_t i = 0; i < o->warmup + o->iters; i++) {
        double t0 = graft_now_seconds();
        if (run_once(md, m, opt, x, labels, dlogits)) {
            rc = cli_fail_status(mode_name(md));
            goto done;
        }
        if (i >= o->warmup) times[i - o->warmup] = graft_now_seconds() - t0;
    }
    qsort(times, (size_t)o->iters, sizeof *times, cmp_double);
    double median = o->iters % 2 ? times[o->iters / 2] : 0.5 * (times[o->iters / 2 - 1] + times[o->iters / 2]);
    printf("mode %s\nmodel %s\ninput [%lld, %lld, %lld, %lld]\nthreads %d\n", mode_name(md), o->arch,
           (long long)shape[0], (long long)shape[1], (long long)shape[2], (long long)shape[3], graft_num_threads());
    printf("iters %lld (after %lld warm-up)\nseconds_per_iter median %.6f min %.6f max %.6f\n", (long long)o->iters,
           (long long)o->warmup, median, times[0], times[o->iters - 1]);
    printf("peak_rss_mb %.1f\n", peak_rss_mb());
    printf("images_per_s %.2f\n", (double)o->batch / median);
    rc = 0;
done:
    free(times);
    graft_optim_free(opt);
    graft_tensor_free(x);
    graft_tensor_free(labels);
    graft_tensor_free(dlogits);
    graft_model_free(m);
    return rc;
}

/* ---- recipe -------------------------------------------------------------------- */

/* A synthetic CIFAR-10 in its binary format under dir: train images spread over
 * data_batch_1..5.bin, test images in test_batch.bin (records of one label byte and
 * 3,072 random pixel bytes in CHW planes), and batches.meta.txt. */
static const char *const cifar_train_files[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                                "data_batch_4.bin", "data_batch_5.bin"};
#define CIFAR_RECORD (1 + 3 * CIFAR_SIZE * CIFAR_SIZE)

/* 0, or the exit status after printing what failed. */
static int write_records(const char *dir, const char *name, graft_rng *r, int64_t n) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return cli_fail("%s: %s", path, strerror(errno));
    uint8_t rec[CIFAR_RECORD];
    for (int64_t i = 0; i < n; i++) {
        rec[0] = (uint8_t)(graft_rng_u64(r) % RECIPE_CLASSES);
        for (int k = 1; k < CIFAR_RECORD; k++) rec[k] = (uint8_t)(graft_rng_u64(r) >> 56);
        if (fwrite(rec, 1, sizeof rec, f) != sizeof rec) break;
    }
    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) return cli_fail("%s: write failed", path);
    return 0;
}

static int write_cifar(const char *dir, int64_t ntrain, int64_t ntest) {
    graft_rng rng;
    graft_rng_seed(&rng, 0);
    int rc = 0;
    for (int64_t i = 0; i < 5 && !rc; i++)
        rc = write_records(dir, cifar_train_files[i], &rng, ntrain / 5 + (i < ntrain % 5));
    if (!rc) rc = write_records(dir, "test_batch.bin", &rng, ntest);
    if (rc) return rc;
    char path[4200];
    snprintf(path, sizeof path, "%s/batches.meta.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return cli_fail("%s: %s", path, strerror(errno));
    for (int c = 0; c < RECIPE_CLASSES; c++) fprintf(f, "class%d\n", c);
    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) return cli_fail("%s: write failed", path);
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int bench_recipe(const options *o) {
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s/graft-bench-XXXXXX", tmp) >= (int)sizeof dir || !mkdtemp(dir))
        return cli_fail("cannot create a temporary folder in %s", tmp);
    int rc = CLI_EXIT_FAILURE;
    char data_spec[sizeof dir + 16], out_dir[sizeof dir + 32];
    snprintf(data_spec, sizeof data_spec, "cifar10:%s", dir);
    snprintf(out_dir, sizeof out_dir, "%s/run", dir);
    if ((rc = write_cifar(dir, o->ntrain, o->ntest))) goto done;
    rc = CLI_EXIT_FAILURE;

    static const char *const freeze[] = {"features"};
    graft_train_config c = graft_train_defaults();
    c.arch = o->arch;
    c.num_classes = RECIPE_CLASSES;
    c.freeze = freeze;
    c.nfreeze = 1;
    c.data = data_spec;
    c.batch_size = o->batch;
    c.workers = (int)o->workers;
    c.epochs = o->epochs;
    c.optimizer = "sgd";
    c.lr = RECIPE_LR;
    c.momentum = RECIPE_MOMENTUM;
    c.threads = (int)o->threads;
    c.out_dir = out_dir;
    c.feature_cache = o->feature_cache;
    double t0 = graft_now_seconds();
    graft_status s = graft_train(&c, NULL);
    double seconds = graft_now_seconds() - t0;
    if (s) {
        rc = cli_fail_status("recipe");
        goto done;
    }
    printf("recipe %s, %lld epochs, %lld train + %lld test images, batch %lld, feature cache %s\n", o->arch,
           (long long)o->epochs, (long long)o->ntrain, (long long)o->ntest, (long long)o->batch,
           o->feature_cache ? "on" : "off");
    printf("threads %d\n", graft_num_threads());
    printf("peak_rss_mb %.1f\n", peak_rss_mb());
    printf("seconds %.3f\n", seconds);
    rc = 0;
done:
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}

/* ---- gemm ---------------------------------------------------------------------- */

static int bench_gemm(const options *o) {
    if (graft_set_num_threads((int)o->threads)) return cli_fail_status("--threads");
    int64_t n = o->size;
    size_t count = (size_t)(n * n);
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b), *c = malloc(count * sizeof *c);
    double *times = malloc((size_t)o->iters * sizeof *times);
    int rc = CLI_EXIT_FAILURE;
    if (!a || !b || !c || !times) {
        rc = cli_fail("out of memory for three %lld x %lld matrices", (long long)n, (long long)n);
        goto done;
    }
    graft_rng rng;
    graft_rng_seed(&rng, 1);
    fill_uniform(&rng, a, (int64_t)count, -1.0f, 1.0f);
    fill_uniform(&rng, b, (int64_t)count, -1.0f, 1.0f);
    for (int64_t i = 0; i < o->warmup + o->iters; i++) {
        double t0 = graft_now_seconds();
        graft_sgemm(false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        if (i >= o->warmup) times[i - o->warmup] = graft_now_seconds() - t0;
    }
    qsort(times, (size_t)o->iters, sizeof *times, cmp_double);
    double flops = 2.0 * (double)n * (double)n * (double)n;
    printf("mode gemm\nsize %lld\nthreads %d\n", (long long)n, graft_num_threads());
    printf("seconds_per_iter min %.6f median %.6f\n", times[0], times[o->iters / 2]);
    printf("peak_rss_mb %.1f\n", peak_rss_mb());
    printf("gflops_per_s %.1f\n", flops / times[0] / 1e9); /* best: the machine's capability */
    rc = 0;
done:
    free(a);
    free(b);
    free(c);
    free(times);
    return rc;
}

/* ---- command line ---------------------------------------------------------------- */

int cmd_bench(int argc, char **argv) {
    enum { O_MODEL = 1, O_CLASSES, O_SIZE, O_BATCH, O_ITERS, O_WARMUP, O_THREADS, O_FREEZE, O_EPOCHS,
           O_TRAIN, O_TEST, O_NO_CACHE, O_WORKERS };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},     {"num-classes", required_argument, 0, O_CLASSES},
        {"size", required_argument, 0, O_SIZE},       {"batch", required_argument, 0, O_BATCH},
        {"iters", required_argument, 0, O_ITERS},     {"warmup", required_argument, 0, O_WARMUP},
        {"threads", required_argument, 0, O_THREADS}, {"freeze", required_argument, 0, O_FREEZE},
        {"epochs", required_argument, 0, O_EPOCHS},   {"train", required_argument, 0, O_TRAIN},
        {"test", required_argument, 0, O_TEST},       {"no-feature-cache", no_argument, 0, O_NO_CACHE},
        {"workers", required_argument, 0, O_WORKERS}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    /* size 0: the mode's default (32 for models, 4096 for gemm) */
    options o = {.arch = NULL, .size = 0, .batch = 64, .iters = 10, .warmup = 2, .workers = 1, .epochs = 1,
                 .ntrain = 50000, .ntest = 10000, .freeze = "features", .feature_cache = 1};
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        help();
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-')
        return cli_usage("bench", "which benchmark: features, eval, train-step, recipe or gemm");
    const char *what = argv[1];
    int c, which = 0;
    opterr = 0;
    optind = 2;
    while ((c = getopt_long(argc, argv, "h", opts, &which)) != -1) {
        int64_t *target = NULL, lo = 1, hi = INT64_MAX;
        switch (c) {
        case O_MODEL: o.arch = optarg; break;
        case O_FREEZE: o.freeze = optarg; break;
        case O_NO_CACHE: o.feature_cache = 0; break;
        case O_CLASSES: target = &o.num_classes, hi = 1 << 24; break;
        case O_SIZE: target = &o.size, hi = 1 << 16; break;
        case O_BATCH: target = &o.batch, hi = 1 << 20; break;
        case O_ITERS: target = &o.iters, hi = MAX_ITERS; break;
        case O_WARMUP: target = &o.warmup, lo = 0, hi = MAX_ITERS; break;
        case O_THREADS: target = &o.threads, hi = 256; break;
        case O_EPOCHS: target = &o.epochs, hi = 1 << 20; break;
        case O_TRAIN: target = &o.ntrain, lo = 5, hi = 1 << 24; break; /* one per CIFAR file at least */
        case O_TEST: target = &o.ntest, hi = 1 << 24; break; /* test_batch.bin cannot be empty */
        case O_WORKERS: target = &o.workers, lo = 0, hi = 64; break;
        case 'h': help(); return 0;
        default: return cli_bad_option("bench", argv, optind);
        }
        if (target && cli_parse_i64(optarg, lo, hi, target))
            return cli_usage("bench", "--%s: '%s' is not an integer in %lld..%lld", opts[which].name, optarg,
                             (long long)lo, (long long)hi);
    }
    if (optind != argc) return cli_usage("bench", "unexpected argument '%s'", argv[optind]);
    if (!strcmp(what, "recipe")) {
        if (!o.arch) o.arch = "vgg16";
        return bench_recipe(&o);
    }
    if (!strcmp(what, "gemm")) {
        if (!o.size) o.size = GEMM_DEFAULT_SIZE;
        return bench_gemm(&o);
    }
    mode md;
    if (!strcmp(what, "features"))
        md = MODE_FEATURES;
    else if (!strcmp(what, "eval"))
        md = MODE_EVAL;
    else if (!strcmp(what, "train-step"))
        md = MODE_TRAIN_STEP;
    else
        return cli_usage("bench", "unknown benchmark '%s' (features, eval, train-step, recipe, gemm)", what);
    if (!o.arch) return cli_usage("bench", "--model is required");
    if (!o.size) o.size = CIFAR_SIZE;
    return bench_model(md, &o);
}
