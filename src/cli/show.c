/* show.c — `graft show ARCH [--num-classes N] [--freeze PREFIX]...`
 * Prints the model exactly as print(model) does in PyTorch, an empty line, then the
 * parameter counts. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

#define MAX_FREEZE 64

static void help(void) {
    puts("usage: graft show ARCH [--num-classes N] [--freeze PREFIX]...\n\n"
         "Prints ARCH as PyTorch's print(model) does, then total, trainable and frozen\n"
         "parameter counts.  ARCH is a zoo name (vgg11 ... vgg19_bn) or a custom VGG spec\n"
         "such as vgg:cfg=32-32-M-64-M,bn,hidden=256,pool=2.\n\n"
         "  --num-classes N    replace the classification head by one with N outputs\n"
         "  --freeze PREFIX    freeze the parameters under a module path (repeatable)");
}

int cmd_show(int argc, char **argv) {
    static const struct option opts[] = {{"num-classes", required_argument, 0, 'n'},
                                         {"freeze", required_argument, 0, 'f'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    graft_model_options mo = graft_model_defaults();
    mo.init = 0; /* printing needs shapes, not values */
    const char *freeze[MAX_FREEZE];
    int nfreeze = 0, c;
    opterr = 0; /* unknown options are reported by cli_bad_option */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (cli_parse_i64(optarg, 1, 1 << 24, &mo.num_classes))
                return cli_usage("show", "--num-classes: '%s' is not a positive integer", optarg);
            break;
        case 'f':
            if (nfreeze == MAX_FREEZE) return cli_usage("show", "--freeze: at most %d prefixes", MAX_FREEZE);
            freeze[nfreeze++] = optarg;
            break;
        case 'h':
            help();
            return 0;
        default:
            return cli_bad_option("show", argv, optind);
        }
    }
    if (optind != argc - 1) return cli_usage("show", "expected one architecture name");
    graft_model *m;
    if (graft_model_create(argv[optind], &mo, &m)) return cli_fail_status(argv[optind]);
    for (int i = 0; i < nfreeze; i++)
        if (graft_model_freeze(m, freeze[i], 1)) {
            graft_model_free(m);
            return cli_fail_status("--freeze");
        }
    char *repr = graft_model_repr(m);
    if (!repr) {
        graft_model_free(m);
        return cli_fail("out of memory");
    }
    int64_t total, trainable;
    graft_model_param_counts(m, &total, &trainable);
    char a[32], b[32], f[32];
    cli_format_count(total, a, sizeof a);
    cli_format_count(trainable, b, sizeof b);
    cli_format_count(total - trainable, f, sizeof f);
    printf("%s\n\nTotal params: %s\nTrainable params: %s\nFrozen params: %s\n", repr, a, b, f);
    free(repr);
    graft_model_free(m);
    return 0;
}
