/* predict.c — `graft predict --checkpoint F IMAGE... [--topk K] [--json]`: the most
 * probable classes of each image, with the checkpoint's own transform. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"

static void help(void) {
    puts("usage: graft predict --checkpoint FILE [--topk K] [--json] IMAGE...\n\n"
         "Prints the K most probable classes (default 5, at most the class count) of each\n"
         "PNG, JPEG or BMP image, with probabilities.  --json prints one JSON object per\n"
         "image instead: {\"image\": ..., \"predictions\": [{\"class\": i, \"name\": ..., \"probability\": p}]}.");
}

static void json_string(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

int cmd_predict(int argc, char **argv) {
    static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'},
                                         {"topk", required_argument, 0, 'k'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *checkpoint = NULL;
    int64_t topk = 5;
    int json = 0, ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': checkpoint = optarg; break;
        case 'k':
            if (cli_parse_i64(optarg, 1, 1 << 20, &topk)) return cli_usage("predict", "--topk: '%s' is not a positive integer", optarg);
            break;
        case 'j': json = 1; break;
        case 'h': help(); return 0;
        default: return cli_bad_option("predict", argv, optind);
        }
    }
    if (!checkpoint) return cli_usage("predict", "--checkpoint is required");
    if (optind == argc) return cli_usage("predict", "no image given");
    graft_classifier *c;
    if (graft_classifier_open(checkpoint, &c)) return cli_fail("%s", graft_errmsg());
    int k = (int)(topk < graft_classifier_num_classes(c) ? topk : graft_classifier_num_classes(c));
    graft_prediction *top = malloc((size_t)k * sizeof *top);
    int rc = top ? 0 : cli_fail("out of memory");
    for (int i = optind; !rc && i < argc; i++) {
        if (graft_classifier_classify_file(c, argv[i], k, top)) {
            rc = cli_fail("%s", graft_errmsg());
            break;
        }
        if (json) {
            printf("{\"image\":");
            json_string(argv[i]);
            printf(",\"predictions\":[");
            for (int j = 0; j < k; j++) {
                printf("%s{\"class\":%lld,\"name\":", j ? "," : "", (long long)top[j].class_index);
                json_string(top[j].class_name);
                printf(",\"probability\":%.6g}", top[j].probability);
            }
            printf("]}\n");
        } else {
            printf("%s\n", argv[i]);
            for (int j = 0; j < k; j++)
                printf("  %6.2f%%  %s (%lld)\n", 100 * top[j].probability, top[j].class_name,
                       (long long)top[j].class_index);
        }
    }
    free(top);
    graft_classifier_free(c);
    return rc;
}
