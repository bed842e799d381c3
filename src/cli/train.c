/* train.c — `graft train`: the transfer-learning recipe from the command line.
 *
 *     graft train --model vgg16 --pretrained --freeze features --num-classes 10 \
 *                 --data cifar10:../data --epochs 10 --batch-size 64 \
 *                 --optimizer sgd --lr 0.001 --momentum 0.9 --out runs/cifar10-vgg16
 *
 * Progress goes to stderr (one refreshing line on a terminal, a plain line every few
 * seconds otherwise, nothing with --quiet); the summary, one line per epoch and the final
 * tables go to stdout.  SIGINT/SIGTERM finish the current batch, save, say how to resume
 * and exit with 130/143. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "train/schedule.h"

#define MAX_FREEZE 64
#define PLAIN_PROGRESS_SECONDS 5.0

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

typedef struct ui {
    int quiet, tty;
    double last_line;
    int line_open; /* a refreshing line is on the terminal */
} ui;

static void end_line(ui *u) {
    if (u->line_open) fputc('\n', stderr);
    u->line_open = 0;
}

static void on_text(void *user, const char *text) {
    end_line(user);
    puts(text);
    fflush(stdout);
}

static void on_progress(void *user, const graft_train_progress *p) {
    ui *u = user;
    if (u->quiet) return;
    double t = graft_now_seconds();
    int last = p->step == p->steps;
    if (u->tty) {
        if (t - u->last_line < 0.2 && !last) return;
    } else if (t - u->last_line < PLAIN_PROGRESS_SECONDS) {
        return;
    }
    u->last_line = t;
    int eta = (int)p->eta_seconds;
    char stats[96] = "";
    if (!isnan(p->loss))
        snprintf(stats, sizeof stats, "  loss %.4f  acc %5.1f%%  %.0f img/s  ETA %d:%02d", p->loss,
                 isnan(p->accuracy) ? 0.0 : 100 * p->accuracy, p->images_per_second, eta / 60, eta % 60);
    fprintf(stderr, "%sepoch %lld/%lld %s %lld/%lld%s%s", u->tty ? "\r" : "", (long long)p->epoch,
            (long long)p->epochs, p->phase, (long long)p->step, (long long)p->steps, stats, u->tty ? "\033[K" : "\n");
    u->line_open = u->tty;
    fflush(stderr);
}

static void on_epoch(void *user, const graft_epoch_report *r) {
    end_line(user);
    printf("epoch %lld  lr %.3g  train loss %.4f acc %.2f%%", (long long)r->epoch, r->lr, r->train_loss,
           100 * r->train_accuracy);
    if (r->has_test)
        printf("  test loss %.4f top1 %.2f%% top5 %.2f%%", r->test_loss, 100 * r->test_top1, 100 * r->test_top5);
    printf("  %.0f img/s  %.1f s\n", r->images_per_second, r->seconds);
    fflush(stdout);
}

static int on_should_stop(void *user) {
    (void)user;
    return stop_signal != 0;
}

static void help(void) {
    puts("usage: graft train --model ARCH --data SPEC --out DIR [options]\n"
         "       graft train --resume DIR [--epochs N] [--threads N]\n\n"
         "model\n"
         "  --model ARCH            zoo name (graft models) or VGG spec\n"
         "  --num-classes N         a fresh N-way head (default: the dataset's classes)\n"
         "  --pretrained            torchvision's ImageNet weights (cache, else download)\n"
         "  --weights-version V     which pretrained weights (default: torchvision's DEFAULT)\n"
         "  --weights FILE          start from a weights file (safetensors or .pth)\n"
         "  --offline               never download (also GRAFT_OFFLINE=1)\n"
         "  --freeze PREFIX         freeze a module path; repeatable; 'trunk' = all but the head\n"
         "  --dropout P             set every Dropout's p\n"
         "data\n"
         "  --data SPEC             cifar10[:ROOT], cifar100[:ROOT], mnist:ROOT, fashion-mnist[:ROOT],\n"
         "                          folder:ROOT, tensors:FILE.safetensors (see docs/data.md)\n"
         "  --classes LIST          keep these classes (indices or names), relabelled 0..k-1\n"
         "  --per-class K           K training images per class (seeded)\n"
         "  --transform SPEC        training transforms, e.g. hflip,randomcrop=32:4\n"
         "  --eval-transform SPEC   evaluation transforms (default: from the data and model)\n"
         "  --strict                unreadable images are errors, not skipped\n"
         "  --batch-size N          default 64\n"
         "  --no-shuffle            keep the dataset order\n"
         "  --workers N             loader threads (default 1)\n"
         "optimisation\n"
         "  --epochs N              default 10\n"
         "  --optimizer NAME        sgd (default), adam, adamw\n"
         "  --lr LR                 default 0.001; --lr-head LR, --lr-trunk LR for two groups\n"
         "  --momentum M  --dampening D  --weight-decay W  --nesterov\n"
         "  --betas B1,B2  --eps E  Adam/AdamW\n"
         "  --schedule SPEC         constant, step:step_size=N,gamma=G, cosine:t_max=N,eta_min=E;\n"
         "                          ',warmup=W[,warmup_factor=F]' adds linear warm-up (per epoch)\n"
         "  --label-smoothing E     cross-entropy label smoothing\n"
         "  --max-steps N           stop (resumably) after N steps in this session\n"
         "run\n"
         "  --out DIR               run folder: metrics.jsonl, last/best.safetensors, CSV reports\n"
         "  --resume DIR            continue an interrupted run\n"
         "  --seed S  --threads N  --quiet\n"
         "  --no-feature-cache      compute a frozen trunk every epoch instead of once\n"
         "  --no-fold               keep AdaptiveAvgPool2d + Flatten + Linear unfolded\n"
         "  --no-fused-update       store Linear weight gradients whole, then update (same numbers)");
}

static int parse_real(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v >= lo && v <= hi)) return cli_usage("train", "%s: '%s' is not a number in [%g, %g]", flag, s, lo, hi);
    *out = v;
    return 0;
}

enum {
    O_MODEL = 256, O_CLASSES_N, O_PRETRAINED, O_WVERSION, O_WEIGHTS, O_OFFLINE, O_FREEZE, O_DROPOUT, O_DATA,
    O_CLASSES, O_PER_CLASS, O_TRANSFORM, O_EVAL_TRANSFORM, O_STRICT, O_BATCH, O_NO_SHUFFLE, O_WORKERS, O_EPOCHS,
    O_OPTIMIZER, O_LR, O_LR_HEAD, O_LR_TRUNK, O_MOMENTUM, O_DAMPENING, O_WD, O_NESTEROV, O_BETAS, O_EPS,
    O_SCHEDULE, O_SMOOTH, O_MAX_STEPS, O_OUT, O_RESUME, O_SEED, O_THREADS, O_QUIET, O_NO_CACHE, O_NO_FOLD,
    O_NO_FUSE
};

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"num-classes", required_argument, 0, O_CLASSES_N},
        {"pretrained", no_argument, 0, O_PRETRAINED}, {"weights-version", required_argument, 0, O_WVERSION},
        {"weights", required_argument, 0, O_WEIGHTS}, {"offline", no_argument, 0, O_OFFLINE},
        {"freeze", required_argument, 0, O_FREEZE}, {"dropout", required_argument, 0, O_DROPOUT},
        {"data", required_argument, 0, O_DATA}, {"classes", required_argument, 0, O_CLASSES},
        {"per-class", required_argument, 0, O_PER_CLASS}, {"transform", required_argument, 0, O_TRANSFORM},
        {"eval-transform", required_argument, 0, O_EVAL_TRANSFORM}, {"strict", no_argument, 0, O_STRICT},
        {"batch-size", required_argument, 0, O_BATCH}, {"no-shuffle", no_argument, 0, O_NO_SHUFFLE},
        {"workers", required_argument, 0, O_WORKERS}, {"epochs", required_argument, 0, O_EPOCHS},
        {"optimizer", required_argument, 0, O_OPTIMIZER}, {"lr", required_argument, 0, O_LR},
        {"lr-head", required_argument, 0, O_LR_HEAD}, {"lr-trunk", required_argument, 0, O_LR_TRUNK},
        {"momentum", required_argument, 0, O_MOMENTUM}, {"dampening", required_argument, 0, O_DAMPENING},
        {"weight-decay", required_argument, 0, O_WD}, {"nesterov", no_argument, 0, O_NESTEROV},
        {"betas", required_argument, 0, O_BETAS}, {"eps", required_argument, 0, O_EPS},
        {"schedule", required_argument, 0, O_SCHEDULE}, {"label-smoothing", required_argument, 0, O_SMOOTH},
        {"max-steps", required_argument, 0, O_MAX_STEPS}, {"out", required_argument, 0, O_OUT},
        {"resume", required_argument, 0, O_RESUME}, {"seed", required_argument, 0, O_SEED},
        {"threads", required_argument, 0, O_THREADS}, {"quiet", no_argument, 0, O_QUIET},
        {"no-feature-cache", no_argument, 0, O_NO_CACHE}, {"no-fold", no_argument, 0, O_NO_FOLD},
        {"no-fused-update", no_argument, 0, O_NO_FUSE},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    graft_train_config c = graft_train_defaults();
    const char *freeze[MAX_FREEZE];
    ui u = {.tty = isatty(STDERR_FILENO)};
    int64_t i64;
    int epochs_given = 0, ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_MODEL: c.arch = optarg; break;
        case O_CLASSES_N:
            if (cli_parse_i64(optarg, 1, 1 << 24, &c.num_classes))
                return cli_usage("train", "--num-classes: '%s' is not a positive integer", optarg);
            break;
        case O_PRETRAINED: c.pretrained = 1; break;
        case O_WVERSION: c.weights_version = optarg; break;
        case O_WEIGHTS: c.weights = optarg; break;
        case O_OFFLINE: c.offline = 1; break;
        case O_FREEZE:
            if (c.nfreeze == MAX_FREEZE) return cli_usage("train", "--freeze: at most %d prefixes", MAX_FREEZE);
            freeze[c.nfreeze++] = optarg;
            break;
        case O_DROPOUT: if (parse_real("--dropout", optarg, 0, 1, &c.dropout)) return CLI_EXIT_USAGE; break;
        case O_DATA: c.data = optarg; break;
        case O_CLASSES: c.classes = optarg; break;
        case O_PER_CLASS:
            if (cli_parse_i64(optarg, 1, INT32_MAX, &c.per_class))
                return cli_usage("train", "--per-class: '%s' is not a positive integer", optarg);
            break;
        case O_TRANSFORM: c.transform = optarg; break;
        case O_EVAL_TRANSFORM: c.eval_transform = optarg; break;
        case O_STRICT: c.strict = 1; break;
        case O_BATCH:
            if (cli_parse_i64(optarg, 1, 1 << 20, &c.batch_size))
                return cli_usage("train", "--batch-size: '%s' is not a positive integer", optarg);
            break;
        case O_NO_SHUFFLE: c.shuffle = 0; break;
        case O_WORKERS:
            if (cli_parse_i64(optarg, 0, 64, &i64)) return cli_usage("train", "--workers: '%s' is not 0..64", optarg);
            c.workers = (int)i64;
            break;
        case O_EPOCHS:
            if (cli_parse_i64(optarg, 1, 1 << 20, &c.epochs))
                return cli_usage("train", "--epochs: '%s' is not a positive integer", optarg);
            epochs_given = 1;
            break;
        case O_OPTIMIZER: c.optimizer = optarg; break;
        case O_LR: if (parse_real("--lr", optarg, 0, 1e300, &c.lr)) return CLI_EXIT_USAGE; break;
        case O_LR_HEAD: if (parse_real("--lr-head", optarg, 0, 1e6, &c.lr_head)) return CLI_EXIT_USAGE; break;
        case O_LR_TRUNK: if (parse_real("--lr-trunk", optarg, 0, 1e6, &c.lr_trunk)) return CLI_EXIT_USAGE; break;
        case O_MOMENTUM: if (parse_real("--momentum", optarg, 0, 1e6, &c.momentum)) return CLI_EXIT_USAGE; break;
        case O_DAMPENING: if (parse_real("--dampening", optarg, 0, 1, &c.dampening)) return CLI_EXIT_USAGE; break;
        case O_WD: if (parse_real("--weight-decay", optarg, 0, 1e6, &c.weight_decay)) return CLI_EXIT_USAGE; break;
        case O_NESTEROV: c.nesterov = 1; break;
        case O_BETAS: {
            char *comma = strchr(optarg, ',');
            if (!comma) return cli_usage("train", "--betas: expected B1,B2, got '%s'", optarg);
            *comma = 0;
            if (parse_real("--betas", optarg, 0, 1, &c.beta1) || parse_real("--betas", comma + 1, 0, 1, &c.beta2))
                return CLI_EXIT_USAGE;
            break;
        }
        case O_EPS: if (parse_real("--eps", optarg, 0, 1, &c.eps)) return CLI_EXIT_USAGE; break;
        case O_SCHEDULE: {
            graft_schedule sched;
            if (graft_schedule_parse(optarg, &sched)) return cli_usage("train", "--schedule: %s", graft_errmsg());
            c.schedule = optarg;
            break;
        }
        case O_SMOOTH: if (parse_real("--label-smoothing", optarg, 0, 1, &c.label_smoothing)) return CLI_EXIT_USAGE; break;
        case O_MAX_STEPS:
            if (cli_parse_i64(optarg, 1, INT64_MAX, &c.max_steps))
                return cli_usage("train", "--max-steps: '%s' is not a positive integer", optarg);
            break;
        case O_OUT: c.out_dir = optarg; break;
        case O_RESUME: c.resume_dir = optarg; break;
        case O_SEED:
            if (cli_parse_i64(optarg, 0, INT64_MAX, &i64)) return cli_usage("train", "--seed: '%s' is not a non-negative integer", optarg);
            c.seed = (uint64_t)i64;
            break;
        case O_THREADS:
            if (cli_parse_i64(optarg, 1, 256, &i64)) return cli_usage("train", "--threads: '%s' is not 1..256", optarg);
            c.threads = (int)i64;
            break;
        case O_QUIET: u.quiet = 1; break;
        case O_NO_CACHE: c.feature_cache = 0; break;
        case O_NO_FOLD: c.fold = 0; break;
        case O_NO_FUSE: c.fuse_update = 0; break;
        case 'h': help(); return 0;
        default: return cli_bad_option("train", argv, optind);
        }
    }
    if (optind != argc) return cli_usage("train", "unexpected argument '%s'", argv[optind]);
    c.freeze = freeze;
    if (c.resume_dir) {
        if (!epochs_given) c.epochs = 0; /* keep the saved total */
    } else {
        if (!c.arch) return cli_usage("train", "--model is required");
        if (!c.data) return cli_usage("train", "--data is required");
        if (!c.out_dir) return cli_usage("train", "--out is required");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    cli_log_to_stderr();
    graft_train_callbacks cb = {on_text, on_progress, on_epoch, on_should_stop, &u};
    graft_status s = graft_train(&c, &cb);
    end_line(&u);
    const char *dir = c.resume_dir ? c.resume_dir : c.out_dir;
    if (s == GRAFT_INTERRUPTED) {
        fprintf(stderr, "graft: %s; saved to %s; resume with: graft train --resume %s\n",
                stop_signal ? (stop_signal == SIGINT ? "interrupted" : "terminated") : "stopped after --max-steps", dir,
                dir);
        if (stop_signal == SIGINT) return 130;
        if (stop_signal == SIGTERM) return 143;
        return 0;
    }
    if (s) return cli_fail("%s", graft_errmsg());
    return 0;
}
