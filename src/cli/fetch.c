/* fetch.c — `graft fetch MODEL [--weights-version V] [--offline]`: puts a model's
 * pretrained weights into the cache (downloaded, SHA-256 checked, renamed into place)
 * and prints the file's path. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void help(void) {
    puts("usage: graft fetch MODEL [--weights-version V] [--offline]\n\n"
         "Downloads MODEL's pretrained weights from torchvision's URL into the cache\n"
         "(see graft models), checks the SHA-256 prefix in the file name, and prints the\n"
         "path.  A file already in the cache is used as it is.\n\n"
         "  --weights-version V  IMAGENET1K_V1 (or v1, ...); default: torchvision's DEFAULT\n"
         "  --offline            never use the network (also GRAFT_OFFLINE=1)\n\n"
         "Environment: GRAFT_HOME, TORCH_HOME, XDG_CACHE_HOME choose the cache folder;\n"
         "GRAFT_MODEL_URL_BASE replaces https://download.pytorch.org/models/.");
}

int cmd_fetch(int argc, char **argv) {
    static const struct option opts[] = {{"weights-version", required_argument, 0, 'v'},
                                         {"offline", no_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *version = NULL;
    graft_fetch_options fo = {0};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'v': version = optarg; break;
        case 'o': fo.offline = 1; break;
        case 'h': help(); return 0;
        default: return cli_bad_option("fetch", argv, optind);
        }
    }
    if (optind != argc - 1) return cli_usage("fetch", "expected one model name");
    const char *name = argv[optind];
    const graft_pretrained *p = graft_pretrained_find(name, version);
    if (!p) return cli_fail("%s", graft_errmsg());
    cli_progress bar;
    cli_progress_init(&bar, p->file);
    fo.progress = cli_progress_update;
    fo.user = &bar;
    char path[8192];
    graft_status s = graft_pretrained_fetch(p, &fo, path, sizeof path);
    cli_progress_end(&bar);
    if (s) return cli_fail("%s", graft_errmsg());
    puts(path);
    return 0;
}
