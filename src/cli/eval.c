/* eval.c — `graft eval --checkpoint F --data SPEC`: top-1/top-5, loss, per-class
 * accuracy and the confusion matrix of a checkpoint on a dataset's test split. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"

static void help(void) {
    puts("usage: graft eval --checkpoint FILE --data SPEC [--batch-size N] [--workers N] [--strict]\n\n"
         "Evaluates a checkpoint written by graft train on the test split of SPEC (the\n"
         "training split when there is none), using the checkpoint's own transform.\n"
         "Classes are matched by name, so a model trained on some classes of a dataset\n"
         "is evaluated on the full dataset without repeating --classes.");
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'},
                                         {"data", required_argument, 0, 'd'},
                                         {"batch-size", required_argument, 0, 'b'},
                                         {"workers", required_argument, 0, 'w'},
                                         {"strict", no_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *checkpoint = NULL;
    graft_eval_options o = {.workers = 1};
    int64_t v;
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': checkpoint = optarg; break;
        case 'd': o.data = optarg; break;
        case 'b':
            if (cli_parse_i64(optarg, 1, 1 << 20, &o.batch_size))
                return cli_usage("eval", "--batch-size: '%s' is not a positive integer", optarg);
            break;
        case 'w':
            if (cli_parse_i64(optarg, 0, 64, &v)) return cli_usage("eval", "--workers: '%s' is not 0..64", optarg);
            o.workers = (int)v;
            break;
        case 's': o.strict = 1; break;
        case 'h': help(); return 0;
        default: return cli_bad_option("eval", argv, optind);
        }
    }
    if (optind != argc) return cli_usage("eval", "unexpected argument '%s'", argv[optind]);
    if (!checkpoint) return cli_usage("eval", "--checkpoint is required");
    if (!o.data) return cli_usage("eval", "--data is required");
    cli_log_to_stderr();
    graft_eval_result r;
    if (graft_evaluate(checkpoint, &o, &r)) return cli_fail("%s", graft_errmsg());
    printf("samples %lld  loss %.4f  top1 %.2f%%  top5 %.2f%%\n\n%s", (long long)r.samples, r.loss, 100 * r.top1,
           100 * r.top5, r.report ? r.report : "");
    free(r.report);
    return 0;
}
